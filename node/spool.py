"""Durable files: received instances (spool) and result objects (outbox).

A file is written to a temporary name in the data directory, flushed and
fsynced, then renamed into place and its directory fsynced, so that after a
crash a file is either complete or absent, never half-written. A received
instance is already such a temporary file (the storage SCP streams it into
the spool's temporary folder): :meth:`Spool.keep` fsyncs and renames it
without copying. Paths are built only from validated UIDs, so nothing can be
written outside the data directory whatever a sender puts in its UIDs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO, Protocol

from node.errors import InputError, StorageError, StorageFull

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def check_uid(value: object, what: str) -> str:
    """Return ``value`` if it is a valid UID (PS3.5 9.1), else raise :class:`InputError`.

    A UID is at most 64 characters of digits and dots, with no leading zeros
    in a component; this also guarantees it is safe as a file name.
    """
    text = str(value or "").strip().rstrip("\x00")
    if not text:
        raise InputError(f"{what} is missing")
    if len(text) > 64:
        raise InputError(f"{what} is longer than 64 characters ({len(text)})")
    if not _UID.match(text):
        shown = text[:70].encode("unicode_escape").decode("ascii")
        raise InputError(f"{what} is not a valid UID (digits and dots only): {shown!r}")
    return text


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs_durable(path: Path) -> None:
    """Create ``path`` and its missing parents, each made durable: the parent of every created folder is fsynced.

    ``mkdir`` alone puts the new name in the parent folder's entries, in the page cache;
    a power cut can lose it, and with it every file renamed into the folder since. A folder
    that already exists costs one ``stat``.
    """
    if path.is_dir():
        return
    missing: list[Path] = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        # Existing: another association created it a moment ago, and its parent may not be fsynced yet.
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=0o700)
        _fsync_dir(folder.parent)


def write_durable(target: Path, data: bytes | BinaryIO, tmp_dir: Path) -> None:
    """Write ``data`` (bytes, or what is left to read of a binary file) to ``target`` atomically and durably.

    Raises
    ------
    StorageFull
        No space left (the caller answers C-STORE with 0xA700).
    StorageError
        Any other OS error.
    """
    tmp_name: str | None = None
    try:
        make_dirs_durable(target.parent)
        fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, prefix=".incoming-", suffix=".part")
        with os.fdopen(fd, "wb") as fh:
            if isinstance(data, (bytes, bytearray, memoryview)):
                fh.write(data)
            else:
                shutil.copyfileobj(data, fh, 1 << 20)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, target)
        tmp_name = None
        _fsync_dir(target.parent)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageFull(f"no space left on device while writing {target.name}") from exc
        raise StorageError(f"cannot write {target.name}: {exc.strerror or exc}") from exc
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)


def keep_durable(source: Path, target: Path, tmp_dir: Path) -> None:
    """Make the complete file ``source`` durable at ``target``: fsync, rename, fsync the folder.

    ``source`` was written by someone else (the storage SCP streams each data set into the
    spool's temporary folder, on the same file system) and is not yet fsynced. Nothing is
    copied, however large the file (unless ``source`` is on another file system than
    ``target``: then it is copied through ``tmp_dir`` by :func:`write_durable`). On failure
    ``source`` is left where it was (its writer removes it).

    Grouping: the fsyncs of parallel associations are not gathered into one pass here. Each
    association's thread fsyncs its own file and folder, and the file system's journal already
    commits concurrent fsyncs together (ext4's jbd2 joins them to the running transaction):
    four threads each writing, fsyncing and renaming 0.53 MB files into one folder took
    0.63-1.33 ms per file, against 0.62-1.60 ms with one flusher thread fsyncing the files of
    all waiting threads in a row (then one folder fsync for all), and 0.63-1.47 ms with one
    ``syncfs`` per batch, over six alternating rounds on this project's 2-core test machine;
    ``syncfs`` also flushes whatever else the file system holds. A gathering pass would add
    its wait to every acknowledgement and gain nothing measurable.

    Raises
    ------
    StorageFull
        No space left (the caller answers C-STORE with 0xA700).
    StorageError
        Any other OS error.
    """
    try:
        fd = os.open(source, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        make_dirs_durable(target.parent)
        try:
            os.replace(source, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # Another file system (an intake writing elsewhere than the spool's temporary folder): copy.
            with open(source, "rb") as fh:
                write_durable(target, fh, tmp_dir)
            return
        _fsync_dir(target.parent)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageFull(f"no space left on device while keeping {target.name}") from exc
        raise StorageError(f"cannot keep {target.name}: {exc.strerror or exc}") from exc


class Files(Protocol):
    """Reads and deletes stored objects by ref (``Instance.path``, ``Result.path``); see :mod:`node.storage`."""

    def fetch(self, refs: Sequence[str]) -> AbstractContextManager[list[Path]]:
        """Local files holding ``refs``, in order, for the ``with`` block (:class:`StorageError` if unreadable)."""
        ...

    def stat(self, ref: str) -> tuple[int, float] | None:
        """Size and modification time of ``ref``, or None when it does not exist."""
        ...

    def exists(self, ref: str) -> bool: ...

    def delete(self, ref: str) -> None:
        """Remove ``ref`` (no error when it is already gone)."""
        ...


class PosixFiles:
    """Refs that are file paths: read in place, nothing copied."""

    @contextlib.contextmanager
    def fetch(self, refs: Sequence[str]) -> Iterator[list[Path]]:
        yield [Path(ref) for ref in refs]

    def stat(self, ref: str) -> tuple[int, float] | None:
        try:
            st = os.stat(ref)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read {Path(ref).name}: {exc.strerror or exc}") from exc
        return st.st_size, st.st_mtime

    def exists(self, ref: str) -> bool:
        return self.stat(ref) is not None

    def delete(self, ref: str) -> None:
        try:
            os.unlink(ref)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(f"cannot remove {Path(ref).name}: {exc.strerror or exc}") from exc


#: The reader of posix refs (it has no state).
POSIX_FILES = PosixFiles()


class Spool:
    """Received instances under ``<data>/spool/<study>/<series>/<sop>.dcm``.

    The posix backend of :mod:`node.storage`: a ref is the file's path; :meth:`ref`,
    :meth:`release` and :attr:`files` are what the object-store backend overrides.
    """

    def __init__(self, root: Path, tmp_dir: Path) -> None:
        self.root = root
        self.tmp_dir = tmp_dir
        make_dirs_durable(root)
        make_dirs_durable(tmp_dir)

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        return (
            self.root
            / check_uid(study_uid, "StudyInstanceUID")
            / check_uid(series_uid, "SeriesInstanceUID")
            / f"{check_uid(sop_uid, 'SOPInstanceUID')}.dcm"
        )

    def store(self, study_uid: str, series_uid: str, sop_uid: str, data: bytes) -> Path:
        path = self.path_for(study_uid, series_uid, sop_uid)
        write_durable(path, data, self.tmp_dir)
        return path

    def keep(self, source: Path, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        """Move the received file ``source`` (in :attr:`tmp_dir`) durably into its place; see :func:`keep_durable`."""
        path = self.path_for(study_uid, series_uid, sop_uid)
        keep_durable(source, path, self.tmp_dir)
        return path

    def put(self, study_uid: str, series_uid: str, sop_uid: str, data: bytes) -> str:
        """Store ``data`` durably; its ref (the file's path)."""
        return str(self.store(study_uid, series_uid, sop_uid, data))

    def ref(self, path: Path) -> str:
        """The ref recorded for a file this spool kept (:meth:`keep`): its path."""
        return str(path)

    def release(self, paths: Iterable[Path]) -> None:
        """The rows of ``paths`` are committed. Posix: the file is the object itself, nothing to do."""

    def digest(self, path: Path) -> str | None:
        """The SHA-256 of a kept file if this backend takes it at once; posix: None (the assembler takes it
        later, off the acknowledgement path, from the file in place)."""
        return None

    @property
    def files(self) -> Files:
        """Reads, stats and deletes refs of this backend."""
        return POSIX_FILES

    def clean_tmp(self) -> int:
        """Remove temporary files left by a crash mid-write; returns how many."""
        removed = 0
        for leftover in self.tmp_dir.glob(".incoming-*"):
            try:
                leftover.unlink()
                removed += 1
            except OSError:
                pass
        return removed


class Outbox(Spool):
    """Result objects under ``<data>/outbox/<study>/<source series>/<sop>.dcm``."""
