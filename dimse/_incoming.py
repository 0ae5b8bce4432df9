"""A received data set on its way to disk: written to a Part 10 file while its fragments arrive.

:class:`IncomingDataSet` is what :class:`dimse._association.Association` feeds
the fragments of one C-STORE data set into (PS3.8 Annex E). The file is opened
when the command arrives: 128-byte preamble, ``DICM`` and the File Meta
Information first, then each fragment appended through a buffered writer
(:data:`WRITE_BUFFER`), so an association holds at most one PDU and that buffer
in memory, whatever the size of the data set. Nothing is fsynced here: the sink
that keeps the file decides how durable it must be.

A data set that cannot be kept -- the disk is full or fails (``OSError``), it
grows past ``max_size``, or its C-STORE was refused at the command -- is
*discarded*: the partial file is deleted at once, the remaining fragments are
still read (the association stays in step) and counted but not written, and
the C-STORE is answered with :attr:`IncomingDataSet.status`.

Files are named ``.incoming-scp-*.dcm``, so a node's start-up clean of its
temporary folder (``.incoming-*``) removes those a crash left behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from core import status

__all__ = ["FILE_PREFIX", "WRITE_BUFFER", "IncomingDataSet"]

#: Bytes gathered before a write to the file: large writes, few system calls.
WRITE_BUFFER = 1 << 20
#: Prefix of the files being written (see the module docstring).
FILE_PREFIX = ".incoming-scp-"


class IncomingDataSet:
    """One C-STORE data set being written to a new file in ``directory``.

    Parameters
    ----------
    directory : Path
        Where the file is created (the spool's temporary folder in the node).
    meta : bytes
        Preamble, ``DICM`` and File Meta Information, written first.
    max_size : int
        Largest data set accepted, in bytes (the meta not counted); past it the
        data set is discarded and answered with 0xA700.

    Never raises for a file system error: it is recorded in :attr:`failure`
    and the C-STORE answered with :attr:`status`.
    """

    def __init__(self, directory: Path, meta: bytes, max_size: int) -> None:
        self.max_size = max_size
        #: Data set bytes received so far, whether written or discarded.
        self.received = 0
        self.path: Path | None = None
        #: Why the data set is being discarded (``None`` while it is kept).
        self.failure: str | None = None
        #: The status to answer with when discarded.
        self.status = status.SUCCESS
        self._file: BinaryIO | None = None
        self._meta_size = len(meta)
        try:
            fd, name = tempfile.mkstemp(dir=directory, prefix=FILE_PREFIX, suffix=".dcm")
        except OSError as exc:
            self.discard(f"cannot create a file in the incoming folder: {exc}", status.OUT_OF_RESOURCES)
            return
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb", buffering=WRITE_BUFFER)
        self._write(meta)

    @classmethod
    def refused(cls, result: int, reason: str) -> IncomingDataSet:
        """A data set read only to be discarded: its C-STORE is answered ``result`` (no file is made)."""
        incoming = cls.__new__(cls)
        incoming.max_size = 0
        incoming.received = 0
        incoming.path = None
        incoming.failure = reason
        incoming.status = result
        incoming._file = None
        incoming._meta_size = 0
        return incoming

    @property
    def size(self) -> int:
        """Bytes of the whole file: meta and data set."""
        return self._meta_size + self.received

    def write(self, fragment: memoryview) -> None:
        """Append one fragment, or count it if the data set is being discarded."""
        self.received += len(fragment)
        if self._file is None:
            return
        if self.received > self.max_size:
            self.discard(
                f"data set larger than max_dataset_size ({self.max_size} bytes)",
                status.OUT_OF_RESOURCES,
            )
            return
        self._write(fragment)

    def _write(self, data: bytes | memoryview) -> None:
        assert self._file is not None
        try:
            self._file.write(data)
        except OSError as exc:  # ENOSPC, EDQUOT, EIO
            self.discard(f"cannot write the data set: {exc}", status.OUT_OF_RESOURCES)

    def finish(self) -> Path | None:
        """Close the file after the last fragment; its path, or ``None`` if the data set was discarded."""
        file, self._file = self._file, None
        if file is None:
            return None
        try:
            file.close()  # flushes the last buffer: may fail like any write
        except OSError as exc:
            self.discard(f"cannot write the data set: {exc}", status.OUT_OF_RESOURCES)
            return None
        return self.path

    def discard(self, reason: str | None = None, result: int = status.OUT_OF_RESOURCES) -> None:
        """Stop writing and delete the partial file; later fragments are only counted.

        With a ``reason`` the C-STORE will be answered ``result``; without one
        (the association ended mid-data-set) nothing will be answered.
        """
        if reason is not None and self.failure is None:
            self.failure = reason
            self.status = result
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):  # the buffer may not flush on a full disk: it goes anyway
                file.close()
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self.path = None
