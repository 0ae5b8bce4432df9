"""echo() and store_files() against DCMTK storescp and our own StorageSCP on loopback."""

from __future__ import annotations

import socket
import time
from io import BytesIO
from pathlib import Path

import pytest
from dimse_helpers import LOCALHOST, NODE_AE, PACS_AE, DirectorySink, free_port, pydicom_file
from pydicom import Dataset, dcmread
from pydicom.uid import ImplicitVRLittleEndian, generate_uid
from pynetdicom import AllStoragePresentationContexts

from core import status
from dimse import AssociationEvent, AssociationFailed, StoreOutcome, StoreRequest, echo, store_files
from dimse.scu import MAX_CONTEXTS

UNREADABLE = "not sent: not a readable DICOM file"

DCMTK_AE = "DCMTKSCP"


def stored_by_uid(directory: Path) -> dict[str, Dataset]:
    """The files a Storage SCP wrote, keyed by SOP Instance UID."""
    datasets = [dcmread(path) for path in directory.iterdir() if path.is_file()]
    return {str(ds.SOPInstanceUID): ds for ds in datasets}


def without_padding(dataset: Dataset) -> Dataset:
    """DCMTK drops the trailing padding element (FFFC,FFFC) some pydicom test files carry."""
    if 0xFFFCFFFC in dataset:
        del dataset[0xFFFCFFFC]
    return dataset


# -- to DCMTK storescp ---------------------------------------------------------------------


def test_echo_to_dcmtk_storescp(dcmtk_storescp: tuple[int, Path]) -> None:
    port, _ = dcmtk_storescp
    assert echo(host=LOCALHOST, port=port, called_ae=DCMTK_AE, calling_ae=PACS_AE) == status.SUCCESS


def test_store_files_to_dcmtk_storescp(dcmtk_storescp: tuple[int, Path]) -> None:
    """storescp accepts only uncompressed syntaxes by default: the JPEG 2000 file is
    refused on its own, the others arrive intact in their own transfer syntax."""
    port, out_dir = dcmtk_storescp
    files = [pydicom_file(n) for n in ("CT_small.dcm", "MR_small_implicit.dcm", "JPEG2000.dcm", "emri_small.dcm")]
    sent = [dcmread(f) for f in files]

    outcomes = store_files(files, host=LOCALHOST, port=port, called_ae=DCMTK_AE, calling_ae=PACS_AE)

    assert outcomes == [
        StoreOutcome(sent[0].SOPInstanceUID, status.SUCCESS),
        StoreOutcome(sent[1].SOPInstanceUID, status.SUCCESS),
        StoreOutcome(
            sent[2].SOPInstanceUID,
            status.SOP_CLASS_NOT_SUPPORTED,
            "no acceptable transfer syntax: the peer accepts Secondary Capture Image Storage in none of "
            "JPEG 2000 Image Compression (the node never re-compresses)",
        ),
        StoreOutcome(sent[3].SOPInstanceUID, status.SUCCESS),
    ]
    assert [o.succeeded for o in outcomes] == [True, True, False, True]
    stored = stored_by_uid(out_dir)
    assert set(stored) == {sent[0].SOPInstanceUID, sent[1].SOPInstanceUID, sent[3].SOPInstanceUID}
    for original in (sent[0], sent[1], sent[3]):
        received = stored[original.SOPInstanceUID]
        assert received.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert received == without_padding(original)


def test_store_files_falls_back_to_implicit_when_exact_syntax_is_refused(
    dcmtk_storescp_implicit_only: tuple[int, Path],
) -> None:
    """Every SCP accepts Implicit VR Little Endian (PS3.5 10.1): an explicit VR file
    is then re-encoded losslessly by pydicom rather than refused."""
    port, out_dir = dcmtk_storescp_implicit_only
    original = dcmread(pydicom_file("CT_small.dcm"))

    (outcome,) = store_files(
        [pydicom_file("CT_small.dcm")], host=LOCALHOST, port=port, called_ae=DCMTK_AE, calling_ae=PACS_AE
    )

    assert outcome == StoreOutcome(original.SOPInstanceUID, status.SUCCESS)
    received = stored_by_uid(out_dir)[original.SOPInstanceUID]
    assert received.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert received.PixelData == original.PixelData
    assert received == without_padding(original)


