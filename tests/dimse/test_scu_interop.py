"""Our SCU against real acceptors: DCMTK storescp in several configurations, our own SCP, Orthanc.

Each check looks at what the acceptor stored, not only at the statuses.
"""

from __future__ import annotations

import time
from io import BytesIO
from pathlib import Path

import pytest
from dimse_helpers import LOCALHOST, NODE_AE, PACS_AE, DirectorySink, pydicom_file, running_storescp
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AllStoragePresentationContexts
from raw_acceptor import data_set_bytes

from core import status
from dimse import AssociationEvent, AssociationFailed, StoreOutcome, echo, store_files
from dimse.scu import MAX_CONTEXTS
from tests.helpers import OrthancServer

DCMTK_AE = "DCMTKSCP"
CT, MR_IMPLICIT, J2K = (pydicom_file(n) for n in ("CT_small.dcm", "MR_small_implicit.dcm", "JPEG2000.dcm"))


def received_by_uid(directory: Path) -> dict[str, Path]:
    return {str(dcmread(path, stop_before_pixels=True).SOPInstanceUID): path for path in directory.iterdir()}


# -- DCMTK storescp ----------------------------------------------------------------------------


def test_storescp_accepting_all_syntaxes_receives_jpeg_2000_as_it_is(tmp_path: Path) -> None:
    with running_storescp(tmp_path / "out", "+xa") as port:
        outcomes = store_files(
            [CT, MR_IMPLICIT, J2K], host=LOCALHOST, port=port, called_ae=DCMTK_AE, calling_ae=PACS_AE
        )
    assert [o.status for o in outcomes] == [status.SUCCESS] * 3
    stored = received_by_uid(tmp_path / "out")
    for path in (CT, MR_IMPLICIT, J2K):
        original = dcmread(path)
        received = dcmread(stored[original.SOPInstanceUID])
        assert received.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert received.PixelData == original.PixelData


def test_storescp_preferring_explicit_le_gets_implicit_files_in_their_own_syntax(tmp_path: Path) -> None:
    """+xe prefers Explicit VR LE but accepts Implicit VR on the file's own context."""
    with running_storescp(tmp_path / "out", "+xe") as port:
        (outcome,) = store_files([MR_IMPLICIT], host=LOCALHOST, port=port, called_ae=DCMTK_AE, calling_ae=PACS_AE)
    assert outcome.status == status.SUCCESS
    received = dcmread(received_by_uid(tmp_path / "out")[outcome.sop_instance_uid])
    assert received.file_meta.TransferSyntaxUID == dcmread(MR_IMPLICIT).file_meta.TransferSyntaxUID


def test_storescp_with_4k_pdus_receives_a_large_instance_intact(tmp_path: Path) -> None:
    big = tmp_path / "big.dcm"
    dataset = dcmread(CT)
    dataset.Rows = dataset.Columns = 512
    dataset.PixelData = bytes(range(256)) * 2048  # 512 kB: 128 fragments of 4 kB
    dataset.save_as(big)
    with running_storescp(tmp_path / "out", "--max-pdu", "4096") as port:
        (outcome,) = store_files([big], host=LOCALHOST, port=port, called_ae=DCMTK_AE, calling_ae=PACS_AE)
    assert outcome.status == status.SUCCESS
    assert dcmread(received_by_uid(tmp_path / "out")[outcome.sop_instance_uid]).PixelData == dataset.PixelData


def test_storescp_refusing_the_association_is_a_permanent_rejection(tmp_path: Path) -> None:
    with running_storescp(tmp_path / "out", "--refuse") as port:
        for _ in range(5):  # storescp answers and closes at once: the rejection must still be read
            with pytest.raises(AssociationFailed) as raised:
                echo(host=LOCALHOST, port=port, called_ae=DCMTK_AE, calling_ae=PACS_AE, timeout=5)
            assert raised.value.permanent
            assert "rejected the association: Rejected Permanent, Service User" in raised.value.reason


@pytest.mark.parametrize("option", ["--abort-during", "--abort-after"])
def test_storescp_aborting_a_c_store_loses_the_association(tmp_path: Path, option: str) -> None:
    started = time.monotonic()
    with running_storescp(tmp_path / "out", option) as port, pytest.raises(AssociationFailed) as raised:
        store_files([CT, MR_IMPLICIT], host=LOCALHOST, port=port, called_ae=DCMTK_AE, calling_ae=PACS_AE, timeout=10)
    assert not raised.value.permanent
    assert raised.value.outcomes == []
    assert "lost while sending" in raised.value.reason
    assert time.monotonic() - started < 5  # the abort is noticed, not waited out


# -- our own SCP ---------------------------------------------------------------------------------


