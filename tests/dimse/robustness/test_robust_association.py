"""Robustness, association establishment: the node in Sta2 (waiting for an A-ASSOCIATE-RQ) and the RQ itself.

Each case names its PS3.8 / PS3.7 clause. The expected answers follow PS3.8 9.2 (state table, Sta2: any PDU
but A-ASSOCIATE-RQ -> AA-1, an A-ABORT -> AA-2), 9.3.2 (the RQ's fields), 9.3.4 (A-ASSOCIATE-RJ) and PS3.7
Annex D (user information). Every case also runs the good peer's C-ECHO during and after it and bounds the
node's RSS (robust_harness.Case).
"""

from __future__ import annotations

import struct

import pytest
from pynetdicom.pdu_items import ImplementationClassUIDSubItem, ImplementationVersionNameSubItem
from robust_harness import (
    ABORT_PDU,
    ASSOCIATE_AC,
    ASSOCIATE_RJ,
    ASSOCIATE_RQ,
    BAD_AE,
    CT,
    EXPLICIT,
    FAR_AE,
    FAR_HOST,
    IMPLICIT,
    LIMITS,
    MARGIN,
    MR,
    NODE_AE,
    P_DATA,
    RELEASE_RP,
    RELEASE_RQ,
    VERIFICATION,
    Case,
    Conn,
    MiB,
    app_context,
    decode_command,
    echo_rq,
    good_rq,
    item,
    message,
    pdu,
    pdu_header,
    pres_context,
    rq_body,
    standard_items,
    user_info,
)

from core.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

pytestmark = pytest.mark.integration

BAD = "127.0.0.2"  # the bad peer's address; the good peer comes from 127.0.0.1
REQUEST_DEADLINE = LIMITS["association_request_timeout"] + MARGIN


def _rq(items: bytes, **kwargs: object) -> bytes:
    return pdu(ASSOCIATE_RQ, rq_body(items, **kwargs))  # type: ignore[arg-type]


def _echo_works(results: dict[int, int], conn: Conn, context_id: int = 1) -> None:
    """Context ``context_id`` was accepted and a C-ECHO on it is answered with success."""
    assert results.get(context_id) == 0, results
    conn.send(message(context_id, echo_rq(5)))
    reply = conn.answer()
    assert reply.kind == "PDATA" and reply.status == 0, f"C-ECHO on the accepted association: {reply}"
    assert int(reply.commands()[0].MessageIDBeingRespondedTo) == 5


# -- Sta2: every PDU but an A-ASSOCIATE-RQ (PS3.8 9.2 state table, Sta2) ----------------------------------------

WRONG_FIRST = {
    "associate-ac": pdu(ASSOCIATE_AC, bytes(70)),
    "associate-rj": pdu(ASSOCIATE_RJ, bytes((0, 1, 1, 1))),
    "p-data": pdu(P_DATA, struct.pack(">LBB", 2 + len(echo_rq()), 1, 3) + echo_rq()),
    "release-rq": pdu(RELEASE_RQ, bytes(4)),
    "release-rp": pdu(RELEASE_RP, bytes(4)),
}


@pytest.mark.parametrize("name", WRONG_FIRST)
def test_sta2_wrong_pdu_is_aborted(case: Case, name: str) -> None:
    """PS3.8 9.2 Sta2, Evt3/Evt4/Evt10/Evt12/Evt13: a PDU other than A-ASSOCIATE-RQ first -> AA-1: A-ABORT, close."""
    conn = case.connect(BAD)
    conn.send(WRONG_FIRST[name])
    case.probe()
    got = case.record(conn.end(REQUEST_DEADLINE))
    assert got.kind == "ABORT", got
    assert got.raw[8] in (0, 2), f"A-ABORT source must be service-user or service-provider: {got}"


def test_sta2_abort_closes_silently(case: Case) -> None:
    """PS3.8 9.2 Sta2, Evt16 (A-ABORT PDU) -> AA-2: close the transport (how TCP closes is not DICOM's), send
    nothing."""
    conn = case.connect(BAD)
    conn.send(ABORT_PDU)
    case.probe()
    got = case.record(conn.end(REQUEST_DEADLINE))
    assert got.kind in ("closed", "reset"), got


