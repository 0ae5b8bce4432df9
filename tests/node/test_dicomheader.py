"""The receiver's header scanner agrees with pydicom on every file we can find, and gives up cleanly."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian, generate_uid

from node.dicomheader import WANTED, read_identifiers


def _part10(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _expected(data: bytes) -> dict[str, str]:
    ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
    return {k: str(ds[k].value).strip() for k in WANTED.values() if k in ds and ds[k].value not in (None, "")}


def _testfiles() -> list[str]:
    names = [
        "CT_small.dcm",
        "MR_small.dcm",
        "JPEG2000.dcm",
        "MR_small_RLE.dcm",
        "SC_rgb_jpeg_gdcm.dcm",
        "rtplan.dcm",
        "image_dfl.dcm",
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "RG1_UNCR.dcm",
        "RG1_J2KR.dcm",
        "emri_small.dcm",
        "liver.dcm",
        "SC_rgb_small_odd.dcm",
    ]
    return [n for n in names if get_testdata_file(n)]


@pytest.mark.parametrize("name", _testfiles())
def test_agrees_with_pydicom_or_declines(name: str) -> None:
    data = Path(get_testdata_file(name)).read_bytes()
    found = read_identifiers(data)
    if found is None:  # big endian / deflated / no file meta: the receiver uses pydicom
        ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True, force=True)
        meta = getattr(ds, "file_meta", None)
        assert (
            meta is None
            or "TransferSyntaxUID" not in meta
            or meta.TransferSyntaxUID in (ExplicitVRBigEndian, "1.2.840.10008.1.2.1.99")
            or data[128:132] != b"DICM"
        )
        return
    assert found == _expected(data)


@pytest.mark.parametrize("implicit", [False, True])
def test_skips_undefined_length_sequences_before_the_uids(implicit: bool) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator, inner.CodeMeaning = "1", "99X", "x" * 33
    nested = Dataset()
    nested.ReferencedSOPInstanceUID = generate_uid()
    nested.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    inner.ReferencedImageSequence = Sequence([nested])
    ds.ProcedureCodeSequence = Sequence([inner, inner])
    ds.ReferencedImageSequence = Sequence([nested])
    for seq in (ds.ProcedureCodeSequence, ds.ReferencedImageSequence, inner.ReferencedImageSequence):
        seq.is_undefined_length = True
    for item in (inner, nested):
        item.is_undefined_length_sequence_item = True
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    data = _part10(ds)
    assert read_identifiers(data) == _expected(data)


@pytest.mark.parametrize("cut", [140, 300, 600])
def test_truncated_headers_decline_instead_of_guessing(cut: int) -> None:
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()[:cut]
    found = read_identifiers(data)
    assert found is None or set(found) <= set(WANTED.values())


def test_garbage_declines() -> None:
    assert read_identifiers(b"") is None
    assert read_identifiers(b"\x00" * 128 + b"DICM" + b"\xff" * 64) is None
