"""C-ECHO and C-STORE SCU: the node's sending end (PS3.4 Annex A and B, PS3.8).

Files are sent as they are stored: each file's transfer syntax is read from its
File Meta Information (PS3.10 7.1) and exactly the presentation contexts needed
are proposed (PS3.8 7.1.1.13): one per SOP class and transfer syntax, offering
only that syntax, plus, for little endian uncompressed files, one per SOP class
offering Explicit and Implicit VR Little Endian as a fallback. The data set is
sent as the bytes that follow the file's File Meta Information, unchanged,
when the peer accepted the file's own syntax; only when it accepted the
fallback alone is the data set re-encoded (by pydicom, losslessly, between
Explicit and Implicit VR Little Endian). Pixel data are never decoded or
re-compressed; a compressed file whose syntax is refused is not sent.

At most 128 presentation contexts fit in one association (odd IDs 1 to 255,
PS3.8 9.3.2.2); more distinct (SOP class, transfer syntax) pairs are sent over
several associations, one after the other.

Built on :mod:`dimse.requestor`: a blocking socket read by the calling thread
alone, so a response is never missed however fast the peer answers.

Errors (a :class:`dimse.errors.DimseError`)::

    AssociationFailed        the association could not be established or was lost
        .permanent           True for A-ASSOCIATE-RJ "rejected-permanent"
        .reason              the peer's (or our) reason, in words
        .outcomes            outcomes of instances already answered before the loss

A single instance that cannot be sent (unreadable file, presentation context not
accepted) is not an exception: its :class:`StoreOutcome` carries a failure status
and, when it was never sent, a ``reason`` saying why in the peer's terms: its SOP
class refused (abstract syntax not supported), no acceptable transfer syntax
(the SOP class is accepted, but in none of the syntaxes the file can be sent in),
or the context rejected by the user or provider (PS3.8 Table 9-18).

The A-ASSOCIATE-RQ names this software (:mod:`core.identity`), not a library.
"""

from __future__ import annotations

import logging
import ssl
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from core import status
from core.dicomfile import read_dataset, read_file_meta
from core.errors import UnreadableDicom
from core.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dimse.commands import VERIFICATION_SOP_CLASS, encode_c_echo_rq, encode_c_store_rq
from dimse.errors import AssociationError, DimseError
from dimse.requestor import MAX_CONTEXTS, Requestor
from dimse.upper_layer import (
    CONTEXT_ABSTRACT_SYNTAX_NOT_SUPPORTED,
    CONTEXT_ACCEPTED,
    CONTEXT_TRANSFER_SYNTAXES_NOT_SUPPORTED,
    PresentationContext,
)

__all__ = [
    "ECHO_TRANSFER_SYNTAXES",
    "FALLBACK_TRANSFER_SYNTAXES",
    "AssociationFailed",
    "StoreOutcome",
    "echo",
    "store_files",
]

#: Transfer syntaxes proposed in the one Verification context of a C-ECHO.
ECHO_TRANSFER_SYNTAXES: tuple[str, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)

LOGGER = logging.getLogger("ainode.dimse.scu")