@pytest.mark.parametrize("pdu_type", [0x00, 0x08, 0x09, 0x10, 0x7F, 0xFF])
def test_sta2_unknown_pdu_type_is_aborted(case: Case, pdu_type: int) -> None:
    """PS3.8 9.2 Sta2, Evt19 (unrecognised PDU) -> AA-1: A-ABORT (reason unrecognized-PDU when from the provider)."""
    conn = case.connect(BAD)
    conn.send(pdu(pdu_type, bytes(16)))
    case.probe()
    got = case.record(conn.end(REQUEST_DEADLINE))
    assert got.kind == "ABORT", got
    assert got.raw[8] == 0 or got.raw[9] == 1, f"not unrecognized-PDU (PS3.8 Table 9-26): {got}"


@pytest.mark.parametrize("pdu_type", [P_DATA, 0x55])
def test_sta2_huge_declared_length_refused_before_reading(case: Case, pdu_type: int) -> None:
    """Issue 16 'memory before checks': a non-RQ header declaring 2^32-1 bytes is refused from its type alone (PS3.8
    9.2 Sta2 -> AA-1), at once and without allocating the body."""
    conn = case.connect(BAD)
    conn.send(pdu_header(pdu_type, 2**32 - 1))
    case.probe()
    got = case.record(conn.end(MARGIN))
    assert got.kind == "ABORT", got
    assert case.rss_growth < 8 * MiB, f"RSS grew {case.rss_growth / MiB:.1f} MiB"


def test_sta2_associate_rq_declaring_4gib(case: Case) -> None:
    """Issue 16: an A-ASSOCIATE-RQ header declaring 2^32-1 bytes; an RQ is a few KiB (PS3.8 9.3.2): refused (A-ABORT)
    or dropped by the request deadline, never allocated."""
    conn = case.connect(BAD)
    conn.send(pdu_header(ASSOCIATE_RQ, 2**32 - 1) + bytes(1024))
    case.probe()
    got = case.record(conn.end(REQUEST_DEADLINE))
    assert got.kind in ("ABORT", "closed", "reset"), got
    assert got.after < REQUEST_DEADLINE
    assert case.rss_growth < 8 * MiB, f"RSS grew {case.rss_growth / MiB:.1f} MiB"


# -- truncated headers and bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 3, 5])
def test_truncated_header_then_close(case: Case, count: int) -> None:
    """PS3.8 9.1.5 / 9.2 Evt17: the transport closes inside a PDU header; the node closes its side, nothing else."""
    conn = case.connect(BAD)
    conn.send(good_rq()[:count])
    case.probe()
    conn.sock.shutdown(1)  # half-close: the node sees the end of the stream
    got = case.record(conn.end(REQUEST_DEADLINE))
    assert got.kind in ("closed", "reset", "ABORT"), got


@pytest.mark.parametrize("count", [0, 3, 40])
def test_partial_request_held_open_hits_deadline(case: Case, count: int) -> None:
    """Issue 16 slowloris, PS3.8 9.1.5 ARTIM: nothing, part of a header or part of an RQ body, then nothing more:
    the connection ends by the association request deadline."""
    conn = case.connect(BAD)
    conn.send(good_rq()[:count])
    case.probe()
    got = case.record(conn.end(REQUEST_DEADLINE + 1))
    assert got.ended, got
    assert got.after <= REQUEST_DEADLINE, got


def test_truncated_rq_body_then_close(case: Case) -> None:
    """PS3.8 9.2 Evt17 in Sta2: the RQ stops 10 bytes short and the transport closes; nothing is negotiated."""
    conn = case.connect(BAD)
    conn.send(good_rq()[:-10])
    case.probe()
    conn.sock.shutdown(1)
    got = case.record(conn.end(REQUEST_DEADLINE))
    assert got.kind in ("closed", "reset", "ABORT"), got


# -- lengths inconsistent with items (PS3.8 9.3.2, 9.3.1: an invalid PDU -> A-ABORT) -----------------------

INCONSISTENT = {
    "body-shorter-than-fixed-fields": pdu(ASSOCIATE_RQ, bytes(10)),
    "item-runs-past-pdu": pdu(ASSOCIATE_RQ, rq_body(app_context() + struct.pack(">BxH", 0x20, 500) + bytes(8))),
    "context-subitem-past-item": pdu(
        ASSOCIATE_RQ,
        rq_body(
            app_context() + item(0x20, bytes((1, 0, 0, 0)) + struct.pack(">BxH", 0x30, 200) + b"1.2") + user_info()
        ),
    ),
    "user-subitem-past-item": pdu(
        ASSOCIATE_RQ,
        rq_body(app_context() + pres_context(1, VERIFICATION) + item(0x50, struct.pack(">BxH", 0x51, 100) + bytes(4))),
    ),
    "truncated-item-header": pdu(ASSOCIATE_RQ, rq_body(app_context() + pres_context(1, VERIFICATION) + b"\x50\x00")),
    "max-length-subitem-2-bytes": pdu(
        ASSOCIATE_RQ, rq_body(app_context() + pres_context(1, VERIFICATION) + item(0x50, item(0x51, b"\x40\x00")))
    ),
    "context-item-3-bytes": pdu(ASSOCIATE_RQ, rq_body(app_context() + item(0x20, b"\x01\x00\x00") + user_info())),
}