def test_file_without_its_preamble_is_sent_and_re_encoded_like_any_other(
    dcmtk_storescp_implicit_only: tuple[int, Path], tmp_path: Path
) -> None:
    """A file that starts with ``DICM`` (PS3.10 7.1 preamble left out) is read as core.dicomfile reads it."""
    port, out_dir = dcmtk_storescp_implicit_only
    original = dcmread(pydicom_file("CT_small.dcm"))
    bare = tmp_path / "bare.dcm"
    bare.write_bytes(pydicom_file("CT_small.dcm").read_bytes()[128:])

    (outcome,) = store_files([bare], host=LOCALHOST, port=port, called_ae=DCMTK_AE, calling_ae=PACS_AE)

    assert outcome == StoreOutcome(original.SOPInstanceUID, status.SUCCESS)
    received = stored_by_uid(out_dir)[original.SOPInstanceUID]
    assert received.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert received == without_padding(original)


# -- to our own SCP ----------------------------------------------------------------------------


ALL_SYNTAXES = [
    "CT_small.dcm",  # Explicit VR Little Endian
    "MR_small_implicit.dcm",  # Implicit VR Little Endian
    "MR_small_bigendian.dcm",  # Explicit VR Big Endian
    "image_dfl.dcm",  # Deflated Explicit VR Little Endian
    "JPEG2000.dcm",  # JPEG 2000
    "MR_small_RLE.dcm",  # RLE Lossless
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG Lossless SV1
    "SC_rgb_dcmtk_+eb+cr.dcm",  # JPEG Baseline 8-bit
    "JPEG-lossy.dcm",  # JPEG Extended
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS Lossless
    "JPEGLSNearLossless_16.dcm",  # JPEG-LS Near-Lossless
    "J2K_pixelrep_mismatch.dcm",  # JPEG 2000 Lossless
]


def test_store_files_round_trip_every_transfer_syntax(start_scp, tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path)
    events: list[AssociationEvent] = []
    scp = start_scp(sink, events=events)
    files = [pydicom_file(n) for n in ALL_SYNTAXES]
    sent = [dcmread(f) for f in files]

    outcomes = store_files(files, host=LOCALHOST, port=scp.port, called_ae=NODE_AE, calling_ae=PACS_AE)

    assert [o.status for o in outcomes] == [status.SUCCESS] * len(files)
    assert [o.sop_instance_uid for o in outcomes] == [ds.SOPInstanceUID for ds in sent]
    assert [e.kind for e in events] == ["accepted", "released"]  # one association for all
    # several pydicom test files share a SOP Instance UID: compare in sending order
    for original, request in zip(sent, sink.requests, strict=True):
        received = dcmread(BytesIO(request.data))
        assert request.transfer_syntax_uid == original.file_meta.TransferSyntaxUID, original.filename
        assert received.PixelData == original.PixelData
        assert received == original


def test_store_files_reports_the_sink_status(start_scp, tmp_path: Path) -> None:
    scp = start_scp(DirectorySink(tmp_path, result=status.OUT_OF_RESOURCES))
    (outcome,) = store_files(
        [pydicom_file("CT_small.dcm")], host=LOCALHOST, port=scp.port, called_ae=NODE_AE, calling_ae=PACS_AE
    )
    assert outcome.status == 0xA700
    assert not outcome.succeeded


def test_warning_status_counts_as_success(start_scp, tmp_path: Path) -> None:
    scp = start_scp(DirectorySink(tmp_path, result=0xB000))  # coercion of data elements
    (outcome,) = store_files(
        [pydicom_file("CT_small.dcm")], host=LOCALHOST, port=scp.port, called_ae=NODE_AE, calling_ae=PACS_AE
    )
    assert outcome.status == 0xB000
    assert outcome.succeeded


def test_unreadable_file_fails_alone(start_scp, tmp_path: Path) -> None:
    received = tmp_path / "received"
    received.mkdir()
    scp_sink = DirectorySink(received)
    scp = start_scp(scp_sink)
    not_dicom = tmp_path / "notes.txt"
    not_dicom.write_text("not a DICOM file")
    ct = pydicom_file("CT_small.dcm")
    without_file_meta = pydicom_file("no_meta.dcm")  # a data set written before PS3.10: nothing says its SOP class

    outcomes = store_files(
        [not_dicom, ct, tmp_path / "missing.dcm", without_file_meta],
        host=LOCALHOST,
        port=scp.port,
        called_ae=NODE_AE,
        calling_ae=PACS_AE,
    )

    assert outcomes == [
        StoreOutcome("", status.CANNOT_UNDERSTAND, UNREADABLE),
        StoreOutcome(dcmread(ct).SOPInstanceUID, status.SUCCESS),
        StoreOutcome("", status.CANNOT_UNDERSTAND, UNREADABLE),
        StoreOutcome("", status.CANNOT_UNDERSTAND, UNREADABLE),
    ]
    assert [request.sop_instance_uid for request in scp_sink.requests] == [dcmread(ct).SOPInstanceUID]


