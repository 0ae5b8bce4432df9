"""Robustness, resources: slowloris, connection floods, the association limit and memory (issue 16, 'Why').

The node runs with short timers and small caps (robust_harness.LIMITS, MAX_ASSOCIATIONS), so each case runs in
seconds. The bad peers connect from other loopback addresses than the good peer (127.0.0.1), as other hosts would.
Expected: a deadline for the whole A-ASSOCIATE-RQ that trickling does not extend (PS3.8 9.1.5 ARTIM, issue 16);
connections over the negotiating caps or over max_associations get A-ASSOCIATE-RJ rejected-transient,
service-provider (presentation), local-limit-exceeded (PS3.8 Table 9-21), never a reset; an established peer's
C-ECHO is never blocked; memory stays bounded whatever a header declares or a data set weighs.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import pytest
from raw_peer import p_data
from robust_harness import (
    ASSOCIATE_RQ,
    CT,
    IMPLICIT,
    LIMITS,
    MARGIN,
    MAX_ASSOCIATIONS,
    P_DATA,
    VERIFICATION,
    Answer,
    Case,
    MiB,
    answers_of,
    data_set,
    good_rq,
    many,
    pdu_header,
    store_rq,
    summary,
    trickle,
)

pytestmark = pytest.mark.integration

DEADLINE = LIMITS["association_request_timeout"]
PER_ADDRESS = LIMITS["max_negotiating_per_address"]
TOTAL = LIMITS["max_negotiating"]
MAX_DATA_SET = LIMITS["max_dataset_size"]
T = TypeVar("T")


def _while_probing(case: Case, work: Callable[[], T], *, fresh: bool = True) -> T:
    """Run ``work`` in a thread; meanwhile the good peer echoes every half second (held associations, and a new
    one when ``fresh``). Returns what ``work`` returned."""
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as exc:  # handed to the test's thread
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(0.3)  # let the bad connections settle in the node first
    while True:
        case.probe(fresh=fresh)
        thread.join(0.5)
        if not thread.is_alive():
            break
    if failure:
        raise failure[0]
    return result[0]


def _addresses(prefix: str, count: int) -> list[str]:
    return [f"{prefix}.{i}" for i in range(1, count + 1)]


# -- slowloris in the A-ASSOCIATE-RQ (issue 16: 130 trickling connections locked C-ECHO out) --------------------


def test_slowloris_over_per_address_cap(case: Case) -> None:
    """3 x max_negotiating_per_address connections from one address trickle an RQ at a byte per 0.3 s: those over
    the cap get a transient RJ at once, the others end by the request deadline though they keep sending; a new
    C-ECHO from another address works all along."""
    count = 3 * PER_ADDRESS
    with many(case, count, ["127.0.2.1"]) as conns:
        answers = _while_probing(case, lambda: trickle(conns, good_rq(), interval=0.3, duration=DEADLINE + 2 * MARGIN))
    case.record(summary(answers))
    rejected = [a for a in answers if a.transient_rj]
    assert len(rejected) >= count - PER_ADDRESS, summary(answers)
    for a in rejected:
        assert a.after < MARGIN, f"over-cap rejection after {a.after:.1f} s"
    for a in answers:
        assert a.kind != "silent" and a.after <= DEADLINE + MARGIN, summary(answers)
        assert a.transient_rj or a.kind in ("ABORT", "closed", "reset"), summary(answers)


def test_slowloris_over_total_cap(case: Case) -> None:
    """max_negotiating + 8 connections from 5 addresses (each within its per-address cap) trickle RQs: the ones over
    the total cap get a transient RJ, all end by the deadline; the good peer's established association echoes
    throughout (the cap never blocks an established peer)."""
    held = case.hold()
    count = TOTAL + 8
    with many(case, count, _addresses("127.0.3", 5)) as conns:
        answers = _while_probing(
            case, lambda: trickle(conns, good_rq(), interval=0.3, duration=DEADLINE + 2 * MARGIN), fresh=False
        )
    case.record(summary(answers))
    assert held.echo() == 0
    assert sum(a.transient_rj for a in answers) >= count - TOTAL, summary(answers)
    assert all(a.kind != "silent" and a.after <= DEADLINE + MARGIN for a in answers), summary(answers)


@pytest.mark.parametrize(
    ("interval", "count"), [(0.2, 3), (1.0, 2)], ids=["rq-body-5-bytes-a-second", "header-1-byte-a-second"]
)
def test_slowloris_within_caps_hits_deadline(case: Case, interval: float, count: int) -> None:
    """PS3.8 9.1.5, issue 16: trickling does not extend the deadline (the 30 s timer reset on every read).
    Connections within the caps trickling an RQ (5 bytes a second: into its body; 1 a second: still in its 6-byte
    header) end by the request deadline, none rejected, and C-ECHO works meanwhile."""
    with many(case, count, [f"127.0.4.{count}"]) as conns:
        answers = _while_probing(
            case, lambda: trickle(conns, good_rq(), interval=interval, duration=DEADLINE + 2 * MARGIN)
        )
    case.record(summary(answers))
    for a in answers:
        assert a.kind in ("ABORT", "closed", "reset") and a.after <= DEADLINE + MARGIN, summary(answers)


# -- floods and the association limit ------------------------------------------------------------------------


def test_idle_flood(case: Case) -> None:
    """Issue 16 (C-ECHO failed for ~30 s after 200 idle connections; over the limit, a TCP reset): 60 bare
    connections from 6 addresses that never send. Each gets a transient RJ or is closed by the request deadline,
    none is reset; the established peer echoes meanwhile and a new C-ECHO works right after."""
    case.hold()
    with many(case, 60, _addresses("127.0.6", 6)) as conns:
        answers = _while_probing(case, lambda: answers_of(conns, DEADLINE + 2 * MARGIN), fresh=False)
    case.record(summary(answers))
    assert all(a.transient_rj or a.kind in ("closed", "ABORT") for a in answers), summary(answers)
    assert case.node.echo() == 0, "C-ECHO right after the flood"


def test_over_max_associations(case: Case) -> None:
    """PS3.8 9.3.4, issue 16: with max_associations established (the good peer's one among them), one more RQ gets
    A-ASSOCIATE-RJ 2/3/2 (transient, local limit exceeded), not a reset; the established peer echoes."""
    case.hold()
    for _ in range(MAX_ASSOCIATIONS - 1):
        case.associated(source="127.0.7.1")
    extra = case.connect("127.0.7.2")
    extra.send(good_rq())
    case.probe(fresh=False)
    got = case.record(extra.answer(MARGIN))
    assert got.transient_rj, got


def test_rejected_transient_then_accepted(case: Case) -> None:
    """PS3.8 9.3.4: a transient rejection means 'try later': once a slot is free the same peer is accepted."""
    held = case.hold()
    conns = [case.associated(source="127.0.7.3") for _ in range(MAX_ASSOCIATIONS - 1)]
    extra = case.connect("127.0.7.4")
    extra.send(good_rq())
    assert extra.answer(MARGIN).transient_rj
    conns[0].close()
    case.probe(fresh=False)
    time.sleep(0.3)
    again = case.connect("127.0.7.4")
    case.record(again.associate())
    assert held.echo() == 0


# -- memory before checks (issue 16: 64 x 16 MiB headers took RSS from 656 MB to 1,543 MB) ----------------------


def _flood_headers(case: Case, header: bytes, count: int, prefix: str) -> list[Answer]:
    with many(case, count, _addresses(prefix, 16)) as conns:
        for conn in conns:
            conn.send(header + bytes(65536))
        return _while_probing(case, lambda: answers_of(conns, DEADLINE + 2 * MARGIN), fresh=False)


def test_64_unassociated_pdata_headers_of_16mib(case: Case) -> None:
    """Issue 16: 64 unassociated P-DATA-TF headers declaring 16 MiB each (and 64 KiB of body): refused from their
    type in Sta2 (A-ABORT) or over a cap (transient RJ); RSS grows less than 64 MiB."""
    case.hold()
    answers = _flood_headers(case, pdu_header(P_DATA, 16 * MiB), 64, "127.0.8")
    case.record(summary(answers))
    assert all(a.kind == "ABORT" or a.transient_rj for a in answers), summary(answers)
    assert case.rss_growth < 64 * MiB, f"RSS grew {case.rss_growth / MiB:.0f} MiB"


def test_64_rq_headers_of_16mib(case: Case) -> None:
    """Issue 16: 64 A-ASSOCIATE-RQ headers declaring 16 MiB (an RQ is a few KiB): refused, rejected over a cap, or
    ended by the deadline; never 64 x 16 MiB of RSS (bound 64 MiB)."""
    case.hold()
    answers = _flood_headers(case, pdu_header(ASSOCIATE_RQ, 16 * MiB), 64, "127.0.9")
    case.record(summary(answers))
    assert all(a.kind in ("ABORT", "closed", "reset") or a.transient_rj for a in answers), summary(answers)
    assert case.rss_growth < 64 * MiB, f"RSS grew {case.rss_growth / MiB:.0f} MiB"


def _pixel_stream(sop: str, size: int) -> tuple[bytes, int]:
    """The start of a CT data set whose Pixel Data (OW, implicit VR) is ``size`` bytes; the caller sends the zeros."""
    head = data_set(CT, sop)
    return head + struct.pack("<HHL", 0x7FE0, 0x0010, size), size


def _send_data(conn_send: Callable[[bytes], bool], context_id: int, head: bytes, size: int, *, last: bool) -> int:
    """Send ``head`` then ``size`` zero bytes as data set fragments; the bytes sent before the node closed."""
    fragment = 16000
    zeros = bytes(fragment)
    conn_send(p_data(context_id, head, command=False, last=False))
    sent = 0
    while sent < size:
        n = min(fragment, size - sent)
        if not conn_send(p_data(context_id, zeros[:n], command=False, last=last and sent + n == size)):
            break
        sent += n
    return sent


def test_data_set_past_max_dataset_size(case: Case) -> None:
    """Issue 16: a data set 8 MiB past max_dataset_size is refused (0xA700 out of resources after its last fragment,
    or A-ABORT), nothing stored, RSS growth under 64 MiB."""
    sop = "1.2.826.0.1.3680043.8.498.99.100"
    conn = case.connect("127.0.10.1")
    conn.associate(good_rq(((1, CT, (IMPLICIT,)), (3, VERIFICATION, (IMPLICIT,))), max_pdu=65536))
    conn.send(p_data(1, store_rq(CT, sop), command=True, last=True))
    head, size = _pixel_stream(sop, MAX_DATA_SET + 8 * MiB)
    _while_probing(case, lambda: _send_data(conn.send, 1, head, size, last=True))
    got = case.record(conn.answer(LIMITS["dimse_timeout"] + MARGIN))
    assert (got.kind == "PDATA" and got.status == 0xA700) or got.is_abort(2), got
    assert case.rss_growth < 64 * MiB, f"RSS grew {case.rss_growth / MiB:.0f} MiB"


def test_fragments_without_last_bit(case: Case) -> None:
    """Issue 16 (320 MiB of fragments without the last bit grew RSS by 270 MB): 3 x max_dataset_size of fragments
    without the last bit, then the connection closes. RSS growth under 64 MiB, nothing stored, no partial file."""
    sop = "1.2.826.0.1.3680043.8.498.99.101"
    conn = case.connect("127.0.10.2")
    conn.associate(good_rq(((1, CT, (IMPLICIT,)),), max_pdu=65536))
    conn.send(p_data(1, store_rq(CT, sop), command=True, last=True))
    head, size = _pixel_stream(sop, 3 * MAX_DATA_SET)
    sent = _while_probing(case, lambda: _send_data(conn.send, 1, head, size, last=False))
    conn.close()
    case.record(f"{sent / MiB:.0f} MiB sent, closed by the peer")
    assert case.rss_growth < 64 * MiB, f"RSS grew {case.rss_growth / MiB:.0f} MiB"


def test_large_valid_store_memory_bounded(case: Case) -> None:
    """Issue 16 (data streamed to the spool file as it arrives): a valid 24 MiB C-STORE under max_dataset_size is
    stored, and the node's RSS grows by less than 32 MiB while receiving it."""
    case.rss_bound = 32 * MiB
    case.stores = True
    sop = "1.2.826.0.1.3680043.8.498.99.102"
    conn = case.connect("127.0.10.3")
    conn.associate(good_rq(((1, CT, (IMPLICIT,)),), max_pdu=65536))
    conn.send(p_data(1, store_rq(CT, sop), command=True, last=True))
    head, size = _pixel_stream(sop, 24 * MiB)
    _while_probing(case, lambda: _send_data(conn.send, 1, head, size, last=True))
    got = case.record(conn.answer(LIMITS["dimse_timeout"] + MARGIN))
    assert got.kind == "PDATA" and got.status == 0, got
    stored = [p for p in case.node.stored() if sop in p.name]
    assert len(stored) == 1 and stored[0].stat().st_size > size, stored
