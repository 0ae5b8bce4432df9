"""One line when the database goes away, one when it is back: the background loops, the audit and Celery's noise."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import select, text

from node import audit
from node.background import BackgroundLoop, OutageLog, database_unreachable
from node.db import AuditEvent, AuditKind, Database, Job

log = logging.getLogger("ainode.test-outage")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class JobCounter(BackgroundLoop):
    """A loop whose pass reads the jobs table (the database's outage is the table renamed away)."""

    paused = "counting jobs"

    def __init__(self, db: Database) -> None:
        super().__init__("test-counter", log)
        self.db = db
        self.bug: Exception | None = None

    def run_once(self) -> float:
        if self.bug is not None:
            raise self.bug
        with self.db.session() as session:
            session.scalars(select(Job)).all()
        return 0.5


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'node.db'}")
    database.create_schema()
    yield database
    database.dispose()


def _away(db: Database, table: str) -> None:
    with db.engine.begin() as conn:  # what a restarting server answers: an error for every statement
        conn.execute(text(f"ALTER TABLE {table} RENAME TO {table}_away"))


def _back(db: Database, table: str) -> None:
    with db.engine.begin() as conn:
        conn.execute(text(f"ALTER TABLE {table}_away RENAME TO {table}"))


def _at_least_info(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.INFO]


def test_outage_log_says_the_start_once_and_the_end_once_with_its_length() -> None:
    clock = Clock()
    outage = OutageLog(log, "delivering results", clock=clock)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.DEBUG)
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        outage.recovered()  # no outage: nothing to say
        for _ in range(5):
            try:
                raise ConnectionRefusedError("connection refused\nIs the server running?")
            except ConnectionRefusedError as exc:
                outage.failed(exc)
            clock.now += 1.5
        assert outage.down
        outage.recovered()
        outage.recovered()
    finally:
        log.removeHandler(handler)
        log.setLevel(logging.NOTSET)
    loud = [r for r in records if r.levelno >= logging.INFO]
    assert [r.levelname for r in loud] == ["WARNING", "INFO"]
    assert loud[0].getMessage() == (
        "database unreachable (connection refused): delivering results paused; retrying with back-off"
    )
    assert loud[1].getMessage() == (
        "database reachable again after 8 s: delivering results resumed (5 failed attempt(s) meanwhile)"
    )
    assert not any(r.exc_info for r in loud)
    quiet = [r for r in records if r.levelno == logging.DEBUG]
    assert len(quiet) == 5 and all(r.exc_info for r in quiet)  # the tracebacks, for whoever debugs
    assert not outage.down


def test_a_loop_losing_the_database_logs_two_lines_and_backs_off(db: Database, caplog) -> None:  # type: ignore[no-untyped-def]
    loop = JobCounter(db)
    caplog.set_level(logging.DEBUG, logger=log.name)
    assert loop.pass_once() == 0.5
    _away(db, "jobs")
    waits = [loop.pass_once() for _ in range(6)]
    assert waits == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]  # doubling from retry_seconds, capped
    _back(db, "jobs")
    assert loop.pass_once() == 0.5
    loud = _at_least_info(caplog)
    assert [r.levelname for r in loud] == ["WARNING", "INFO"], caplog.text
    assert "database unreachable (no such table: jobs): counting jobs paused" in loud[0].getMessage()
    assert "database reachable again after" in loud[1].getMessage()
    assert not any(r.exc_info for r in loud)
    assert "Traceback" not in "".join(r.getMessage() for r in loud)
    _away(db, "jobs")
    assert loop.pass_once() == 1.0  # a new outage starts its back-off again, and is said again
    assert sum("database unreachable" in r.getMessage() for r in _at_least_info(caplog)) == 2


def test_a_bug_in_a_pass_keeps_its_traceback_once_and_the_loop_goes_on(db: Database, caplog) -> None:  # type: ignore[no-untyped-def]
    loop = JobCounter(db)
    caplog.set_level(logging.INFO, logger=log.name)
    loop.bug = KeyError("series")
    assert [loop.pass_once() for _ in range(3)] == [1.0, 2.0, 4.0]
    loop.bug = ValueError("another")
    loop.pass_once()
    loop.bug = None
    assert loop.pass_once() == 0.5
    messages = [r.getMessage() for r in caplog.records]
    assert sum(bool(r.exc_info) for r in caplog.records) == 1  # the first failure, with its traceback
    assert messages[0].startswith("test-counter pass failed (KeyError")
    assert messages[1].startswith("test-counter pass failed again (ValueError: another)")
    assert messages[2] == "test-counter passes again"
    assert len(messages) == 3


