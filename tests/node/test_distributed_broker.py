"""The Celery executor's publisher, sweeper and queues against a real RabbitMQ (tests.helpers.rabbitmq).

What reaches the broker: one persistent message per job with its job id only and its broker priority,
on the queue of its pipeline, declared durable with ``x-max-priority`` 9; a promoted job published
again with 9; the broker down, nothing recorded as published until it is back; a job given up by the
sweeper leaves a copy of its message in ``ainode.dead``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import kombu
import pytest
from sqlalchemy import select, update

from node import distributed
from node.db import Database, Job, JobState
from node.settings import Settings
from tests.helpers.ports import free_port
from tests.helpers.rabbitmq import RabbitMQServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQServer]:
    server = RabbitMQServer(tmp_path_factory.mktemp("rabbitmq"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def vhost(broker: RabbitMQServer, request: pytest.FixtureRequest) -> str:
    name = "t" + str(abs(hash(request.node.nodeid)) % 10**8)
    return broker.add_vhost(name)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'node.db'}")
    database.create_schema()
    yield database
    database.dispose()


def _settings(tmp_path: Path, broker_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        executor="celery",
        celery={"broker_url": broker_url, "queues": {"ct_pe": "gpu"}},
    )


def _add_job(db: Database, pipeline: str, **values: object) -> int:
    with db.session() as s:
        job = Job(series_uid="1.2.3", study_uid="1.2", pipeline=pipeline, **values)
        s.add(job)
        s.flush()
        return int(job.id)


def _take(url: str, queue: str) -> list[kombu.Message]:
    got = []
    with kombu.Connection(url) as conn:
        bound = distributed._queue(queue)(conn)
        while (message := bound.get(no_ack=True)) is not None:
            got.append(message)
    return got


def test_jobs_are_published_once_by_id_with_their_priority_to_their_pipelines_queue(
    tmp_path: Path, db: Database, vhost: str, broker: RabbitMQServer
) -> None:
    settings = _settings(tmp_path, vhost)
    routine, urgent, ct = _add_job(db, "cxr"), _add_job(db, "cxr", priority=0), _add_job(db, "ct_pe")
    executor = distributed.CeleryExecutor(settings, db)
    assert distributed.publish_pending(db, executor.app, settings) == 3
    assert distributed.publish_pending(db, executor.app, settings) == 0  # recorded: not again
    cpu = _take(vhost, "cpu")
    assert [(m.headers["task"], m.payload[0]) for m in cpu] == [
        (distributed.TASK_NAME, [urgent]),
        (distributed.TASK_NAME, [routine]),
    ]
    assert [m.properties["priority"] for m in cpu] == [8, 1]  # the urgent one first: a priority queue
    assert all(m.properties["delivery_mode"] == 2 for m in cpu)  # persistent
    assert [m.payload[0] for m in _take(vhost, "gpu")] == [[ct]]
    with db.session() as s:
        assert {i: p for i, p in s.execute(select(Job.id, Job.published_priority))} == {routine: 1, urgent: 8, ct: 1}
    # The routine job waits past promote_after: published again, above everything.
    with db.session() as s:
        s.execute(
            update(Job)
            .where(Job.id == routine)
            .values(created_at=datetime.now(UTC) - timedelta(seconds=settings.priorities.promote_after + 1))
        )
    assert distributed.publish_pending(db, executor.app, settings) == 1
    [again] = _take(vhost, "cpu")
    assert again.payload[0] == [routine] and again.properties["priority"] == 9
    name = vhost.rsplit("/", 1)[1]
    listing = broker.ctl("list_queues", "-p", name, "name", "durable", "arguments")
    for queue in ("cpu", "gpu"):
        line = next(x for x in listing.splitlines() if x.startswith(queue + "\t"))
        assert "true" in line and "x-max-priority" in line and "9" in line, listing
    executor.start()
    executor.stop()  # the loop ends and the app's broker connections close


def test_with_the_broker_down_nothing_is_recorded_as_published_and_it_is_said_once(
    tmp_path: Path, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(tmp_path, f"amqp://guest:secret@127.0.0.1:{free_port()}//")
    job = _add_job(db, "cxr")
    executor = distributed.CeleryExecutor(settings, db)
    caplog.set_level(logging.WARNING, logger="ainode.distributed")
    assert executor.run_once() == 1.0
    assert executor.run_once() == 2.0  # back-off doubling to 30 s
    with db.session() as s:
        assert s.get_one(Job, job).published_priority is None
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "unreachable" in warnings[0] and "secret" not in warnings[0]


def test_a_job_the_sweeper_gives_up_leaves_its_message_in_the_dead_letter_queue(
    tmp_path: Path, db: Database, vhost: str
) -> None:
    settings = _settings(tmp_path, vhost)
    job = _add_job(db, "cxr", state=JobState.RUNNING, attempts=3, lease_until=1.0, published_priority=1, worker="w:1")
    executor = distributed.CeleryExecutor(settings, db)
    done: list[int] = []
    executor.on_job_done = lambda: done.append(1)
    executor.run_once()
    with db.session() as s:
        assert s.get_one(Job, job).state == JobState.FAILED
    assert done == [1]
    [dead] = _take(vhost, distributed.DEAD_QUEUE)
    assert dead.payload[0] == [job] and dead.headers["task"] == distributed.TASK_NAME


def test_the_broker_is_waited_for_and_found(vhost: str) -> None:
    import threading

    settings = Settings(executor="celery", celery={"broker_url": vhost})
    assert distributed.wait_for_broker(settings, threading.Event())


def test_a_message_arriving_for_a_job_out_of_starts_goes_to_the_dead_letter_queue(
    tmp_path: Path, db: Database, vhost: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from node.spool import Outbox

    settings = _settings(tmp_path, vhost)
    job = _add_job(db, "cxr", state=JobState.QUEUED, attempts=settings.job_max_restarts)
    context = distributed.WorkerContext(settings, db, Outbox(settings.outbox_dir, settings.tmp_dir), {}, ["cpu"])
    context.built = True
    monkeypatch.setattr(distributed, "_context", context)
    app = distributed.make_app(settings)
    # The task as the worker's pool calls it: Celery's bound task, its request's delivery info.
    task = SimpleNamespace(app=app, request=SimpleNamespace(delivery_info={"redelivered": True}))
    distributed._run_job_task(task, job)
    with db.session() as s:
        row = s.get_one(Job, job)
    assert row.state == JobState.FAILED and "dead-letter" in (row.error or "")
    [dead] = _take(vhost, distributed.DEAD_QUEUE)
    assert dead.payload[0] == [job]
