"""A bare-socket association requestor for protocol tests of the SCP.

The PDUs are encoded and decoded with pynetdicom's own PDU classes, an
implementation independent of :mod:`dimse.upper_layer`, so a test that passes
shows both sides read PS3.8 the same way.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence

from dimse_helpers import LOCALHOST, NODE_AE, PACS_AE
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext

_PDU_TYPES = {0x02: A_ASSOCIATE_AC, 0x03: A_ASSOCIATE_RJ, 0x07: A_ABORT_RQ}


def associate_rq(
    contexts: Sequence[tuple[int, str, Sequence[str]]],
    *,
    calling: str = PACS_AE,
    called: str = NODE_AE,
    max_pdu: int = 16384,
    async_ops: tuple[int, int] | None = None,
    roles: Sequence[tuple[str, bool, bool]] = (),
) -> bytes:
    """Encode an A-ASSOCIATE-RQ with ``(context ID, abstract syntax, transfer syntaxes)`` contexts."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    proposed = []
    for context_id, abstract, transfers in contexts:
        context = PresentationContext()
        context.context_id = context_id
        context.abstract_syntax = abstract
        context.transfer_syntax = list(transfers)
        proposed.append(context)
    primitive.presentation_context_definition_list = proposed
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = max_pdu
    class_uid = ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.99"
    user: list[object] = [max_length, class_uid]
    if async_ops is not None:
        window = AsynchronousOperationsWindowNegotiation()
        window.maximum_number_operations_invoked, window.maximum_number_operations_performed = async_ops
        user.append(window)
    for sop_class, scu, scp in roles:
        role = SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid = sop_class
        role.scu_role, role.scp_role = scu, scp
        user.append(role)
    primitive.user_information = user
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def p_data(context_id: int, fragment: bytes, *, command: bool, last: bool) -> bytes:
    """One P-DATA-TF PDU holding one PDV (PS3.8 9.3.5, E.2)."""
    control = (0x01 if command else 0) | (0x02 if last else 0)
    pdv = struct.pack(">LBB", len(fragment) + 2, context_id, control) + fragment
    return struct.pack(">BxL", 0x04, len(pdv)) + pdv


class RawPeer:
    """A TCP connection to the SCP that sends and reads raw PDUs."""

    def __init__(self, port: int, timeout: float = 5, source: str | None = None) -> None:
        # source: connect from another loopback address (127.0.0.2...), as another host would
        self.sock = socket.create_connection(
            (LOCALHOST, port), timeout=timeout, source_address=(source, 0) if source else None
        )

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _exactly(self, count: int) -> bytes:
        chunks = []
        while count:
            chunk = self.sock.recv(count)
            if not chunk:
                raise ConnectionError("the SCP closed the connection")
            chunks.append(chunk)
            count -= len(chunk)
        return b"".join(chunks)

    def read_pdu(self) -> tuple[int, bytes]:
        """The next PDU: its type and its whole encoding (header included)."""
        header = self._exactly(6)
        pdu_type, length = struct.unpack(">BxL", header)
        return pdu_type, header + self._exactly(length)

    def read_decoded(self) -> object:
        """The next PDU decoded by pynetdicom (A-ASSOCIATE-AC/RJ or A-ABORT)."""
        pdu_type, raw = self.read_pdu()
        pdu = _PDU_TYPES[pdu_type]()
        pdu.decode(raw)
        return pdu

    def is_closed(self) -> bool:
        """True once the SCP closed the connection (EOF), waiting up to the socket timeout."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()
