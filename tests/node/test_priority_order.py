"""Urgent studies first, routine work always finishes: priorities on a real database (SQLite and PostgreSQL).

Series are received by the real receiver (over a real C-STORE association where the header's way to
the assembler matters), routed and queued by the assembler, claimed and run by the executor.
"""

from __future__ import annotations

import re
import time
from datetime import timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from sqlalchemy import select, update

from core import status
from dimse.scp import AllowedPeer, StorageSCP
from dimse.scu import store_files
from node import dispatcher as dispatch
from node import executor as execution
from node.assembler import Assembler
from node.db import Database, Instance, Job, JobState, Result, utcnow
from node.preflight import open_database, prepare_data_dir
from node.priority import TRIAGED_URGENT, URGENT, PriorityPolicy
from node.receiver import Receiver
from node.router import load_routing, routing_tags
from node.settings import Settings, load_settings
from node.spool import Outbox
from node.storage import open_outbox, open_spool
from tests.helpers.cli import ainode
from tests.node.test_delivery_schedule import RecordingDestination, TriagedPipeline
from tests.node.test_flow import TinyPipeline, _instance

ROUTING = """
rules:
  - name: ctpa-urgent
    pipeline: fake
    priority: urgent
    match: {attribute: StudyDescription, regex: "(?i)ctpa"}
  - name: chest-radiograph
    pipeline: fake
    match: {attribute: StudyDescription, regex: "(?i)chest"}
"""
PROMOTE_AFTER = 900.0


@pytest.fixture
def node(tmp_path: Path, db: Database) -> tuple[Settings, Receiver, Assembler, Outbox]:
    """The node's pieces as the service wires them: the receiver records what routing and priorities read."""
    settings = Settings(
        data_dir=tmp_path / "data", quiet_period={"default": 0.0}, priorities={"promote_after": PROMOTE_AFTER}
    )
    routing_file = tmp_path / "routing.yaml"
    routing_file.write_text(ROUTING)
    routing = load_routing(routing_file)
    receiver = Receiver(settings, db, open_spool(settings), header_tags=routing_tags(routing))
    assembler = Assembler(
        db, routing, {"fake"}, {}, ["pacs"], priorities=PriorityPolicy.from_settings(settings.priorities)
    )
    return settings, receiver, assembler, open_outbox(settings)


def _queue(receiver: Receiver, assembler: Assembler, description: str, study: str | None = None) -> str:
    """One single-instance series of ``description`` received and queued as a job; its Series UID."""
    series = generate_uid()
    assert receiver(_instance(series, study or generate_uid(), StudyDescription=description)) == status.SUCCESS
    assembler.run_once()
    return series


def _jobs(db: Database) -> dict[str, Job]:
    with db.session() as s:
        return {job.series_uid: job for job in s.scalars(select(Job))}


def test_an_urgent_ctpa_starts_before_the_next_of_forty_routine_radiographs(node, db: Database) -> None:  # type: ignore[no-untyped-def]
    settings, receiver, assembler, outbox = node
    radiographs = [_queue(receiver, assembler, "CHEST PA") for _ in range(40)]
    pipeline = TinyPipeline()
    first = execution.claim_job(db, "w", {"fake"}, PROMOTE_AFTER)
    assert first is not None and first.series_uid == radiographs[0]  # all routine: first in, first out
    ctpa = _queue(receiver, assembler, "CTPA")  # arrives while the first radiograph runs
    execution.run_job(db, outbox, pipeline, first)
    following = execution.claim_job(db, "w", {"fake"}, PROMOTE_AFTER)
    assert following is not None and following.series_uid == ctpa
    assert (following.priority, following.priority_reason) == (URGENT, "rule ctpa-urgent")
    execution.run_job(db, outbox, pipeline, following)
    rest = []
    while (job := execution.claim_job(db, "w", {"fake"}, PROMOTE_AFTER)) is not None:
        rest.append(job.series_uid)
        execution.run_job(db, outbox, pipeline, job)
    assert rest == radiographs[1:]


def test_the_local_pool_runs_the_urgent_job_first(node, db: Database) -> None:  # type: ignore[no-untyped-def]
    settings, receiver, assembler, outbox = node
    radiographs = [_queue(receiver, assembler, "CHEST PA") for _ in range(5)]
    ctpa = _queue(receiver, assembler, "CTPA")
    pipeline = TinyPipeline()
    executor = execution.LocalExecutor(
        db, outbox, {"fake": lambda: pipeline}, workers=1, poll_seconds=0.05, promote_after=PROMOTE_AFTER
    )
    executor.start()
    try:
        deadline = time.monotonic() + 30
        while len(pipeline.calls) < 6 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        executor.stop()
    assert [call[0] for call in pipeline.calls] == [ctpa, *radiographs]