def test_more_than_128_contexts_use_several_associations(start_scp, tmp_path: Path) -> None:
    """pynetdicom proposes at most 128 presentation contexts per association."""
    received = tmp_path / "received"
    received.mkdir()
    events: list[AssociationEvent] = []
    scp = start_scp(DirectorySink(received), events=events)
    template = dcmread(pydicom_file("CT_small.dcm"))
    files = []
    for context in AllStoragePresentationContexts[: MAX_CONTEXTS + 2]:
        template.SOPClassUID = template.file_meta.MediaStorageSOPClassUID = context.abstract_syntax
        template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = tmp_path / f"{template.SOPInstanceUID}.dcm"
        template.save_as(path)
        files.append(path)

    outcomes = store_files(files, host=LOCALHOST, port=scp.port, called_ae=NODE_AE, calling_ae=PACS_AE)

    assert all(o.succeeded for o in outcomes)
    assert len(list(received.iterdir())) == MAX_CONTEXTS + 2
    # each explicit VR LE file needs two contexts (exact + fallback): 64 SOP classes per association
    assert [e.kind for e in events] == ["accepted", "released"] * 3


# -- association failures ------------------------------------------------------------------------


def test_closed_port_raises_association_failed() -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(AssociationFailed) as raised:
        store_files(
            [pydicom_file("CT_small.dcm")], host=LOCALHOST, port=port, called_ae=NODE_AE, calling_ae=PACS_AE, timeout=5
        )
    assert not raised.value.permanent
    assert "could not associate" in raised.value.reason
    with pytest.raises(AssociationFailed):
        echo(host=LOCALHOST, port=port, called_ae=NODE_AE, calling_ae=PACS_AE, timeout=5)


def test_silent_peer_raises_association_failed_after_the_timeout() -> None:
    """A TCP listener that never answers the A-ASSOCIATE-RQ (a hung PACS)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind((LOCALHOST, 0))
        listener.listen()
        started = time.monotonic()
        with pytest.raises(AssociationFailed) as raised:
            echo(host=LOCALHOST, port=listener.getsockname()[1], called_ae=NODE_AE, calling_ae=PACS_AE, timeout=0.5)
    assert not raised.value.permanent
    assert "aborted during negotiation" in raised.value.reason
    assert time.monotonic() - started < 5


def test_rejection_is_permanent_with_the_reason(start_scp, tmp_path: Path) -> None:
    scp = start_scp(DirectorySink(tmp_path))
    with pytest.raises(AssociationFailed) as raised:
        store_files(
            [pydicom_file("CT_small.dcm")], host=LOCALHOST, port=scp.port, called_ae=NODE_AE, calling_ae="STRANGER"
        )
    assert raised.value.permanent
    assert "Calling AE title not recognised" in raised.value.reason


def test_association_lost_midway_keeps_earlier_outcomes(start_scp, tmp_path: Path) -> None:
    """The SCP answers the second instance too late: the SCU aborts, and says
    which instances were answered before."""
    calls: list[str] = []

    def slow_second(request: StoreRequest) -> int:
        calls.append(request.sop_instance_uid)
        if len(calls) == 2:
            time.sleep(2)
        return status.SUCCESS

    scp = start_scp(slow_second)
    files = [pydicom_file("CT_small.dcm"), pydicom_file("MR_small.dcm"), pydicom_file("JPEG2000.dcm")]

    with pytest.raises(AssociationFailed) as raised:
        store_files(files, host=LOCALHOST, port=scp.port, called_ae=NODE_AE, calling_ae=PACS_AE, timeout=0.5)

    assert not raised.value.permanent
    assert raised.value.outcomes == [StoreOutcome(dcmread(files[0]).SOPInstanceUID, status.SUCCESS)]
