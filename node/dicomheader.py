"""How the node reads DICOM headers: from a received data set's bytes, or from a file.

The receiver must know a new instance's Study and Series Instance UIDs and
Modality before it can file it (PS3.4 B.2.3: acknowledge only once
durable), and it must not decode the rest. pydicom walks every element
header even with ``specific_tags``; this scanner walks only the top level up
to group 0x0020 and skips sequences by their length (or their delimiters
when undefined, PS3.5 7.5), which is a few microseconds for any header.
:func:`parse_header` is pydicom's reading of the same bytes, for what the
scanner declines.

The same walk records, at receive, the elements routing reads of a series'
first instance (:func:`record_elements`, kept in ``Instance.header``), so that
the assembler routes without opening the file again (:func:`recorded_dataset`).

Only little-endian data sets (implicit or explicit VR, PS3.5 A.1/A.2) are
scanned; anything else (big endian, deflated, a malformed header) returns
``None`` so the caller falls back to pydicom.

Files are read with :func:`read_file` / :func:`read_header`:
:func:`core.dicomfile.read_dataset` (old files read the same way everywhere),
its :class:`core.errors.UnreadableDicom` raised as :class:`node.errors.InputError`
with the same words.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Collection, Mapping
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from core.dicomfile import read_dataset
from core.errors import UnreadableDicom
from node.errors import InputError

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"

#: (group, element) -> keyword of what the receiver reads.
WANTED = {
    (0x0008, 0x0016): "SOPClassUID",
    (0x0008, 0x0018): "SOPInstanceUID",
    (0x0008, 0x0060): "Modality",
    (0x0020, 0x000D): "StudyInstanceUID",
    (0x0020, 0x000E): "SeriesInstanceUID",
}
_WANTED_TAGS = frozenset(group << 16 | element for group, element in WANTED)
_LAST_GROUP = 0x0020
#: Where pydicom's ``stop_before_pixels`` stops (Float, Double Float and Pixel Data): never recorded.
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_SPECIFIC_CHARACTER_SET = 0x00080005
#: What a value of an ambiguous VR (``US or SS``, ``OB or OW``) is resolved from (PS3.5 A.1 c, PS3.3 C.7.6.3).
_PIXEL_DESCRIPTION = (0x00280100, 0x00280101, 0x00280103)
#: Every VR of PS3.5 Table 6.2-1: what the two bytes after an explicit VR element's tag must be.
_VRS = frozenset(
    b"AE AS AT CS DA DS DT FL FD IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()
)
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


def encoding_problem(data: bytes | memoryview, size: int) -> str | None:
    """Why the data set of a Part 10 file is not encoded in the transfer syntax its meta names, or ``None``.

    ``data`` is the file's start (its meta and the data set's first bytes), ``size`` the whole file's.
    Judged by the layout of the data set's first element (microseconds, whatever the file's size): in
    explicit VR the two bytes after its tag are a VR of PS3.5 Table 6.2-1 and its length fits; in
    implicit VR its four-byte length fits and it is not laid out as an explicit VR element whose
    successor is one too. pydicom switches to the other VR silently when reading, so a file whose
    meta contradicts its data set reads here but not in a strict reader (DCMTK, dciodvfy). A data set
    shorter than one element header is a problem too. ``None`` also when it cannot be told here: no
    file meta, deflated data.
    """
    located = dataset_offset(data)
    if located is None:
        return None
    pos, syntax = located
    if pos + 8 > size:
        return f"the data set is {max(size - pos, 0)} bytes long, shorter than one element"
    if syntax == DEFLATED or pos + 8 > len(data):
        return None
    big = syntax == EXPLICIT_VR_BE
    group, element = struct.unpack_from(">HH" if big else "<HH", data, pos)
    first = f"({group:04X},{element:04X})"
    vr = bytes(data[pos + 4 : pos + 6])
    if syntax == IMPLICIT_VR_LE:
        if _laid_out_explicit(data, pos, size):
            return f"explicit VR data on an implicit VR context: its first element {first} has the VR {vr.decode()}"
        length = struct.unpack_from("<I", data, pos + 4)[0]
        if length != _UNDEFINED and pos + 8 + length > size:
            return f"its first element {first} has a length ({length}) past the data set's end"
        return None
    if vr not in _VRS:
        return f"implicit VR data on an explicit VR context ({syntax}): its first element {first} has no VR"
    end = _explicit_end(data, pos, big)
    if end is None or (end != _UNDEFINED and end > size):
        return f"its first element {first} ({vr.decode()}) has a length past the data set's end"
    return None


def _explicit_end(data: bytes | memoryview, pos: int, big: bool = False) -> int | None:
    """Where the explicit VR element at ``pos`` ends (``_UNDEFINED`` for an undefined length), or ``None``.

    ``None`` when its VR is not one, or its header is cut off in ``data``.
    """
    vr = bytes(data[pos + 4 : pos + 6])
    if vr not in _VRS:
        return None
    if vr in _LONG_VRS:
        if pos + 12 > len(data):
            return None
        length = struct.unpack_from(">I" if big else "<I", data, pos + 8)[0]
        return _UNDEFINED if length == _UNDEFINED else pos + 12 + length
    return pos + 8 + struct.unpack_from(">H" if big else "<H", data, pos + 6)[0]


def _laid_out_explicit(data: bytes | memoryview, pos: int, size: int) -> bool:
    """Whether the element at ``pos`` of a little-endian data set reads as explicit VR, its successor too.

    An implicit VR length whose low bytes spell a VR (16705 bytes or more for a first element) is not
    enough: the explicit reading must also fit and lead to an item (after an undefined length), to the
    end, or to an ascending tag with a VR.
    """
    end = _explicit_end(data, pos)
    if end is None:
        return False
    if bytes(data[pos + 4 : pos + 6]) in _LONG_VRS and bytes(data[pos + 6 : pos + 8]) != b"\x00\x00":
        return False  # explicit VR's reserved bytes are zero
    if end == _UNDEFINED:
        value_at = pos + 12
        return value_at + 4 <= len(data) and struct.unpack_from("<HH", data, value_at) in (
            (0xFFFE, _ITEM),
            (0xFFFE, _SEQ_END),
        )
    if end > size:
        return False
    if end + 6 > len(data):
        return True  # the data set's end, or past what was read: the layout fits as far as it can be seen
    return struct.unpack_from("<HH", data, end) > struct.unpack_from("<HH", data, pos) and (
        bytes(data[end + 4 : end + 6]) in _VRS
    )


def read_identifiers(data: bytes | memoryview) -> dict[str, str] | None:
    """The wanted attributes of a Part 10 byte string, or ``None`` if it cannot be scanned here.

    Missing attributes are simply absent from the result.
    """
    scanned = _scan_top_level(data, _WANTED_TAGS, _LAST_GROUP)
    if scanned is None:
        return None
    _implicit, spans = scanned
    found: dict[str, str] = {}
    for tag, (_vr, value_at, length) in spans.items():
        raw = bytes(data[value_at : value_at + length])
        found[WANTED[(tag >> 16, tag & 0xFFFF)]] = raw.rstrip(b"\x00 ").decode("ascii", "replace").strip()
    return found


def parse_header(data: bytes | memoryview, tags: Collection[str]) -> Dataset:
    """pydicom's reading of ``tags`` (keywords) of a Part 10 byte string, pixels left unread.

    For the data sets :func:`read_identifiers` declines (big endian, deflated, malformed or
    missing a UID). Raises pydicom's errors (``InvalidDicomError``, ``ValueError``, ...).
    """
    return pydicom.dcmread(BytesIO(data), stop_before_pixels=True, specific_tags=list(tags))


def record_elements(data: bytes | memoryview, tags: Collection[int]) -> dict[str, Any] | None:
    """The top-level elements ``tags`` of a Part 10 byte string as received, JSON-ready, or ``None``.

    Their values are kept as encoded (VR and bytes), so that :func:`recorded_dataset` gives the values a
    header read of the file gives, whatever the VR; Specific Character Set, the private creators of
    private tags and the pixel description of an ambiguous VR come along. ``None`` when the data set
    cannot be scanned here (the caller then reads the file).
    """
    wanted = set(tags) | {_SPECIFIC_CHARACTER_SET}
    for tag in tags:
        if tag >> 16 & 1:  # private: its creator says what it is
            wanted.add((tag >> 16) << 16 | (tag & 0xFFFF) >> 8)
        elif _ambiguous_vr(tag):
            wanted.update(_PIXEL_DESCRIPTION)
    scanned = _scan_top_level(data, frozenset(wanted), max(tag >> 16 for tag in wanted))
    if scanned is None:
        return None
    implicit, spans = scanned
    elements: dict[str, list[str]] = {}
    for tag, (vr, value_at, length) in sorted(spans.items()):
        if length == _UNDEFINED_SPAN:
            return None  # a VR that pydicom reads differently from a sequence: leave it to pydicom
        value = base64.b64encode(bytes(data[value_at : value_at + length])).decode("ascii")
        elements[f"{tag:08X}"] = [vr, value]
    return {"tags": [f"{tag:08X}" for tag in sorted(tags)], "implicit": implicit, "elements": elements}


def recorded_dataset(recorded: Mapping[str, Any] | None, tags: Collection[int]) -> Dataset | None:
    """The data set of a :func:`record_elements` record, or ``None`` when it does not hold all ``tags``.

    Its elements are decoded when read, as those of a file are.
    """
    if not recorded or not {f"{tag:08X}" for tag in tags} <= set(recorded.get("tags", ())):
        return None
    implicit = bool(recorded["implicit"])
    ds = Dataset()
    for key, (vr, value) in recorded["elements"].items():
        tag = Tag(int(key, 16))
        raw = base64.b64decode(value)
        ds[tag] = RawDataElement(tag, vr or None, len(raw), raw, 0, implicit, True)
    return ds


def read_file(path: Path | str, *, header_only: bool = False, defer_size: int | str | None = None) -> Dataset:
    """A DICOM file read by :func:`core.dicomfile.read_dataset`.

    Raises
    ------
    InputError
        The file cannot be read or is not DICOM, in :class:`core.errors.UnreadableDicom`'s words.
    """
    try:
        return read_dataset(path, header_only=header_only, defer_size=defer_size)
    except UnreadableDicom as exc:
        raise InputError(exc.reason) from exc


def read_header(path: Path | str) -> Dataset:
    """A DICOM file's attributes without pixel data (PS3.10), pre-PS3.10 files too; see :func:`read_file`.

    Raises
    ------
    InputError
        The file cannot be read or is not DICOM.
    """
    return read_file(path, header_only=True)


def _ambiguous_vr(tag: int) -> bool:
    try:
        return " or " in dictionary_VR(tag)
    except KeyError:
        return False


#: The length recorded for an undefined-length element that is not a sequence.
_UNDEFINED_SPAN = -1


def _scan_top_level(
    data: bytes | memoryview, wanted: frozenset[int], last_group: int
) -> tuple[bool, dict[int, tuple[str, int, int]]] | None:
    """(implicit VR?, tag -> (VR, value offset, value length)) of the wanted top-level elements, or ``None``."""
    located = dataset_offset(data)
    if located is None:
        return None
    pos, syntax = located
    if syntax in (EXPLICIT_VR_BE, DEFLATED):
        return None
    implicit = syntax == IMPLICIT_VR_LE
    spans: dict[int, tuple[str, int, int]] = {}
    try:
        _scan(data, pos, len(data), implicit, spans, wanted, last_group)
    except (_Malformed, struct.error):
        return None
    return implicit, spans


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


def _scan(
    data: bytes | memoryview,
    pos: int,
    end: int,
    implicit: bool,
    spans: dict[int, tuple[str, int, int]] | None,
    wanted: frozenset[int] = frozenset(),
    last_group: int = _LAST_GROUP,
) -> int:
    """Walk elements from ``pos``; return where the walk stopped (a delimiter's end, or ``end``).

    At the top level (``spans`` given) the walk stops before group ``last_group + 1`` or the pixel data
    and records where each ``wanted`` element's value is; inside sequence items it only walks.
    """
    top = spans is not None
    while pos + 8 <= end:
        group, element, vr, length, value_at = _header(data, pos, implicit)
        if group == 0xFFFE and element in (_ITEM_END, _SEQ_END):
            return value_at
        tag = group << 16 | element
        if top and (group > last_group or tag in _PIXEL_TAGS):
            return pos
        if length == _UNDEFINED:
            # A sequence (or encapsulated data) of undefined length: walk its items to the delimiter.
            if not (vr in (b"SQ", b"UN", b"") or implicit):
                raise _Malformed("undefined length outside a sequence")
            after = _skip_items(data, value_at, end, implicit)
            if spans is not None and tag in wanted:
                # Recorded as a sequence of the items' length (pydicom reads an implicit VR one as SQ too).
                spans[tag] = ("SQ", value_at, after - 8 - value_at) if vr != b"UN" else ("UN", 0, _UNDEFINED_SPAN)
            pos = after
            continue
        if value_at + length > end:
            raise _Malformed("element runs past the end")
        if spans is not None and tag in wanted:
            spans[tag] = (vr.decode("ascii"), value_at, length)
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
        pos = _scan(data, pos + 8, end, implicit, None) if length == _UNDEFINED else pos + 8 + length
    raise _Malformed("sequence without a delimiter")
