"""The SCP against slow and hostile peers (issue 16): deadlines, caps, rejections and bounded memory.

Bad connections come from other loopback addresses (127.0.0.2, 127.0.0.3...: Linux
routes all of 127/8 to lo), the good peer from 127.0.0.1, as different hosts would.
Timers are short so that every case runs in seconds.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from dimse_helpers import LOCALHOST, NODE_AE, PACS_AE, DirectorySink, run_dcmtk
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ
from pynetdicom.sop_class import Verification
from raw_peer import RawPeer, associate_rq

from core import status
from dimse import StoreRequest, echo
from dimse.commands import decode_response, encode_c_store_rq

MiB = 1 << 20
#: The suite's limits: short deadlines, small caps.
LIMITS = {
    "association_request_timeout": 2.0,
    "acse_timeout": 2.0,
    "max_negotiating": 12,
    "max_negotiating_per_address": 4,
}
#: A-ASSOCIATE-RJ rejected-transient, service-provider (presentation), local-limit-exceeded (PS3.8 Table 9-21).
LOCAL_LIMIT = (2, 3, 2)
ECHO_RQ_BYTES = associate_rq([(1, str(Verification), [ExplicitVRLittleEndian])])


def rj_fields(pdu: object) -> tuple[int, int, int]:
    assert isinstance(pdu, A_ASSOCIATE_RJ), f"expected an A-ASSOCIATE-RJ, got {pdu!r}"
    return pdu.result, pdu.source, pdu.reason_diagnostic


def good_echo(port: int) -> float:
    """C-ECHO from 127.0.0.1 on a new association; its duration in seconds (it must succeed)."""
    started = time.monotonic()
    assert echo(host=LOCALHOST, port=port, called_ae=NODE_AE, calling_ae=PACS_AE, timeout=5) == status.SUCCESS
    return time.monotonic() - started


class Tricklers:
    """Connections that send ``payload`` one byte each ``interval`` seconds, from a background thread."""

    def __init__(self, port: int, sources: list[str], payload: bytes = ECHO_RQ_BYTES, interval: float = 0.3) -> None:
        self.socks = [socket.create_connection((LOCALHOST, port), source_address=(s, 0)) for s in sources]
        self.payload, self.interval = payload, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for byte in self.payload:
            for sock in self.socks:
                with contextlib.suppress(OSError):  # closed by the SCP
                    sock.send(bytes((byte,)))
            if self._stop.wait(self.interval):
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in self.socks:
            sock.close()


@pytest.fixture
def tricklers() -> Iterator[list[Tricklers]]:
    made: list[Tricklers] = []
    yield made
    for group in made:
        group.close()


def addresses(hosts: int, per_host: int, first: int = 2) -> list[str]:
    return [f"127.0.0.{first + h}" for h in range(hosts) for _ in range(per_host)]


def test_trickling_connections_never_lock_out_a_good_peers_echo(start_scp, tmp_path: Path, tricklers) -> None:
    """Issue 16 hole 1: 130 connections trickling into A-ASSOCIATE-RQ locked C-ECHO out. Now: never."""
    scp = start_scp(DirectorySink(tmp_path), max_associations=4, **LIMITS)
    ae = AE(ae_title=PACS_AE)
    ae.add_requested_context(Verification)
    established = ae.associate(LOCALHOST, scp.port, ae_title=NODE_AE)  # before the flood: must stay usable
    assert established.is_established

    tricklers.append(Tricklers(scp.port, addresses(13, 10)))  # 130 connections from 13 hosts
    durations = []
    until = time.monotonic() + 3  # the whole trickle outlives the 2 s request deadline
    while time.monotonic() < until:
        durations.append(good_echo(scp.port))
        assert established.send_c_echo().Status == status.SUCCESS
        time.sleep(0.2)

    assert len(durations) >= 5 and max(durations) < 1.5, durations
    established.release()


def test_a_newcomer_takes_the_place_of_a_connection_negotiating_too_long(start_scp, tmp_path: Path) -> None:
    """At the per-address cap, a connection idle past the eviction age gets the RJ, not the newcomer."""
    scp = start_scp(DirectorySink(tmp_path), **{**LIMITS, "association_request_timeout": 5.0})
    idle = [RawPeer(scp.port, source="127.0.0.2") for _ in range(4)]
    time.sleep(1.2)

    ae = AE(ae_title=PACS_AE)
    ae.add_requested_context(Verification)
    assoc = ae.associate(LOCALHOST, scp.port, ae_title=NODE_AE, bind_address=("127.0.0.2", 0))

    assert assoc.is_established and assoc.send_c_echo().Status == status.SUCCESS
    assoc.release()
    assert rj_fields(idle[0].read_decoded()) == LOCAL_LIMIT  # the oldest gave its place
    for peer in idle:
        peer.close()


@pytest.mark.parametrize(
    ("limits", "sources"),
    [
        ({"max_negotiating_per_address": 2}, ["127.0.0.2"] * 3),
        # at the total cap, a newcomer whose address holds as many as any other
        ({"max_negotiating": 3}, ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.2"]),
    ],
    ids=["per-address", "total"],
)
def test_a_connection_over_a_negotiating_cap_gets_a_transient_rejection(
    start_scp, tmp_path: Path, limits: dict[str, int], sources: list[str]
) -> None:
    """PS3.8 9.3.4: rejected-transient, local-limit-exceeded -- an answer, never a TCP reset."""
    scp = start_scp(DirectorySink(tmp_path), **{**LIMITS, **limits})
    peers = [RawPeer(scp.port, source=source) for source in sources]

    assert rj_fields(peers[-1].read_decoded()) == LOCAL_LIMIT
    assert good_echo(scp.port) < 1.5  # 127.0.0.1 holds fewer than the others: it takes one's place
    for peer in peers:
        peer.close()


def test_at_the_total_cap_the_busiest_address_gives_a_place_to_another(start_scp, tmp_path: Path) -> None:
    """Fair share: however many addresses a flood uses, one holding fewer connections is never kept out."""
    scp = start_scp(DirectorySink(tmp_path), **{**LIMITS, "max_negotiating": 3})
    busy = [RawPeer(scp.port, source="127.0.0.2") for _ in range(3)]
    time.sleep(0.1)
    newcomer = RawPeer(scp.port, source="127.0.0.3")

    assert rj_fields(busy[0].read_decoded()) == LOCAL_LIMIT  # at once, not after the eviction age
    newcomer.send(ECHO_RQ_BYTES)
    assert isinstance(newcomer.read_decoded(), A_ASSOCIATE_AC)
    for peer in [*busy, newcomer]:
        peer.close()


def test_idle_associations_past_max_associations_get_a_transient_rejection(start_scp, tmp_path: Path) -> None:
    """Issue 16: past the association limit a reset came instead of A-ASSOCIATE-RJ (transient, local limit)."""
    scp = start_scp(DirectorySink(tmp_path), max_associations=2, **LIMITS)
    idle = [RawPeer(scp.port) for _ in range(2)]
    for peer in idle:
        peer.send(ECHO_RQ_BYTES)
        assert isinstance(peer.read_decoded(), A_ASSOCIATE_AC)

    third = RawPeer(scp.port)
    third.send(ECHO_RQ_BYTES)
    assert rj_fields(third.read_decoded()) == LOCAL_LIMIT
    third.close()

    idle[0].send(bytes.fromhex("05000000000400000000"))  # A-RELEASE-RQ: a slot comes free
    assert idle[0].read_pdu()[0] == 0x06
    idle[0].close()
    assert good_echo(scp.port) < 1.5
    idle[1].close()


@pytest.mark.parametrize("payload", [b"", ECHO_RQ_BYTES], ids=["silent", "trickling"])
def test_the_request_deadline_is_not_extended_by_trickled_bytes(start_scp, tmp_path: Path, payload: bytes) -> None:
    """Issue 16: the association timer reset on every read. Now the whole A-ASSOCIATE-RQ has 1 s."""
    scp = start_scp(DirectorySink(tmp_path), **{**LIMITS, "association_request_timeout": 1.0})
    sock = socket.create_connection((LOCALHOST, scp.port), source_address=("127.0.0.2", 0))
    started = time.monotonic()
    closed_after = None
    for byte in payload[:40] or bytes(40):
        if payload:
            sock.send(bytes((byte,)))
        sock.settimeout(0.1)
        try:
            if sock.recv(1) == b"":
                closed_after = time.monotonic() - started
                break
        except TimeoutError:
            continue
    sock.close()

    assert closed_after is not None and 0.9 < closed_after < 2.0, closed_after


def test_the_request_deadline_includes_the_tls_handshake(
    start_scp, tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    """Issue 16: the timers also reset during the TLS handshake. A ClientHello trickled in is cut at 1 s."""
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    scp = start_scp(
        DirectorySink(tmp_path), ssl_context=server_context, **{**LIMITS, "association_request_timeout": 1.0}
    )
    # a real ClientHello, sent a byte at a time
    client = ssl.create_default_context(cafile=str(cert)).wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO())
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    hello = outgoing.read()
    sock = socket.create_connection((LOCALHOST, scp.port))
    started = time.monotonic()
    closed_after = None
    for byte in hello:
        sock.send(bytes((byte,)))
        sock.settimeout(0.1)
        try:
            if sock.recv(1) == b"":
                closed_after = time.monotonic() - started
                break
        except TimeoutError:
            continue
    sock.close()

    assert closed_after is not None and 0.9 < closed_after < 2.0, closed_after
    context = ssl.create_default_context(cafile=str(cert))
    assert echo(host=LOCALHOST, port=scp.port, called_ae=NODE_AE, calling_ae=PACS_AE, ssl_context=context) == 0


def test_unassociated_p_data_headers_are_aborted_unread_and_cost_no_memory(start_scp, tmp_path: Path) -> None:
    """Issue 16 hole 2: 64 P-DATA headers declaring 16 MiB took RSS from 656 to 1,543 MB; 2^32-1 took 4.5 GB."""
    scp = start_scp(DirectorySink(tmp_path), max_negotiating=80, max_negotiating_per_address=80)
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        peers = [RawPeer(scp.port) for _ in range(64)]
        for peer in peers:
            peer.send(struct.pack(">BxL", 0x04, 16 * MiB))  # P-DATA-TF before any association
        huge = RawPeer(scp.port)
        huge.send(struct.pack(">BxL", 0x04, 2**32 - 1))
        answers = [peer.read_decoded() for peer in [*peers, huge]]
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()

    # A-ABORT, service provider, unexpected PDU (PS3.8 Table 9-26): on the header, no body awaited
    assert {(type(a), a.source, a.reason_diagnostic) for a in answers} == {(A_ABORT_RQ, 2, 2)}
    assert peak < 4 * MiB, f"{peak / MiB:.1f} MiB allocated"
    assert good_echo(scp.port) < 1.5
    for peer in [*peers, huge]:
        peer.close()


def big_multiframe(path: Path, frames: int) -> int:
    """A 1024x1024 16-bit multi-frame file of ``frames`` frames written without holding it in memory; its size."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7.2"  # Multi-frame Grayscale Word Secondary Capture
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "OT"
    ds.Rows = ds.Columns = 1024
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel = 15, 0, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = frames
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    length = 1024 * 1024 * 2 * frames
    with path.open("ab") as file:
        file.write(struct.pack("<HH2sxxL", 0x7FE0, 0x0010, b"OW", length))
        chunk = bytes(MiB)
        for _ in range(length // MiB):
            file.write(chunk)
    return path.stat().st_size


def test_a_data_set_of_hundreds_of_mib_streams_through_bounded_memory(start_scp, tmp_path: Path) -> None:
    """Issue 16 hole 2: 320 MiB of fragments grew RSS by 270 MB. Now a data set goes to its file as it comes."""
    size = big_multiframe(tmp_path / "big.dcm", frames=160)  # 320 MiB of pixels
    received: list[tuple[int, int]] = []

    def sink(request: StoreRequest) -> int:
        received.append((request.size, request.path.stat().st_size))
        return status.SUCCESS

    scp = start_scp(sink)
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        started = time.monotonic()
        result = run_dcmtk(
            "storescu",
            "-aet",
            PACS_AE,
            "-aec",
            NODE_AE,
            LOCALHOST,
            str(scp.port),
            str(tmp_path / "big.dcm"),
            timeout=120,
        )
        seconds = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()

    assert result.returncode == 0, result.stderr
    ((request_size, file_size),) = received
    assert request_size == file_size and abs(file_size - size) < 1024  # our meta instead of pydicom's
    print(f"{size / MiB:.0f} MiB received in {seconds:.1f} s; SCP's Python allocations peaked at {peak / MiB:.1f} MiB")
    assert peak < 8 * MiB, f"{peak / MiB:.1f} MiB allocated while receiving {size / MiB:.0f} MiB"


def test_a_p_data_as_long_as_the_largest_max_pdu_is_read_in_pieces(start_scp, tmp_path: Path) -> None:
    """With max_pdu 2^32-1 one P-DATA-TF may be gigabytes: its PDVs go to the file in pieces, never whole."""
    sizes: list[tuple[int, int]] = []

    def sink(request: StoreRequest) -> int:
        sizes.append((request.size, request.path.stat().st_size))
        return status.SUCCESS

    scp = start_scp(sink, max_pdu=2**32 - 1)
    peer = RawPeer(scp.port)
    peer.send(associate_rq([(1, "1.2.840.10008.5.1.4.1.1.7", [ExplicitVRLittleEndian])]))
    assert isinstance(peer.read_decoded(), A_ASSOCIATE_AC)
    command = encode_c_store_rq(1, "1.2.840.10008.5.1.4.1.1.7", "1.2.3.4")
    peer.send(struct.pack(">BxLLBB", 0x04, len(command) + 6, len(command) + 2, 1, 0x03) + command)
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        # one PDU, one PDV: 64 MiB of data set
        peer.send(struct.pack(">BxLLBB", 0x04, 64 * MiB + 6, 64 * MiB + 2, 1, 0x02))
        chunk = bytes(MiB)
        for _ in range(64):
            peer.send(chunk)
        pdu_type, raw = peer.read_pdu()
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()

    assert pdu_type == 0x04 and decode_response(raw[12:]).status == status.SUCCESS
    ((size, on_disk),) = sizes
    assert size == on_disk and 0 < size - 64 * MiB < 512  # the data set and our File Meta
    assert peak < 4 * MiB, f"{peak / MiB:.1f} MiB allocated for a 64 MiB PDU"
    peer.close()
