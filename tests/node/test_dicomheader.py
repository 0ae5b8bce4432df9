"""The receiver's header scanner agrees with pydicom on every file we can find, and gives up cleanly."""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian, generate_uid

from node.dicomheader import WANTED, read_identifiers, record_elements, recorded_dataset
from node.router import is_own_or_result_object, load_routing, route, routing_tags
from node.settings import Settings

#: The shipped rules' attributes and loop prevention's, and a few of other VRs (IS, US, DS, a sequence).
_ROUTED = routing_tags(load_routing(Settings().routing_file)) | {0x00200013, 0x00280010, 0x00280030, 0x00081140}


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


def _same_header(recorded: Dataset, header: Dataset, tags: set[int]) -> None:
    for tag in tags:
        assert (tag in recorded) == (tag in header), f"{tag:08X}"
        if tag in header:
            assert recorded[tag].VR == header[tag].VR and recorded[tag].value == header[tag].value, f"{tag:08X}"


@pytest.mark.parametrize("name", _testfiles())
def test_the_recorded_header_reads_as_the_file_does(name: str) -> None:
    data = Path(get_testdata_file(name)).read_bytes()
    recorded = record_elements(data, _ROUTED)
    if recorded is None:  # big endian / deflated / no file meta: the assembler reads the file
        assert read_identifiers(data) is None
        return
    recorded = json.loads(json.dumps(recorded))  # as the database gives it back
    ds = recorded_dataset(recorded, _ROUTED)
    assert ds is not None
    header = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
    _same_header(ds, header, set(_ROUTED))
    shipped = load_routing(Settings().routing_file)
    assert route(ds, shipped) == route(header, shipped)


@pytest.mark.parametrize("implicit", [False, True])
def test_recorded_sequences_private_tags_and_character_sets_read_as_the_file_does(implicit: bool) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.Manufacturer = "Müller"
    item = Dataset()
    item.Manufacturer = "AINODE"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "Newcode1", "99IHE", "Processing Algorithm"
    item.PurposeOfReferenceCodeSequence = Sequence([code])
    ds.ContributingEquipmentSequence = Sequence([item])
    ds.ContributingEquipmentSequence.is_undefined_length = True
    item.is_undefined_length_sequence_item = True
    block = ds.private_block(0x0019, "ACME 1.0", create=True)
    block.add_new(0x10, "LO", "private value")
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    data = _part10(ds)
    tags = {0x00080070, 0x0018A001, 0x00191010}
    recorded = recorded_dataset(json.loads(json.dumps(record_elements(data, tags))), tags)
    assert recorded is not None
    header = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
    _same_header(recorded, header, tags)
    assert recorded.Manufacturer == "Müller"
    assert is_own_or_result_object(recorded) == is_own_or_result_object(header) is not None


def test_a_record_of_other_attributes_is_not_used() -> None:
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    recorded = record_elements(data, {0x00080060})
    assert recorded_dataset(recorded, {0x00080060}) is not None
    assert recorded_dataset(recorded, {0x00080060, 0x00180015}) is None  # a rule added since: read the file
    assert recorded_dataset(None, {0x00080060}) is None
