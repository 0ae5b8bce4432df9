"""Durable files: received instances (spool) and result objects (outbox).

A file is written to a temporary name in the data directory, flushed and
fsynced, then renamed into place and its directory fsynced, so that after a
crash a file is either complete or absent, never half-written. Paths are built
only from validated UIDs, so nothing can be written outside the data
directory whatever a sender puts in its UIDs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from pathlib import Path

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


def write_durable(target: Path, data: bytes, tmp_dir: Path) -> None:
    """Write ``data`` to ``target`` atomically and durably.

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
            fh.write(data)
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


class Spool:
    """Received instances under ``<data>/spool/<study>/<series>/<sop>.dcm``."""

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
