"""The DICOM upper layer on a blocking socket (PS3.8 9), for both ends of an association.

Only what a Storage SCP and SCU need: read whole PDUs (the 6-byte header, then
exactly the body length, in large ``recv_into`` calls; no polling, no sleeps).
The header is judged before any of the body is read -- its type against those
the caller's state allows, its length against the limit for that type (the
maximum length we advertised for P-DATA-TF, 1 MiB for the others) -- and the
body buffer grows as bytes arrive, so a length field alone never allocates
memory; a caller's timeout can be a deadline for the whole PDU.
For the acceptor: parse an A-ASSOCIATE-RQ, negotiate presentation contexts
(PS3.8 9.3.2.2, 9.3.3.2 and PS3.7 Annex D.3.3), and encode A-ASSOCIATE-AC/RJ,
P-DATA-TF, A-RELEASE-RP and A-ABORT (PS3.8 9.3). For the requestor: encode an
A-ASSOCIATE-RQ and A-RELEASE-RQ, parse an A-ASSOCIATE-AC or -RJ.

P-DATA-TF bodies are split into PDVs as :class:`memoryview` slices of the
received buffer, so a data set is copied once, when its fragments are joined.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from dimse.errors import ConnectionClosed, ProtocolError

__all__ = [
    "DICOM_APPLICATION_CONTEXT",
    "AssociateAccept",
    "AssociateReject",
    "AssociateRequest",
    "ConnectionClosed",
    "PDUSocket",
    "PresentationContext",
    "ProtocolError",
    "encode_abort",
    "encode_associate_ac",
    "encode_associate_rj",
    "encode_associate_rq",
    "encode_p_data",
    "encode_p_data_headers",
    "encode_release_rp",
    "encode_release_rq",
    "iter_pdvs",
    "negotiate",
    "parse_associate_ac",
    "parse_associate_rj",
    "parse_associate_rq",
]

# PDU types (PS3.8 9.3.2 to 9.3.8).
A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07
KNOWN_PDU_TYPES = frozenset(range(0x01, 0x08))

#: The DICOM Application Context Name (PS3.7 Annex A.2.1).
DICOM_APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

# A-ABORT source and reason (PS3.8 Table 9-26).
ABORT_SOURCE_USER = 0x00
ABORT_SOURCE_PROVIDER = 0x02
ABORT_REASON_NOT_SPECIFIED = 0x00
ABORT_UNRECOGNIZED_PDU = 0x01
ABORT_UNEXPECTED_PDU = 0x02
ABORT_INVALID_PARAMETER = 0x06

# Presentation context results (PS3.8 Table 9-18).
CONTEXT_ACCEPTED = 0x00
CONTEXT_ABSTRACT_SYNTAX_NOT_SUPPORTED = 0x03
CONTEXT_TRANSFER_SYNTAXES_NOT_SUPPORTED = 0x04

_HEADER = struct.Struct(">BxL")  # PDU type, reserved, PDU length (PS3.8 9.3.1)
_ITEM = struct.Struct(">BxH")  # item type, reserved, item length
_PDV = struct.Struct(">LBB")  # PDV item length, presentation context ID, message control header
#: Bodies of non-P-DATA PDUs larger than this are refused: an A-ASSOCIATE-RQ
#: with 128 contexts of 13 transfer syntaxes each is ~60 kB.
_MAX_CONTROL_PDU = 1 << 20
#: A PDU body buffer starts at most this large and doubles as bytes arrive, up to the
#: PDU's length: never allocated from the length field alone.
_FIRST_BODY_CHUNK = 1 << 18


class PDUSocket:
    """Whole-PDU reads and writes on a connected, blocking socket (PS3.8 9.3.1).

    :meth:`read_pdu` reads one whole PDU; an acceptor that streams P-DATA-TF
    reads the header with :meth:`read_header`, then the body piece by piece
    with :meth:`read_into` (or whole with :meth:`read_body`), all under one
    deadline.

    Parameters
    ----------
    sock : socket.socket
        A connected socket (plain or TLS); its timeout bounds each read
        unless a deadline is given.
    max_data_pdu : int
        Largest P-DATA-TF body accepted; ``0`` means no limit (PS3.8 D.1).
    """

    def __init__(self, sock: socket.socket, max_data_pdu: int) -> None:
        self.sock = sock
        self.max_data_pdu = max_data_pdu
        #: Timeout of :meth:`send`, set on the socket before each send; ``None``: the socket's own.
        self.send_timeout: float | None = None
        self._header = bytearray(_HEADER.size)

    def read_into(self, view: memoryview, deadline: float | None) -> None:
        """Fill ``view`` from the socket, by ``deadline`` (``time.monotonic()``) when one is given.

        Raises
        ------
        ConnectionClosed
            The peer closed the connection first.
        TimeoutError
            The deadline (or, without one, the socket's timeout) passed.
        """
        wanted = len(view)
        received = 0
        recv_into = self.sock.recv_into
        try:
            while received < wanted:
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError("the PDU did not arrive in time")
                    self.sock.settimeout(remaining)
                count = recv_into(view[received:], wanted - received)
                if count == 0:
                    raise ConnectionClosed("the peer closed the connection")
                received += count
        except ssl.SSLZeroReturnError as exc:
            raise ConnectionClosed("the peer closed the TLS connection") from exc

    def read_header(self, allowed: Collection[int] | None, deadline: float | None) -> tuple[int, int]:
        """Read a PDU header and judge it before any of its body: its type and body length.

        Raises
        ------
        ProtocolError
            A type not in ``allowed`` (reason unexpected PDU, or unrecognised PDU
            for a type PS3.8 does not define), or a length over the limit for the
            type (``max_data_pdu`` for P-DATA-TF, 1 MiB for the others).
        ConnectionClosed, TimeoutError
            As :meth:`read_into`.
        """
        self.read_into(memoryview(self._header), deadline)
        pdu_type, length = _HEADER.unpack(self._header)
        if allowed is not None and pdu_type not in allowed:
            if pdu_type in KNOWN_PDU_TYPES:
                raise ProtocolError(f"unexpected PDU type 0x{pdu_type:02X}", ABORT_UNEXPECTED_PDU)
            raise ProtocolError(f"unrecognised PDU type 0x{pdu_type:02X}", ABORT_UNRECOGNIZED_PDU)
        limit = self.max_data_pdu if pdu_type == P_DATA_TF else _MAX_CONTROL_PDU
        if limit and length > limit:
            raise ProtocolError(f"PDU of type 0x{pdu_type:02X} is {length} bytes long, over {limit}")
        return int(pdu_type), int(length)

    def read_body(self, length: int, deadline: float | None) -> bytearray:
        """Read a body of ``length`` bytes into a buffer that grows as bytes arrive (from at most 256 KiB)."""
        body = bytearray(min(length, _FIRST_BODY_CHUNK))
        self.read_into(memoryview(body), deadline)
        while len(body) < length:
            start = len(body)
            body.extend(bytes(min(start, length - start)))
            self.read_into(memoryview(body)[start:], deadline)
        return body

    def read_pdu(self, allowed: Collection[int] | None = None, timeout: float | None = None) -> tuple[int, bytearray]:
        """Block until one whole PDU has arrived; return its type and body.

        The header is checked before any of the body is read (:meth:`read_header`);
        the body buffer then grows as bytes arrive, so a length field alone never
        allocates memory.

        Parameters
        ----------
        allowed : collection of int, optional
            The PDU types acceptable in the current state.
        timeout : float, optional
            Seconds for the whole PDU, header and body: a deadline that reads
            do not extend. ``None``: the socket's own timeout bounds each read.

        Raises
        ------
        ConnectionClosed
            The peer closed the connection (before or inside a PDU).
        ProtocolError
            As :meth:`read_header`.
        TimeoutError
            The deadline or the socket's timeout expired.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        previous = self.sock.gettimeout()
        try:
            pdu_type, length = self.read_header(allowed, deadline)
            return pdu_type, self.read_body(length, deadline)
        finally:
            if deadline is not None:  # what the socket's own sends are bounded by
                self.sock.settimeout(previous)

    def send(self, data: bytes) -> None:
        """Send bytes already encoded as one or more PDUs (within :attr:`send_timeout`, when set)."""
        if self.send_timeout is not None:
            self.sock.settimeout(self.send_timeout)
        self.sock.sendall(data)


@dataclass(frozen=True)
class PresentationContext:
    """A proposed presentation context and, once negotiated, its result (PS3.8 9.3.2.2, 9.3.3.2)."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]
    result: int = CONTEXT_ACCEPTED
    transfer_syntax: str = ""  # the accepted one, when result is CONTEXT_ACCEPTED


@dataclass(frozen=True)
class AssociateRequest:
    """The fields of an A-ASSOCIATE-RQ an acceptor uses (PS3.8 9.3.2, PS3.7 Annex D.3.3)."""

    protocol_version: int
    called_ae_field: bytes  # 16 bytes, echoed in the A-ASSOCIATE-AC (PS3.8 Table 9-17)
    calling_ae_field: bytes
    application_context: str
    contexts: tuple[PresentationContext, ...]
    max_pdu: int  # 0 when unlimited or not sent (PS3.8 D.1)
    implementation_class_uid: str = ""
    implementation_version_name: str = ""
    extra_items: tuple[int, ...] = field(default=())  # user information sub-item types we ignore

    @property
    def called_ae(self) -> str:
        """Called AE Title; leading and trailing spaces are not significant (PS3.8 Table 9-11)."""
        return _ae_title(self.called_ae_field)

    @property
    def calling_ae(self) -> str:
        """Calling AE Title, stripped like :attr:`called_ae`."""
        return _ae_title(self.calling_ae_field)


def _ae_title(raw: bytes) -> str:
    return raw.decode("ascii", errors="replace").strip(" \x00")


def _uid(raw: bytes | memoryview) -> str:
    # Some implementations pad UIDs with a NUL or a space; neither is part of the UID.
    return bytes(raw).decode("ascii", errors="replace").rstrip("\x00 ")


def _items(body: bytes | bytearray | memoryview, start: int, end: int) -> Iterator[tuple[int, memoryview]]:
    """Yield ``(type, value)`` of the items between ``start`` and ``end`` (PS3.8 9.3.2)."""
    view = memoryview(body)
    offset = start
    while offset < end:
        if end - offset < _ITEM.size:
            raise ProtocolError("truncated item in A-ASSOCIATE-RQ")
        item_type, length = _ITEM.unpack_from(view, offset)
        offset += _ITEM.size
        if offset + length > end:
            raise ProtocolError(f"item 0x{item_type:02X} runs past the end of its PDU")
        yield item_type, view[offset : offset + length]
        offset += length


def parse_associate_rq(body: bytes | bytearray) -> AssociateRequest:
    """Decode the body of an A-ASSOCIATE-RQ PDU (PS3.8 9.3.2, Table 9-11).

    Items and sub-items of unknown type are skipped, as PS3.8 9.3.1 allows.

    Raises
    ------
    ProtocolError
        Truncated or inconsistent items; a presentation context ID that is not
        odd (1 to 255) or used twice (PS3.8 9.3.2.2); no User Information item
        or no 4-byte Maximum Length sub-item in it (PS3.8 9.3.2.3, D.1).
    """
    if len(body) < 68:
        raise ProtocolError(f"A-ASSOCIATE-RQ body of {len(body)} bytes, shorter than its 68 fixed bytes")
    protocol_version = int.from_bytes(body[0:2], "big")
    application_context = ""
    contexts: list[PresentationContext] = []
    max_pdu: int | None = None
    class_uid = version_name = ""
    extra: list[int] = []
    user_information = False
    for item_type, value in _items(body, 68, len(body)):
        if item_type == 0x10:  # Application Context Item (9.3.2.1)
            application_context = _uid(value)
        elif item_type == 0x20:  # Presentation Context Item (9.3.2.2)
            if len(value) < 4:
                raise ProtocolError("truncated presentation context item")
            abstract = ""
            transfers: list[str] = []
            for sub_type, sub_value in _items(value, 4, len(value)):
                if sub_type == 0x30:
                    abstract = _uid(sub_value)
                elif sub_type == 0x40:
                    transfers.append(_uid(sub_value))
            context_id = value[0]
            if not context_id % 2:
                raise ProtocolError(f"presentation context ID {context_id} is not odd")
            if any(c.context_id == context_id for c in contexts):
                raise ProtocolError(f"presentation context ID {context_id} proposed twice")
            contexts.append(PresentationContext(context_id, abstract, tuple(transfers)))
        elif item_type == 0x50:  # User Information Item (9.3.2.3, PS3.7 D.3.3)
            user_information = True
            for sub_type, sub_value in _items(value, 0, len(value)):
                if sub_type == 0x51:
                    if len(sub_value) != 4:
                        raise ProtocolError(f"Maximum Length sub-item of {len(sub_value)} bytes, not 4")
                    max_pdu = int.from_bytes(sub_value, "big")
                elif sub_type == 0x52:
                    class_uid = _uid(sub_value)
                elif sub_type == 0x55:
                    version_name = bytes(sub_value).decode("ascii", errors="replace").strip()
                else:  # async operations, role selection, extended negotiation, user identity
                    extra.append(sub_type)
    if not user_information:
        raise ProtocolError("A-ASSOCIATE-RQ without a User Information item")
    if max_pdu is None:
        raise ProtocolError("A-ASSOCIATE-RQ without a Maximum Length sub-item")
    return AssociateRequest(
        protocol_version=protocol_version,
        called_ae_field=bytes(body[4:20]),
        calling_ae_field=bytes(body[20:36]),
        application_context=application_context,
        contexts=tuple(contexts),
        max_pdu=max_pdu,
        implementation_class_uid=class_uid,
        implementation_version_name=version_name,
        extra_items=tuple(extra),
    )


def negotiate(
    proposed: Sequence[PresentationContext], supported: Mapping[str, Sequence[str]]
) -> list[PresentationContext]:
    """Accept or reject each proposed presentation context (PS3.8 9.3.3.2).

    The transfer syntax is the first one the *requestor* proposed that we accept
    for that abstract syntax: its order is its preference. A requestor that puts
    several syntaxes in one context (DCMTK ``storescu +C``) puts its file's own
    syntax first; choosing an uncompressed one instead (as pynetdicom's acceptor
    does, by its own order) makes it decompress, which it often cannot: DCMTK's
    storescu then fails the C-STORE ("unable to convert dataset"). SCP/SCU role
    selection items are not answered, so both sides keep the default roles
    (requestor SCU, acceptor SCP; PS3.7 D.3.3.4), and extended negotiation is
    ignored (PS3.7 D.3.3.5).

    Parameters
    ----------
    proposed : sequence of PresentationContext
        The contexts of the A-ASSOCIATE-RQ.
    supported : mapping
        Abstract syntax UID to the transfer syntaxes we accept, best first.
    """
    results = []
    for context in proposed:
        ours = supported.get(context.abstract_syntax)
        if ours is None:
            result, chosen = CONTEXT_ABSTRACT_SYNTAX_NOT_SUPPORTED, ""
        else:
            chosen = next((ts for ts in context.transfer_syntaxes if ts in ours), "")
            result = CONTEXT_ACCEPTED if chosen else CONTEXT_TRANSFER_SYNTAXES_NOT_SUPPORTED
        if not chosen and context.transfer_syntaxes:
            # the sub-item is not significant for a rejected context (9.3.3.2); echo one
            chosen = context.transfer_syntaxes[0]
        results.append(
            PresentationContext(context.context_id, context.abstract_syntax, context.transfer_syntaxes, result, chosen)
        )
    return results


def _item(item_type: int, value: bytes) -> bytes:
    return _ITEM.pack(item_type, len(value)) + value


def _pdu(pdu_type: int, body: bytes) -> bytes:
    return _HEADER.pack(pdu_type, len(body)) + body


def encode_associate_ac(
    request: AssociateRequest,
    results: Sequence[PresentationContext],
    *,
    max_pdu: int,
    implementation_class_uid: str,
    implementation_version_name: str,
) -> bytes:
    """Encode an A-ASSOCIATE-AC PDU (PS3.8 9.3.3, Table 9-17).

    The user information carries our maximum length (PS3.8 D.1), the
    implementation class UID and version name (PS3.7 D.3.3.2); nothing else.
    """
    items = [_item(0x10, DICOM_APPLICATION_CONTEXT.encode())]
    for context in results:
        syntax = _item(0x40, context.transfer_syntax.encode()) if context.transfer_syntax else b""
        items.append(_item(0x21, bytes((context.context_id, 0, context.result, 0)) + syntax))
    user = [
        _item(0x51, struct.pack(">L", max_pdu)),
        _item(0x52, implementation_class_uid.encode()),
        _item(0x55, implementation_version_name.encode()),
    ]
    items.append(_item(0x50, b"".join(user)))
    fixed = struct.pack(">HH", 1, 0) + request.called_ae_field + request.calling_ae_field + bytes(32)
    return _pdu(A_ASSOCIATE_AC, fixed + b"".join(items))


def encode_associate_rj(result: int, source: int, reason: int) -> bytes:
    """Encode an A-ASSOCIATE-RJ PDU (PS3.8 9.3.4, Table 9-21)."""
    return _pdu(A_ASSOCIATE_RJ, bytes((0, result, source, reason)))


def encode_release_rp() -> bytes:
    """Encode an A-RELEASE-RP PDU (PS3.8 9.3.7)."""
    return _pdu(A_RELEASE_RP, bytes(4))


def encode_abort(source: int, reason: int) -> bytes:
    """Encode an A-ABORT PDU (PS3.8 9.3.8, Table 9-26)."""
    return _pdu(A_ABORT, bytes((0, 0, source, reason)))


def encode_p_data(context_id: int, message: bytes, *, command: bool, peer_max_pdu: int) -> bytes:
    """Encode a command set or data set as P-DATA-TF PDUs of at most ``peer_max_pdu`` (PS3.8 9.3.5, E.2).

    Parameters
    ----------
    context_id : int
        The presentation context the message belongs to.
    message : bytes
        The whole encoded command set or data set.
    command : bool
        Sets the message control header's command bit (PS3.8 E.2).
    peer_max_pdu : int
        The peer's maximum P-DATA-TF length (PS3.8 D.1); ``0`` means unlimited.
    """
    # A PDV item is its 4-byte length, the context ID and the control header, then the fragment.
    chunk = max(peer_max_pdu - _PDV.size, 1) if peer_max_pdu else max(len(message), 1)
    pdus = []
    for start in range(0, max(len(message), 1), chunk):
        fragment = message[start : start + chunk]
        last = start + chunk >= len(message)
        control = (0x01 if command else 0x00) | (0x02 if last else 0x00)
        pdv = _PDV.pack(len(fragment) + 2, context_id, control) + fragment
        pdus.append(_pdu(P_DATA_TF, pdv))
    return b"".join(pdus)


def encode_p_data_headers(context_id: int, control: int, fragment_length: int) -> bytes:
    """The 12 bytes before a fragment in a P-DATA-TF PDU of one PDV (PS3.8 9.3.5, E.2).

    For a sender that writes the fragment itself from a larger buffer.
    """
    return _HEADER.pack(P_DATA_TF, fragment_length + _PDV.size) + _PDV.pack(fragment_length + 2, context_id, control)


def iter_pdvs(body: bytearray) -> Iterator[tuple[int, int, memoryview]]:
    """Yield ``(context ID, message control header, fragment)`` of a P-DATA-TF body (PS3.8 9.3.5.1, E.2).

    Fragments are views of ``body``: nothing is copied.

    Raises
    ------
    ProtocolError
        A PDV item shorter than its header or longer than the PDU.
    """
    view = memoryview(body)
    end = len(body)
    offset = 0
    while offset < end:
        if end - offset < _PDV.size:
            raise ProtocolError("truncated PDV item in P-DATA-TF")
        length, context_id, control = _PDV.unpack_from(view, offset)
        if length < 2 or offset + 4 + length > end:
            raise ProtocolError(f"PDV item length {length} does not fit its P-DATA-TF PDU")
        yield context_id, control, view[offset + _PDV.size : offset + 4 + length]
        offset += 4 + length


# -- the requestor's side ---------------------------------------------------------------------


@dataclass(frozen=True)
class AssociateAccept:
    """The fields of an A-ASSOCIATE-AC a requestor uses (PS3.8 9.3.3, PS3.7 Annex D.3.3)."""

    contexts: tuple[PresentationContext, ...]  # as proposed, with the acceptor's result and syntax
    max_pdu: int  # the acceptor's maximum P-DATA-TF length; 0 when unlimited (PS3.8 D.1)
    implementation_class_uid: str = ""
    implementation_version_name: str = ""


@dataclass(frozen=True)
class AssociateReject:
    """An A-ASSOCIATE-RJ (PS3.8 9.3.4, Table 9-21), with its values in the words pynetdicom uses."""

    result: int  # 1 rejected-permanent, 2 rejected-transient
    source: int  # 1 service-user, 2 service-provider (ACSE), 3 service-provider (presentation)
    reason: int

    @property
    def permanent(self) -> bool:
        """True for "rejected-permanent": the same request will be rejected again."""
        return self.result == 0x01

    def __str__(self) -> str:
        result = _RJ_RESULTS.get(self.result, "(no value available)")
        source = _RJ_SOURCES.get(self.source, "(no value available)")
        reason = _RJ_REASONS.get(self.source, {}).get(self.reason, "(no value available)")
        return f"{result}, {source}: {reason}"


_RJ_RESULTS = {1: "Rejected Permanent", 2: "Rejected Transient"}
_RJ_SOURCES = {1: "Service User", 2: "Service Provider (ACSE)", 3: "Service Provider (Presentation)"}
_RJ_REASONS = {
    1: {
        1: "No reason given",
        2: "Application context name not supported",
        3: "Calling AE title not recognised",
        7: "Called AE title not recognised",
    },
    2: {1: "No reason given", 2: "Protocol version not supported"},
    3: {1: "Temporary congestion", 2: "Local limit exceeded"},
}


def _ae_field(title: str) -> bytes:
    """An AE title as its 16-byte field, padded with spaces (PS3.8 Table 9-11)."""
    raw = title.encode("ascii")
    if not 0 < len(raw) <= 16:
        raise ValueError(f"an AE title has 1 to 16 characters, got {title!r}")
    return raw.ljust(16, b" ")


def encode_associate_rq(
    *,
    called_ae: str,
    calling_ae: str,
    contexts: Sequence[PresentationContext],
    max_pdu: int,
    implementation_class_uid: str,
    implementation_version_name: str,
) -> bytes:
    """Encode an A-ASSOCIATE-RQ PDU (PS3.8 9.3.2, Table 9-11).

    Parameters
    ----------
    called_ae, calling_ae : str
        AE titles, 1 to 16 ASCII characters.
    contexts : sequence of PresentationContext
        Proposed contexts: odd IDs 1 to 255, so 128 at most (PS3.8 9.3.2.2).
    max_pdu : int
        Our maximum P-DATA-TF length (PS3.8 D.1); ``0`` means unlimited.
    implementation_class_uid, implementation_version_name : str
        PS3.7 D.3.3.2 and D.3.3.2.3.
    """
    items = [_item(0x10, DICOM_APPLICATION_CONTEXT.encode())]
    for context in contexts:
        subs = [_item(0x30, context.abstract_syntax.encode())]
        subs += [_item(0x40, syntax.encode()) for syntax in context.transfer_syntaxes]
        items.append(_item(0x20, bytes((context.context_id, 0, 0, 0)) + b"".join(subs)))
    user = [
        _item(0x51, struct.pack(">L", max_pdu)),
        _item(0x52, implementation_class_uid.encode()),
        _item(0x55, implementation_version_name.encode()),
    ]
    items.append(_item(0x50, b"".join(user)))
    fixed = struct.pack(">HH", 1, 0) + _ae_field(called_ae) + _ae_field(calling_ae) + bytes(32)
    return _pdu(A_ASSOCIATE_RQ, fixed + b"".join(items))


def parse_associate_ac(body: bytes | bytearray, proposed: Sequence[PresentationContext]) -> AssociateAccept:
    """Decode the body of an A-ASSOCIATE-AC PDU (PS3.8 9.3.3, Table 9-17).

    Each result is matched to its proposed context by ID. A context the
    acceptor did not answer, or accepted with a transfer syntax we did not
    propose, counts as not accepted.

    Raises
    ------
    ProtocolError
        Truncated or inconsistent items.
    """
    if len(body) < 68:
        raise ProtocolError(f"A-ASSOCIATE-AC body of {len(body)} bytes, shorter than its 68 fixed bytes")
    by_id = {context.context_id: context for context in proposed}
    answered: dict[int, PresentationContext] = {}
    max_pdu = 0
    class_uid = version_name = ""
    for item_type, value in _items(body, 68, len(body)):
        if item_type == 0x21:  # Presentation Context Item, AC (9.3.3.2)
            if len(value) < 4:
                raise ProtocolError("truncated presentation context item")
            context_id, result = value[0], value[2]
            syntax = next((_uid(sub) for sub_type, sub in _items(value, 4, len(value)) if sub_type == 0x40), "")
            ours = by_id.get(context_id)
            if ours is None:
                continue
            if result == CONTEXT_ACCEPTED and syntax not in ours.transfer_syntaxes:
                result = CONTEXT_TRANSFER_SYNTAXES_NOT_SUPPORTED
            answered[context_id] = PresentationContext(
                context_id,
                ours.abstract_syntax,
                ours.transfer_syntaxes,
                result,
                syntax if result == CONTEXT_ACCEPTED else "",
            )
        elif item_type == 0x50:  # User Information Item (9.3.3.3)
            for sub_type, sub_value in _items(value, 0, len(value)):
                if sub_type == 0x51 and len(sub_value) == 4:
                    max_pdu = int.from_bytes(sub_value, "big")
                elif sub_type == 0x52:
                    class_uid = _uid(sub_value)
                elif sub_type == 0x55:
                    version_name = bytes(sub_value).decode("ascii", errors="replace").strip()
    contexts = tuple(
        answered.get(
            c.context_id,
            PresentationContext(
                c.context_id, c.abstract_syntax, c.transfer_syntaxes, CONTEXT_ABSTRACT_SYNTAX_NOT_SUPPORTED
            ),
        )
        for c in proposed
    )
    return AssociateAccept(contexts, max_pdu, class_uid, version_name)


def parse_associate_rj(body: bytes | bytearray) -> AssociateReject:
    """Decode the body of an A-ASSOCIATE-RJ PDU (PS3.8 9.3.4, Table 9-21).

    Raises
    ------
    ProtocolError
        A body shorter than its 4 bytes.
    """
    if len(body) < 4:
        raise ProtocolError(f"A-ASSOCIATE-RJ body of {len(body)} bytes, not 4")
    return AssociateReject(result=body[1], source=body[2], reason=body[3])


def encode_release_rq() -> bytes:
    """Encode an A-RELEASE-RQ PDU (PS3.8 9.3.6)."""
    return _pdu(A_RELEASE_RQ, bytes(4))
