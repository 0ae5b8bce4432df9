"""The audit log: who sent what, what ran, where results went, and what failed.

Rows of :class:`node.db.AuditEvent`, read with ``ainode audit``. They name AE
titles, addresses, UIDs, pipelines, model versions and destinations, never
patient data.

* ``received``: one row per association *and study*, written when the
  association ends (calling AE, address, study UID, instances stored). The
  receiver counts instances in memory (:class:`ReceiveAudit`), so receiving
  costs no extra database write per instance.
* ``association_rejected``: who was refused and why (PS3.8 9.3.4).
* ``job_done`` / ``job_failed``: written in the transaction that finishes the
  job (pipeline, model versions, summary or error).
* ``delivered`` / ``delivery_failed`` / ``dead_letter``: written in the
  transaction that records the delivery (destination, SOP Instance UID).
* ``retried``: dead letters queued again by ``ainode deliveries retry`` or the
  admin pages' Retry (the caller: the HTTP user, or the command's OS user).

A ``received`` row is lost when the process is killed during the
association (the count is in memory); the instances themselves keep their
calling AE title and address in the ``instances`` table.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from node.background import OutageLog, database_unreachable, short_reason
from node.db import AuditEvent, AuditKind, Database

if TYPE_CHECKING:
    from core.findings import SeriesResult
    from dimse.scp import AssociationEvent, StoreRequest

__all__ = ["AuditKind", "ReceiveAudit", "audit_row", "format_events", "model_versions", "query", "record"]

log = logging.getLogger("ainode.audit")
#: The database unreachable: the audit events of that time are not written (the instances keep who sent them).
_OUTAGE = OutageLog(log, "writing audit events", "the events of the outage are not kept")

_LIMITS = {
    "calling_ae": 16,
    "peer_address": 64,
    "study_uid": 64,
    "series_uid": 64,
    "sop_uid": 64,
    "pipeline": 64,
    "model_versions": 512,
    "destination": 64,
}


def audit_row(kind: AuditKind | str, **fields: Any) -> AuditEvent:
    """An :class:`AuditEvent` to add to a session (strings cut to their column's length)."""
    for name, limit in _LIMITS.items():
        if isinstance(fields.get(name), str):
            fields[name] = fields[name][:limit]
    return AuditEvent(kind=AuditKind(kind), **fields)


def record(db: Database, kind: AuditKind | str, **fields: Any) -> None:
    """Write one audit event in its own transaction; a failure is logged, never raised.

    Used where no transaction of the node's own is open (association ends);
    elsewhere the row is added to the transaction that makes the change, so
    the audit and the state cannot disagree.
    """
    try:
        with db.session() as session:
            session.add(audit_row(kind, **fields))
    except SQLAlchemyError as exc:
        if database_unreachable(exc):  # one line per outage, not one per association
            _OUTAGE.failed(exc)
        else:
            log.error("audit event %s could not be written: %s", kind, short_reason(exc))
        return
    _OUTAGE.recovered()


def model_versions(result: SeriesResult | None) -> str | None:
    """``name version`` of each algorithm that produced ``result``, comma-separated (``(demo)`` marked)."""
    if result is None or not result.algorithms:
        return None
    return ", ".join(f"{a.name} {a.version}{' (demo)' if a.demo else ''}" for a in result.algorithms)


# -- received: counted in memory per association, written when it ends -----------------------


@dataclass
class _OpenAssociation:
    calling_ae: str
    peer_address: str
    stored: dict[str, int] = field(default_factory=dict)  # study UID -> instances stored
    rejected: dict[str, int] = field(default_factory=dict)  # study UID ("" unknown) -> instances refused


class ReceiveAudit:
    """Counts what each open association stored, per study; writes ``received`` rows when it ends.

    Bound to the SCP's ``on_association`` callback and the receiver's
    per-instance hook. The SCP serves each association on one thread and
    reports its events and C-STOREs on that thread, so the thread identifies
    the association; an end reported from elsewhere falls back to the oldest
    open association of the same AE title and address.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._open: dict[int, _OpenAssociation] = {}
        self._lock = threading.Lock()

    def association(self, event: AssociationEvent) -> None:
        """Handle an accepted, rejected, released or aborted association (PS3.8 7.1-7.3)."""
        key = threading.get_ident()
        if event.kind == "accepted":
            with self._lock:
                self._open[key] = _OpenAssociation(event.calling_ae, event.peer_address)
            return
        if event.kind == "rejected":
            record(
                self.db,
                AuditKind.ASSOCIATION_REJECTED,
                calling_ae=event.calling_ae,
                peer_address=event.peer_address,
                message=event.reason,
            )
            return
        with self._lock:
            open_ = self._open.pop(key, None)
            if open_ is None:
                key = next(
                    (
                        k
                        for k, o in self._open.items()
                        if (o.calling_ae, o.peer_address) == (event.calling_ae, event.peer_address)
                    ),
                    key,
                )
                open_ = self._open.pop(key, None)
        if open_ is not None:
            self._write(open_, event.kind if event.reason is None else f"{event.kind}: {event.reason}")

    def instance(self, request: StoreRequest, study_uid: str | None, stored: bool) -> None:
        """Count one C-STORE of the current association (no database work)."""
        key = threading.get_ident()
        with self._lock:
            open_ = self._open.get(key)
            if open_ is None:  # an SCP that did not report the association: count it anyway
                open_ = self._open[key] = _OpenAssociation(request.calling_ae, request.peer_address)
            counts = open_.stored if stored else open_.rejected
            counts[study_uid or ""] = counts.get(study_uid or "", 0) + 1

    def flush(self) -> None:
        """Write what associations still open have stored (the node is stopping)."""
        with self._lock:
            pending, self._open = list(self._open.values()), {}
        for open_ in pending:
            self._write(open_, "open when the node stopped")

    def _write(self, open_: _OpenAssociation, ending: str) -> None:
        rows = []
        for study in sorted(set(open_.stored) | set(open_.rejected)):
            stored, refused = open_.stored.get(study, 0), open_.rejected.get(study, 0)
            message = f"{stored} instance(s) stored" + (f", {refused} refused" if refused else "")
            rows.append(
                audit_row(
                    AuditKind.RECEIVED,
                    calling_ae=open_.calling_ae,
                    peer_address=open_.peer_address,
                    study_uid=study or None,
                    instance_count=stored,
                    message=f"{message}; association {ending}",
                )
            )
        if not rows:
            return  # C-ECHO only: nothing was sent
        try:
            with self.db.session() as session:
                session.add_all(rows)
        except SQLAlchemyError as exc:
            if database_unreachable(exc):  # one line per outage, not one per association
                _OUTAGE.failed(exc)
            else:
                log.error(
                    "audit of association from %r at %s could not be written: %s",
                    open_.calling_ae,
                    open_.peer_address,
                    short_reason(exc),
                )
            return
        _OUTAGE.recovered()


# -- reading ---------------------------------------------------------------------------------


def query(
    db: Database,
    *,
    since: datetime | None = None,
    study: str | None = None,
    kinds: Sequence[str] = (),
    limit: int = 100,
    until: datetime | None = None,
    caller: str | None = None,
    peer: str | None = None,
    before: int | None = None,
) -> list[AuditEvent]:
    """Audit events, newest first, filtered by time, study UID, kind, caller and peer address.

    ``since`` and ``until`` bound the time (a time without a zone is UTC; ``until`` excluded),
    ``caller`` is the calling AE title or HTTP user exactly, ``peer`` the address exactly,
    and ``before`` an event id: only older events (the next page after an event).
    """
    stmt = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    # In UTC: SQLite keeps the UTC wall time and compares text, ignoring any offset.
    if since is not None:
        stmt = stmt.where(AuditEvent.time >= (since.astimezone(UTC) if since.tzinfo else since.replace(tzinfo=UTC)))
    if until is not None:
        stmt = stmt.where(AuditEvent.time < (until.astimezone(UTC) if until.tzinfo else until.replace(tzinfo=UTC)))
    if study:
        stmt = stmt.where(AuditEvent.study_uid == study)
    if kinds:
        stmt = stmt.where(AuditEvent.kind.in_([AuditKind(k) for k in kinds]))
    if caller:
        stmt = stmt.where(AuditEvent.calling_ae == caller)
    if peer:
        stmt = stmt.where(AuditEvent.peer_address == peer)
    if before is not None:
        stmt = stmt.where(AuditEvent.id < before)
    with db.session() as session:
        return list(session.scalars(stmt).all())


def format_events(events: Iterable[AuditEvent]) -> tuple[list[str], list[list[object]]]:
    """Headers and rows for a table: time (UTC), kind, who, study, what, where, message."""
    headers = [
        "time (UTC)",
        "kind",
        "calling AE",
        "address",
        "study",
        "count",
        "pipeline / models",
        "destination",
        "job",
        "sop instance",
        "message",
    ]
    rows: list[list[object]] = []
    for e in events:
        when = e.time if e.time.tzinfo else e.time.replace(tzinfo=UTC)
        what = " ".join(x for x in (e.pipeline, f"[{e.model_versions}]" if e.model_versions else None) if x)
        rows.append(
            [
                when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
                e.kind.value,
                e.calling_ae,
                e.peer_address,
                e.study_uid,
                e.instance_count,
                what or None,
                e.destination,
                e.job_id,
                e.sop_uid,
                (e.message or "")[:100],
            ]
        )
    return headers, rows
