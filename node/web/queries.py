"""What the admin pages, their JSON API and the ``ainode`` commands read from the node, as plain records.

One function per view, shared by the web (:mod:`node.web.pages`) and the CLI
(``ainode jobs``, ``ainode deliveries``, ``ainode audit``, ``ainode models``), so
that a page and a command never disagree on what a job or a dead letter is:

* :func:`recent_jobs` and :func:`job_detail`: a job's row, its priority and why,
  times, its result objects (kind, SOP class, DEMO) with their deliveries, and its
  *events*: the audit rows naming the job (done or failed, delivered, failed
  attempts, dead letters, re-sent series) and who sent its study. These are the
  job's log lines kept in the database; like every audit row they name AE
  titles, addresses and UIDs, never patient data (a job's summary and error are
  redacted before they are stored, see :func:`node.logs.redact`).
* :func:`list_deliveries` (filter by state and destination) and
  :func:`get_delivery`, with the schedule of a delivery that failed and waits
  (failing since, next try, dead letter after).
* :func:`list_models`: ``ainode models``' rows (version, task, backend, DEMO,
  licence, weights checksum state).
* :func:`audit_page`: the audit log filtered by kind, time, caller, peer
  address and study, newest first, a page at a time (:func:`node.audit.query`).
* :func:`retry_delivery`: the retry action of one dead letter
  (:func:`node.dispatcher.retry_dead`, which ``ainode deliveries retry`` calls too).

Records hold ``datetime`` values (UTC); :func:`to_json` turns any of them into
JSON-able dicts with times as ``2026-11-22T10:00:05Z``.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.uid import UID
from sqlalchemy import or_, select

from node.db import AuditEvent, AuditKind, Database, Delivery, DeliveryState, Job, JobState, Result
from node.priority import level_name

if TYPE_CHECKING:
    from models.registry import ModelRegistry
    from node.settings import DeliverySettings

__all__ = [
    "AuditPage",
    "DeliveryRecord",
    "EventRecord",
    "JobDetail",
    "JobRecord",
    "ModelRecord",
    "NotDead",
    "NotFound",
    "ResultRecord",
    "audit_page",
    "get_delivery",
    "job_detail",
    "list_deliveries",
    "list_models",
    "recent_jobs",
    "retry_delivery",
    "to_json",
]

#: What a result kind is called on a page (``node.db.Result.kind`` holds the short DICOM-ish code).
KIND_LABELS = {"PR": "GSPS", "KO": "KOS"}
#: Delivery states a list can be filtered by (``done`` is also accepted as ``delivered``).
DELIVERY_STATES = tuple(s.value for s in DeliveryState)
#: The most rows a page or an API call asks for (the CLI's ``--limit`` has no bound), and of a job's history.
MAX_LIMIT = 1000


class NotFound(LookupError):
    """No such job or delivery."""


class NotDead(ValueError):
    """A retry of a delivery that is not a dead letter (its state says what it is doing)."""

    def __init__(self, delivery_id: int, state: str) -> None:
        super().__init__(f"delivery {delivery_id} is {state}, not a dead letter: only dead letters are retried")
        self.state = state


def _utc(moment: datetime | None) -> datetime | None:
    """A database time in UTC (SQLite gives it back without its zone: it was stored in UTC)."""
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _epoch(seconds: float | None) -> datetime | None:
    return datetime.fromtimestamp(seconds, UTC) if seconds else None


def _limit(limit: int) -> int:
    return max(0, int(limit))


# -- jobs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobRecord:
    """One job as ``ainode jobs`` lists it."""

    id: int
    state: str
    priority: str  # urgent, priority, routine
    priority_reason: str | None
    pipeline: str
    rule: str | None
    study_uid: str
    series_uid: str
    attempts: int
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    summary: str | None
    error: str | None

    @property
    def duration_seconds(self) -> float | None:
        """From the start of its last try to its end."""
        if self.started_at is None or self.finished_at is None:
            return None
        return max(0.0, (self.finished_at - self.started_at).total_seconds())


def _job_record(job: Job) -> JobRecord:
    return JobRecord(
        id=job.id,
        state=job.state.value,
        priority=level_name(job.priority),
        priority_reason=job.priority_reason,
        pipeline=job.pipeline,
        rule=job.rule,
        study_uid=job.study_uid,
        series_uid=job.series_uid,
        attempts=job.attempts,
        created_at=_utc(job.created_at),
        started_at=_utc(job.started_at),
        finished_at=_utc(job.finished_at),
        summary=job.summary,
        error=job.error,
    )


def recent_jobs(db: Database, *, state: str | None = None, limit: int = 50) -> list[JobRecord]:
    """The newest jobs first, optionally of one state (``queued``, ``running``, ``done``, ``failed``)."""
    stmt = select(Job).order_by(Job.id.desc()).limit(_limit(limit))
    if state:
        stmt = stmt.where(Job.state == JobState(state))
    with db.session() as session:
        return [_job_record(j) for j in session.scalars(stmt).all()]


@dataclass(frozen=True)
class EventRecord:
    """One audit row: a line of the audit log, or of a job's history."""

    id: int
    time: datetime | None
    kind: str
    calling_ae: str | None  # the AE title that sent, or the HTTP user or token
    peer_address: str | None
    study_uid: str | None
    series_uid: str | None
    sop_uid: str | None
    job_id: int | None
    instance_count: int | None
    pipeline: str | None
    model_versions: str | None
    destination: str | None
    message: str | None


