"""An Association driven by a hand-made Server: the interface it has with the SCP is all it uses.

The association starts with its A-ASSOCIATE-RQ already read and admitted (by the negotiator).
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from dimse_helpers import LOCALHOST
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from raw_peer import RawPeer, associate_rq, p_data

from core import status
from dimse._association import Association, Server
from dimse._incoming import IncomingDataSet
from dimse.commands import VERIFICATION_SOP_CLASS, Command, decode_response, encode_c_echo_rq, encode_c_store_rq
from dimse.scp import SUPPORTED_CONTEXTS
from dimse.upper_layer import PresentationContext, parse_associate_rq

CT = str(CTImageStorage)
VERIFICATION = VERIFICATION_SOP_CLASS


@dataclass
class Recorder:
    """The calls of the association, and the answers a test chose."""

    store_status: int = status.SUCCESS
    calls: list[tuple[object, ...]] = field(default_factory=list)
    stored: list[bytes] = field(default_factory=list)
    closed: threading.Event = field(default_factory=threading.Event)
    incoming_dir: Path = Path()  # set by the connect fixture
    network_timeout: float = 5

    def server(self) -> Server:
        return Server(
            max_pdu=16384,
            acse_timeout=5,
            network_timeout=self.network_timeout,
            dimse_timeout=5,
            supported_contexts=SUPPORTED_CONTEXTS,
            implementation_class_uid="1.2.3.4",
            implementation_version_name="TEST_1",
            leave=lambda: self.calls.append(("leave",)),
            report=lambda kind, association, reason: self.calls.append(
                ("report", kind, association.calling_ae, reason)
            ),
            begin_store=self.begin_store,
            store=self.store,
            closed=self.on_closed,
        )

    def begin_store(self, association: Association, context: PresentationContext, command: Command) -> IncomingDataSet:
        self.calls.append(("begin_store", context.context_id, command.affected_sop_instance_uid))
        return IncomingDataSet(self.incoming_dir, b"", max_size=1 << 20)

    def store(
        self, association: Association, context: PresentationContext, command: Command, incoming: IncomingDataSet
    ) -> int:
        uid = command.affected_sop_instance_uid
        self.calls.append(("store", association.calling_ae, context.transfer_syntax, uid))
        path = incoming.finish()
        assert path is not None
        self.stored.append(path.read_bytes())
        path.unlink()
        return self.store_status

    def on_closed(self, association: Association) -> None:
        self.calls.append(("closed", association.calling_ae))
        self.closed.set()


@pytest.fixture
def connect(tmp_path: Path) -> Iterator[object]:
    """Connect a RawPeer, send its A-ASSOCIATE-RQ and serve it with an Association for ``recorder``."""
    listener = socket.create_server((LOCALHOST, 0))
    peers: list[RawPeer] = []

    def start(recorder: Recorder, rq: bytes) -> RawPeer:
        recorder.incoming_dir = tmp_path
        peer = RawPeer(listener.getsockname()[1])
        peers.append(peer)
        sock, address = listener.accept()
        peer.send(rq)
        request = parse_associate_rq(bytearray(rq[6:]))
        sock.recv(len(rq), socket.MSG_WAITALL)  # what the negotiator would have read
        Association(recorder.server(), sock, address, request).thread.start()
        return peer

    yield start
    for peer in peers:
        peer.close()
    listener.close()


def test_an_admitted_association_stores_through_the_server_and_leaves_once(connect) -> None:
    recorder = Recorder(store_status=0xB000)
    peer = connect(recorder, associate_rq([(1, CT, [ExplicitVRLittleEndian])]))
    accept = peer.read_decoded()
    assert accept.user_information.implementation_class_uid == "1.2.3.4"

    data_set = b"\x08\x00\x16\x00UI\x04\x001.2\x00" * 3
    peer.send(p_data(1, encode_c_store_rq(7, CT, "1.2.9"), command=True, last=True))
    peer.send(p_data(1, data_set[:10], command=False, last=False) + p_data(1, data_set[10:], command=False, last=True))
    pdu_type, raw = peer.read_pdu()
    assert pdu_type == 0x04
    response = decode_response(raw[12:])  # PDU header (6) and PDV header (6), one PDV
    assert (response.message_id_being_responded_to, response.status) == (7, 0xB000)

    peer.send(bytes.fromhex("05000000000400000000"))  # A-RELEASE-RQ
    assert peer.read_pdu()[0] == 0x06  # A-RELEASE-RP
    peer.close()
    assert recorder.closed.wait(5)
    assert recorder.stored == [data_set]
    assert recorder.calls == [
        ("report", "accepted", "PACS", None),
        ("begin_store", 1, "1.2.9"),
        ("store", "PACS", ExplicitVRLittleEndian, "1.2.9"),
        ("leave",),
        ("report", "released", "PACS", None),
        ("closed", "PACS"),
    ]


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (bytes.fromhex("01 00 01000000"), 0x02),  # A-ASSOCIATE-RQ in Sta6: unexpected PDU, 16 MiB never read
        (bytes.fromhex("02 00 01000000"), 0x02),  # A-ASSOCIATE-AC sent to the acceptor
        (bytes.fromhex("0A 00 FFFFFFFF"), 0x01),  # no such PDU type: unrecognised, 4 GiB never read
        (bytes.fromhex("04 00 00004001"), 0x06),  # P-DATA-TF one byte over the 16 KiB we advertised
    ],
    ids=["associate-rq", "associate-ac", "unknown-type", "p-data-over-max-pdu"],
)
def test_a_pdu_out_of_place_or_too_long_aborts_on_its_header(connect, header: bytes, reason: int) -> None:
    """PS3.8 9.2 Table 9-10: the header decides; the body the length announces is never waited for."""
    recorder = Recorder()
    peer = connect(recorder, associate_rq([(1, CT, [ExplicitVRLittleEndian])]))
    peer.read_decoded()  # A-ASSOCIATE-AC

    peer.send(header)  # no body follows: an abort that waited for it would come after the 5 s timeout
    abort = peer.read_decoded()

    assert (abort.source, abort.reason_diagnostic) == (0x02, reason)
    peer.close()
    assert recorder.closed.wait(5)
    assert ("report", "aborted", "PACS", recorder.calls[-2][3]) == recorder.calls[-2]


def test_a_trickled_pdu_meets_its_deadline_though_every_read_brings_a_byte(connect) -> None:
    """The network timeout bounds the whole PDU, not each read (issue 16: timers reset on every read)."""
    recorder = Recorder(network_timeout=1.0)
    peer = connect(recorder, associate_rq([(1, VERIFICATION, [ExplicitVRLittleEndian])]))
    peer.read_decoded()  # A-ASSOCIATE-AC
    echo = p_data(1, encode_c_echo_rq(1), command=True, last=True)
    started = time.monotonic()
    for byte in echo:  # ~90 bytes, one each 0.2 s: 18 s if each read restarted the timer
        peer.send(bytes((byte,)))
        if select.select([peer.sock], [], [], 0.2)[0]:
            break
    abort = peer.read_decoded()
    assert (abort.pdu_type, abort.source) == (0x07, 0x02)  # A-ABORT, service provider
    assert 0.9 < time.monotonic() - started < 2.5
