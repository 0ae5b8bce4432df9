"""Delivery of result objects: C-STORE or STOW-RS, retried with exponential back-off for hours.

Each (result, destination) pair is a ``Delivery`` row. The dispatcher sends
due deliveries, grouped per destination into one association or request,
and records the outcome: done, or a new attempt after
``backoff_initial * 2**(attempts-1)`` seconds (capped at ``backoff_max``,
10 min by default), or a dead letter that is kept and can be retried by hand
(``ainode deliveries retry``): after a permanent refusal at once, otherwise
once the first failure is ``give_up_after_hours`` old (48 h by default: a PACS
maintenance window lasts hours) or, when set, after ``max_attempts``. Nothing
is dropped.

While a destination is down, two connections per pass find it so: when two sends in a row
fail without an answer (no association, a timeout), the other due deliveries of that pass
fail with them, each on its own back-off, instead of each waiting for the same timeout.

A backlog goes out in order: urgent results first (``Result.priority``, the
chest radiograph triage), then by creation. When a delivery to a destination
succeeds, every other delivery waiting for that destination becomes due at
once, so a PACS back from maintenance gets its whole backlog now, not each
result at the end of its own back-off.

Storage commitment (a DICOM destination with ``storage_commitment: true``,
PS3.4 Annex J): the instances a C-STORE stored go to ``committing`` under a
new Transaction UID, recorded before the N-ACTION asks for it
(:mod:`node.commitment`), since the report may arrive at once. The report,
received by a listener the dispatcher runs (node-level ``storage_commitment``),
marks committed instances done; a failed or unlisted instance, a refused or
unanswered N-ACTION, or no report within ``commitment_timeout`` is a failed
attempt: the instance is sent again by the retry policy (back-off, dead
letter), never left waiting. A late report for a transaction that timed out
is not trusted: the re-send asks again.

Time is read from an injectable clock (``clock``, epoch seconds), so the
schedule can be tested over simulated hours.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydicom.uid import generate_uid
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.status import is_store_success
from node import tls
from node.audit import audit_row
from node.background import BackgroundLoop
from node.commitment import CommitmentError, CommitmentListener, CommitmentReport, request_commitment
from node.db import AuditKind, Database, Delivery, DeliveryState, Result, rowcount, utcnow
from node.destinations import DeliveryAttempt, DicomDestination, DicomWebDestination
from node.logs import log_context
from node.settings import DicomDestinationSettings, Settings
from node.storage import open_files

if TYPE_CHECKING:
    from node.metrics import Metrics

log = logging.getLogger("ainode.dispatcher")
BATCH = 64
#: ``Result.priority`` of a result without triage: after urgent (0) and priority (1), with routine (2).
ROUTINE = 2
#: Sends of one pass the destination left unanswered after which the rest of the pass fails with them.
UNANSWERED_IS_DOWN = 2


class Sender(Protocol):
    def send(self, paths: Sequence[Path]) -> DeliveryAttempt: ...


def build_senders(settings: Settings) -> dict[str, Sender]:
    """One sender per configured destination (secrets and TLS files read now; secrets never logged).

    Raises
    ------
    ConfigError
        A secret that cannot be read, or a TLS file that is missing or unusable (see :mod:`node.tls`).
    """
    senders: dict[str, Sender] = {}
    for name, dest in settings.destinations.items():
        if isinstance(dest, DicomDestinationSettings):
            senders[name] = DicomDestination(
                name,
                ae_title=dest.ae_title,
                host=dest.host,
                port=dest.port,
                calling_ae=settings.ae_title,
                timeout=dest.timeout,
                ssl_context=tls.destination_context(name, dest),
            )
        else:
            secret = dest.secret()
            senders[name] = DicomWebDestination(
                name,
                url=dest.url,
                auth=dest.auth,
                username=dest.username,
                password=secret if dest.auth == "basic" else None,
                token=secret if dest.auth == "bearer" else None,
                timeout=dest.timeout,
                verify_tls=tls.https_verify(name, dest),
            )
            if not dest.verify_tls and dest.url.startswith("https:"):
                log.warning("destination %s: verify_tls is false, the server's certificate is not checked", name)
    return senders


def recover(db: Database) -> int:
    """Deliveries caught mid-send by a crash are sent again (a repeated C-STORE is harmless)."""
    with db.session() as session:
        result = session.execute(
            update(Delivery).where(Delivery.state == DeliveryState.SENDING).values(state=DeliveryState.PENDING)
        )
        return rowcount(result)


def retry_dead(
    db: Database, ids: Sequence[int] = (), *, caller: str | None = None, peer_address: str | None = None
) -> int:
    """Put dead letters (all, or those in ``ids``) back in the queue with a fresh attempt count.

    The one retry action: ``ainode deliveries retry`` and the admin pages
    (:func:`node.web.queries.retry_delivery`) call it. The ``retried`` audit row names
    who asked (``caller``: the HTTP user, or the operating-system user of the command)
    and from where.
    """
    with db.session() as session:
        stmt = update(Delivery).where(Delivery.state == DeliveryState.DEAD)
        if ids:
            stmt = stmt.where(Delivery.id.in_(list(ids)))
        result = session.execute(
            stmt.values(state=DeliveryState.PENDING, attempts=0, next_attempt_at=0.0, first_failed_at=None)
        )
        count = rowcount(result)
        if count:
            which = f"deliveries {', '.join(map(str, ids))}" if ids else "all dead letters"
            session.add(
                audit_row(
                    AuditKind.RETRIED,
                    instance_count=count,
                    calling_ae=caller,
                    peer_address=peer_address,
                    message=f"{count} dead letter(s) queued again by hand{f' by {caller}' if caller else ''} ({which})",
                )
            )
        return count


class Dispatcher(BackgroundLoop):
    """Background sender of due deliveries."""

    retry_seconds = 2.0
    #: What waits while the database is unreachable (one line per outage, see BackgroundLoop).
    paused = "delivering results"

    def __init__(
        self, settings: Settings, db: Database, senders: Mapping[str, Sender], clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__("ainode-dispatcher", log)
        self.policy = settings.delivery
        self.db = db
        self.senders = dict(senders)
        self.clock = clock
        self.files = open_files(settings)  # results by ref: files in place, or objects fetched for the send
        self.metrics: Metrics | None = None
        #: Destinations whose deliveries end with storage commitment (PS3.4 Annex J).
        self.committing: dict[str, DicomDestinationSettings] = {
            name: dest
            for name, dest in settings.destinations.items()
            if isinstance(dest, DicomDestinationSettings) and dest.storage_commitment and name in self.senders
        }
        self.commitment_ae = settings.storage_commitment.ae_title
        self.listener: CommitmentListener | None = None
        if self.committing:
            sc = settings.storage_commitment
            self.listener = CommitmentListener(sc.ae_title, host=sc.host, port=sc.port, on_report=self.on_report)
        self._tls = {name: tls.destination_context(name, dest) for name, dest in self.committing.items()}

    def start(self) -> None:
        """Start the commitment listener (when a destination asks for commitment), then the loop."""
        if self.listener is not None:
            try:
                self.listener.start()
            except OSError as exc:  # port in use or not ours: deliveries wait for reports that cannot come
                log.error(
                    "storage commitment listener %s cannot listen on %s:%d (%s): committed deliveries will time "
                    "out and be sent again until the node is restarted with the port free",
                    self.listener.ae_title,
                    self.listener.host,
                    self.listener.port,
                    exc.strerror or exc,
                )
        super().start()

    def stop(self, timeout: float = 30) -> None:
        super().stop(timeout)
        if self.listener is not None:
            self.listener.stop()

    def run_once(self) -> float:
        """Send what is due; return seconds until the next delivery is due (at most 1 s)."""
        now = self.clock()
        if self.committing:
            self._expire_commitments(now)
        for destination in self.senders:
            self._send_batch(destination, now)
        with self.db.session() as session:
            upcoming = session.scalar(
                select(Delivery.next_attempt_at)
                .where(Delivery.state == DeliveryState.PENDING)
                .order_by(Delivery.next_attempt_at)
                .limit(1)
            )
        if upcoming is None:
            return 1.0
        return max(0.0, min(1.0, upcoming - self.clock()))

    def delay(self, attempts: int) -> float:
        """Seconds before the next attempt after ``attempts`` failed ones (exponential, capped)."""
        return float(min(self.policy.backoff_max, self.policy.backoff_initial * 2 ** min(attempts - 1, 60)))

    def _send_batch(self, destination: str, now: float) -> None:
        with self.db.session() as session:
            rows = session.execute(
                select(
                    Delivery.id,
                    Delivery.created_at,
                    Result.path,
                    Result.sop_uid,
                    Result.sop_class_uid,
                    Result.study_uid,
                    Result.series_uid,
                    Result.job_id,
                )
                .join(Result, Result.id == Delivery.result_id)
                .where(
                    Delivery.destination == destination,
                    Delivery.state == DeliveryState.PENDING,
                    Delivery.next_attempt_at <= now,
                )
                .order_by(func.coalesce(Result.priority, ROUTINE), Delivery.id)
                .limit(BATCH)
            ).all()
            if not rows:
                return
            claimed = session.execute(
                update(Delivery)
                .where(Delivery.id.in_([r.id for r in rows]), Delivery.state == DeliveryState.PENDING)
                .values(state=DeliveryState.SENDING)
            )
            if rowcount(claimed) != len(rows):
                session.rollback()
                return
        # One send per study, so every line the sender logs names its study (and its job, when one).
        by_study: dict[str, list[Any]] = {}
        for row in rows:
            by_study.setdefault(row.study_uid, []).append(row)
        groups = list(by_study.items())
        unanswered = 0  # consecutive sends the destination did not answer at all
        failed: list[int] = []  # deliveries that failed in this pass: a later success does not make them due
        for index, (study_uid, group) in enumerate(groups):
            jobs = {row.job_id for row in group}
            with log_context(job=jobs.pop() if len(jobs) == 1 else None, study=study_uid):
                try:
                    with self.files.fetch([r.path for r in group]) as paths:
                        attempt = self.senders[destination].send(paths)
                except Exception as exc:  # a sender must not take the dispatcher down
                    attempt = DeliveryAttempt(
                        ok=False, permanent=False, message=f"{type(exc).__name__}: {exc}", statuses={}
                    )
            rest = [row for _, later in groups[index + 1 :] for row in later]
            unanswered = unanswered + 1 if not attempt.ok and not attempt.permanent and not attempt.statuses else 0
            if rest and unanswered >= UNANSWERED_IS_DOWN:
                # The destination itself is down (no association, no answer, twice: not one object it chokes on):
                # the rest of the batch would only wait for the same timeout once per study. They fail with it
                # now, each on its own back-off.
                self._record(destination, group + rest, attempt)
                return
            if not attempt.ok:
                failed += [row.id for row in group]
            transaction = generate_uid() if destination in self.committing else None
            made_due = self._record(destination, group, attempt, failed, transaction)
            if transaction is not None:
                self._request_commitment(destination, transaction, group, attempt)
            if made_due and rest:
                # Back after an outage: the rest of this batch goes back to the queue, so that the next pass
                # sends the whole backlog (now all due) urgent first, not this batch's routine results first.
                with self.db.session() as session:
                    session.execute(
                        update(Delivery)
                        .where(Delivery.id.in_([r.id for r in rest]), Delivery.state == DeliveryState.SENDING)
                        .values(state=DeliveryState.PENDING)
                    )
                return

    def _record(
        self,
        destination: str,
        rows: Sequence[Any],
        attempt: DeliveryAttempt,
        failed: Sequence[int] = (),
        transaction: str | None = None,
    ) -> int:
        """Record one send's outcome; returns how many waiting deliveries it made due now (destination back).

        ``failed``: deliveries that failed earlier in the same pass, which keep their back-off.
        ``transaction``: stored instances wait for this storage commitment transaction instead of being done.
        """
        made_due = 0
        with self.db.session() as session:
            delivered = False
            for row in rows:
                with log_context(job=row.job_id, study=row.study_uid, series=row.series_uid):
                    delivered = self._record_one(session, destination, row, attempt, transaction) or delivered
            if delivered:
                # The destination answers again: its backlog need not wait for each delivery's back-off.
                backlog = session.execute(
                    update(Delivery)
                    .where(
                        Delivery.destination == destination,
                        Delivery.state == DeliveryState.PENDING,
                        Delivery.next_attempt_at > 0,
                        Delivery.id.notin_([row.id for row in rows] + list(failed)),
                    )
                    .values(next_attempt_at=0.0)
                )
                made_due = rowcount(backlog)
                if made_due:
                    log.info("destination %s answers again: %d waiting deliveries are due now", destination, made_due)
        return made_due

    def _record_one(
        self, session: Session, destination: str, row: Any, attempt: DeliveryAttempt, transaction: str | None = None
    ) -> bool:
        """One delivery's outcome: its state, its audit row and the metrics, together; True when delivered.

        ``row`` is one row of :meth:`_send_batch`'s query (the delivery's id and its result's UIDs).
        """
        audit = {
            "destination": destination,
            "sop_uid": row.sop_uid,
            "study_uid": row.study_uid,
            "series_uid": row.series_uid,
            "job_id": row.job_id,
        }
        delivery = session.get(Delivery, row.id)
        assert delivery is not None, f"delivery {row.id} was claimed in this pass; delivery rows are never deleted"
        code = attempt.statuses.get(row.sop_uid)
        ok = attempt.ok if code is None else is_store_success(code)
        delivery.attempts += 1
        if ok and transaction is not None:
            delivery.state = DeliveryState.COMMITTING
            delivery.commitment_uid = transaction
            delivery.next_attempt_at = self.clock() + self.committing[destination].commitment_timeout
            # last_error stays: why an earlier commitment failed, until this one succeeds
            log.info("stored %s in %s; waiting for its storage commitment", row.sop_uid, destination)
            return True
        if ok:
            delivery.state = DeliveryState.DONE
            delivery.delivered_at = utcnow()
            delivery.last_error = None
            session.add(audit_row(AuditKind.DELIVERED, message=f"attempt {delivery.attempts}", **audit))
            self._count(destination, "delivered", row.created_at)
            log.info("delivered %s to %s", row.sop_uid, destination)
            return True
        # this instance's own word: why it was not sent (e.g. no acceptable transfer syntax), or its status
        detail = None if code is None else attempt.notes.get(row.sop_uid) or f"status 0x{code:04X}"
        reason = attempt.message if detail is None or detail in attempt.message else f"{attempt.message} ({detail})"
        self._failed(session, destination, delivery, audit, reason, attempt.permanent, row.sop_uid)
        return False

    def _failed(
        self,
        session: Session,
        destination: str,
        delivery: Delivery,
        audit: dict[str, Any],
        reason: str,
        permanent: bool,
        sop_uid: str,
    ) -> None:
        """A failed attempt: back-off and pending again, or a dead letter (refused, or given up)."""
        delivery.last_error = reason
        now = self.clock()
        if delivery.first_failed_at is None:
            delivery.first_failed_at = now
        failing_hours = (now - delivery.first_failed_at) / 3600.0
        given_up = failing_hours >= self.policy.give_up_after_hours or (
            self.policy.max_attempts is not None and delivery.attempts >= self.policy.max_attempts
        )
        if permanent or given_up:
            delivery.state = DeliveryState.DEAD
            why = "refused" if permanent else f"failing for {failing_hours:.1f} h"
            session.add(
                audit_row(
                    AuditKind.DEAD_LETTER,
                    message=f"delivery {delivery.id} after {delivery.attempts} attempt(s), {why}: {reason}",
                    **audit,
                )
            )
            self._count(destination, "dead", None)
            log.error(
                "delivery %s of %s to %s is a dead letter after %d attempts (%s): %s",
                delivery.id,
                sop_uid,
                destination,
                delivery.attempts,
                why,
                reason,
            )
        else:
            delay = self.delay(delivery.attempts)
            delivery.state = DeliveryState.PENDING
            delivery.next_attempt_at = now + delay
            session.add(
                audit_row(
                    AuditKind.DELIVERY_FAILED,
                    message=f"attempt {delivery.attempts}, next in {delay:.0f} s: {reason}",
                    **audit,
                )
            )
            self._count(destination, "failed", None)
            log.warning(
                "delivery of %s to %s failed (attempt %d), next in %.0f s: %s",
                sop_uid,
                destination,
                delivery.attempts,
                delay,
                reason,
            )

    def _request_commitment(
        self, destination: str, transaction: str, rows: Sequence[Any], attempt: DeliveryAttempt
    ) -> None:
        """Ask for the commitment of what this send stored (already ``committing``); a failed request fails them."""
        stored = [row for row in rows if is_store_success(attempt.statuses.get(row.sop_uid, 0 if attempt.ok else -1))]
        if not stored:
            return
        dest = self.committing[destination]
        try:
            request_commitment(
                [(row.sop_class_uid, row.sop_uid) for row in stored],
                host=dest.host,
                port=dest.port,
                called_ae=dest.ae_title,
                calling_ae=self.commitment_ae,
                timeout=dest.timeout,
                ssl_context=self._tls.get(destination),
                transaction_uid=transaction,
            )
        except CommitmentError as exc:
            self._end_transaction(
                transaction, set(), {}, f"storage commitment request failed: {exc.reason}", exc.permanent
            )

    def on_report(self, report: CommitmentReport) -> bool:
        """An N-EVENT-REPORT (listener thread): committed instances are done, the others sent again.

        Returns False for a transaction no delivery waits for (unknown, or timed out and re-sent).
        """
        reasons = {
            uid: f"storage commitment failed (Failure Reason 0x{code:04X})" for uid, code in report.failed.items()
        }
        return (
            self._end_transaction(
                report.transaction_uid, set(report.committed), reasons, "not in the storage commitment report", False
            )
            > 0
        )

    def _expire_commitments(self, now: float) -> None:
        """Deliveries whose commitment report did not come within ``commitment_timeout`` are sent again."""
        with self.db.session() as session:
            transactions = session.scalars(
                select(Delivery.commitment_uid)
                .where(Delivery.state == DeliveryState.COMMITTING, Delivery.next_attempt_at <= now)
                .distinct()
            ).all()
        for transaction in transactions:
            if transaction is not None:
                self._end_transaction(transaction, set(), {}, "no storage commitment report in time", False)

    def _end_transaction(
        self, transaction: str, committed: set[str], reasons: dict[str, str], otherwise: str, permanent: bool
    ) -> int:
        """Finish the deliveries waiting for ``transaction``: done if committed, else failed with their reason."""
        with self.db.session() as session:
            rows = session.execute(
                select(Delivery, Result)
                .join(Result, Result.id == Delivery.result_id)
                .where(Delivery.commitment_uid == transaction, Delivery.state == DeliveryState.COMMITTING)
            ).all()
            for delivery, result in rows:
                audit = {
                    "destination": delivery.destination,
                    "sop_uid": result.sop_uid,
                    "study_uid": result.study_uid,
                    "series_uid": result.series_uid,
                    "job_id": result.job_id,
                }
                with log_context(job=result.job_id, study=result.study_uid, series=result.series_uid):
                    if result.sop_uid in committed:
                        delivery.state = DeliveryState.DONE
                        delivery.delivered_at = delivery.committed_at = utcnow()
                        delivery.last_error = None
                        session.add(
                            audit_row(
                                AuditKind.DELIVERED,
                                message=f"attempt {delivery.attempts}, storage commitment {transaction}",
                                **audit,
                            )
                        )
                        self._count(delivery.destination, "delivered", delivery.created_at)
                        log.info("%s committed by %s", result.sop_uid, delivery.destination)
                    else:
                        reason = f"{delivery.destination}: {reasons.get(result.sop_uid, otherwise)}"
                        self._failed(session, delivery.destination, delivery, audit, reason, permanent, result.sop_uid)
            return len(rows)

    def _count(self, destination: str, outcome: str, queued_at: datetime | None) -> None:
        if self.metrics is None:
            return
        self.metrics.deliveries.labels(destination=destination, outcome=outcome).inc()
        if queued_at is not None:
            # SQLite gives back naive datetimes; they were written in UTC.
            queued = queued_at if queued_at.tzinfo else queued_at.replace(tzinfo=UTC)
            self.metrics.delivery_seconds.labels(destination=destination).observe(
                max(0.0, (utcnow() - queued).total_seconds())
            )
