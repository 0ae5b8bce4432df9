"""Load: several DCMTK storescu processes at once against a real node process.

Every instance is stored exactly once (spool files = database rows = sent),
every chest series is analysed by exactly one job, and it answers C-ECHO within a
second throughout (memory per instance: ``test_memory_growth.py``). The full size
(10 senders × 200) runs in ``bench/soak.py``.
"""

from __future__ import annotations

from pathlib import Path

from tests.integration.soakkit import load_scenario

SENDERS, PER_SENDER, SERIES_SIZE = 4, 50, 10


def test_concurrent_senders_every_instance_stored_once_and_every_series_analysed_once(tmp_path: Path) -> None:
    tally = load_scenario(tmp_path, SENDERS, PER_SENDER, SERIES_SIZE, timeout=120)
    sent = SENDERS * PER_SENDER
    dx_series = SENDERS * ((PER_SENDER // SERIES_SIZE + 1) // 2)
    assert tally.sent == tally.acknowledged == sent, tally
    assert tally.stored == tally.db_rows == sent, tally
    assert tally.lost == 0 and tally.duplicates == 0, tally
    assert tally.series == sent // SERIES_SIZE, tally
    assert tally.jobs == tally.routed_series == tally.analysed == dx_series, tally  # once each
    assert tally.stuck == [], tally.stuck
    assert tally.echoes >= 5 and tally.echo_failures == 0, tally
    assert tally.echo_max_seconds < 1.0, tally
    assert tally.peak_rss_mb > 0, tally  # sampled; its growth per instance is tested in test_memory_growth.py