@pytest.mark.parametrize("name", INCONSISTENT)
def test_inconsistent_lengths_are_aborted(case: Case, name: str) -> None:
    """PS3.8 9.3.1/9.3.2: an A-ASSOCIATE-RQ whose lengths disagree with its items is an invalid PDU: A-ABORT (or an
    A-ASSOCIATE-RJ), never an association."""
    conn = case.connect(BAD)
    conn.send(INCONSISTENT[name])
    case.probe()
    got = case.record(conn.answer(REQUEST_DEADLINE))
    assert got.kind in ("ABORT", "RJ"), got


def test_declared_length_longer_than_rq_sent(case: Case) -> None:
    """PS3.8 9.3.1: a PDU length 100 bytes past what was sent; the node waits for the rest, then the request
    deadline ends the connection (no association from a partial RQ)."""
    raw = good_rq()
    conn = case.connect(BAD)
    conn.send(pdu_header(ASSOCIATE_RQ, len(raw) - 6 + 100) + raw[6:])
    case.probe()
    got = case.record(conn.end(REQUEST_DEADLINE + 1))
    assert got.ended and got.kind != "RJ", got
    assert got.after <= REQUEST_DEADLINE


def test_trailing_garbage_in_rq(case: Case) -> None:
    """PS3.8 9.3.1: 7 bytes after the last item, too short for an item header: an invalid PDU (A-ABORT or RJ)."""
    conn = case.connect(BAD)
    conn.send(_rq(standard_items() + b"\x99\x00\x00\x10abc"))
    case.probe()
    got = case.record(conn.end(REQUEST_DEADLINE))
    assert got.kind in ("ABORT", "RJ"), got


# -- A-ASSOCIATE-RQ fields (PS3.8 9.3.2, 9.3.4 Table 9-21) ----------------------------------------------------

REJECTIONS = {
    # name: (RQ, (result, source, reason))
    "protocol-version-0": (_rq(standard_items(), version=0), (1, 2, 2)),
    "protocol-version-2-only": (_rq(standard_items(), version=2), (1, 2, 2)),
    "wrong-application-context": (
        _rq(app_context("1.2.3.4") + pres_context(1, VERIFICATION) + user_info()),
        (1, 1, 2),
    ),
    "called-ae-wrong": (_rq(standard_items(), called="OTHERNODE"), (1, 1, 7)),
    "called-ae-empty": (_rq(standard_items(), called=b" " * 16), (1, 1, 7)),
    "called-ae-lowercase": (_rq(standard_items(), called="ainode"), (1, 1, 7)),
    "calling-ae-not-allowed": (_rq(standard_items(), calling="INTRUDER"), (1, 1, 3)),
    "calling-ae-empty": (_rq(standard_items(), calling=b" " * 16), (1, 1, 3)),
    "calling-ae-nul-bytes": (_rq(standard_items(), calling=b"\x00" * 16), (1, 1, 3)),
    "calling-ae-control-chars": (_rq(standard_items(), calling=b"PA\x1bCS\n" + b" " * 10), (1, 1, 3)),
    "calling-ae-allowed-from-another-address": (_rq(standard_items(), calling=FAR_AE), (1, 1, 3)),
}


@pytest.mark.parametrize("name", REJECTIONS)
def test_rq_rejected(case: Case, name: str) -> None:
    """PS3.8 9.3.4 Table 9-21 and 9.3.2 (protocol version bit 0, application context, AE titles, 7.1.1 access
    control): A-ASSOCIATE-RJ with the result, source and reason of the table."""
    raw, (result, source, reason) = REJECTIONS[name]
    conn = case.connect(BAD)
    conn.send(raw)
    case.probe()
    got = case.record(conn.end(REQUEST_DEADLINE))
    assert got.is_rj(result, source, reason), f"expected RJ {result}/{source}/{reason}, got {got}"


