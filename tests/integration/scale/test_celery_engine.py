"""The Celery engine end to end: PostgreSQL + RabbitMQ + ``ainode serve`` (executor celery) + ``ainode worker``s.

A chest radiograph sent by storescu is analysed by one of two workers, and its SR reaches Orthanc
exactly once; ``ainode jobs`` names the worker. A worker started before the database and the broker
waits for them (one log line per wait) and gets going when they come up.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from node.db import JobState
from tests.helpers import storescu
from tests.integration.scale.cluster import Cluster, Services

pytestmark = pytest.mark.integration


def _new_radiograph(source: Path, folder: Path) -> tuple[Path, str]:
    """``source`` as a study of its own (new UIDs): the module's Orthanc is shared by its tests."""
    ds = pydicom.dcmread(source)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cxr.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, str(ds.StudyInstanceUID)


def _send_and_expect_one_sr(cluster: Cluster, services: Services, path: Path, study_uid: str) -> None:
    receiver = cluster.receivers[0]
    sent = storescu([path], "127.0.0.1", receiver.port, "AINODE")
    assert sent.returncode == 0, sent.stderr
    [job] = cluster.wait_jobs(1, timeout=180)
    assert job.state == JobState.DONE, f"{job.error}\n{cluster.diagnostics()}"
    cluster.wait_delivered(timeout=60)
    services.orthanc.wait_for_instances(study_uid=study_uid, modality="SR", timeout=60)
    time.sleep(2)  # a second copy, were one on its way, would have arrived by now
    srs = services.orthanc.wait_for_instances(study_uid=study_uid, modality="SR", timeout=10)
    assert len(srs) == 1, srs


def test_a_radiograph_is_analysed_by_a_worker_and_its_sr_reaches_orthanc_once(
    services: Services, cluster: Callable[..., Cluster], rg1_uncr: Path, tmp_path: Path
) -> None:
    scale = cluster(services)
    receiver = scale.add_receiver()
    scale.add_worker()
    scale.add_worker()
    path, study_uid = _new_radiograph(rg1_uncr, tmp_path / "in")
    _send_and_expect_one_sr(scale, services, path, study_uid)
    [job] = scale.jobs()
    worker = scale.worker_of(job)  # host:pid of a pool process of one of the two workers
    shown = receiver.cli("jobs", "show", str(job.id))
    assert shown.returncode == 0, shown.stderr
    assert re.search(rf"^worker\s+{re.escape(job.worker or '')}$", shown.stdout, re.M), shown.stdout
    assert job.attempts == 1 and job.lease_until is None
    assert f"job {job.id} (series" in worker.log() and "started by" in worker.log()
    assert "Traceback" not in worker.log() + receiver.log()


def test_a_worker_started_before_the_database_and_the_broker_waits_for_them(
    services: Services, cluster: Callable[..., Cluster], rg1_uncr: Path, tmp_path: Path
) -> None:
    scale = cluster(services)
    scale.add_receiver()
    worker = scale.add_worker(start=False)
    services.rabbitmq.kill()
    services.postgres_down()
    ready: list[BaseException | None] = []

    def start() -> None:
        try:
            worker.start(timeout=180)
            ready.append(None)
        except BaseException as exc:  # reported by the test below
            ready.append(exc)

    starter = threading.Thread(target=start)
    try:
        starter.start()
        scale.wait("the worker waiting for the database", lambda: "waiting for the database at" in worker.log(), 60)
        assert scale.database_url.split("@")[0].split(":")[-1] not in worker.log(), "the password is shown"
        services.postgres_up()
        scale.wait("the worker waiting for the broker", lambda: "waiting for the broker at" in worker.log(), 60)
        services.rabbitmq.start()
        starter.join(180)
    finally:
        # Whatever happened, the module's services are up again for the next test.
        if not services.rabbitmq.proc or services.rabbitmq.proc.poll() is not None:
            services.rabbitmq.start()
        starter.join(200)
    assert ready == [None], ready
    log = worker.log()
    waits = re.findall(r"waiting for the (database|broker) at", log)
    assert waits.count("database") >= 1 and waits.count("broker") >= 1
    assert "Traceback" not in log
    path, study_uid = _new_radiograph(rg1_uncr, tmp_path / "in")
    _send_and_expect_one_sr(scale, services, path, study_uid)
