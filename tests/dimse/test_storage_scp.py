"""StorageSCP against real peers on loopback: DCMTK storescu/echoscu and pynetdicom."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
from dimse_helpers import LOCALHOST, NODE_AE, PACS_AE, DirectorySink, pydicom_file, run_dcmtk
from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage, Verification

from core import status
from dimse import AllowedPeer, AssociationEvent, StoreRequest, echo, scu


def storescu(port: int, path: Path, *, calling: str = PACS_AE, called: str = NODE_AE, extra: tuple[str, ...] = ()):
    """Send one file with DCMTK storescu; its log (``-v``) is in ``stderr``."""
    return run_dcmtk("storescu", "-v", "-aet", calling, "-aec", called, *extra, LOCALHOST, str(port), str(path))


def without_padding(dataset: Dataset) -> Dataset:
    """DCMTK drops the trailing padding element (FFFC,FFFC) some pydicom test files carry."""
    if 0xFFFCFFFC in dataset:
        del dataset[0xFFFCFFFC]
    return dataset


def associate(
    port: int, *, calling: str = PACS_AE, called: str = NODE_AE, bind_address: tuple[str, int] = (LOCALHOST, 0)
) -> Association:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    return ae.associate(LOCALHOST, port, ae_title=called, bind_address=bind_address)


def rejection(assoc: Association) -> tuple[int, int, int]:
    """(result, source, diagnostic) of an A-ASSOCIATE-RJ as the requestor received it."""
    assert assoc.is_rejected, "the association was not rejected"
    rj = assoc.acceptor.primitive
    return rj.result, rj.result_source, rj.diagnostic


# -- receiving with DCMTK storescu ------------------------------------------------------


def test_storescu_uncompressed_file_is_received_byte_for_byte(start_scp, tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path)
    scp = start_scp(sink)
    original = pydicom_file("CT_small.dcm")

    result = storescu(scp.port, original)

    assert result.returncode == 0, result.stderr
    assert len(sink.requests) == 1
    request = sink.requests[0]
    sent = dcmread(original)
    assert request.calling_ae == PACS_AE
    assert request.peer_address == LOCALHOST
    assert request.sop_class_uid == sent.SOPClassUID
    assert request.sop_instance_uid == sent.SOPInstanceUID
    received = dcmread(tmp_path / f"{sent.SOPInstanceUID}.dcm")
    assert received.file_meta.TransferSyntaxUID == request.transfer_syntax_uid
    assert received.file_meta.MediaStorageSOPInstanceUID == sent.SOPInstanceUID
    assert received.file_meta.SourceApplicationEntityTitle == PACS_AE
    assert received == without_padding(sent)
    assert received.PixelData == sent.PixelData


@pytest.mark.parametrize(
    ("name", "propose"),
    [
        ("JPEG2000.dcm", "-xw"),  # JPEG 2000 (lossy)
        ("MR_small_RLE.dcm", "-xr"),  # RLE Lossless
        ("SC_rgb_jpeg_gdcm.dcm", "-xs"),  # JPEG Lossless SV1
        ("SC_rgb_dcmtk_+eb+cr.dcm", "-xy"),  # JPEG Baseline 8-bit
        ("JPEG-lossy.dcm", "-xx"),  # JPEG Extended 12-bit
    ],
)
def test_storescu_compressed_file_is_stored_not_transcoded(start_scp, tmp_path: Path, name: str, propose: str) -> None:
    sink = DirectorySink(tmp_path)
    scp = start_scp(sink)
    original = pydicom_file(name)
    sent = dcmread(original)

    # storescu proposes the compressed syntax first, then the uncompressed ones:
    # the SCP must pick the compressed one, so nobody decompresses
    result = storescu(scp.port, original, extra=(propose,))

    assert result.returncode == 0, result.stderr
    received = dcmread(tmp_path / f"{sent.SOPInstanceUID}.dcm")
    assert sink.requests[0].transfer_syntax_uid == sent.file_meta.TransferSyntaxUID
    assert received.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
    assert received.PixelData == sent.PixelData  # same compressed fragments
    assert received == without_padding(sent)


def test_echoscu_succeeds(start_scp, tmp_path: Path) -> None:
    scp = start_scp(DirectorySink(tmp_path))
    result = run_dcmtk("echoscu", "-v", "-aet", PACS_AE, "-aec", NODE_AE, LOCALHOST, str(scp.port))
    assert result.returncode == 0, result.stderr
    assert "Received Echo Response (Success)" in result.stderr


# -- access control ----------------------------------------------------------------------


def test_unknown_calling_ae_is_rejected_permanently(start_scp, tmp_path: Path) -> None:
    events: list[AssociationEvent] = []
    sink = DirectorySink(tmp_path)
    scp = start_scp(sink, events=events)

    result = storescu(scp.port, pydicom_file("CT_small.dcm"), calling="INTRUDER")

    assert result.returncode != 0
    assert "Rejected Permanent, Source: Service User" in result.stderr
    assert "Calling AE Title Not Recognized" in result.stderr
    assert sink.requests == []
    assert rejection(associate(scp.port, calling="INTRUDER")) == (0x01, 0x01, 0x03)
    assert events[0] == AssociationEvent("rejected", "INTRUDER", LOCALHOST, "calling-AE-title-not-recognised")


def test_wrong_called_ae_is_rejected(start_scp, tmp_path: Path) -> None:
    scp = start_scp(DirectorySink(tmp_path))

    result = run_dcmtk("echoscu", "-v", "-aet", PACS_AE, "-aec", "SOMEONEELSE", LOCALHOST, str(scp.port))

    assert result.returncode != 0
    assert "Called AE Title Not Recognized" in result.stderr
    assert rejection(associate(scp.port, called="SOMEONEELSE")) == (0x01, 0x01, 0x07)


def test_host_restriction(start_scp, tmp_path: Path) -> None:
    """127.0.0.2 is loopback on Linux too: bind the requestor there to be another host."""
    allowed = [AllowedPeer(PACS_AE, host="127.0.0.2"), AllowedPeer("ANYWHERE")]
    events: list[AssociationEvent] = []
    scp = start_scp(DirectorySink(tmp_path), allowed_peers=allowed, events=events)

    from_wrong_host = associate(scp.port, bind_address=(LOCALHOST, 0))
    assert rejection(from_wrong_host) == (0x01, 0x01, 0x03)
    assert events[-1].reason is not None and "address not allowed" in events[-1].reason

    from_right_host = associate(scp.port, bind_address=("127.0.0.2", 0))
    assert from_right_host.is_established
    from_right_host.release()

    anywhere = associate(scp.port, calling="ANYWHERE")
    assert anywhere.is_established
    anywhere.release()


def test_empty_allowed_peers_rejects_everybody(start_scp, tmp_path: Path) -> None:
    scp = start_scp(DirectorySink(tmp_path), allowed_peers=[])
    assert rejection(associate(scp.port)) == (0x01, 0x01, 0x03)


def test_association_events_are_reported(start_scp, tmp_path: Path) -> None:
    events: list[AssociationEvent] = []
    scp = start_scp(DirectorySink(tmp_path), events=events)

    released = associate(scp.port)
    released.release()
    aborted = associate(scp.port)
    aborted.abort()
    deadline = time.monotonic() + 5
    while len(events) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)

    assert [e.kind for e in events] == ["accepted", "released", "accepted", "aborted"]
    assert all(e.calling_ae == PACS_AE and e.peer_address == LOCALHOST for e in events)


def test_max_associations_rejects_transient_local_limit(start_scp, tmp_path: Path) -> None:
    scp = start_scp(DirectorySink(tmp_path), max_associations=1)

    first = associate(scp.port)
    assert first.is_established
    second = associate(scp.port)
    # rejected-transient, service-provider (presentation), local-limit-exceeded (PS3.8 9.3.4)
    assert rejection(second) == (0x02, 0x03, 0x02)
    first.release()
    third = associate(scp.port)
    assert third.is_established
    third.release()


# -- the sink's status goes back to the sender ------------------------------------------


def test_sink_status_reaches_the_sender(start_scp, tmp_path: Path) -> None:
    scp = start_scp(DirectorySink(tmp_path, result=status.OUT_OF_RESOURCES))

    assoc = associate(scp.port)
    response = assoc.send_c_store(dcmread(pydicom_file("CT_small.dcm")))
    assoc.release()

    assert response.Status == 0xA700


def test_failing_sink_answers_processing_failure_and_scp_keeps_serving(start_scp, tmp_path: Path) -> None:
    def broken_sink(request: StoreRequest) -> int:
        raise OSError("disk on fire")

    scp = start_scp(broken_sink)

    result = storescu(scp.port, pydicom_file("CT_small.dcm"))
    assoc = associate(scp.port)
    response = assoc.send_c_store(dcmread(pydicom_file("CT_small.dcm")))
    assoc.release()

    assert "Status: 0x110" in result.stderr
    assert response.Status == status.PROCESSING_FAILURE
    assert echo(host=LOCALHOST, port=scp.port, called_ae=NODE_AE, calling_ae=PACS_AE) == status.SUCCESS


# -- transport ------------------------------------------------------------------------------


def test_accepted_sockets_have_tcp_nodelay(start_scp, tmp_path: Path) -> None:
    scp = start_scp(DirectorySink(tmp_path))
    assoc = associate(scp.port)
    try:
        # the server side of the one open association (the SCP keeps one per connection)
        (acceptor,) = scp._associations
        assert acceptor.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        assoc.release()


def test_scu_sockets_have_tcp_nodelay(start_scp, tmp_path: Path) -> None:
    scp = start_scp(DirectorySink(tmp_path))
    requestor = scu._open(
        [(Verification, [ImplicitVRLittleEndian])],
        host=LOCALHOST,
        port=scp.port,
        called_ae=NODE_AE,
        calling_ae=PACS_AE,
        timeout=5,
        ssl_context=None,
    )
    with requestor:
        assert requestor.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_stop_waits_for_open_associations_then_aborts_them(start_scp, tmp_path: Path) -> None:
    events: list[AssociationEvent] = []
    scp = start_scp(DirectorySink(tmp_path), events=events)
    assoc = associate(scp.port)
    assert assoc.is_established

    started = time.monotonic()
    stopper = threading.Thread(target=scp.stop, kwargs={"timeout": 0.5})
    stopper.start()
    stopper.join(10)

    assert not stopper.is_alive()
    assert time.monotonic() - started >= 0.5
    assert [e.kind for e in events][-1] == "aborted"
    with pytest.raises(OSError):
        socket.create_connection((LOCALHOST, scp.port), timeout=1).close()


def test_max_pdu_is_advertised_and_large_instances_are_fragmented(start_scp, tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path)
    scp = start_scp(sink, max_pdu=4096)

    assoc = associate(scp.port)
    advertised = assoc.acceptor.maximum_length
    response = assoc.send_c_store(dcmread(pydicom_file("CT_small.dcm")))  # ~39 kB: 10+ P-DATA PDUs
    assoc.release()

    assert advertised == 4096
    assert response.Status == status.SUCCESS
    received = dcmread(tmp_path / f"{sink.requests[0].sop_instance_uid}.dcm")
    assert received.PixelData == dcmread(pydicom_file("CT_small.dcm")).PixelData
