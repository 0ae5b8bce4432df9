"""The Celery executor's database side (node.distributed, node.executor's lease functions).

Claim, lease, heartbeat, ownership at the end, the sweeper and the publisher's choice of jobs, on
SQLite and PostgreSQL; no broker is needed here (tests/node/test_distributed_broker.py has the broker's).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select, update

from node import distributed
from node import executor as execution
from node.db import AuditEvent, AuditKind, Database, Delivery, Job, JobState, Result, Series, SeriesState
from node.errors import ConfigError
from node.preflight import wait_for
from node.settings import Settings
from node.spool import Outbox
from tests.node.test_flow import TinyPipeline, _instance
from tests.node.test_flow import parts as parts  # noqa: F401 (the fixture, shared)

LEASE = 60.0


def _queued_job(parts) -> int:  # type: ignore[no-untyped-def]
    _settings, receiver, assembler, *_ = parts
    receiver(_instance(generate_uid(), generate_uid()))
    assembler.run_once()
    with receiver.db.session() as s:
        return int(s.scalar(select(Job.id).order_by(Job.id.desc())))


def _job(db: Database, job_id: int) -> Job:
    with db.session() as s:
        return s.get_one(Job, job_id)


def _context(parts, pipeline: TinyPipeline | None = None, **settings: object) -> distributed.WorkerContext:  # type: ignore[no-untyped-def]
    base, receiver, _assembler, outbox, *_ = parts
    merged = Settings(**{**base.model_dump(), "executor": "celery", **settings})
    context = distributed.WorkerContext(merged, receiver.db, outbox, {}, ["cpu"])
    context.built = True
    if pipeline is not None:
        context.pipelines["fake"] = pipeline  # type: ignore[assignment]
    return context


def test_a_claim_takes_a_queued_job_once_with_a_lease(db: Database, parts) -> None:  # type: ignore[no-untyped-def]
    job_id = _queued_job(parts)
    now = time.time()
    outcome, job = execution.claim_leased(db, job_id, "host-a:1", LEASE, 3, now=now)
    assert outcome == "claimed" and job is not None
    row = _job(db, job_id)
    assert (row.state, row.worker, row.attempts) == (JobState.RUNNING, "host-a:1", 1)
    assert row.lease_until == pytest.approx(now + LEASE)
    # The same message delivered again while the lease is live: nothing happens.
    assert execution.claim_leased(db, job_id, "host-b:2", LEASE, 3, now=now + 1)[0] == "held"
    assert _job(db, job_id).worker == "host-a:1"
    assert execution.claim_leased(db, 10**6, "host-b:2", LEASE, 3) == ("gone", None)


def test_a_job_whose_lease_ran_out_is_taken_over_and_the_first_worker_records_nothing(  # type: ignore[no-untyped-def]
    db: Database, parts
) -> None:
    job_id = _queued_job(parts)
    outbox: Outbox = parts[3]
    now = time.time()
    _, first = execution.claim_leased(db, job_id, "host-a:1", LEASE, 3, now=now)
    assert first is not None
    # host-a hangs past its lease; host-b takes the job.
    outcome, second = execution.claim_leased(db, job_id, "host-b:2", LEASE, 3, now=now + LEASE + 1)
    assert outcome == "claimed" and second is not None and second.attempts == 2
    assert not execution.renew_lease(db, first, LEASE)  # host-a's heartbeat learns it
    # host-a wakes up and finishes: neither its results nor its end are recorded.
    with pytest.raises(execution.LeaseLost):
        execution.run_job(db, outbox, TinyPipeline(), first)  # type: ignore[arg-type]
    with db.session() as s:
        assert s.scalar(select(Result).where(Result.job_id == job_id)) is None
        assert s.get_one(Job, job_id).state == JobState.RUNNING
    assert execution.renew_lease(db, second, LEASE)
    execution.run_job(db, outbox, TinyPipeline(), second)  # type: ignore[arg-type]
    with db.session() as s:
        row = s.get_one(Job, job_id)
        assert (row.state, row.worker, row.lease_until) == (JobState.DONE, "host-b:2", None)
        assert len(s.scalars(select(Result).where(Result.job_id == job_id)).all()) == 1
        assert len(s.scalars(select(Delivery)).all()) == 1
    # Done: a late copy of the message does nothing.
    assert execution.claim_leased(db, job_id, "host-c:3", LEASE, 3)[0] == "finished"


def test_a_job_started_as_often_as_allowed_is_failed_when_its_message_comes_again(  # type: ignore[no-untyped-def]
    db: Database, parts
) -> None:
    job_id = _queued_job(parts)
    now = time.time()
    for attempt in range(2):  # each run killed its worker: the lease runs out
        assert execution.claim_leased(db, job_id, f"w:{attempt}", LEASE, 2, now=now + attempt * (LEASE + 1))[0] == (
            "claimed"
        )
    outcome, row = execution.claim_leased(db, job_id, "w:9", LEASE, 2, now=now + 3 * (LEASE + 1))
    assert outcome == "exhausted" and row is not None
    with db.session() as s:
        job = s.get_one(Job, job_id)
        assert job.state == JobState.FAILED and job.attempts == 2
        assert "started 2 times without finishing" in (job.error or "") and "dead-letter" in (job.error or "")
        assert s.scalar(select(Series.state).where(Series.series_uid == job.series_uid)) == SeriesState.DONE
        assert s.scalar(select(AuditEvent.kind).where(AuditEvent.job_id == job_id)) == AuditKind.JOB_FAILED
    assert execution.claim_leased(db, job_id, "w:10", LEASE, 2)[0] == "finished"


def test_the_sweeper_requeues_expired_leases_and_fails_jobs_out_of_starts(  # type: ignore[no-untyped-def]
    db: Database, parts
) -> None:
    live, expired, exhausted = (_queued_job(parts) for _ in range(3))
    now = time.time()
    for job_id in (live, expired, exhausted):
        execution.claim_leased(db, job_id, "w:1", LEASE, 3, now=now)
    with db.session() as s:
        s.execute(update(Job).where(Job.id.in_([live, expired, exhausted])).values(published_priority=1))
        s.execute(update(Job).where(Job.id == exhausted).values(attempts=3))
        s.execute(update(Job).where(Job.id.in_([expired, exhausted])).values(lease_until=now - 1))
    requeued, failed = distributed.sweep_leases(db, 3, now)
    assert (requeued, failed) == ([expired], [exhausted])
    rows = {j: _job(db, j) for j in (live, expired, exhausted)}
    assert rows[live].state == JobState.RUNNING and rows[live].worker == "w:1"
    back = rows[expired]
    assert (back.state, back.worker, back.lease_until, back.published_priority) == (JobState.QUEUED, None, None, None)
    assert rows[exhausted].state == JobState.FAILED and "given up" in (rows[exhausted].error or "")
    assert distributed.sweep_leases(db, 3, now) == ([], [])


def test_the_publisher_picks_unpublished_and_promoted_or_raised_jobs(db: Database, parts) -> None:  # type: ignore[no-untyped-def]
    settings: Settings = parts[0]
    new, routine, old, promoted, raised, running = (_queued_job(parts) for _ in range(6))
    now = datetime.now(UTC)
    long_ago = now - timedelta(seconds=settings.priorities.promote_after + 5)
    with db.session() as s:
        s.execute(update(Job).where(Job.id.in_([routine, old, promoted, raised])).values(published_priority=1))
        s.execute(update(Job).where(Job.id.in_([old, promoted])).values(created_at=long_ago))
        s.execute(update(Job).where(Job.id == promoted).values(published_priority=9))
        s.execute(update(Job).where(Job.id == raised).values(priority=0))
        s.execute(update(Job).where(Job.id == running).values(state=JobState.RUNNING))
    picked = {
        j.id: distributed.job_broker_priority(j, now, settings.priorities.promote_after)
        for j in distributed.unpublished_jobs(db, settings, now)
    }
    # new: never published (routine, 1); old: waited past promote_after (9); raised: urgent now (8).
    assert picked == {new: 1, old: 9, raised: 8}


def test_queues_follow_the_pipelines_settings() -> None:
    settings = Settings(executor="celery", celery={"default_queue": "cpu", "queues": {"ct_pe": "gpu"}})
    assert distributed.job_queue(settings, "ct_pe") == "gpu"
    assert distributed.job_queue(settings, "cxr") == "cpu"
    assert distributed.configured_queues(settings) == ["cpu", "gpu"]
    app = distributed.make_app(settings, ["extra"])
    queues = {q.name: q for q in app.conf.task_queues}
    assert set(queues) == {"cpu", "gpu", "extra", distributed.DEAD_QUEUE}
    assert all(q.durable and q.queue_arguments == {"x-max-priority": 9} for q in queues.values())
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert conf.task_ignore_result and conf.task_time_limit == 1500 and conf.task_soft_time_limit == 1200
    assert distributed.TASK_NAME in app.tasks
    assert "secret" not in distributed.broker_label("amqp://ainode:secret@broker:5672//")


def test_a_worker_runs_a_job_once_and_ignores_copies_of_its_message(db: Database, parts, caplog) -> None:  # type: ignore[no-untyped-def]
    job_id = _queued_job(parts)
    pipeline = TinyPipeline()
    context = _context(parts, pipeline)
    caplog.set_level(logging.INFO, logger="ainode.distributed")
    assert distributed.run_one(context, job_id) == "claimed"
    assert distributed.run_one(context, job_id, redelivered=True) == "finished"
    assert len(pipeline.calls) == 1
    row = _job(db, job_id)
    assert row.state == JobState.DONE and row.worker == distributed.worker_id()
    assert f"job {job_id} (series" in caplog.text and "started by" in caplog.text


def test_a_job_out_of_starts_goes_to_the_dead_letters(db: Database, parts) -> None:  # type: ignore[no-untyped-def]
    job_id = _queued_job(parts)
    context = _context(parts, TinyPipeline(), job_max_restarts=1)
    with db.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(state=JobState.RUNNING, attempts=1, lease_until=1.0))
    dead: list[int] = []
    assert distributed.run_one(context, job_id, dead_letter=lambda: dead.append(job_id)) == "exhausted"
    assert dead == [job_id]
    assert _job(db, job_id).state == JobState.FAILED


def test_a_job_of_a_pipeline_the_worker_cannot_build_fails_with_the_reason(db: Database, parts) -> None:  # type: ignore[no-untyped-def]
    job_id = _queued_job(parts)
    context = _context(parts)
    context.failures["fake"] = "pipeline 'fake' could not be built on w: weights missing"
    assert distributed.run_one(context, job_id) == "unavailable"
    row = _job(db, job_id)
    assert row.state == JobState.FAILED and "weights missing" in (row.error or "")


def test_a_worker_waits_out_a_database_that_goes_away_mid_job(db: Database, parts, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy.exc import OperationalError

    job_id = _queued_job(parts)
    pipeline = TinyPipeline()
    context = _context(parts, pipeline)
    real = execution.run_job
    failures = [OperationalError("UPDATE jobs", {}, Exception("server closed the connection unexpectedly"))]

    def flaky(*args: object) -> None:
        if failures:
            raise failures.pop()
        real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(execution, "run_job", flaky)
    monkeypatch.setattr(distributed, "MAX_PAUSE", 0.05)
    monkeypatch.setattr(time, "sleep", lambda s: None)
    assert distributed.run_one(context, job_id) == "claimed"
    row = _job(db, job_id)
    assert row.state == JobState.DONE and row.attempts == 1  # its own lease, not a new start


def test_waiting_for_a_service_backs_off_logs_where_and_stops_on_request(caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING, logger="ainode.preflight")
    calls: list[float] = []

    def probe() -> None:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise ConnectionRefusedError(111, "Connection refused")

    assert wait_for("the broker", "amqp://ainode:**@broker:5672//", probe, threading.Event())
    assert len(calls) == 3
    assert calls[2] - calls[1] >= 1.9  # 1 s, then 2 s
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("waiting for the broker at amqp://ainode:**@broker:5672//" in x for x in lines)
    assert "next try in 1 s" in lines[0] and "next try in 2 s" in lines[1]
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    assert not wait_for("the database", "db", lambda: 1 / 0, stop)
    assert time.monotonic() - started < 1.0

    def bad_config() -> None:
        raise ConfigError("database_url: driver missing")

    with pytest.raises(ConfigError):
        wait_for("the database", "db", bad_config, threading.Event())


def test_the_worker_command_needs_the_celery_executor(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="executor: celery"):
        distributed.run_worker(Settings(data_dir=tmp_path))
    with pytest.raises(ConfigError, match="do not consume"):
        distributed.run_worker(Settings(data_dir=tmp_path, executor="celery"), queues=[distributed.DEAD_QUEUE])
    with pytest.raises(ConfigError, match="device 'tpu' is not configured"):
        distributed.run_worker(Settings(data_dir=tmp_path, executor="celery"), device="tpu")
    with pytest.raises(ConfigError, match="at least one job"):
        distributed.run_worker(Settings(data_dir=tmp_path, executor="celery"), concurrency=0)


def test_celerys_lost_ack_is_one_warning_line_without_traceback() -> None:
    from amqp.exceptions import RecoverableConnectionError

    try:
        raise RecoverableConnectionError("connection already closed")
    except RecoverableConnectionError as exc:
        error = exc
        info = sys.exc_info()
    record = logging.LogRecord(
        "celery.worker.request", logging.CRITICAL, __file__, 1, "Couldn't ack %r, reason:%r", (7, error), info
    )
    assert distributed._AckLost().filter(record)
    assert record.levelname == "WARNING" and record.exc_info is None
    message = record.getMessage()
    assert "connection already closed" in message and "does nothing" in message and "\n" not in message
    other = logging.LogRecord("celery.worker.request", logging.INFO, __file__, 1, "Task %s received", ("x",), None)
    assert distributed._AckLost().filter(other) and other.getMessage() == "Task x received"


def test_the_publisher_outlives_a_database_outage_with_one_line(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import text

    database = Database(f"sqlite:///{tmp_path / 'node.db'}")
    database.create_schema()
    settings = Settings(data_dir=tmp_path, executor="celery", celery={"broker_url": "amqp://127.0.0.1:1//"})
    executor = distributed.CeleryExecutor(settings, database)
    caplog.set_level(logging.INFO, logger="ainode.distributed")
    with database.engine.begin() as conn:  # the database as a restarting server answers: an error per query
        conn.execute(text("ALTER TABLE jobs RENAME TO jobs_away"))
    assert executor.run_once() == distributed.DB_RETRY_SECONDS
    assert executor.run_once() == distributed.DB_RETRY_SECONDS
    with database.engine.begin() as conn:
        conn.execute(text("ALTER TABLE jobs_away RENAME TO jobs"))
    executor.run_once()  # the database is back (the broker is not: that is another line)
    lines = [r.getMessage() for r in caplog.records]
    assert sum("database unreachable" in x for x in lines) == 1
    assert any("database reachable again" in x for x in lines)
    assert not any(r.exc_info for r in caplog.records)
    database.dispose()


def test_a_job_stopped_by_the_soft_time_limit_fails_with_that_reason(db: Database, parts) -> None:  # type: ignore[no-untyped-def]
    from celery.exceptions import SoftTimeLimitExceeded

    job_id = _queued_job(parts)
    pipeline = TinyPipeline()
    pipeline.fail_with = SoftTimeLimitExceeded()
    context = _context(parts, pipeline, celery={"soft_time_limit": 30, "time_limit": 40})
    assert distributed.run_one(context, job_id) == "claimed"
    row = _job(db, job_id)
    assert row.state == JobState.FAILED
    assert row.error == "the analysis took longer than celery.soft_time_limit (30 s) and was stopped"


def test_lease_and_time_limit_settings_must_be_consistent() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="heartbeat_seconds .* must be below lease_seconds"):
        Settings(executor="celery", celery={"lease_seconds": 10, "heartbeat_seconds": 10})
    with pytest.raises(ValidationError, match="soft_time_limit .* must be below time_limit"):
        Settings(executor="celery", celery={"soft_time_limit": 1500, "time_limit": 1500})
    assert Settings(celery={"lease_seconds": 8, "heartbeat_seconds": 2}).celery.lease_seconds == 8


def test_a_job_that_cannot_be_finished_is_given_back_at_once_in_one_line(  # type: ignore[no-untyped-def]
    db: Database, parts, monkeypatch, caplog
) -> None:
    from node.errors import StorageError

    job_id = _queued_job(parts)
    context = _context(parts, TinyPipeline())

    def refused(*args: object) -> None:
        raise StorageError("PUT outbox/1.2/3.dcm: 503 Slow Down")

    monkeypatch.setattr(execution, "run_job", refused)
    caplog.set_level(logging.INFO, logger="ainode.distributed")
    assert distributed.run_one(context, job_id) == "error"
    row = _job(db, job_id)
    assert row.state == JobState.RUNNING and row.lease_until == 0.0  # run out now, not in lease_seconds
    assert row.error == "StorageError: PUT outbox/1.2/3.dcm: 503 Slow Down"  # shown by `ainode jobs` meanwhile
    assert distributed.sweep_leases(db, 3) == ([job_id], [])
    with db.session() as s:  # the third run cannot finish either: the job fails with the last run's reason
        s.execute(update(Job).where(Job.id == job_id).values(state=JobState.RUNNING, attempts=3, lease_until=0.0))
    assert distributed.sweep_leases(db, 3) == ([], [job_id])
    assert (_job(db, job_id).error or "").endswith(
        "given up; last try: StorageError: PUT outbox/1.2/3.dcm: 503 Slow Down"
    )
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert all("503 Slow Down" in r.getMessage() and not r.exc_info for r in errors), caplog.text
    assert len(errors) == 2  # the run that could not finish, then the sweeper giving the job up