MALFORMED_CONTENT = {
    "no-presentation-context": app_context() + user_info(),
    "no-user-information": app_context() + pres_context(1, VERIFICATION),
    "no-application-context": pres_context(1, VERIFICATION) + user_info(),
    "no-max-length-subitem": app_context() + pres_context(1, VERIFICATION) + item(0x50, item(0x52, b"1.2.3")),
    "context-without-transfer-syntax": app_context()
    + item(0x20, b"\x01\x00\x00\x00" + item(0x30, b"1.2"))
    + user_info(),
    "context-without-abstract-syntax": app_context()
    + item(0x20, b"\x01\x00\x00\x00" + item(0x40, IMPLICIT.encode()))
    + user_info(),
}


@pytest.mark.parametrize("name", MALFORMED_CONTENT)
def test_rq_missing_mandatory_item(case: Case, name: str) -> None:
    """PS3.8 9.3.2: the variable field holds one Application Context item, one or more Presentation Context items
    (each one abstract syntax, one or more transfer syntaxes) and one User Information item with its Maximum Length
    sub-item (PS3.8 D.1). Without one: an invalid PDU -> A-ABORT, or a permanent RJ; no usable association."""
    conn = case.connect(BAD)
    conn.send(_rq(MALFORMED_CONTENT[name]))
    case.probe()
    got = case.record(conn.answer(REQUEST_DEADLINE))
    if got.kind == "AC":  # only tolerable when nothing can be used: every context refused
        assert all(result != 0 for result in got.context_results().values()), got.context_results()
    else:
        assert got.kind == "ABORT" or got.is_rj(1), got


def test_protocol_version_with_extra_bits_accepted(case: Case) -> None:
    """PS3.8 9.3.2: only bit 0 of the protocol version is tested; 0x0003 is accepted."""
    conn = case.connect(BAD)
    got = case.record(conn.associate(_rq(standard_items(), version=3)))
    case.probe()
    _echo_works(got.context_results(), conn)


@pytest.mark.parametrize("context_id", [2, 0, 254])
def test_even_or_zero_context_id_not_usable(case: Case, context_id: int) -> None:
    """PS3.8 9.3.2.2: presentation context IDs are odd integers 1-255. An even or zero ID is not accepted: A-ABORT,
    RJ, or an AC that refuses that context."""
    conn = case.connect(BAD)
    conn.send(_rq(standard_items(pres_context(context_id, VERIFICATION), pres_context(1, VERIFICATION))))
    case.probe()
    got = case.record(conn.answer(REQUEST_DEADLINE))
    if got.kind == "AC":
        assert got.context_results().get(context_id, 1) != 0, got.context_results()
    else:
        assert got.kind == "ABORT" or got.is_rj(1), got


def test_duplicate_context_ids(case: Case) -> None:
    """PS3.8 9.3.2.2: context IDs are unique within an association. Two contexts 1: refused (A-ABORT/RJ) or
    answered once for the ID (an AC with ID 1 twice would leave the peer guessing which was accepted)."""
    conn = case.connect(BAD)
    conn.send(_rq(standard_items(pres_context(1, VERIFICATION), pres_context(1, CT, (EXPLICIT,)))))
    case.probe()
    got = case.record(conn.answer(REQUEST_DEADLINE))
    if got.kind == "AC":
        ids = [cx.context_id for cx in got.accepted().presentation_context]
        assert ids.count(1) == 1, ids
    else:
        assert got.kind == "ABORT" or got.is_rj(1), got


@pytest.mark.parametrize("max_pdu", [0, 2**32 - 1, 4096])
def test_max_length_values(case: Case, max_pdu: int) -> None:
    """PS3.8 D.1: Maximum Length 0 means unlimited, 2^32-1 is legal, 4096 small: each is accepted and the node's
    responses respect it (every P-DATA-TF it sends is at most that long)."""
    conn = case.connect(BAD)
    got = case.record(conn.associate(_rq(standard_items(max_pdu=max_pdu))))
    case.probe()
    _echo_works(got.context_results(), conn)


def test_tiny_max_length_fragments_response(case: Case) -> None:
    """PS3.8 D.1, 9.3.5: the requestor receives P-DATA-TF PDUs of at most 32 bytes; the node's C-ECHO-RSP (about 90
    bytes of command) arrives in fragments that each fit."""
    conn = case.connect(BAD)
    conn.associate(_rq(standard_items(max_pdu=32)))
    conn.send(message(1, echo_rq(9)))
    case.probe()
    parts, last = b"", False
    while not last:
        got = conn.answer()
        assert got.kind == "PDATA", got
        assert len(got.raw) - 6 <= 32, f"P-DATA-TF of {len(got.raw) - 6} bytes for a 32-byte maximum"
        control = got.raw[11]
        parts += got.raw[12:]
        last = bool(control & 0x02)
    command = decode_command(parts)
    case.record(f"C-ECHO-RSP in fragments, status 0x{int(command.Status):04X}")
    assert int(command.Status) == 0