def test_a_routine_job_waiting_past_promote_after_goes_before_newer_urgent_ones(node, db: Database) -> None:  # type: ignore[no-untyped-def]
    settings, receiver, assembler, outbox = node
    old = _queue(receiver, assembler, "CHEST PA")
    almost = _queue(receiver, assembler, "CHEST PA")
    urgent = [_queue(receiver, assembler, "CTPA") for _ in range(2)]
    now = utcnow()
    with db.session() as s:
        s.execute(
            update(Job).where(Job.series_uid == old).values(created_at=now - timedelta(seconds=PROMOTE_AFTER + 5))
        )
        s.execute(
            update(Job).where(Job.series_uid == almost).values(created_at=now - timedelta(seconds=PROMOTE_AFTER - 60))
        )
    order = []
    while (job := execution.claim_job(db, "w", {"fake"}, PROMOTE_AFTER)) is not None:
        order.append(job.series_uid)
    # Promoted first; the one a minute short of promotion waits behind the urgent ones.
    assert order == [old, *urgent, almost]


def test_without_promotion_urgent_jobs_go_first_whatever_their_age(node, db: Database) -> None:  # type: ignore[no-untyped-def]
    settings, receiver, assembler, outbox = node
    old = _queue(receiver, assembler, "CHEST PA")
    urgent = _queue(receiver, assembler, "CTPA")
    with db.session() as s:
        s.execute(update(Job).where(Job.series_uid == old).values(created_at=utcnow() - timedelta(days=1)))
    order = []
    while (job := execution.claim_job(db, "w", {"fake"})) is not None:
        order.append(job.series_uid)
    assert order == [urgent, old]


def test_an_urgent_triage_raises_the_study_and_urgent_results_go_first(node, db: Database) -> None:  # type: ignore[no-untyped-def]
    settings, receiver, assembler, outbox = node
    study, other_study = generate_uid(), generate_uid()
    radiograph = _queue(receiver, assembler, "CHEST PA", study)
    elsewhere = _queue(receiver, assembler, "CHEST PA", other_study)
    follow_up = _queue(receiver, assembler, "CHEST PA", study)
    pipeline = TriagedPipeline({radiograph: "urgent", follow_up: "routine", elsewhere: "routine"})
    job = execution.claim_job(db, "w", {"fake"}, PROMOTE_AFTER)
    assert job is not None and job.series_uid == radiograph
    execution.run_job(db, outbox, pipeline, job)
    jobs = _jobs(db)
    assert (jobs[follow_up].priority, jobs[follow_up].priority_reason) == (URGENT, TRIAGED_URGENT)
    assert (jobs[elsewhere].priority, jobs[elsewhere].priority_reason) == (2, None)
    # The raised job of the study goes before the older routine one of another study.
    job = execution.claim_job(db, "w", {"fake"}, PROMOTE_AFTER)
    assert job is not None and job.series_uid == follow_up
    execution.run_job(db, outbox, pipeline, job)
    # A series of the study that arrives later starts urgent.
    later = _queue(receiver, assembler, "CHEST LATERAL", study)
    assert (_jobs(db)[later].priority, _jobs(db)[later].priority_reason) == (URGENT, TRIAGED_URGENT)
    job = execution.claim_job(db, "w", {"fake"}, PROMOTE_AFTER)
    assert job is not None and job.series_uid == later
    job = execution.claim_job(db, "w", {"fake"}, PROMOTE_AFTER)
    assert job is not None and job.series_uid == elsewhere
    execution.run_job(db, outbox, pipeline, job)
    with db.session() as s:
        delivery = {r.series_uid: r.priority for r in s.scalars(select(Result))}
    # A result's delivery priority: the more urgent of its triage and its job's priority.
    assert delivery == {radiograph: URGENT, follow_up: URGENT, elsewhere: 2}


def test_a_routine_triage_raises_nothing(node, db: Database) -> None:  # type: ignore[no-untyped-def]
    settings, receiver, assembler, outbox = node
    study = generate_uid()
    radiograph = _queue(receiver, assembler, "CHEST PA", study)
    follow_up = _queue(receiver, assembler, "CHEST PA", study)
    pipeline = TriagedPipeline({radiograph: "priority", follow_up: "routine"})
    job = execution.claim_job(db, "w", {"fake"}, PROMOTE_AFTER)
    assert job is not None
    execution.run_job(db, outbox, pipeline, job)
    later = _queue(receiver, assembler, "CHEST PA", study)
    jobs = _jobs(db)
    assert [(jobs[s].priority, jobs[s].priority_reason) for s in (follow_up, later)] == [(2, None), (2, None)]
    with db.session() as s:
        assert s.scalar(select(Result.priority).where(Result.series_uid == radiograph)) == 1