class AssociationFailed(DimseError):
    """The association could not be established, or was aborted while in use.

    The one exception :func:`echo` and :func:`store_files` raise (see
    :mod:`dimse.errors` for the tree).

    Parameters
    ----------
    reason : str
        What happened, e.g. ``"Rejected Permanent, Service User: Calling AE
        title not recognised"`` or ``"connection refused or no response"``.
    permanent : bool, optional
        ``True`` when the peer rejected the association permanently
        (PS3.8 9.3.4): retrying with the same parameters will not help.
    outcomes : list of StoreOutcome, optional
        For :func:`store_files`, the outcomes of instances answered before
        the association was lost (in the order of the paths).
    """

    def __init__(self, reason: str, *, permanent: bool = False, outcomes: Sequence[StoreOutcome] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.outcomes = list(outcomes)


@dataclass(frozen=True)
class StoreOutcome:
    """The result of sending one instance: its SOP Instance UID and DIMSE status.

    ``status`` is the peer's C-STORE response status (PS3.4 B.2.3), or a local
    failure status when the instance was not sent:
    ``SOP_CLASS_NOT_SUPPORTED`` (no accepted presentation context carries it)
    or ``CANNOT_UNDERSTAND`` (file unreadable; ``sop_instance_uid`` is then
    empty). ``reason`` says, for an instance not sent, why: e.g. ``"no
    acceptable transfer syntax: ..."``; it is empty when the peer answered.
    """

    sop_instance_uid: str
    status: int
    reason: str = ""

    @property
    def succeeded(self) -> bool:
        """True for success (0x0000) and warnings (0xB0xx)."""
        return status.is_store_success(self.status)


@dataclass(frozen=True)
class _Header:
    path: Path
    sop_class_uid: UID
    sop_instance_uid: UID
    transfer_syntax_uid: UID


def _open(
    contexts: Sequence[tuple[str, Sequence[str]]],
    *,
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str,
    timeout: float,
    ssl_context: ssl.SSLContext | None,
    max_pdu: int = 0,
    outcomes: Sequence[StoreOutcome] = (),
) -> Requestor:
    """Open an association or raise :class:`AssociationFailed` saying why."""
    try:
        return Requestor.open(
            host=host,
            port=port,
            called_ae=called_ae,
            calling_ae=calling_ae,
            contexts=contexts,
            timeout=timeout,
            max_pdu=max_pdu,
            ssl_context=ssl_context,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
        )
    except AssociationError as exc:
        raise AssociationFailed(exc.reason, permanent=exc.permanent, outcomes=outcomes) from exc


def echo(
    *,
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str,
    timeout: float = 10,
    ssl_context: ssl.SSLContext | None = None,
) -> int:
    """Send a C-ECHO (Verification, PS3.4 Annex A) and return its status.

    A peer that accepts no Verification context is answered locally with
    ``SOP_CLASS_NOT_SUPPORTED`` (0x0122), nothing being sent.

    Raises
    ------
    AssociationFailed
        If no association could be established or no response came back.
    """
    requestor = _open(
        [(VERIFICATION_SOP_CLASS, list(ECHO_TRANSFER_SYNTAXES))],
        host=host,
        port=port,
        called_ae=called_ae,
        calling_ae=calling_ae,
        timeout=timeout,
        ssl_context=ssl_context,
    )
    with requestor:
        (context,) = requestor.contexts
        if context.result != CONTEXT_ACCEPTED:
            LOGGER.error("%s accepted no Verification presentation context", requestor.where)
            return status.SOP_CLASS_NOT_SUPPORTED
        try:
            response = requestor.request(context.context_id, encode_c_echo_rq(1), None, 1)
        except AssociationError as exc:
            raise AssociationFailed(f"no C-ECHO response from {called_ae}@{host}:{port}: {exc.reason}") from exc
    return response.status


#: What a file's File Meta Information must hold to be sent (PS3.10 7.1).
_META_KEYWORDS = ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")


def _read_header(path: Path) -> _Header | None:
    """Read only the File Meta Information; ``None`` if the file is unusable."""
    try:
        meta = read_file_meta(path)
    except UnreadableDicom as exc:  # missing file, no DICM prefix, corrupt File Meta Information
        LOGGER.error("cannot send %s: not a readable DICOM file (%s)", path, exc.reason)
        return None
    missing = [keyword for keyword in _META_KEYWORDS if keyword not in meta]
    if missing:
        LOGGER.error("cannot send %s: not a readable DICOM file (no %s)", path, ", ".join(missing))
        return None
    return _Header(
        path=path,
        sop_class_uid=UID(meta.MediaStorageSOPClassUID),
        sop_instance_uid=UID(meta.MediaStorageSOPInstanceUID),
        transfer_syntax_uid=UID(meta.TransferSyntaxUID),
    )


def _is_convertible(syntax: UID) -> bool:
    """Little endian, not encapsulated (deflated included): re-encoded losslessly to the fallback."""
    return not syntax.is_compressed and syntax.is_little_endian


#: Offered, per SOP class, beside a little endian uncompressed file's own syntax:
#: if the peer refuses the exact syntax, the data set is re-encoded losslessly.
_FALLBACK = "fallback"
FALLBACK_TRANSFER_SYNTAXES: tuple[str, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def _context_keys(header: _Header) -> list[tuple[str, str]]:
    """The (SOP class, transfer syntax) contexts a file needs, exact one first."""
    exact = (header.sop_class_uid, header.transfer_syntax_uid)
    if _is_convertible(header.transfer_syntax_uid):
        return [exact, (header.sop_class_uid, _FALLBACK)]
    return [exact]


def _contexts_for(headers: Sequence[_Header]) -> list[tuple[str, list[str]]]:
    """One presentation context per needed (SOP class, syntax), in first-seen order.

    Each exact syntax gets a context of its own, so that the peer cannot pick
    another syntax for it (an acceptor picks one syntax per context, PS3.8
    9.3.3.2); an exact match is preferred over a conversion when sending.
    """
    keys = dict.fromkeys(key for header in headers for key in _context_keys(header))
    return [
        (sop_class, list(FALLBACK_TRANSFER_SYNTAXES) if syntax == _FALLBACK else [syntax]) for sop_class, syntax in keys
    ]


def _batches(items: Sequence[tuple[int, _Header]]) -> list[list[tuple[int, _Header]]]:
    """Split files, in order, so that no batch needs more than MAX_CONTEXTS contexts."""
    batches: list[list[tuple[int, _Header]]] = []
    keys: set[tuple[str, str]] = set()
    for item in items:
        needed = set(_context_keys(item[1]))
        if not batches or len(keys | needed) > MAX_CONTEXTS:
            batches.append([])
            keys = set()
        keys |= needed
        batches[-1].append(item)
    return batches


def _choose_context(contexts: Sequence[PresentationContext], header: _Header) -> PresentationContext | None:
    """The accepted context that carries the file: its own syntax first, else a conversion."""
    usable = [c for c in contexts if c.result == CONTEXT_ACCEPTED and c.abstract_syntax == header.sop_class_uid]
    for context in usable:
        if context.transfer_syntax == header.transfer_syntax_uid:
            return context
    if _is_convertible(header.transfer_syntax_uid):
        for context in usable:
            if context.transfer_syntax in FALLBACK_TRANSFER_SYNTAXES:
                return context
    return None


#: Explicit VR elements with a 2-byte reserved field and a 32-bit length (PS3.5 Table 7.1-1).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_TAG_VR = struct.Struct("<HH2s")


def _data_set_offset(raw: bytes) -> int:
    """Where the data set starts in a Part 10 file: after preamble, ``DICM`` and group 0002 (PS3.10 7.1).

    Raises
    ------
    ValueError
        No ``DICM`` prefix, or a File Meta element running past the end.
    """
    if raw[128:132] == b"DICM":
        offset = 132
    elif raw[:4] == b"DICM":  # preamble left out
        offset = 4
    else:
        raise ValueError("no DICM prefix")
    # File Meta Information is always Explicit VR Little Endian (PS3.10 7.1)
    while offset + 8 <= len(raw):
        group, _element, vr = _TAG_VR.unpack_from(raw, offset)
        if group != 0x0002:
            break
        if vr in _LONG_VRS:
            if offset + 12 > len(raw):
                raise ValueError("truncated File Meta Information")
            offset += 12 + int.from_bytes(raw[offset + 8 : offset + 12], "little")
        else:
            offset += 8 + int.from_bytes(raw[offset + 6 : offset + 8], "little")
        if offset > len(raw):
            raise ValueError("File Meta Information runs past the end of the file")
    return offset


def _data_set(header: _Header, transfer_syntax: UID) -> bytes | memoryview:
    """The file's data set encoded in ``transfer_syntax``: its own bytes when that is its syntax."""
    if transfer_syntax == header.transfer_syntax_uid:
        raw = header.path.read_bytes()
        return memoryview(raw)[_data_set_offset(raw) :]
    # to Explicit or Implicit VR Little Endian only (see _choose_context); pydicom re-encodes
    dataset = read_dataset(header.path)
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = transfer_syntax == ImplicitVRLittleEndian
    write_dataset(buffer, dataset)
    return buffer.getvalue()


#: Presentation context results (PS3.8 Table 9-18) other than acceptance, in words.
_CONTEXT_RESULTS = {1: "user rejection", 2: "no reason (provider rejection)"}


def _not_sent_reason(contexts: Sequence[PresentationContext], header: _Header) -> str:
    """Why no accepted context carries the file, from the peer's answers for its SOP class (PS3.8 9.3.3.2).

    Every context for the SOP class refused as "abstract syntax not supported": the peer does not take
    the SOP class. Some accepted with another syntax (for another file), or refused as "transfer
    syntaxes not supported" (also our reading of an acceptance in a syntax we did not offer): no
    acceptable transfer syntax, the SOP class itself is fine.
    """
    sop_class = header.sop_class_uid.name
    answers = [c for c in contexts if c.abstract_syntax == header.sop_class_uid]
    results = {c.result for c in answers}
    if results == {CONTEXT_ABSTRACT_SYNTAX_NOT_SUPPORTED}:
        return f"SOP class not supported: the peer rejected {sop_class} (abstract syntax not supported)"
    if results & {CONTEXT_ACCEPTED, CONTEXT_TRANSFER_SYNTAXES_NOT_SUPPORTED}:
        offered = [header.transfer_syntax_uid.name]
        if _is_convertible(header.transfer_syntax_uid):
            offered += [UID(s).name for s in FALLBACK_TRANSFER_SYNTAXES if s != header.transfer_syntax_uid]
        accepted = sorted({UID(c.transfer_syntax).name for c in answers if c.result == CONTEXT_ACCEPTED})
        note = f"; it accepts {sop_class} in {', '.join(accepted)} only" if accepted else ""
        recompress = "" if _is_convertible(header.transfer_syntax_uid) else " (the node never re-compresses)"
        return (
            f"no acceptable transfer syntax: the peer accepts {sop_class} in none of "
            f"{', '.join(offered)}{recompress}{note}"
        )
    words = ", ".join(sorted(_CONTEXT_RESULTS.get(r, f"result {r}") for r in results))
    return f"presentation context for {sop_class} rejected by the peer ({words})"


def _send_one(requestor: Requestor, header: _Header, message_id: int) -> StoreOutcome:
    """Send one file and return its outcome.

    Raises
    ------
    AssociationError
        The association was lost (it is closed).
    """
    context = _choose_context(requestor.contexts, header)
    if context is None:
        reason = _not_sent_reason(requestor.contexts, header)
        LOGGER.error("not sending %s to %s: %s", header.sop_instance_uid, requestor.where, reason)
        return StoreOutcome(header.sop_instance_uid, status.SOP_CLASS_NOT_SUPPORTED, reason)
    try:
        data_set = _data_set(header, UID(context.transfer_syntax))
    except (UnreadableDicom, OSError, ValueError, AttributeError, TypeError, struct.error) as exc:
        # this file could not be read (UnreadableDicom) or re-encoded; others may be fine
        LOGGER.error("cannot send %s (%s): %s", header.sop_instance_uid, header.path, exc)
        return StoreOutcome(header.sop_instance_uid, status.CANNOT_UNDERSTAND, f"not sent: file unreadable ({exc})")
    command = encode_c_store_rq(message_id, header.sop_class_uid, header.sop_instance_uid)
    response = requestor.request(context.context_id, command, data_set, message_id)
    return StoreOutcome(header.sop_instance_uid, response.status)


def store_files(
    paths: Sequence[Path],
    *,
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str,
    timeout: float = 30,
    max_pdu: int = 0,
    ssl_context: ssl.SSLContext | None = None,
) -> list[StoreOutcome]:
    """Send DICOM Part 10 files by C-STORE (PS3.4 B.2), as they are stored.

    Parameters
    ----------
    paths : sequence of Path
        Part 10 files (PS3.10 7.1) with File Meta Information.
    host, port, called_ae : str, int, str
        The Storage SCP.
    calling_ae : str
        Our AE title.
    timeout : float, optional
        Seconds for connecting, negotiating and each C-STORE response.
    max_pdu : int, optional
        Maximum PDU length we receive (PS3.8 D.1), i.e. for the responses;
        ``0`` means unlimited. What we send is limited by the peer's maximum.
    ssl_context : ssl.SSLContext, optional
        Client-side TLS context (PS3.15 B.1).

    Returns
    -------
    list of StoreOutcome
        One per path, in the same order.

    Raises
    ------
    AssociationFailed
        If an association could not be established or was lost; its
        ``outcomes`` holds the instances answered before that.
    """
    headers = [_read_header(Path(p)) for p in paths]
    answered: dict[int, StoreOutcome] = {}  # index in paths -> outcome

    def collected() -> list[StoreOutcome]:
        """Outcomes so far, in path order: unreadable files and answered ones."""
        return [
            StoreOutcome("", status.CANNOT_UNDERSTAND, "not sent: not a readable DICOM file")
            if h is None
            else answered[i]
            for i, h in enumerate(headers)
            if h is None or i in answered
        ]

    indexed = [(i, h) for i, h in enumerate(headers) if h is not None]
    for batch in _batches(indexed):
        requestor = _open(
            _contexts_for([h for _, h in batch]),
            host=host,
            port=port,
            called_ae=called_ae,
            calling_ae=calling_ae,
            timeout=timeout,
            ssl_context=ssl_context,
            max_pdu=max_pdu,
            outcomes=collected(),
        )
        with requestor:
            for count, (index, header) in enumerate(batch):
                message_id = count % 0xFFFF + 1  # Message ID is US: 1..65535, may repeat (PS3.7 9.1.1.1.1)
                try:
                    answered[index] = _send_one(requestor, header, message_id)
                except AssociationError as exc:
                    raise AssociationFailed(
                        f"association with {called_ae}@{host}:{port} lost while sending "
                        f"{header.sop_instance_uid}: {exc.reason}",
                        outcomes=collected(),
                    ) from exc
    LOGGER.info(
        "sent %d files to %s@%s:%d: %d succeeded",
        len(headers),
        called_ae,
        host,
        port,
        sum(1 for o in collected() if o.succeeded),
    )
    return collected()
