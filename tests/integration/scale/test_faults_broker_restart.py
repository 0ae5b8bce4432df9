"""RabbitMQ restarted while jobs are queued and running (issue 17): nothing is lost, workers reconnect.

One receiver and two workers; radiographs (one study each) arrive; while some jobs are still queued on the
broker and some run, the broker is stopped for two seconds and started again on its data (Celery's queues are
durable and its messages persistent). Every study then has exactly one SR in Orthanc, and studies sent after
the restart are analysed by the same worker processes, which reconnected by themselves. No log holds a
traceback, and each process says the restart in a few lines (Celery's retry per attempt is one line per outage).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from node.db import JobState
from tests.helpers import radiograph_copies, storescu
from tests.integration.scale.cluster import Cluster, Services
from tests.integration.scale.quiet import assert_quiet_fault, mark
from tests.integration.scale.studies import assert_one_sr_per_study, study_uids

pytestmark = pytest.mark.integration

BEFORE = 16
AFTER = 4
#: The receiver's lines for the restart: the publisher's "broker unreachable".
RECEIVER_LINES = 2
#: A worker's: the connection lost, the first failed reconnection, and an unacknowledged message per running job.
WORKER_LINES = 4


def test_broker_restart_loses_nothing_and_workers_reconnect(
    services: Services, cluster: Callable[..., Cluster], tmp_path: Path, rg1_uncr: Path
) -> None:
    kit = cluster(services)
    receiver = kit.add_receiver()
    workers = kit.add_workers(2)
    before = radiograph_copies(rg1_uncr, tmp_path / "before", BEFORE)
    sent = storescu(before, "127.0.0.1", receiver.port, "AINODE")
    assert sent.returncode == 0 and "E: " not in sent.stderr, sent.stderr

    def busy_and_backlogged() -> bool:
        states = [j.state for j in kit.jobs()]
        return JobState.QUEUED in states and any(s != JobState.QUEUED for s in states)

    kit.wait("jobs both started and still queued", busy_and_backlogged, 60)
    queued = sum(j.state == JobState.QUEUED for j in kit.jobs())
    quiet_since = mark(kit)
    services.rabbitmq.restart(down_seconds=2)

    after = radiograph_copies(rg1_uncr, tmp_path / "after", AFTER)
    sent = storescu(after, "127.0.0.1", receiver.port, "AINODE")
    assert sent.returncode == 0 and "E: " not in sent.stderr, sent.stderr
    kit.wait_jobs(BEFORE + AFTER, timeout=180)
    kit.wait_delivered(timeout=120)

    jobs = kit.jobs()
    assert queued > 0
    assert len(jobs) == BEFORE + AFTER and all(j.state == JobState.DONE for j in jobs), kit.diagnostics()
    assert all(w.alive for w in workers), "a worker exited instead of reconnecting:\n" + kit.diagnostics()
    later = {j.worker for j in jobs if j.study_uid in study_uids(after)}
    assert all(any(w.owns(int(str(pid).rsplit(":", 1)[1])) for w in workers) for pid in later), later
    assert_one_sr_per_study(services.orthanc, study_uids(before + after))
    assert_quiet_fault(kit, quiet_since, RECEIVER_LINES, WORKER_LINES)