def test_database_unreachable_tells_an_outage_from_a_refused_statement(db: Database) -> None:
    from sqlalchemy.exc import IntegrityError, OperationalError

    assert database_unreachable(OperationalError("SELECT 1", {}, Exception("connection refused")))
    assert not database_unreachable(IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed")))
    assert not database_unreachable(KeyError("x"))


def test_audit_events_lost_in_an_outage_are_one_line_not_one_per_event(db: Database, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger="ainode.audit")
    _away(db, "audit_events")
    for n in range(4):
        audit.record(db, AuditKind.ASSOCIATION_REJECTED, calling_ae=f"PEER{n}", peer_address="127.0.0.1")
    _back(db, "audit_events")
    audit.record(db, AuditKind.ASSOCIATION_REJECTED, calling_ae="LATER", peer_address="127.0.0.1")
    with db.session() as session:
        written = [e.calling_ae for e in session.scalars(select(AuditEvent)).all()]
    assert written == ["LATER"]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "writing audit events paused; the events of the outage are not kept" in messages[0]
    assert "(4 failed attempt(s) meanwhile)" in messages[1]
    assert not any(r.exc_info for r in caplog.records)


def test_celery_reconnection_attempts_are_one_warning_per_broker_outage() -> None:
    from node.distributed import _BrokerOutage

    def record(msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
        return logging.LogRecord("celery.worker.consumer.consumer", level, __file__, 1, msg, args, None)

    cannot = "consumer: Cannot connect to %s: %s.\n%s\n"
    refused = ConnectionRefusedError(111, "Connection refused")
    noise = _BrokerOutage()
    assert noise.filter(
        record("consumer: Connection to broker lost. Trying to re-establish the connection...", level=logging.WARNING)
    )
    first = record(cannot, "amqp://guest:**@127.0.0.1:5672//", refused, "Trying again in 2.00 seconds... (1/None)")
    assert noise.filter(first)
    assert first.levelname == "WARNING" and "\n" not in first.getMessage()
    assert "amqp://guest:**@127.0.0.1:5672//" in first.getMessage() and "Connection refused" in first.getMessage()
    assert not noise.filter(record(cannot, "amqp://x", refused, "Trying again in 4.00 seconds... (2/None)"))
    assert noise.filter(record("consumer: Connection to broker lost. Trying to re-establish the connection..."))
    assert noise.filter(record(cannot, "amqp://x", refused, "Trying again in 2.00 seconds... (1/None)"))
    warning = logging.LogRecord(
        "py.warnings",
        logging.WARNING,
        __file__,
        1,
        "%s",
        ("... the worker_cancel_long_running_tasks_on_connection_loss setting ...",),
        None,
    )
    assert not noise.filter(warning)
    other = logging.LogRecord("py.warnings", logging.WARNING, __file__, 1, "%s", ("a warning of ours",), None)
    assert noise.filter(other)


def test_the_node_loops_say_an_outage_in_one_line_each(db: Database, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    from node import distributed
    from node.dispatcher import Dispatcher
    from node.retention import RetentionLoop
    from node.settings import Settings

    settings = Settings(data_dir=tmp_path, executor="celery", celery={"broker_url": "amqp://127.0.0.1:1//"})
    loops: list[BackgroundLoop] = [
        Dispatcher(settings, db, {}),
        RetentionLoop(settings, db),
        distributed.CeleryExecutor(settings, db),
    ]
    caplog.set_level(logging.INFO)
    for table in ("deliveries", "jobs", "instances", "results", "series"):
        _away(db, table)
    for _ in range(3):
        for loop in loops:
            loop.pass_once()
    for table in ("deliveries", "jobs", "instances", "results", "series"):
        _back(db, table)
    for loop in loops:
        loop.pass_once()
    for loop in loops:
        said = [r for r in caplog.records if r.name == loop.log.name and r.levelno >= logging.INFO]
        assert [r.levelname for r in said] == ["WARNING", "INFO"], (loop.name, [r.getMessage() for r in said])
        assert f"{loop.paused} paused" in said[0].getMessage()
        assert "(3 failed attempt(s) meanwhile)" in said[1].getMessage()
        assert not any(r.exc_info for r in said)
