"""Robustness, the largest PDU: a node configured with the largest maximum PDU length, 2^32-1 (issue 16: with
``max_pdu: 0`` one header declaring 2^32-1 took RSS to 4.5 GB, the body being allocated from the length field).

A P-DATA-TF that long is legal here, so the node must read it in bounded chunks and stream its data set to disk:
its RSS stays bounded however far into the PDU the peer gets. ``max_pdu: 0`` itself is refused at start-up with a
clear message (no traceback).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from raw_peer import p_data
from robust_harness import (
    CT,
    IMPLICIT,
    LIMITS,
    MARGIN,
    P_DATA,
    Case,
    Conn,
    MiB,
    RobustNode,
    data_set,
    good_rq,
    pdu_header,
    running_node,
    store_rq,
)

from tests.integration.nodeproc import NodeProcess

pytestmark = pytest.mark.integration

LARGEST = 2**32 - 1
SOP = "1.2.826.0.1.3680043.8.498.99.200"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RobustNode]:
    """This module's node: the suite's limits and max_pdu 2^32-1 (overrides conftest's ``node``)."""
    with running_node(tmp_path_factory.mktemp("robust-huge-pdu"), max_pdu=LARGEST) as started:
        yield started


def _start_huge_store(case: Case, source: str, sop: str) -> tuple[Conn, int]:
    """Associate, send a C-STORE command, then the header of a 2^32-1-byte P-DATA-TF with one PDV and the start of
    the data set; returns the connection and the bytes of the PDU still to come."""
    conn = case.connect(source)
    conn.associate(good_rq(((1, CT, (IMPLICIT,)),), max_pdu=65536))
    conn.send(p_data(1, store_rq(CT, sop), command=True, last=True))
    head = data_set(CT, sop) + struct.pack("<HHL", 0x7FE0, 0x0010, LARGEST - 4 - 2 - len(data_set(CT, sop)) - 8)
    conn.send(pdu_header(P_DATA, LARGEST) + struct.pack(">LBB", LARGEST - 4, 1, 0x02) + head)
    return conn, LARGEST - 6 - len(head)


def test_largest_pdu_read_in_chunks(case: Case) -> None:
    """Issue 16 (bodies read in bounded chunks): 96 MiB into a 2^32-1-byte P-DATA-TF, then the connection closes:
    RSS growth under 64 MiB, nothing stored, no partial file."""
    conn, _left = _start_huge_store(case, "127.0.12.1", SOP)
    zeros = bytes(1 << 20)
    for _ in range(96):
        if not conn.send(zeros):
            break
    case.probe()
    conn.close()
    case.record(f"96 MiB of a {LARGEST}-byte PDU, closed by the peer")
    assert case.rss_growth < 64 * MiB, f"RSS grew {case.rss_growth / MiB:.0f} MiB"


def test_largest_pdu_stalled(case: Case) -> None:
    """Issue 16: 8 MiB into a 2^32-1-byte P-DATA-TF, then nothing: aborted by the DIMSE timeout, RSS bounded."""
    conn, _left = _start_huge_store(case, "127.0.12.2", SOP + ".1")
    conn.send(bytes(8 * MiB))
    case.probe()
    got = case.record(conn.end(LIMITS["dimse_timeout"] + MARGIN))
    assert got.kind in ("ABORT", "closed", "reset"), got
    assert case.rss_growth < 64 * MiB, f"RSS grew {case.rss_growth / MiB:.0f} MiB"


def test_max_pdu_zero_refused_at_start(tmp_path: Path) -> None:
    """Issue 16: ``max_pdu: 0`` (formerly 'unlimited', which let one header allocate 4 GiB) is refused in the
    configuration: ``ainode serve`` exits naming the setting, without a traceback."""
    process = NodeProcess(tmp_path, max_pdu=0)
    try:
        with pytest.raises(RuntimeError) as failed:
            process.start(timeout=30)
    finally:
        process.stop()  # a node that started after all must not outlive the test
    log = process.log()
    assert "max_pdu" in log, log
    assert "Traceback" not in log, log
    assert "exited" in str(failed.value)