FILES = [
    "CT_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "image_dfl.dcm",
    "JPEG2000.dcm",
    "MR_small_RLE.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
    "JPEG-lossy.dcm",
    "JPEGLSNearLossless_16.dcm",
]


def test_our_scp_receives_each_data_set_byte_for_byte(start_scp, tmp_path: Path) -> None:
    """Whatever the syntax, the data set bytes on the wire are the file's, unchanged."""
    sink = DirectorySink(tmp_path)
    scp = start_scp(sink)
    paths = [pydicom_file(name) for name in FILES]

    outcomes = store_files(paths, host=LOCALHOST, port=scp.port, called_ae=NODE_AE, calling_ae=PACS_AE)

    assert [o.status for o in outcomes] == [status.SUCCESS] * len(paths)
    for path, request in zip(paths, sink.requests, strict=True):
        assert data_set_bytes(BytesIO(request.data)) == data_set_bytes(str(path)), path.name
        assert request.transfer_syntax_uid == dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID


def files_of_130_sop_classes(folder: Path) -> list[Path]:
    """CT_small saved as 130 instances of 130 storage SOP classes: 260 contexts, three associations."""
    folder.mkdir()
    template = dcmread(CT)
    files = []
    for context in AllStoragePresentationContexts[: MAX_CONTEXTS + 2]:
        template.SOPClassUID = template.file_meta.MediaStorageSOPClassUID = context.abstract_syntax
        template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        files.append(folder / f"{template.SOPInstanceUID}.dcm")
        template.save_as(files[-1])
    return files


def test_more_than_128_contexts_twenty_times_without_a_timeout(start_scp, tmp_path: Path) -> None:
    """The case pynetdicom's requestor lost a fast response in (1 run in 12 to 25): never here."""
    received = tmp_path / "received"
    received.mkdir()
    events: list[AssociationEvent] = []
    scp = start_scp(DirectorySink(received), events=events)
    files = files_of_130_sop_classes(tmp_path / "in")

    slowest = 0.0
    for _ in range(20):
        started = time.monotonic()
        outcomes = store_files(files, host=LOCALHOST, port=scp.port, called_ae=NODE_AE, calling_ae=PACS_AE, timeout=5)
        slowest = max(slowest, time.monotonic() - started)
        assert [o.status for o in outcomes] == [status.SUCCESS] * len(files)

    assert slowest < 5, f"a round took {slowest:.1f} s: a response was waited for until the timeout"
    assert [e.kind for e in events] == ["accepted", "released"] * 3 * 20
    assert len(list(received.iterdir())) == len(files)


def test_more_than_128_contexts_to_storescp_twenty_times_without_a_timeout(tmp_path: Path) -> None:
    """DCMTK answers as fast as our SCP does: the same twenty rounds (-pm: any SOP class)."""
    files = files_of_130_sop_classes(tmp_path / "in")
    slowest = 0.0
    with running_storescp(tmp_path / "out", "-pm", "--ignore") as port:
        for _ in range(20):
            started = time.monotonic()
            outcomes = store_files(files, host=LOCALHOST, port=port, called_ae=DCMTK_AE, calling_ae=PACS_AE, timeout=5)
            slowest = max(slowest, time.monotonic() - started)
            assert [o.status for o in outcomes] == [status.SUCCESS] * len(files)
    assert slowest < 5, f"a round took {slowest:.1f} s: a response was waited for until the timeout"


# -- Orthanc -------------------------------------------------------------------------------------


def test_orthanc_echo_and_store(orthanc: OrthancServer) -> None:
    assert echo(host=LOCALHOST, port=orthanc.dicom_port, called_ae=orthanc.aet, calling_ae=PACS_AE) == status.SUCCESS
    paths = [CT, MR_IMPLICIT, J2K]

    outcomes = store_files(paths, host=LOCALHOST, port=orthanc.dicom_port, called_ae=orthanc.aet, calling_ae=PACS_AE)

    assert outcomes == [StoreOutcome(dcmread(p).SOPInstanceUID, status.SUCCESS) for p in paths]
    stored = {i.sop_instance_uid: i for i in orthanc.wait_for_instances(count=3)}
    for path in paths:
        original = dcmread(path)
        received = dcmread(BytesIO(orthanc.download_instance(stored[original.SOPInstanceUID].id)))
        assert received.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert received.PixelData == original.PixelData


def test_orthanc_rejects_an_unknown_called_ae_title(orthanc_factory) -> None:
    orthanc = orthanc_factory(extra_config={"DicomCheckCalledAet": True})
    with pytest.raises(AssociationFailed) as raised:
        echo(host=LOCALHOST, port=orthanc.dicom_port, called_ae="NOTORTHANC", calling_ae=PACS_AE, timeout=5)
    assert raised.value.permanent
    assert "Called AE title not recognised" in raised.value.reason
