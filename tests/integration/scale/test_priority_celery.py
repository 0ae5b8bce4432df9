"""Urgent studies first on the Celery executor, and routine work always finishes (issue 17).

- Forty routine chest radiographs are queued and one worker is busy with them; an urgent CTPA (Requested
  Procedure Priority STAT) arrives: it starts before every routine job that had not started yet.
- A routine radiograph older than ``priorities.promote_after`` starts before urgent radiographs that came after
  it (anti-starvation): the publisher re-publishes it at the broker's highest priority.

Both read what a user would: the jobs' start times in the database (``ainode jobs``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from node.db import Job, JobState
from tests.helpers import radiograph_copies, storescu
from tests.integration.scale.cluster import Cluster, Services, started_order
from training.phantoms.ct import ctpa_phantom

pytestmark = pytest.mark.integration

ROUTINE = 40


def _stat(files: list[Path]) -> list[Path]:
    """Mark the files' procedure STAT (Requested Procedure Priority, PS3.3 C.4.11)."""
    for path in files:
        ds = pydicom.dcmread(path)
        ds.RequestedProcedurePriority = "STAT"
        ds.save_as(path, enforce_file_format=True)
    return files


def _send(port: int, files: list[Path]) -> None:
    sent = storescu(files, "127.0.0.1", port, "AINODE")
    assert sent.returncode == 0 and "E: " not in sent.stderr, sent.stderr


def _of_study(jobs: list[Job], study: str) -> Job:
    (job,) = [j for j in jobs if j.study_uid == study]
    return job


def test_an_urgent_ctpa_starts_before_the_routine_backlog(
    services: Services, cluster: Callable[..., Cluster], tmp_path: Path, rg1_uncr: Path
) -> None:
    kit = cluster(services, full_models=True, priorities={"promote_after": 3600})
    receiver = kit.add_receiver()
    _send(receiver.port, radiograph_copies(rg1_uncr, tmp_path / "routine", ROUTINE))
    kit.wait(
        "the routine jobs published", lambda: sum(j.published_priority is not None for j in kit.jobs()) == ROUTINE, 90
    )
    kit.add_workers(1)
    kit.wait("the worker busy with the backlog", lambda: any(j.started_at for j in kit.jobs()), 60)

    phantom = ctpa_phantom(1702, slices=60, size=256, embolus=None)
    _send(receiver.port, _stat(phantom.write_series(tmp_path / "ctpa")))
    study = phantom.truth["study_uid"]

    def urgent_published() -> bool:
        return any(j.study_uid == study and j.published_priority is not None for j in kit.jobs())

    kit.wait("the CTPA's job published", urgent_published, 60)
    started_before = {j.id for j in kit.jobs() if j.started_at is not None}
    kit.wait("the CTPA's job started", lambda: _of_study(kit.jobs(), study).started_at is not None, 120)

    jobs = kit.jobs()
    urgent = _of_study(jobs, study)
    assert urgent.priority == 0 and "STAT" in str(urgent.priority_reason), (urgent.priority, urgent.priority_reason)
    order = [j.id for j in started_order(jobs)]
    overtaken = [j for j in order[: order.index(urgent.id)] if j not in started_before]
    # The worker's one message in flight (prefetch 1) may be a routine job already handed over when the CTPA
    # was published; no other routine job may start first.
    assert len(overtaken) <= 1, f"routine jobs {overtaken} started before the urgent CTPA\n{kit.diagnostics()}"
    assert sum(j.started_at is None for j in jobs) >= ROUTINE // 2, "the backlog was gone before the CTPA came"


def test_a_routine_job_past_promote_after_goes_before_newer_urgent_ones(
    services: Services, cluster: Callable[..., Cluster], tmp_path: Path, rg1_uncr: Path
) -> None:
    kit = cluster(services, priorities={"promote_after": 5})
    receiver = kit.add_receiver()
    (old,) = radiograph_copies(rg1_uncr, tmp_path / "old", 1)
    _send(receiver.port, [old])
    old_study = str(pydicom.dcmread(old, stop_before_pixels=True).StudyInstanceUID)
    # Promoted: the publisher sends it again at the broker's top priority (9, above urgent's 8).
    kit.wait("the routine job promoted", lambda: _of_study(kit.jobs(), old_study).published_priority == 9, 60)

    urgent_files = _stat(radiograph_copies(rg1_uncr, tmp_path / "urgent", 3))
    _send(receiver.port, urgent_files)
    kit.wait("the urgent jobs published", lambda: sum(j.published_priority is not None for j in kit.jobs()) == 4, 60)
    kit.add_workers(1)
    jobs = kit.wait_jobs(4, timeout=120, states=[JobState.DONE])

    order = started_order(jobs)
    assert order[0].study_uid == old_study, [(j.study_uid, j.priority, j.started_at) for j in order]
    assert [j.priority for j in order[1:]] == [0, 0, 0], [(j.priority, j.priority_reason) for j in order]