def _part10(tmp_path: Path, name: str, **attributes: Any) -> Path:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyDescription = "CHEST CT"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    path = tmp_path / f"{name}.dcm"
    path.write_bytes(buffer.getvalue())
    return path


def test_a_stat_request_sent_by_c_store_makes_an_urgent_job(node, db: Database, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings, receiver, assembler, outbox = node
    request = Dataset()
    request.RequestedProcedureID = "RP1"
    request.RequestedProcedurePriority = "HIGH"
    files = {
        "stat": _part10(tmp_path, "stat", RequestedProcedurePriority="STAT"),
        "high": _part10(tmp_path, "high", RequestAttributesSequence=Sequence([request])),
        "ed": _part10(tmp_path, "ed", CurrentPatientLocation="ED RESUS 2"),
        "routine": _part10(tmp_path, "routine", RequestedProcedurePriority="ROUTINE"),
    }
    scp = StorageSCP(
        ae_title="AINODE",
        port=0,
        host="127.0.0.1",
        sink=receiver,
        allowed_peers=[AllowedPeer("STORESCU")],
        incoming_dir=settings.tmp_dir,
    )
    scp.start()
    try:
        outcomes = store_files(
            list(files.values()), host="127.0.0.1", port=scp.port, called_ae="AINODE", calling_ae="STORESCU"
        )
    finally:
        scp.stop(timeout=5)
    assert [o.status for o in outcomes] == [status.SUCCESS] * 4
    # The priority comes from what the receiver recorded: the assembler reads no file.
    with db.session() as s:
        for path in s.scalars(select(Instance.path)):
            Path(path).unlink()
    assembler.run_once()
    series = {name: pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID for name, path in files.items()}
    jobs = _jobs(db)
    assert {name: (jobs[uid].priority, jobs[uid].priority_reason) for name, uid in series.items()} == {
        "stat": (0, "RequestedProcedurePriority STAT"),
        "high": (1, "RequestedProcedurePriority HIGH"),
        "ed": (0, "location ED RESUS 2"),
        "routine": (2, None),
    }
    assert all(job.state == JobState.QUEUED for job in jobs.values())


def test_ainode_jobs_shows_each_job_priority_and_why(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\ndestinations: {{}}\ndefault_destinations: []\n")
    settings = load_settings(config, environ={})
    prepare_data_dir(settings)
    database = open_database(settings, create=True)
    with database.session() as s:
        for priority, reason in ((URGENT, "rule ctpa-urgent"), (None, None)):
            s.add(
                Job(
                    series_uid=generate_uid(),
                    study_uid=generate_uid(),
                    pipeline="fake",
                    priority=priority,
                    priority_reason=reason,
                )
            )
    database.dispose()
    listing = ainode("jobs", config=config)
    assert listing.returncode == 0, listing.stderr
    header, _rule, *rows = listing.stdout.splitlines()
    assert header.split()[:4] == ["id", "state", "priority", "pipeline"]
    assert [row.split()[:3] for row in rows[:2]] == [["2", "queued", "routine"], ["1", "queued", "urgent"]]
    shown = ainode("jobs", "show", "1", config=config)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"^priority\s+urgent \(rule ctpa-urgent\)$", shown.stdout, re.MULTILINE), shown.stdout


def test_an_urgent_job_results_are_delivered_before_older_routine_ones(node, db: Database) -> None:  # type: ignore[no-untyped-def]
    settings, receiver, assembler, outbox = node
    radiographs = [_queue(receiver, assembler, "CHEST PA") for _ in range(3)]
    pipeline = TinyPipeline()  # no triage: the job's own priority decides the delivery order
    while (job := execution.claim_job(db, "w", {"fake"}, PROMOTE_AFTER)) is not None:
        execution.run_job(db, outbox, pipeline, job)
    ctpa = _queue(receiver, assembler, "CTPA")  # analysed last, its result made last
    job = execution.claim_job(db, "w", {"fake"}, PROMOTE_AFTER)
    assert job is not None and job.series_uid == ctpa
    execution.run_job(db, outbox, pipeline, job)
    with db.session() as s:
        series_of = {r.sop_uid: r.series_uid for r in s.scalars(select(Result))}
    destination = RecordingDestination()  # the destination was down: the whole backlog is due at once
    dispatch.Dispatcher(settings, db, {"pacs": destination}).run_once()
    assert [series_of[uid] for uid in destination.order] == [ctpa, *radiographs]
