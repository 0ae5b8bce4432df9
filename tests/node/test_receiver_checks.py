"""What the receiver refuses before keeping anything (issue 16), and what it must still keep.

A C-STORE's data set is written by the SCP after a File Meta naming the presentation
context's transfer syntax, whatever the data set's encoding. The receiver refuses, with
nothing stored and a log line naming the status:

* a data set not laid out in that transfer syntax (explicit VR data on an implicit VR
  context and the reverse): 0xC210, since the file would contradict its own meta;
* a data set without SOP Class UID or SOP Instance UID, or of another SOP class than the
  request's Affected SOP Class UID: 0xA900 (PS3.4 B.2.3, data set does not match SOP class).

Every transfer syntax the SCP accepts (implicit, explicit little and big endian, deflated,
encapsulated) is still kept, and so is an implicit VR data set whose first length happens
to spell a VR.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from core import status
from core.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dimse.commands import encode_file_meta
from dimse.scp import spool_part10
from node.db import Database
from node.dicomheader import dataset_offset, encoding_problem
from node.receiver import Receiver
from node.settings import Settings
from node.spool import Spool

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", quiet_period={"default": 0.0})


@pytest.fixture
def receiver(settings: Settings, tmp_path: Path) -> Iterator[Receiver]:
    db = Database(f"sqlite:///{tmp_path / 'node.db'}")
    db.create_schema()
    yield Receiver(settings, db, Spool(settings.spool_dir, settings.tmp_dir))
    db.dispose()


def _kept(settings: Settings) -> list[Path]:
    return sorted(settings.spool_dir.rglob("*.dcm"))


def _dataset(sop_class: str | None = CT, sop_instance: str | None = None, **elements: object) -> Dataset:
    ds = Dataset()
    if sop_class is not None:
        ds.SOPClassUID = sop_class
    if sop_instance is not None:
        ds.SOPInstanceUID = sop_instance
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.PatientID = "CHECKS"
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def _encode(ds: Dataset, *, implicit: bool, little: bool = True) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = little
    fp.is_implicit_VR = implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def _store(
    receiver: Receiver, tmp_path: Path, data: bytes, syntax: str, *, sop_class: str = CT, sop_instance: str
) -> int:
    """``data`` received on a context of ``syntax`` as the SCP hands it over: after a meta naming ``syntax``."""
    meta = encode_file_meta(
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        transfer_syntax_uid=syntax,
        implementation_class_uid=IMPLEMENTATION_CLASS_UID,
        implementation_version_name=IMPLEMENTATION_VERSION_NAME,
        source_ae_title="STORESCU",
    )
    request = spool_part10(
        tmp_path,
        meta + data,
        calling_ae="STORESCU",
        peer_address="127.0.0.1",
        peer_port=40000,
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        transfer_syntax_uid=syntax,
    )
    return receiver(request)


# -- 0xA900: the data set does not match the request's SOP class -----------------------------------------------


@pytest.mark.parametrize(
    ("has_class", "has_instance", "missing"),
    [
        (False, False, "no SOPClassUID and no SOPInstanceUID"),
        (False, True, "no SOPClassUID"),
        (True, False, "no SOPInstanceUID"),
    ],
    ids=["neither", "no-sop-class", "no-sop-instance"],
)
def test_data_set_without_its_sop_uids_is_refused(
    receiver: Receiver,
    settings: Settings,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    has_class: bool,
    has_instance: bool,
    missing: str,
) -> None:
    """A data set lacking the SOP Common module's Type 1 UIDs is not taken from the command's: 0xA900."""
    sop = generate_uid()
    ds = _dataset(CT if has_class else None, sop if has_instance else None)
    with caplog.at_level(logging.WARNING, logger="ainode.receiver"):
        code = _store(receiver, tmp_path, _encode(ds, implicit=True), ImplicitVRLittleEndian, sop_instance=sop)
    assert code == status.DATASET_DOES_NOT_MATCH_SOP_CLASS == 0xA900
    assert _kept(settings) == [] and receiver.counts == {"stored": 0, "rejected": 1}
    (line,) = [r.getMessage() for r in caplog.records if r.name == "ainode.receiver"]
    assert f"refused {sop} from STORESCU (0xA900, data set does not match SOP class)" in line and missing in line


def test_data_set_of_another_sop_class_than_the_request_is_refused(
    receiver: Receiver, settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An MR data set sent as CT Image Storage (the context and command say CT): 0xA900, nothing stored."""
    sop = generate_uid()
    data = _encode(_dataset(MR, sop), implicit=False)
    with caplog.at_level(logging.WARNING, logger="ainode.receiver"):
        code = _store(receiver, tmp_path, data, ExplicitVRLittleEndian, sop_class=CT, sop_instance=sop)
    assert code == 0xA900 and _kept(settings) == []
    assert f"the data set's SOP Class UID {MR} is not the request's {CT}" in caplog.text


# -- 0xC210: the data set is not in its context's transfer syntax -----------------------------------------------


def _sequence_first() -> Dataset:
    """A data set whose first element is a sequence of undefined length."""
    ds = _dataset(CT, generate_uid())
    item = Dataset()
    item.CodeValue = "eng"
    ds.LanguageCodeSequence = Sequence([item])
    ds["LanguageCodeSequence"].is_undefined_length = True
    return ds


