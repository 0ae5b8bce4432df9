"""The one place the node reads and encodes DICOM files (PS3.10), with one error.

Every package reads files through :func:`read_dataset` (whole data set or
header only) or :func:`read_file_meta` (File Meta Information only) so that
old files are read the same way everywhere and any failure reaches the
caller as :class:`core.errors.UnreadableDicom` with words a PACS
administrator understands, never a pydicom traceback:

- a file whose 128-byte preamble is missing (it starts with ``DICM``,
  PS3.10 7.1) is read with a blank preamble put back;
- a data set written before PS3.10 (no preamble, no ``DICM``, no group 0002)
  is read as pydicom detects its encoding, provided it holds an SOP Class or
  Instance UID or a Modality, and its transfer syntax is recorded from that
  encoding so its pixels can be decoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info, read_partial
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from core.errors import UnreadableDicom
from core.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

__all__ = ["encode_part10", "preamble_restored", "read_dataset", "read_file_meta"]

_IDENTIFYING = ("SOPClassUID", "SOPInstanceUID", "Modality")


def encode_part10(ds: Dataset) -> bytes:
    """A data set the node wrote, as a Part 10 file (PS3.10 7.1) naming ainode as its implementation.

    The File Meta Information carries :data:`core.identity.IMPLEMENTATION_CLASS_UID`
    and version name, not those of pydicom or highdicom, so a PACS's logs and a
    file's meta say which software wrote it. ``ds.file_meta`` is updated in place.
    """
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = ds.file_meta = FileMetaDataset()
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def read_dataset(
    path: Path | str,
    *,
    header_only: bool = False,
    tags: Sequence[str] | None = None,
    defer_size: int | str | None = None,
) -> Dataset:
    """Read one DICOM file.

    Parameters
    ----------
    path : Path or str
        The file.
    header_only : bool
        Stop before Pixel Data (``stop_before_pixels``).
    tags : sequence of str, optional
        Read only these keywords (``specific_tags``); implies nothing about pixels.
    defer_size : int or str, optional
        Values larger than this are read from the file when first used.

    Raises
    ------
    UnreadableDicom
        The file cannot be opened, or is not DICOM, or is corrupt.
    """
    path = Path(path)
    options: dict[str, object] = {"stop_before_pixels": header_only}
    if tags is not None:
        options["specific_tags"] = list(tags)
    if defer_size is not None:
        options["defer_size"] = defer_size
    try:
        return pydicom.dcmread(path, **options)  # type: ignore[arg-type]
    except InvalidDicomError:
        pass
    except OSError as exc:
        raise UnreadableDicom(path, f"cannot read: {exc.strerror or exc}") from exc
    except Exception as exc:  # pydicom raises many types on corrupt files
        raise UnreadableDicom(path, f"not readable as DICOM: {exc}") from exc
    unprefixed = preamble_restored(path)
    if unprefixed is not None:
        try:
            return _with_transfer_syntax(pydicom.dcmread(unprefixed, **options))  # type: ignore[arg-type]
        except Exception as exc:
            raise UnreadableDicom(path, f"not readable as DICOM: {exc}") from exc
    try:
        ds = pydicom.dcmread(path, force=True, **options)  # type: ignore[arg-type]
    except Exception as exc:
        raise UnreadableDicom(path, f"not a DICOM file ({type(exc).__name__}: {exc})") from exc
    if tags is None and not any(keyword in ds for keyword in _IDENTIFYING):
        raise UnreadableDicom(path, "not a DICOM file (no DICM prefix and no SOP Class, SOP Instance or Modality)")
    return _with_transfer_syntax(ds)


def read_file_meta(path: Path | str) -> FileMetaDataset:
    """Read only the File Meta Information of a Part 10 file (PS3.10 7.1), not its data set.

    For a sender choosing presentation contexts: 6 to 13 times faster than
    ``read_dataset(path, header_only=True)`` on pydicom's CT and MR test files.
    A file whose preamble is missing is read as :func:`read_dataset` reads it.

    Raises
    ------
    UnreadableDicom
        The file cannot be opened, or has no File Meta Information (not DICOM,
        or a data set written before PS3.10).
    """
    path = Path(path)
    try:
        return read_file_meta_info(path)
    except InvalidDicomError:
        pass
    except OSError as exc:
        raise UnreadableDicom(path, f"cannot read: {exc.strerror or exc}") from exc
    except Exception as exc:  # pydicom raises many types on corrupt files
        raise UnreadableDicom(path, f"not readable as DICOM: {exc}") from exc
    unprefixed = preamble_restored(path)
    if unprefixed is None:
        raise UnreadableDicom(path, "not a DICOM file with File Meta Information (no DICM prefix)")
    try:
        return read_partial(unprefixed, stop_when=_at_data_set).file_meta
    except Exception as exc:
        raise UnreadableDicom(path, f"not readable as DICOM: {exc}") from exc


def _at_data_set(tag: object, vr: object, length: object) -> bool:
    """``stop_when`` of pydicom's reader: stop at the first element after group 0002."""
    return True


def preamble_restored(path: Path) -> BytesIO | None:
    """A file that starts with ``DICM`` (preamble left out, PS3.10 7.1), with a blank preamble put back.

    Returns None for any other file.
    """
    with open(path, "rb") as fh:
        if fh.read(4) != b"DICM":
            return None
        return BytesIO(b"\0" * 128 + b"DICM" + fh.read())


def _with_transfer_syntax(ds: Dataset) -> Dataset:
    """Record the encoding pydicom detected as the transfer syntax of a file that has none."""
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        ds.file_meta = meta if meta is not None else FileMetaDataset()
        implicit, little = ds.original_encoding
        if implicit:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        else:
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    return ds
