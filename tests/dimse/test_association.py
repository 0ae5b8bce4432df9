"""An Association driven by a hand-made Server: the interface it has with the SCP is all it uses."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from dimse_helpers import LOCALHOST
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from raw_peer import RawPeer, associate_rq, p_data

from core import status
from dimse._association import Association, Rejection, Server
from dimse._incoming import IncomingDataSet
from dimse.commands import Command, decode_response, encode_c_store_rq
from dimse.scp import SUPPORTED_CONTEXTS
from dimse.upper_layer import AssociateRequest, PresentationContext

CT = str(CTImageStorage)


@dataclass
class Recorder:
    """The calls of the association, and the answers a test chose."""

    rejection: Rejection | None = None
    store_status: int = status.SUCCESS
    calls: list[tuple[object, ...]] = field(default_factory=list)
    stored: list[bytes] = field(default_factory=list)
    closed: threading.Event = field(default_factory=threading.Event)
    incoming_dir: Path = Path()  # set by the connect fixture

    def server(self) -> Server:
        return Server(
            max_pdu=16384,
            acse_timeout=5,
            network_timeout=5,
            dimse_timeout=5,
            supported_contexts=SUPPORTED_CONTEXTS,
            implementation_class_uid="1.2.3.4",
            implementation_version_name="TEST_1",
            admit=self.admit,
            leave=lambda: self.calls.append(("leave",)),
            report=lambda kind, association, reason: self.calls.append(
                ("report", kind, association.calling_ae, reason)
            ),
            begin_store=self.begin_store,
            store=self.store,
            closed=self.on_closed,
        )

    def admit(self, request: AssociateRequest, peer_address: str) -> Rejection | None:
        self.calls.append(("admit", request.calling_ae, peer_address))
        return self.rejection

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
    """Connect a RawPeer to an Association serving the accepted socket for ``recorder``."""
    listener = socket.create_server((LOCALHOST, 0))
    peers: list[RawPeer] = []

    def start(recorder: Recorder) -> RawPeer:
        recorder.incoming_dir = tmp_path
        peer = RawPeer(listener.getsockname()[1])
        peers.append(peer)
        sock, address = listener.accept()
        Association(recorder.server(), sock, address).thread.start()
        return peer

    yield start
    for peer in peers:
        peer.close()
    listener.close()


def test_a_rejection_from_admit_is_sent_and_reported(connect) -> None:
    recorder = Recorder(rejection=Rejection(0x01, 0x01, 0x03, "calling-AE-title-not-recognised"))
    peer = connect(recorder)
    peer.send(associate_rq([(1, CT, [ExplicitVRLittleEndian])], calling="STRANGER"))

    reject = peer.read_decoded()
    assert (reject.result, reject.source, reject.reason_diagnostic) == (0x01, 0x01, 0x03)
    peer.close()
    assert recorder.closed.wait(5)
    assert recorder.calls == [
        ("admit", "STRANGER", LOCALHOST),
        ("report", "rejected", "STRANGER", "calling-AE-title-not-recognised"),
        ("closed", "STRANGER"),
    ]


def test_an_admitted_association_stores_through_the_server_and_leaves_once(connect) -> None:
    recorder = Recorder(store_status=0xB000)
    peer = connect(recorder)
    peer.send(associate_rq([(1, CT, [ExplicitVRLittleEndian])]))
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
        ("admit", "PACS", LOCALHOST),
        ("report", "accepted", "PACS", None),
        ("begin_store", 1, "1.2.9"),
        ("store", "PACS", ExplicitVRLittleEndian, "1.2.9"),
        ("leave",),
        ("report", "released", "PACS", None),
        ("closed", "PACS"),
    ]
