"""DIMSE command sets for a Storage/Verification SCP and SCU (PS3.7 6.3, 9.3, Annex E).

A command set is group 0000 encoded in Implicit VR Little Endian (PS3.7 6.3.1);
the few elements an SCP reads are decoded here by hand (a C-STORE-RQ is ~200
bytes, decoded in a few microseconds), and the responses are encoded the same
way; so are the SCU's C-STORE-RQ and C-ECHO-RQ, and the responses it reads.
The File Meta Information a received data set is stored with (PS3.10 7.1) is
encoded here too, byte for byte as pydicom writes it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from dimse.errors import ProtocolViolation

__all__ = [
    "C_ECHO_RQ",
    "C_STORE_RQ",
    "Command",
    "ProtocolViolation",
    "Response",
    "decode_command",
    "decode_response",
    "encode_c_echo_rq",
    "encode_c_store_rq",
    "encode_file_meta",
    "encode_response",
]

# Command Field values (PS3.7 Annex E.1).
C_STORE_RQ = 0x0001
C_ECHO_RQ = 0x0030
C_CANCEL_RQ = 0x0FFF
RESPONSE_BIT = 0x8000
#: Command Data Set Type meaning "no data set follows" (PS3.7 Table E.1-1).
NO_DATA_SET = 0x0101

_ELEMENT = struct.Struct("<HHL")  # group, element, value length (implicit VR)
_US = struct.Struct("<H")
_UL = struct.Struct("<L")
_EXPLICIT_SHORT = struct.Struct("<HH2sH")  # group, element, VR, 16-bit length (PS3.5 7.1.2)


@dataclass(frozen=True)
class Command:
    """The elements of a DIMSE request command set an SCP uses (PS3.7 Annex E.1)."""

    command_field: int
    message_id: int
    has_data_set: bool
    affected_sop_class_uid: str
    affected_sop_instance_uid: str


def _text(raw: bytes) -> str:
    return raw.decode("ascii", errors="replace").rstrip("\x00 ")


def decode_command(encoded: bytes) -> Command:
    """Decode a request command set (group 0000, Implicit VR Little Endian; PS3.7 6.3.1).

    Raises
    ------
    ProtocolViolation
        Truncated elements, an element outside group 0000, or a missing Command Field.
    """
    values = _decode_elements(encoded)
    unsigned_short = _unsigned_short_reader(values)
    return Command(
        command_field=unsigned_short(0x0100),
        message_id=unsigned_short(0x0110, 0),
        has_data_set=unsigned_short(0x0800, NO_DATA_SET) != NO_DATA_SET,
        affected_sop_class_uid=_text(values.get(0x0002, b"")),
        affected_sop_instance_uid=_text(values.get(0x1000, b"")),
    )


def _decode_elements(encoded: bytes) -> dict[int, bytes]:
    """Element number to value of a group 0000 command set (PS3.7 6.3.1)."""
    values: dict[int, bytes] = {}
    offset, end = 0, len(encoded)
    while offset < end:
        if end - offset < _ELEMENT.size:
            raise ProtocolViolation("truncated element in a command set")
        group, element, length = _ELEMENT.unpack_from(encoded, offset)
        offset += _ELEMENT.size
        if group != 0x0000 or offset + length > end:
            raise ProtocolViolation(f"element ({group:04X},{element:04X}) does not belong in a command set")
        values[element] = encoded[offset : offset + length]
        offset += length
    return values


def _unsigned_short_reader(values: dict[int, bytes]) -> Callable[..., int]:
    def unsigned_short(element: int, default: int | None = None) -> int:
        raw = values.get(element)
        if raw is None or len(raw) != 2:
            if default is None:
                raise ProtocolViolation(f"command set without a valid (0000,{element:04X})")
            return default
        return int(_US.unpack(raw)[0])

    return unsigned_short


def _element(element: int, value: bytes) -> bytes:
    return _ELEMENT.pack(0x0000, element, len(value)) + value


def _uid_value(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw  # UI pads with NUL to even length (PS3.5 6.2)


def encode_response(request: Command, status: int, *, include_instance: bool) -> bytes:
    """Encode the response command set to ``request`` (PS3.7 9.3.1.2 C-STORE-RSP, 9.3.5.2 C-ECHO-RSP).

    Parameters
    ----------
    request : Command
        The request being answered: its Command Field gets the response bit,
        its Message ID becomes the Message ID Being Responded To.
    status : int
        The DIMSE status (PS3.7 Annex C).
    include_instance : bool
        Add Affected SOP Instance UID (C-STORE-RSP).
    """
    elements = []
    if request.affected_sop_class_uid:
        elements.append(_element(0x0002, _uid_value(request.affected_sop_class_uid)))
    elements.append(_element(0x0100, _US.pack(request.command_field | RESPONSE_BIT)))
    elements.append(_element(0x0120, _US.pack(request.message_id)))
    elements.append(_element(0x0800, _US.pack(NO_DATA_SET)))
    elements.append(_element(0x0900, _US.pack(status)))
    if include_instance and request.affected_sop_instance_uid:
        elements.append(_element(0x1000, _uid_value(request.affected_sop_instance_uid)))
    body = b"".join(elements)
    return _element(0x0000, _UL.pack(len(body))) + body


def _explicit(element: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":  # OB has a reserved field and a 32-bit length (PS3.5 Table 7.1-1)
        return struct.pack("<HH2sxxL", 0x0002, element, vr, len(value)) + value
    return _EXPLICIT_SHORT.pack(0x0002, element, vr, len(value)) + value


def _padded_text(text: str) -> bytes:
    raw = text.encode("ascii")
    return raw + b" " if len(raw) % 2 else raw  # SH and AE pad with a space (PS3.5 6.2)


def encode_file_meta(
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    implementation_class_uid: str,
    implementation_version_name: str,
    source_ae_title: str,
) -> bytes:
    """Preamble, ``DICM`` and File Meta Information group 0002 (PS3.10 7.1, Explicit VR LE).

    The same bytes pydicom writes for pynetdicom's ``create_file_meta`` plus
    Source Application Entity Title.
    """
    elements = [
        _explicit(0x0001, b"OB", b"\x00\x01"),
        _explicit(0x0002, b"UI", _uid_value(sop_class_uid)),
        _explicit(0x0003, b"UI", _uid_value(sop_instance_uid)),
        _explicit(0x0010, b"UI", _uid_value(transfer_syntax_uid)),
        _explicit(0x0012, b"UI", _uid_value(implementation_class_uid)),
        _explicit(0x0013, b"SH", _padded_text(implementation_version_name)),
    ]
    if source_ae_title:
        elements.append(_explicit(0x0016, b"AE", _padded_text(source_ae_title)))
    body = b"".join(elements)
    return b"\x00" * 128 + b"DICM" + _explicit(0x0000, b"UL", _UL.pack(len(body))) + body


# -- the SCU's side ---------------------------------------------------------------------------

#: Priority MEDIUM (PS3.7 9.3.1.1).
PRIORITY_MEDIUM = 0x0000
#: Command Data Set Type meaning "a data set follows": any value but 0x0101 (PS3.7 Table E.1-1).
DATA_SET_PRESENT = 0x0000
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"


@dataclass(frozen=True)
class Response:
    """The elements of a DIMSE response command set an SCU uses (PS3.7 Annex E.1)."""

    command_field: int
    message_id_being_responded_to: int
    status: int
    affected_sop_instance_uid: str


def _command_set(elements: list[bytes]) -> bytes:
    body = b"".join(elements)
    return _element(0x0000, _UL.pack(len(body))) + body


def encode_c_store_rq(message_id: int, sop_class_uid: str, sop_instance_uid: str) -> bytes:
    """Encode a C-STORE-RQ command set, priority medium, a data set following (PS3.7 9.3.1.1)."""
    return _command_set(
        [
            _element(0x0002, _uid_value(sop_class_uid)),
            _element(0x0100, _US.pack(C_STORE_RQ)),
            _element(0x0110, _US.pack(message_id)),
            _element(0x0700, _US.pack(PRIORITY_MEDIUM)),
            _element(0x0800, _US.pack(DATA_SET_PRESENT)),
            _element(0x1000, _uid_value(sop_instance_uid)),
        ]
    )


def encode_c_echo_rq(message_id: int) -> bytes:
    """Encode a C-ECHO-RQ command set (PS3.7 9.3.5.1)."""
    return _command_set(
        [
            _element(0x0002, _uid_value(VERIFICATION_SOP_CLASS)),
            _element(0x0100, _US.pack(C_ECHO_RQ)),
            _element(0x0110, _US.pack(message_id)),
            _element(0x0800, _US.pack(NO_DATA_SET)),
        ]
    )


def decode_response(encoded: bytes) -> Response:
    """Decode a response command set (PS3.7 9.3.1.2 C-STORE-RSP, 9.3.5.2 C-ECHO-RSP).

    Raises
    ------
    ProtocolViolation
        Truncated elements, or no Command Field, Message ID Being Responded To or Status.
    """
    values = _decode_elements(encoded)
    unsigned_short = _unsigned_short_reader(values)
    return Response(
        command_field=unsigned_short(0x0100),
        message_id_being_responded_to=unsigned_short(0x0120),
        status=unsigned_short(0x0900),
        affected_sop_instance_uid=_text(values.get(0x1000, b"")),
    )