def _event_record(e: AuditEvent) -> EventRecord:
    return EventRecord(
        id=e.id,
        time=_utc(e.time),
        kind=e.kind.value,
        calling_ae=e.calling_ae,
        peer_address=e.peer_address,
        study_uid=e.study_uid,
        series_uid=e.series_uid,
        sop_uid=e.sop_uid,
        job_id=e.job_id,
        instance_count=e.instance_count,
        pipeline=e.pipeline,
        model_versions=e.model_versions,
        destination=e.destination,
        message=e.message,
    )


@dataclass(frozen=True)
class DeliveryRecord:
    """One delivery of one result object to one destination."""

    id: int
    state: str  # pending, sending, done, dead, committing
    destination: str
    attempts: int
    created_at: datetime | None
    delivered_at: datetime | None
    last_error: str | None
    result_id: int
    kind: str
    sop_uid: str
    study_uid: str
    series_uid: str  # the source series
    job_id: int
    path: str | None  # where the result object is kept (None: removed by retention)
    commitment_uid: str | None = None
    committed_at: datetime | None = None
    #: A delivery that failed and waits: since when, when it is tried next, when it becomes a dead letter.
    failing_since: datetime | None = None
    next_attempt_at: datetime | None = None
    dead_letter_after: datetime | None = None
    #: ``dead_letter_after`` or this many tries, whichever comes first (``delivery.max_attempts``).
    dead_letter_after_tries: int | None = None

    @property
    def kind_label(self) -> str:
        return KIND_LABELS.get(self.kind, self.kind)


def _delivery_record(d: Delivery, r: Result, policy: DeliverySettings | None) -> DeliveryRecord:
    schedule: dict[str, Any] = {}
    if d.first_failed_at is not None and d.state == DeliveryState.PENDING:
        schedule["failing_since"] = _epoch(d.first_failed_at)
        schedule["next_attempt_at"] = _epoch(d.next_attempt_at) or _epoch(d.first_failed_at)
        if policy is not None:
            schedule["dead_letter_after"] = _epoch(d.first_failed_at + policy.give_up_after_hours * 3600)
            schedule["dead_letter_after_tries"] = policy.max_attempts
    return DeliveryRecord(
        id=d.id,
        state=d.state.value,
        destination=d.destination,
        attempts=d.attempts,
        created_at=_utc(d.created_at),
        delivered_at=_utc(d.delivered_at),
        last_error=d.last_error,
        result_id=r.id,
        kind=r.kind,
        sop_uid=r.sop_uid,
        study_uid=r.study_uid,
        series_uid=r.series_uid,
        job_id=r.job_id,
        path=None if r.purged_at else r.path,
        commitment_uid=d.commitment_uid,
        committed_at=_utc(d.committed_at),
        **schedule,
    )


@dataclass(frozen=True)
class ResultRecord:
    """A result object a job wrote, with its deliveries."""

    id: int
    kind: str  # SR, SEG, PR, KO, SC
    sop_class_uid: str
    sop_class: str  # its name (PS3.6), e.g. "Comprehensive 3D SR Storage"
    sop_uid: str
    study_uid: str
    series_uid: str  # the source series it is about
    created_at: datetime | None
    demo: bool  # made by a DEMO model (weights built on synthetic data): not for clinical use
    superseded_by: int | None
    purged: bool
    deliveries: list[DeliveryRecord] = field(default_factory=list)

    @property
    def kind_label(self) -> str:
        return KIND_LABELS.get(self.kind, self.kind)