UNKNOWN_SUBITEMS = {
    "unknown-user-subitem": item(0x5F, b"whatever"),
    "unknown-user-subitem-ff": item(0xFF, bytes(300)),
    "user-identity-username": item(0x58, b"\x01\x01" + struct.pack(">H", 5) + b"alice" + struct.pack(">H", 0)),
    "user-identity-kerberos-60k": item(0x58, b"\x03\x01" + struct.pack(">H", 60000) + bytes(60000) + bytes(2)),
    "async-ops-window": item(0x53, struct.pack(">HH", 0, 0)),
    "role-selection-scu-scp": item(0x54, struct.pack(">H", len(CT)) + CT.encode() + b"\x01\x01"),
    "role-selection-unproposed-class": item(0x54, struct.pack(">H", len(MR)) + MR.encode() + b"\x00\x01"),
    "extended-negotiation": item(0x56, struct.pack(">H", len(CT)) + CT.encode() + b"\x01\x00\x00"),
    "implementation-version-name": item(0x55, b"SOMEPEER_1"),
}


@pytest.mark.parametrize("name", UNKNOWN_SUBITEMS)
def test_optional_user_subitems_tolerated(case: Case, name: str) -> None:
    """PS3.7 D.3.3 (user information sub-items: role selection, asynchronous operations, user identity D.3.3.7,
    extended negotiation) and unknown sub-items: an acceptor that does not support one ignores it; the association
    is accepted and C-ECHO works."""
    contexts = (pres_context(1, VERIFICATION), pres_context(3, CT, (IMPLICIT,)))
    conn = case.connect(BAD)
    got = case.record(conn.associate(_rq(standard_items(*contexts, extra=UNKNOWN_SUBITEMS[name]))))
    case.probe()
    _echo_works(got.context_results(), conn)


def test_unknown_item_type_ignored(case: Case) -> None:
    """PS3.8 9.3.1: items of unrecognised types are ignored and skipped; the association is accepted."""
    conn = case.connect(BAD)
    got = case.record(
        conn.associate(_rq(app_context() + item(0x33, b"junk") + pres_context(1, VERIFICATION) + user_info()))
    )
    case.probe()
    _echo_works(got.context_results(), conn)


@pytest.mark.parametrize(
    ("abstract", "transfers", "result"),
    [("1.2.3.4.5.6", (IMPLICIT,), 3), (VERIFICATION, ("1.2.3.4.5.6",), 4), (CT, ("1.2.840.10008.1.2.99",), 4)],
    ids=["unknown-abstract-syntax", "unknown-transfer-syntax", "unknown-transfer-syntax-ct"],
)
def test_context_refused_with_reason(case: Case, abstract: str, transfers: tuple[str, ...], result: int) -> None:
    """PS3.8 9.3.3.2: a context is refused with result 3 (abstract syntax not supported) or 4 (transfer syntaxes not
    supported); the other contexts stay usable."""
    conn = case.connect(BAD)
    got = case.record(
        conn.associate(_rq(standard_items(pres_context(1, VERIFICATION), pres_context(3, abstract, transfers))))
    )
    case.probe()
    results = got.context_results()
    assert results.get(3) == result, results
    _echo_works(results, conn)


@pytest.mark.parametrize(
    "sop_class",
    ["1.2.840.10008.5.1.4.1.1.6", "1.2.840.10008.5.1.4.1.1.3", "1.2.840.10008.5.1.4.1.1.5"],
    ids=["retired-us", "retired-us-multiframe", "retired-nm"],
)
def test_retired_storage_classes_accepted(case: Case, sop_class: str) -> None:
    """Issue 16: retired storage SOP classes still in use (US 1.1.6, US multi-frame 1.1.3, NM 1.1.5), which DCMTK's
    storescp accepts, are accepted (PS3.8 9.3.3.2 result 0)."""
    conn = case.connect(BAD)
    got = case.record(conn.associate(_rq(standard_items(pres_context(1, VERIFICATION), pres_context(3, sop_class)))))
    case.probe()
    assert got.context_results().get(3) == 0, got.context_results()


