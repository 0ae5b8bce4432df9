"""Read the few attributes the receiver needs straight from a data set's bytes.

The receiver must know a new instance's Study and Series Instance UIDs and
Modality before it can file it (PS3.4 B.2.3: acknowledge only once
durable), and it must not decode the rest. pydicom walks every element
header even with ``specific_tags``; this scanner walks only the top level up
to group 0x0020 and skips sequences by their length (or their delimiters
when undefined, PS3.5 7.5), which is a few microseconds for any header.

Only little-endian data sets (implicit or explicit VR, PS3.5 A.1/A.2) are
scanned; anything else (big endian, deflated, a malformed header) returns
``None`` so the caller falls back to pydicom.
"""

from __future__ import annotations

import struct

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"

#: (group, element) -> keyword of what the receiver reads.
WANTED = {
    (0x0008, 0x0018): "SOPInstanceUID",
    (0x0008, 0x0060): "Modality",
    (0x0020, 0x000D): "StudyInstanceUID",
    (0x0020, 0x000E): "SeriesInstanceUID",
}
_LAST_GROUP = 0x0020
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xE000, 0xE00D, 0xE0DD


class _Malformed(Exception):
    pass


def dataset_offset(data: bytes | memoryview) -> tuple[int, str] | None:
    """Where the data set starts after the file meta group, and its transfer syntax UID."""
    if len(data) < 132 or bytes(data[128:132]) != b"DICM":
        return None
    pos = 132
    syntax = None
    while pos + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            break
        vr = bytes(data[pos + 4 : pos + 6])
        if vr in _LONG_VRS:
            length = struct.unpack_from("<I", data, pos + 8)[0]
            value_at = pos + 12
        else:
            length = struct.unpack_from("<H", data, pos + 6)[0]
            value_at = pos + 8
        if element == 0x0010:
            syntax = bytes(data[value_at : value_at + length]).rstrip(b"\x00 ").decode("ascii", "replace")
        pos = value_at + length
    return (pos, syntax) if syntax else None


def read_identifiers(data: bytes | memoryview) -> dict[str, str] | None:
    """The wanted attributes of a Part 10 byte string, or ``None`` if it cannot be scanned here.

    Missing attributes are simply absent from the result.
    """
    located = dataset_offset(data)
    if located is None:
        return None
    pos, syntax = located
    if syntax in (EXPLICIT_VR_BE, DEFLATED):
        return None
    implicit = syntax == IMPLICIT_VR_LE
    found: dict[str, str] = {}
    try:
        _scan(data, pos, len(data), implicit, found, top=True)
    except (_Malformed, struct.error):
        return None
    return found


def _header(data: bytes | memoryview, pos: int, implicit: bool) -> tuple[int, int, bytes, int, int]:
    """(group, element, VR, value length, value offset) of the element at ``pos``."""
    group, element = struct.unpack_from("<HH", data, pos)
    if group == 0xFFFE or implicit:
        return group, element, b"", struct.unpack_from("<I", data, pos + 4)[0], pos + 8
    vr = bytes(data[pos + 4 : pos + 6])
    if vr in _LONG_VRS:
        return group, element, vr, struct.unpack_from("<I", data, pos + 8)[0], pos + 12
    if not (vr.isalpha() and vr.isupper()):
        raise _Malformed(f"bad VR at {pos}")
    return group, element, vr, struct.unpack_from("<H", data, pos + 6)[0], pos + 8


def _scan(data: bytes | memoryview, pos: int, end: int, implicit: bool, found: dict[str, str], top: bool) -> int:
    """Walk elements from ``pos``; return where the walk stopped (a delimiter's end, or ``end``)."""
    while pos + 8 <= end:
        group, element, vr, length, value_at = _header(data, pos, implicit)
        if group == 0xFFFE and element in (_ITEM_END, _SEQ_END):
            return value_at
        if top and group > _LAST_GROUP:
            return pos
        if length == _UNDEFINED:
            # A sequence (or encapsulated data) of undefined length: walk its items to the delimiter.
            if not (vr in (b"SQ", b"UN", b"") or implicit):
                raise _Malformed("undefined length outside a sequence")
            pos = _skip_items(data, value_at, end, implicit)
            continue
        if value_at + length > end:
            raise _Malformed("element runs past the end")
        if top and (group, element) in WANTED:
            raw = bytes(data[value_at : value_at + length])
            found[WANTED[(group, element)]] = raw.rstrip(b"\x00 ").decode("ascii", "replace").strip()
        pos = value_at + length
    return pos


def _skip_items(data: bytes | memoryview, pos: int, end: int, implicit: bool) -> int:
    while pos + 8 <= end:
        group, element = struct.unpack_from("<HH", data, pos)
        length = struct.unpack_from("<I", data, pos + 4)[0]
        if group != 0xFFFE:
            raise _Malformed("expected an item tag")
        if element == _SEQ_END:
            return pos + 8
        if element != _ITEM:
            raise _Malformed("unexpected delimiter")
        if length == _UNDEFINED:
            pos = _scan(data, pos + 8, end, implicit, {}, top=False)
        else:
            pos = pos + 8 + length
    raise _Malformed("sequence without a delimiter")