@dataclass(frozen=True)
class JobDetail:
    """Everything the node recorded about one job, without patient data."""

    job: JobRecord
    generation: int
    worker: str | None
    destinations: list[str]
    model_versions: str | None  # "name version (demo), ..." of the models that ran
    demo: bool
    results: list[ResultRecord]
    events: list[EventRecord]


def _payload_demo(payload: dict[str, Any] | None) -> bool | None:
    """Whether an SR's findings came from a DEMO model (``None``: the payload does not say)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("algorithms"), list):
        return None
    return any(isinstance(a, dict) and bool(a.get("demo")) for a in payload["algorithms"])


def job_detail(db: Database, job_id: int, policy: DeliverySettings | None = None) -> JobDetail:
    """One job in full; :class:`NotFound` when there is no such job."""
    with db.session() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        results = session.scalars(select(Result).where(Result.job_id == job_id).order_by(Result.id)).all()
        deliveries: dict[int, list[DeliveryRecord]] = {r.id: [] for r in results}
        by_id = {r.id: r for r in results}
        if results:
            for d in session.scalars(
                select(Delivery).where(Delivery.result_id.in_(list(by_id))).order_by(Delivery.id)
            ).all():
                deliveries[d.result_id].append(_delivery_record(d, by_id[d.result_id], policy))
        # Its history: the rows naming the job, and who sent its study (rows of the study without a job).
        events = session.scalars(
            select(AuditEvent)
            .where(
                or_(
                    AuditEvent.job_id == job_id,
                    (AuditEvent.study_uid == job.study_uid) & (AuditEvent.kind == AuditKind.RECEIVED),
                )
            )
            .order_by(AuditEvent.time, AuditEvent.id)
            .limit(MAX_LIMIT)
        ).all()
        record = _job_record(job)
        generation, worker, destinations = job.generation, job.worker, list(job.destinations or [])
    models = next(
        (e.model_versions for e in reversed(events) if e.kind in (AuditKind.JOB_DONE, AuditKind.JOB_FAILED)), None
    )
    said = [d for d in (_payload_demo(r.payload) for r in results) if d is not None]
    demo = any(said) if said else "(demo)" in (models or "")
    return JobDetail(
        job=record,
        generation=generation,
        worker=worker,
        destinations=destinations,
        model_versions=models,
        demo=demo,
        results=[
            ResultRecord(
                id=r.id,
                kind=r.kind,
                sop_class_uid=r.sop_class_uid,
                sop_class=UID(r.sop_class_uid).name,
                sop_uid=r.sop_uid,
                study_uid=r.study_uid,
                series_uid=r.series_uid,
                created_at=_utc(r.created_at),
                demo=demo if (own := _payload_demo(r.payload)) is None else own,
                superseded_by=r.superseded_by,
                purged=r.purged_at is not None,
                deliveries=deliveries[r.id],
            )
            for r in results
        ],
        events=[_event_record(e) for e in events],
    )


# -- deliveries ------------------------------------------------------------------------------


def _delivery_state(state: str) -> DeliveryState:
    try:
        return DeliveryState("done" if state == "delivered" else state)
    except ValueError:
        raise ValueError(f"unknown delivery state {state!r}: one of {', '.join(DELIVERY_STATES)}") from None


def list_deliveries(
    db: Database,
    *,
    states: Sequence[str] = (),
    destination: str | None = None,
    limit: int = 100,
    policy: DeliverySettings | None = None,
) -> list[DeliveryRecord]:
    """Deliveries, newest first; ``states`` (``dead`` for the dead letters) and ``destination`` filter them.

    An unknown state is a ``ValueError`` naming the known ones.
    """
    wanted = [_delivery_state(s) for s in states]
    stmt = (
        select(Delivery, Result)
        .join(Result, Result.id == Delivery.result_id)
        .order_by(Delivery.id.desc())
        .limit(_limit(limit))
    )
    if wanted:
        stmt = stmt.where(Delivery.state.in_(wanted))
    if destination:
        stmt = stmt.where(Delivery.destination == destination)
    with db.session() as session:
        return [_delivery_record(d, r, policy) for d, r in session.execute(stmt).all()]


def get_delivery(db: Database, delivery_id: int, policy: DeliverySettings | None = None) -> DeliveryRecord:
    """One delivery; :class:`NotFound` when there is none."""
    with db.session() as session:
        found = session.execute(
            select(Delivery, Result).join(Result, Result.id == Delivery.result_id).where(Delivery.id == delivery_id)
        ).first()
        if found is None:
            raise NotFound(f"no delivery {delivery_id}")
        return _delivery_record(found[0], found[1], policy)


def retry_delivery(
    db: Database,
    delivery_id: int,
    *,
    caller: str | None,
    peer_address: str | None = None,
    wake: Callable[[], None] | None = None,
    policy: DeliverySettings | None = None,
) -> DeliveryRecord:
    """Queue one dead letter again (``ainode deliveries retry ID``'s action), audited with who asked.

    :class:`NotFound` for an unknown delivery, :class:`NotDead` for one that is not a
    dead letter (pending, being sent, delivered): nothing changes then. ``wake`` is the
    dispatcher's :meth:`~node.background.BackgroundLoop.notify` when it runs in this
    process, so the delivery is tried at once rather than at the dispatcher's next pass.
    """
    from node.dispatcher import retry_dead

    if retry_dead(db, [delivery_id], caller=caller, peer_address=peer_address) == 0:
        current = get_delivery(db, delivery_id, policy)  # NotFound, or in another state
        raise NotDead(delivery_id, current.state)
    if wake is not None:
        wake()
    return get_delivery(db, delivery_id, policy)


# -- models ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRecord:
    """One model of the registry, as ``ainode models`` lists it."""

    name: str
    version: str | None
    task: str | None
    backend: str | None
    demo: bool | None
    licence: str | None
    description: str | None
    weights: str  # ok, missing, mismatch, invalid
    sha256: str | None  # the manifest's checksum of the weights
    problem: str | None  # why the weights are not ok


def list_models(
    models_dir: Path | None = None, models_file: Path | None = None, *, registry: ModelRegistry | None = None
) -> list[ModelRecord]:
    """Every model of ``models_dir`` (or ``models_file``), its manifest and whether its weights match their checksum.

    ``registry``: one discovered earlier, kept by a caller that lists the models again and again
    (the node's pages): it hashes a weights file again only when its size or modification time changed.
    """
    from models.registry import ModelRegistry

    if registry is None:
        if models_dir is None:
            raise ValueError("list_models needs a models directory or a registry")
        registry = ModelRegistry.discover(models_dir, models_file)
    manifests = {m.name: m for m in registry.manifests()}
    records = []
    for st in registry.verify():  # every entry, invalid manifests included
        m = manifests.get(st.name)
        records.append(
            ModelRecord(
                name=st.name,
                version=m.version if m else None,
                task=str(m.task) if m else None,
                backend=str(m.backend) if m else None,
                demo=m.demo if m else None,
                licence=(m.licence or None) if m else None,
                description=(m.description or None) if m else None,
                weights=st.state,
                sha256=m.sha256 if m else None,
                problem=None if st.state == "ok" else st.message,
            )
        )
    return records


# -- audit -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditPage:
    """A page of audit rows, newest first; ``next_before`` asks for the next (older) page."""

    events: list[EventRecord]
    next_before: int | None


def audit_page(
    db: Database,
    *,
    kinds: Sequence[str] = (),
    since: datetime | None = None,
    until: datetime | None = None,
    study: str | None = None,
    caller: str | None = None,
    peer: str | None = None,
    before: int | None = None,
    limit: int = 100,
) -> AuditPage:
    """Audit rows filtered as :func:`node.audit.query` does; ``before`` an event id (the previous page's end).

    An unknown kind is a ``ValueError`` naming the known ones.
    """
    from node.audit import query

    known = {k.value for k in AuditKind}
    unknown = [k for k in kinds if k not in known]
    if unknown:
        raise ValueError(f"unknown audit kind {unknown[0]!r}: one of {', '.join(sorted(known))}")
    limit = _limit(limit)
    events = query(
        db, since=since, until=until, study=study, kinds=kinds, caller=caller, peer=peer, before=before, limit=limit
    )
    return AuditPage(
        [_event_record(e) for e in events], events[-1].id if len(events) == limit and events[-1].id > 1 else None
    )


# -- JSON ------------------------------------------------------------------------------------


def _json_time(moment: datetime) -> str:
    return (_utc(moment) or moment).strftime("%Y-%m-%dT%H:%M:%SZ")


def to_json(value: Any) -> Any:
    """Records, lists and dicts of them as JSON-able values (times ``2026-11-22T10:00:05Z``, UTC).

    A record's properties that pages show (``duration_seconds``, ``kind_label``) are included.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
        for name in ("duration_seconds", "kind_label"):
            if hasattr(type(value), name):
                out[name] = to_json(getattr(value, name))
        return out
    if isinstance(value, datetime):
        return _json_time(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value