def test_128_contexts(case: Case) -> None:
    """PS3.8 9.3.2.2: up to 128 presentation contexts (odd IDs 1-255) in one RQ: all answered, C-ECHO works."""
    contexts = [pres_context(1, VERIFICATION)] + [pres_context(i, CT, (EXPLICIT, IMPLICIT)) for i in range(3, 256, 2)]
    conn = case.connect(BAD)
    got = case.record(conn.associate(_rq(standard_items(*contexts))))
    case.probe()
    results = got.context_results()
    assert len(results) == 128, len(results)
    _echo_works(results, conn)


def test_implementation_identity_in_ac(case: Case) -> None:
    """Issue 16, PS3.7 D.3.3.2: the A-ASSOCIATE-AC names ainode's own Implementation Class UID and version name
    (core.identity), not pynetdicom's."""
    conn = case.connect(BAD)
    got = conn.associate(good_rq())
    case.probe()
    ac = got.accepted()
    uid = version = None
    assert ac.user_information is not None
    for sub in ac.user_information.user_data:
        if isinstance(sub, ImplementationClassUIDSubItem):
            uid = str(sub.implementation_class_uid)
        elif isinstance(sub, ImplementationVersionNameSubItem):
            raw = sub.implementation_version_name
            version = raw.decode() if isinstance(raw, bytes) else str(raw)
    case.record(f"AC implementation {uid} {version}")
    assert uid == IMPLEMENTATION_CLASS_UID
    assert version == IMPLEMENTATION_VERSION_NAME


def test_valid_rq_byte_by_byte(case: Case) -> None:
    """PS3.8 9.3.1: TCP may deliver an RQ in any pieces; one sent a byte at a time (quickly) is accepted."""
    conn = case.connect(BAD)
    for byte in good_rq():
        conn.send(bytes((byte,)))
    case.probe()
    got = case.record(conn.answer())
    assert got.kind == "AC", got


def test_second_rq_after_ac_is_aborted(case: Case) -> None:
    """PS3.8 9.2 Sta6, Evt6 (A-ASSOCIATE-RQ received) -> AA-8: A-ABORT, source service-provider, unexpected-PDU."""
    conn = case.connect(BAD)
    conn.associate()
    conn.send(good_rq())
    case.probe()
    got = case.record(conn.end(REQUEST_DEADLINE))
    assert got.is_abort(2, 2), got


def test_far_peer_accepted_from_its_address(case: Case) -> None:
    """PS3.8 7.1.1 (access control), issue 16: the FARAWAY peer is allowed only from its own address; from that
    address it is accepted."""
    conn = case.connect(FAR_HOST)
    got = case.record(conn.associate(_rq(standard_items(), calling=FAR_AE)))
    case.probe()
    _echo_works(got.context_results(), conn)


def test_abort_right_after_rq(case: Case) -> None:
    """PS3.8 9.2 Sta3/Sta6, Evt16: A-ABORT sent right behind the RQ; the node closes without error."""
    conn = case.connect(BAD)
    conn.send(good_rq() + ABORT_PDU)
    case.probe()
    got = case.record(conn.end(REQUEST_DEADLINE))
    assert got.kind in ("closed", "reset", "AC"), got  # the AC may already be on its way


def test_rq_then_close_before_answer(case: Case) -> None:
    """PS3.8 9.2 Evt17: the requestor closes right after its RQ; the node sends into a closed connection without
    harm and frees the association slot (the echo after the case needs it)."""
    conn = case.connect(BAD)
    conn.send(good_rq())
    conn.close()
    case.probe()
    case.record("closed by the peer")


def test_calling_ae_padded_with_leading_spaces(case: Case) -> None:
    """PS3.8 9.3.2: leading and trailing spaces of an AE title are not significant; '  PACS' is PACS."""
    conn = case.connect(BAD)
    got = case.record(
        conn.associate(_rq(standard_items(), calling=b"   " + BAD_AE.encode() + b" " * (13 - len(BAD_AE))))
    )
    case.probe()
    _echo_works(got.context_results(), conn)


def test_called_ae_is_ours(case: Case) -> None:
    """PS3.8 9.3.2: the RQ's Called AE title is ours; the AC echoes it (and the calling title) back."""
    conn = case.connect(BAD)
    got = conn.associate()
    case.probe()
    ac = got.accepted()
    called = ac.called_ae_title.strip() if isinstance(ac.called_ae_title, str) else ac.called_ae_title.decode().strip()
    case.record(f"AC called {called}")
    assert called == NODE_AE
