"""Errors raised by :mod:`core`.

::

    CoreError
    └── UnreadableDicom      a file that cannot be read as DICOM (PS3.10)

Each package of the node has its own tree with one base (``DimseError``,
``ModelError``, ``WriterError``, ``NodeError``); callers map a lower package's
errors to their own at one edge, ``raise … from exc``.
"""

from __future__ import annotations

from pathlib import Path


class CoreError(Exception):
    """Base of the errors raised by :mod:`core`."""


class UnreadableDicom(CoreError, ValueError):
    """A file that cannot be read as DICOM.

    Parameters
    ----------
    path : Path
        The file.
    reason : str
        What is wrong, in words for a PACS administrator (no traceback).
    """

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(reason)
        self.path = path
        self.reason = reason
