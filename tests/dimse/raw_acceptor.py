"""A scripted association acceptor on a bare socket, for protocol tests of the SCU.

The PDUs are decoded and encoded with pynetdicom's own PDU and DIMSE message
classes, an implementation independent of :mod:`dimse.upper_layer` and
:mod:`dimse.commands`, so a test that passes shows both read PS3.7/PS3.8 alike.
Every PDU the SCU sends is recorded as ``(type, whole PDU bytes)``.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Sequence
from io import BytesIO

from dimse_helpers import LOCALHOST
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pynetdicom.dimse_messages import C_ECHO_RSP, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import A_ASSOCIATE, ImplementationClassUIDNotification, MaximumLengthNotification
from pynetdicom.presentation import PresentationContext

RELEASE_RQ = bytes((0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0))
RELEASE_RP = bytes((0x06, 0, 0, 0, 0, 4, 0, 0, 0, 0))
ABORT = bytes((0x07, 0, 0, 0, 0, 4, 0, 0, 2, 0))


class Peer:
    """The accepted connection, as the script sees it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.received: list[tuple[int, bytes]] = []
        self.request: A_ASSOCIATE_RQ | None = None

    def _exactly(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                raise ConnectionError("the SCU closed the connection")
            data += chunk
        return data

    def read_pdu(self) -> tuple[int, bytes]:
        header = self._exactly(6)
        pdu = header + self._exactly(struct.unpack(">L", header[2:])[0])
        self.received.append((pdu[0], pdu))
        return pdu[0], pdu

    def read_request(self) -> A_ASSOCIATE_RQ:
        """Read the A-ASSOCIATE-RQ and decode it with pynetdicom."""
        pdu_type, pdu = self.read_pdu()
        assert pdu_type == 0x01, f"PDU type 0x{pdu_type:02X} instead of A-ASSOCIATE-RQ"
        self.request = A_ASSOCIATE_RQ()
        self.request.decode(pdu)
        return self.request

    def accept(self, results: Sequence[tuple[int, int, str]], max_pdu: int) -> None:
        """Send an A-ASSOCIATE-AC with ``(context ID, result, transfer syntax)`` results."""
        assert self.request is not None
        requested = self.request.to_primitive()
        primitive = A_ASSOCIATE()
        primitive.application_context_name = "1.2.840.10008.3.1.1.1"
        primitive.calling_ae_title = requested.calling_ae_title
        primitive.called_ae_title = requested.called_ae_title
        primitive.result = 0
        contexts = []
        for context_id, result, syntax in results:
            context = PresentationContext()
            context.context_id, context.result, context.transfer_syntax = context_id, result, [syntax]
            contexts.append(context)
        primitive.presentation_context_definition_results_list = contexts
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = max_pdu
        class_uid = ImplementationClassUIDNotification()
        class_uid.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.99"
        primitive.user_information = [max_length, class_uid]
        pdu = A_ASSOCIATE_AC()
        pdu.from_primitive(primitive)
        self.sock.sendall(pdu.encode())

    def accept_all(self, max_pdu: int = 16384) -> None:
        """Accept every proposed context with its first transfer syntax."""
        assert self.request is not None
        self.accept(
            [
                (c.context_id, 0, c.transfer_syntax[0])
                for c in self.request.to_primitive().presentation_context_definition_list
            ],
            max_pdu,
        )

    def read_message(self) -> tuple[int, Dataset, bytes]:
        """Read P-DATA-TF PDUs until a whole DIMSE message: (context ID, command set, data set bytes)."""
        command, data = b"", b""
        command_done = has_data = False
        context_id = 0
        while True:
            pdu_type, raw = self.read_pdu()
            assert pdu_type == 0x04, f"PDU type 0x{pdu_type:02X} inside a DIMSE message"
            pdu = P_DATA_TF()
            pdu.decode(raw)
            for context_id, value in pdu.to_primitive().presentation_data_value_list:
                control, fragment = value[0], value[1:]
                if control & 0x01:
                    command += fragment
                    if control & 0x02:
                        command_done = True
                        dataset = read_dataset(DicomBytesIO(command), is_implicit_VR=True, is_little_endian=True)
                        has_data = dataset.CommandDataSetType != 0x0101
                        if not has_data:
                            return context_id, dataset, b""
                else:
                    data += fragment
                    if control & 0x02:
                        assert command_done and has_data
                        return context_id, dataset, data

    def respond(
        self, context_id: int, request: Dataset, status: int, *, message_id: int | None = None, max_pdu: int = 16384
    ) -> None:
        """Answer a C-STORE-RQ or C-ECHO-RQ, encoded by pynetdicom."""
        primitive = C_STORE() if request.CommandField == 0x0001 else C_ECHO()
        primitive.MessageIDBeingRespondedTo = request.MessageID if message_id is None else message_id
        primitive.Status = status
        primitive.AffectedSOPClassUID = request.AffectedSOPClassUID
        if request.CommandField == 0x0001:
            primitive.AffectedSOPInstanceUID = request.AffectedSOPInstanceUID
        message = C_STORE_RSP() if request.CommandField == 0x0001 else C_ECHO_RSP()
        message.primitive_to_message(primitive)
        for p_data in message.encode_msg(context_id, max_pdu):
            pdu = P_DATA_TF()
            pdu.from_primitive(p_data)
            self.sock.sendall(pdu.encode())

    def release(self) -> None:
        """Expect A-RELEASE-RQ and answer A-RELEASE-RP."""
        pdu_type, _ = self.read_pdu()
        assert pdu_type == 0x05, f"PDU type 0x{pdu_type:02X} instead of A-RELEASE-RQ"
        self.sock.sendall(RELEASE_RP)

    def release_collision(self) -> None:
        """Expect A-RELEASE-RQ, send our own A-RELEASE-RQ as if it had crossed it (PS3.8 9.2.4).

        As the acceptor (Sta10): wait for the requestor's A-RELEASE-RP (AR-10, Sta12), then answer
        A-RELEASE-RP (AR-4, Sta13).
        """
        pdu_type, _ = self.read_pdu()
        assert pdu_type == 0x05, f"PDU type 0x{pdu_type:02X} instead of A-RELEASE-RQ"
        self.sock.sendall(RELEASE_RQ)
        pdu_type, _ = self.read_pdu()
        assert pdu_type == 0x06, f"PDU type 0x{pdu_type:02X} instead of A-RELEASE-RP after a release collision"
        self.sock.sendall(RELEASE_RP)

    def read_until_closed(self) -> list[int]:
        """Types of the PDUs that arrive until the SCU closes the connection."""
        types = []
        try:
            while True:
                types.append(self.read_pdu()[0])
        except (ConnectionError, OSError):
            return types


class RawAcceptor:
    """Listen on a free loopback port; run ``script`` on the first connection, in a thread.

    Use as a context manager; leaving it re-raises the script's failure, if any.
    """

    def __init__(self, script: Callable[[Peer], None]) -> None:
        self.listener = socket.create_server((LOCALHOST, 0))
        self.port = int(self.listener.getsockname()[1])
        self.script = script
        self.peer: Peer | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            sock, _ = self.listener.accept()
            with sock:
                sock.settimeout(10)
                self.peer = Peer(sock)
                self.script(self.peer)
        except BaseException as exc:  # handed to the test in __exit__
            self.error = exc

    def __enter__(self) -> RawAcceptor:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.thread.join(15)
        self.listener.close()
        assert not self.thread.is_alive(), "the acceptor script did not finish"
        if self.error is not None:
            raise self.error


def data_set_bytes(path: str | BytesIO) -> bytes:
    """A Part 10 file's bytes after its File Meta Information, found by pydicom."""
    from pydicom.filereader import _read_file_meta_info, read_preamble  # pydicom's own parser

    with open(path, "rb") if isinstance(path, str) else path as fp:
        read_preamble(fp, False)
        _read_file_meta_info(fp)
        return fp.read()
