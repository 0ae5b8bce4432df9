"""Crashes: SIGKILL the node at random moments while instances stream in, and restart it, repeatedly.

The promise under test (README, "What happens to a study"): every instance
answered with success is on disk and in the database afterwards, every
series ends analysed, every result reaches the destination (a real
Orthanc), and no job or delivery is left in flight. The full size (1,000
instances, 20 kills) runs in ``bench/soak.py``.

The node runs on its shipped defaults, the poison-job guard included: a job
the node died during three times is failed with that reason instead of being
tried forever. Such a series is not lost (its instances stay in the spool and
``ainode jobs --state failed`` names it), and is allowed here only with that
recorded reason. The first kills wait for the node to be receiving, analysing
and delivering, so that each hand-off is hit.
"""

from __future__ import annotations

from pathlib import Path

from tests.helpers import OrthancServer
from tests.integration.soakkit import crash_scenario

INSTANCES, KILLS = 200, 5
PHASES = ("receive", "analysis", "delivery")


def test_sigkill_at_random_moments_loses_nothing_acknowledged(tmp_path: Path, orthanc: OrthancServer) -> None:
    tally = crash_scenario(
        tmp_path,
        orthanc,
        INSTANCES,
        KILLS,
        series_size=5,
        pause=0.01,
        seed=5,
        timeout=240,
        shipped_defaults=True,
        phases=PHASES,
    )
    assert tally.kills == KILLS
    assert set(PHASES) <= set(tally.kill_phases), tally.kill_phases  # every hand-off was hit
    assert tally.acknowledged == tally.sent == INSTANCES, tally
    # Spool files and database rows agree, and hold every acknowledged instance once.
    assert tally.stored == tally.db_rows == INSTANCES, tally
    assert tally.lost == 0, tally
    # Every series ends analysed by a finished job, or failed by the poison-job guard with its reason.
    assert tally.routed_series == INSTANCES // 5, tally
    assert all("the node stopped during this job" in reason and "given up" in reason for reason in tally.given_up), (
        tally.given_up
    )
    assert tally.analysed + len(tally.given_up) == tally.routed_series, tally
    # Every result (superseded ones too) is in Orthanc.
    assert tally.results >= tally.analysed and tally.delivered == tally.results, tally
    assert tally.stuck == [], tally.stuck
