"""The node's database: studies, series, instances, jobs, results, deliveries, audit events.

SQLAlchemy 2 ORM over SQLite (WAL, the default, in the data directory) or
PostgreSQL (``database_url``). The database is the single source of truth
for state; every state is a string enum, so a row read by a person or another
process needs no code to interpret.

Durability: a received instance's spool file is fsynced before its C-STORE
is acknowledged, and its row is committed after, in batches (see
``node.receiver``). SQLite runs in WAL mode with ``synchronous=NORMAL``: a
committed transaction survives any crash of the process (it is in the WAL,
in the operating system's cache), and the database is never corrupted; a
power cut may lose the last transactions. That costs no instance: at
start-up ``Receiver.recover_spool`` records every spool file that has no
row, whether its row was never committed (a killed process) or lost. Jobs
and deliveries lost that way run again (results are delivered at least
once). ``synchronous=FULL`` would fsync the WAL on every commit.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import CursorResult, Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

UID = String(64)


def utcnow() -> datetime:
    return datetime.now(UTC)


class SeriesState(str, enum.Enum):  # noqa: UP042 (StrEnum changes str() and format() of the members)
    RECEIVING = "receiving"  # instances arriving; analysed after the quiet period
    QUEUED = "queued"  # a job was created
    DONE = "done"  # the latest job finished (or failed: see the job)
    IGNORED = "ignored"  # our own output or a result object: never analysed
    UNROUTED = "unrouted"  # no routing rule matched


class JobState(str, enum.Enum):  # noqa: UP042 (StrEnum changes str() and format() of the members)
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class DeliveryState(str, enum.Enum):  # noqa: UP042 (StrEnum changes str() and format() of the members)
    PENDING = "pending"
    SENDING = "sending"
    DONE = "done"
    DEAD = "dead"  # retry limit reached; kept until retried by hand
    COMMITTING = "committing"  # stored; waiting for the destination's storage commitment report


def _enum(cls: type[enum.Enum]) -> Enum:
    return Enum(cls, values_callable=lambda e: [m.value for m in e], native_enum=False, length=16)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True)}


class Study(Base):
    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(primary_key=True)
    study_uid: Mapped[str] = mapped_column(UID, unique=True)
    first_received_at: Mapped[datetime] = mapped_column(default=utcnow)


class Series(Base):
    __tablename__ = "series"
    id: Mapped[int] = mapped_column(primary_key=True)
    series_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_uid: Mapped[str] = mapped_column(UID, index=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    state: Mapped[SeriesState] = mapped_column(_enum(SeriesState), default=SeriesState.RECEIVING, index=True)
    # Incremented when instances arrive after the series was analysed: a new analysis supersedes the old.
    generation: Mapped[int] = mapped_column(Integer, default=1)
    last_received_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Monotonic deadline (epoch seconds) after which the series is stable.
    ready_at: Mapped[float] = mapped_column(Float, default=0.0, index=True)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    note: Mapped[str | None] = mapped_column(Text)
    # Unchanged instances arrived again after the series was scheduled: the assembler decides (after
    # the quiet period) whether anything needs analysing; normally nothing does.
    resend_pending: Mapped[bool | None] = mapped_column(Boolean, default=False, index=True)
    resent_instances: Mapped[int | None] = mapped_column(Integer, default=0)


class Instance(Base):
    __tablename__ = "instances"
    id: Mapped[int] = mapped_column(primary_key=True)
    sop_uid: Mapped[str] = mapped_column(UID, unique=True)
    series_uid: Mapped[str] = mapped_column(UID, index=True)
    study_uid: Mapped[str] = mapped_column(UID)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(Integer)
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    peer_address: Mapped[str | None] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    times_received: Mapped[int] = mapped_column(Integer, default=1)
    # SHA-256 of the data set as received: an unchanged re-send has the same digest (``None``: recorded
    # by a version before digests, treated as changed once).
    digest: Mapped[str | None] = mapped_column(String(64))
    # When retention removed the file (``node.retention``); the row stays for the audit trail. Cleared
    # when the instance is received again (the file is then back).
    purged_at: Mapped[datetime | None] = mapped_column(default=None)
    # The attributes routing reads (:func:`node.router.routing_tags`), as received, recorded by the receiver
    # for an instance that opens or re-opens a series (:func:`node.dicomheader.record_elements`), so that the
    # assembler routes without reading the file; ``None``: not recorded (the assembler reads the file).
    header: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    series_uid: Mapped[str] = mapped_column(UID, index=True)
    study_uid: Mapped[str] = mapped_column(UID)
    pipeline: Mapped[str] = mapped_column(String(64))
    rule: Mapped[str | None] = mapped_column(String(128))
    destinations: Mapped[list[str]] = mapped_column(JSON, default=list)
    generation: Mapped[int] = mapped_column(Integer, default=1)
    state: Mapped[JobState] = mapped_column(_enum(JobState), default=JobState.QUEUED, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    worker: Mapped[str | None] = mapped_column(String(64))
    # What was analysed and how: the series' content (SOP Instance UIDs and digests) and the
    # pipeline's models and settings. A re-sent series with both unchanged is not analysed again.
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    analysis_key: Mapped[str | None] = mapped_column(String(64))
    # How urgent (``node.priority``): 0 urgent, 1 priority, 2 routine; ``None`` counts as routine.
    priority: Mapped[int | None] = mapped_column(Integer, default=None, index=True)
    priority_reason: Mapped[str | None] = mapped_column(String(128), default=None)
    # Celery executor (``node.distributed``): the broker priority the job was last published with
    # (``None``: not published), and the epoch second until which its worker holds it (heartbeat).
    published_priority: Mapped[int | None] = mapped_column(Integer, default=None)
    lease_until: Mapped[float | None] = mapped_column(Float, default=None, index=True)


class Result(Base):
    __tablename__ = "results"
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    series_uid: Mapped[str] = mapped_column(UID, index=True)  # the *source* series
    study_uid: Mapped[str] = mapped_column(UID)
    sop_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    kind: Mapped[str] = mapped_column(String(8))  # SR, SEG, PR, KO, SC
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    superseded_by: Mapped[int | None] = mapped_column(Integer)
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Delivery order when a destination has a backlog: 0 urgent, 1 priority, 2 routine (the cxr
    # triage); ``None`` (no triage) counts as routine.
    priority: Mapped[int | None] = mapped_column(Integer, default=None)
    # When retention removed the file from the outbox (all its deliveries done); the row stays.
    purged_at: Mapped[datetime | None] = mapped_column(default=None)


class Delivery(Base):
    __tablename__ = "deliveries"
    id: Mapped[int] = mapped_column(primary_key=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    state: Mapped[DeliveryState] = mapped_column(_enum(DeliveryState), default=DeliveryState.PENDING, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float, default=0.0, index=True)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]
    # Dispatcher clock (epoch seconds) of the first failed attempt: a delivery failing for longer than
    # ``delivery.give_up_after_hours`` becomes a dead letter. Cleared when retried by hand.
    first_failed_at: Mapped[float | None] = mapped_column(Float, default=None)
    # Storage commitment (destinations with ``storage_commitment``): the Transaction UID of the last request,
    # and when the destination reported the instance committed (``None``: not asked, or not yet).
    commitment_uid: Mapped[str | None] = mapped_column(UID, default=None)
    committed_at: Mapped[datetime | None] = mapped_column(default=None)


class AuditKind(str, enum.Enum):  # noqa: UP042 (StrEnum changes str() and format() of the members)
    RECEIVED = "received"  # one row per association and study
    ASSOCIATION_REJECTED = "association_rejected"
    JOB_DONE = "job_done"
    JOB_FAILED = "job_failed"
    DELIVERED = "delivered"
    DELIVERY_FAILED = "delivery_failed"  # one attempt failed; retried later
    DEAD_LETTER = "dead_letter"
    RETRIED = "retried"  # dead letters queued again by hand
    RESENT = "resent"  # a series arrived again unchanged: not analysed again
    PURGED = "purged"  # retention removed files (counts and bytes; rows kept)
    HTTP_REQUEST = "http_request"  # an authenticated HTTP action (STOW-RS, pull) and its outcome
    HTTP_REFUSED = "http_refused"  # an HTTP request refused: no or wrong credentials, bad arguments
    PULLED = "pulled"  # a pull from a source (ainode pull, HTTP, Orthanc watch): what it retrieved or skipped
    PULL_FAILED = "pull_failed"  # a pull that failed: unknown source, no such study, source unavailable


class AuditEvent(Base):
    """Who sent what, what ran, where results went, what failed (``ainode audit``). UIDs only, no patient data."""

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(primary_key=True)
    time: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    kind: Mapped[AuditKind] = mapped_column(
        Enum(AuditKind, values_callable=lambda e: [m.value for m in e], native_enum=False, length=32), index=True
    )
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    peer_address: Mapped[str | None] = mapped_column(String(64))
    study_uid: Mapped[str | None] = mapped_column(UID, index=True)
    series_uid: Mapped[str | None] = mapped_column(UID)
    sop_uid: Mapped[str | None] = mapped_column(UID)
    job_id: Mapped[int | None] = mapped_column(Integer)
    instance_count: Mapped[int | None] = mapped_column(Integer)
    pipeline: Mapped[str | None] = mapped_column(String(64))
    model_versions: Mapped[str | None] = mapped_column(String(512))
    destination: Mapped[str | None] = mapped_column(String(64))
    message: Mapped[str | None] = mapped_column(Text)


class Database:
    """An engine and a session factory; one per process.

    Parameters
    ----------
    url : str
        SQLAlchemy URL: ``sqlite:///path`` or ``postgresql+psycopg://...``.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {"future": True}
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        else:
            kwargs.update(pool_pre_ping=True, pool_size=10, max_overflow=20)
        self.engine: Engine = create_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def create_schema(self) -> None:
        """Create missing tables, and add columns that a newer version introduced to existing ones.

        Every column added after the first release is nullable, so an ``ALTER TABLE ... ADD
        COLUMN`` brings a database made by an older version up to date without touching its rows.
        """
        Base.metadata.create_all(self.engine)
        add_missing_columns(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed at the end of the block, rolled back on error.

        SQLite's "database is locked" under concurrent writers is retried by
        its busy timeout; anything else propagates.
        """
        with self._sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()


def add_missing_columns(engine: Engine) -> list[str]:
    """``ALTER TABLE ADD COLUMN`` for each mapped nullable column an existing table lacks; returns them."""
    existing = inspect(engine)
    added: list[str] = []
    with engine.begin() as conn:
        for table in Base.metadata.sorted_tables:
            if not existing.has_table(table.name):
                continue
            present = {c["name"] for c in existing.get_columns(table.name)}
            for column in table.columns:
                if column.name in present:
                    continue
                if not column.nullable:
                    raise RuntimeError(f"column {table.name}.{column.name} is not nullable: it needs a migration")
                kind = column.type.compile(dialect=engine.dialect)
                conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}"))
                added.append(f"{table.name}.{column.name}")
    return added


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def rowcount(result: Any) -> int:
    """Rows an UPDATE or DELETE touched (``Session.execute`` is typed as returning a plain ``Result``)."""
    return int(cast(CursorResult[Any], result).rowcount or 0)


def retry_locked(fn: Any, attempts: int = 5) -> Any:
    """Call ``fn()`` again when SQLite reports a lock that outlived its busy timeout."""
    for i in range(attempts):
        try:
            return fn()
        except OperationalError as exc:
            if "locked" not in str(exc) or i == attempts - 1:
                raise
            time.sleep(0.05 * (i + 1))
    return None
