"""A worker killed in the middle of a CT job (issue 17): the job is run again by another worker and its results
reach the PACS exactly once.

One receiver and three workers (executor celery, RabbitMQ, PostgreSQL); an abdominal CT (demo weights: SR, SEG,
GSPS, KOS) is sent to the receiver; the worker running it is SIGKILLed with its pool (a machine lost: no ack, no
clean-up). Its message goes back to the broker, its row's lease runs out (8 s), the sweeper queues the job again
and another worker runs it. Orthanc then holds one SR and one SEG for the series: the re-run's result UIDs are the
same as the lost run's, and nothing is delivered twice.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from node.db import JobState
from tests.helpers import storescu
from tests.integration.scale.cluster import Cluster, Services
from training.phantoms.ct import abdomen_phantom

pytestmark = pytest.mark.integration


def test_a_worker_killed_mid_job_its_job_runs_elsewhere_and_is_delivered_once(
    services: Services, cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    kit = cluster(services, full_models=True)
    receiver = kit.add_receiver()
    kit.add_workers(3)
    phantom = abdomen_phantom(1701, slices=60, size=256, spacing_z=5.0)
    files = phantom.write_series(tmp_path / "ct")
    sent = storescu(files, "127.0.0.1", receiver.port, "AINODE")
    assert sent.returncode == 0 and "E: " not in sent.stderr, sent.stderr

    kit.wait(
        "the CT job running on a worker", lambda: any(j.state == JobState.RUNNING and j.worker for j in kit.jobs()), 120
    )
    (job,) = kit.jobs()
    victim = kit.worker_of(job)
    victim.kill()
    assert not victim.alive

    kit.wait_delivered(timeout=240)
    (job,) = kit.jobs()
    assert job.state == JobState.DONE, f"{job.state}: {job.error}\n{kit.diagnostics()}"
    assert job.attempts >= 2, f"the job was not run again after its worker died: {job.attempts}\n{kit.diagnostics()}"
    assert not victim.owns(int(str(job.worker).rsplit(":", 1)[1])), job.worker
    assert sum(w.alive for w in kit.workers) == 2, kit.diagnostics()

    study = phantom.truth["study_uid"]
    results = services.orthanc.wait_for_instances(study_uid=study, modality="SEG", count=1, timeout=30)
    by_modality: dict[str, int] = {}
    for instance in services.orthanc.instances():
        if instance.study_instance_uid == study and instance.modality != "CT":
            by_modality[instance.modality] = by_modality.get(instance.modality, 0) + 1
    assert results and by_modality.get("SR") == 1 and by_modality.get("SEG") == 1, by_modality