VR_MISMATCHES = {
    # name: (data set, encoded implicit?, encoded little endian?, the context's transfer syntax)
    "explicit-on-implicit": (lambda: _dataset(CT, generate_uid()), False, True, ImplicitVRLittleEndian),
    "implicit-on-explicit": (lambda: _dataset(CT, generate_uid()), True, True, ExplicitVRLittleEndian),
    "implicit-on-big-endian": (lambda: _dataset(CT, generate_uid()), True, True, ExplicitVRBigEndian),
    # 2 MB: read as implicit, the first element's length (its VR and length bytes) fits in the file
    "explicit-on-implicit-large": (
        lambda: _dataset(CT, generate_uid(), Rows=2048, Columns=512, BitsAllocated=16, PixelData=bytes(2 << 20)),
        False,
        True,
        ImplicitVRLittleEndian,
    ),
    "explicit-sequence-first-on-implicit": (_sequence_first, False, True, ImplicitVRLittleEndian),
}


@pytest.mark.parametrize("name", VR_MISMATCHES)
def test_data_set_in_the_other_vr_is_refused(
    receiver: Receiver, settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    """The file would say one VR and hold the other, unreadable to strict readers: 0xC210, nothing stored."""
    make, implicit, little, syntax = VR_MISMATCHES[name]
    ds = make()
    data = _encode(ds, implicit=implicit, little=little)
    with caplog.at_level(logging.WARNING, logger="ainode.receiver"):
        code = _store(receiver, tmp_path, data, syntax, sop_instance=str(ds.SOPInstanceUID))
    assert code == status.CANNOT_UNDERSTAND == 0xC210
    assert _kept(settings) == [] and receiver.counts["rejected"] == 1
    other = "explicit VR data on an implicit VR context" if syntax == ImplicitVRLittleEndian else "implicit VR data"
    assert f"refused {ds.SOPInstanceUID} from STORESCU (0xC210, cannot understand)" in caplog.text
    assert other in caplog.text


def test_data_set_with_nothing_to_file_by_cannot_be_understood(
    receiver: Receiver, settings: Settings, tmp_path: Path
) -> None:
    """Empty, shorter than one element, or without any of the four UIDs: 0xC210 rather than 0xA900."""
    assert _store(receiver, tmp_path, b"", ExplicitVRLittleEndian, sop_instance=generate_uid()) == 0xC210
    assert _store(receiver, tmp_path, b"\x08\x00\x16\x00", ImplicitVRLittleEndian, sop_instance="1.2.3") == 0xC210
    patient_only = Dataset()
    patient_only.PatientID = "CHECKS"
    data = _encode(patient_only, implicit=True)
    assert _store(receiver, tmp_path, data, ImplicitVRLittleEndian, sop_instance=generate_uid()) == 0xC210
    assert _kept(settings) == [] and receiver.counts == {"stored": 0, "rejected": 3}


# -- what must still be kept ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",  # explicit VR little endian
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "image_dfl.dcm",  # deflated
        "JPEG2000.dcm",
        "MR_small_RLE.dcm",
        "rtplan.dcm",  # starts with sequences, no pixels
    ],
)
def test_every_transfer_syntax_is_kept(receiver: Receiver, settings: Settings, tmp_path: Path, name: str) -> None:
    """A data set in its context's syntax, whichever, is stored as received (the data set bytes after the meta)."""
    raw = Path(get_testdata_file(name)).read_bytes()
    pos, syntax = dataset_offset(raw) or (0, "")
    ds = pydicom.dcmread(BytesIO(raw), stop_before_pixels=True)
    code = _store(receiver, tmp_path, raw[pos:], syntax, sop_class=ds.SOPClassUID, sop_instance=ds.SOPInstanceUID)
    assert code == status.SUCCESS
    (kept,) = _kept(settings)
    assert kept.read_bytes().endswith(raw[pos:])


def test_implicit_length_that_spells_a_vr_is_kept(receiver: Receiver, settings: Settings, tmp_path: Path) -> None:
    """An implicit VR first element of 0x4F4C bytes has "LO" where explicit VR has its VR; it is still implicit."""
    sop = generate_uid()
    ds = _dataset(CT, sop, ImageType=["DERIVED"] * (0x4F4C // 8) + ["ABCD"])
    data = _encode(ds, implicit=True)
    assert data[:8] == b"\x08\x00\x08\x00LO\x00\x00"
    assert _store(receiver, tmp_path, data, ImplicitVRLittleEndian, sop_instance=sop) == status.SUCCESS
    assert len(_kept(settings)) == 1


def _pydicom_files() -> list[Path]:
    root = Path(pydicom.data.__file__).parent
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_encoding_check_agrees_with_pydicom_on_its_test_files() -> None:
    """Every file of pydicom's test data with a File Meta: a problem exactly where pydicom finds the other VR."""
    checked, flagged = 0, []
    for path in _pydicom_files():
        raw = path.read_bytes()
        if dataset_offset(raw) is None:
            continue
        checked += 1
        problem = encoding_problem(raw[: 64 * 1024], len(raw))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pydicom.dcmread(BytesIO(raw), stop_before_pixels=True)
        switched = any("but found" in str(w.message) for w in caught)
        assert switched == (problem is not None), (path.name, problem)
        if problem:
            flagged.append(path.name)
    assert checked > 150 and flagged == ["SC_rgb_jpeg.dcm"]
