"""Series assembly: a series is stable after a quiet period, then routed into a job.

The receiver sets each series' ``ready_at`` to the time of its last instance
plus the quiet period of its modality (``quiet_period`` in node.yaml). This
loop picks stable series, reads one instance's header, asks the router which
pipeline (if any) should analyse it, and records a queued job. The header is
the one the receiver recorded (``Instance.header``, see
:func:`node.router.routing_tags`); the file is read only when none was. Our own result
objects and other nodes' SR/SEG/PR/KO are marked ignored, never analysed.

Each job gets its priority here (:class:`node.priority.PriorityPolicy`): the rule's, the
Requested Procedure Priority and Current Patient Location recorded with the header, and an
urgent triage of an earlier result of the same study; the reason is kept in ``Job.priority_reason``.

A series re-sent unchanged after it was scheduled (``Series.resend_pending``,
set by the receiver) is looked at again after its quiet period too: when its
fingerprint and the pipeline's analysis key equal those of its latest job (see
:mod:`node.idempotency`), the re-send is recorded and nothing is queued.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from node.audit import audit_row
from node.background import BackgroundLoop
from node.db import AuditKind, Database, Instance, Job, JobState, Series, SeriesState, utcnow
from node.dicomheader import read_header, recorded_dataset
from node.errors import StorageError
from node.idempotency import file_digest, series_fingerprint
from node.priority import PriorityPolicy, level_name, triaged_urgent
from node.router import RoutingConfig, is_own_or_result_object, route, routing_tags
from node.spool import POSIX_FILES, Files

log = logging.getLogger("ainode.assembler")


class Assembler(BackgroundLoop):
    """Turns stable series into jobs.

    Parameters
    ----------
    routing : RoutingConfig
        The loaded routing rules.
    enabled : set of str
        Pipelines that can run; a series routed to another gets a failed job
        saying why (``disabled``: pipeline name → reason).
    default_destinations : list of str
        Used when the matching rule names none.
    on_queued : callable
        Wakes the executor.
    analysis_keys : mapping, optional
        Pipeline name → its analysis key (:func:`node.idempotency.analysis_keys`).
    reanalyse_on_change : bool
        Whether an unchanged re-send is analysed again when the pipeline's key changed
        (new model version or settings) since its latest job.
    on_resent : callable, optional
        Called with the pipeline and the number of unchanged instances of a re-send that
        was not analysed again (metrics).
    unrecorded : callable, optional
        The series with an acknowledged instance whose row is not committed yet
        (:meth:`node.receiver.Receiver.unrecorded_series`): not scheduled until it is.
    priorities : PriorityPolicy, optional
        How a new job's priority is computed (``priorities:`` in node.yaml); default: its defaults.
    """

    #: What waits while the database is unreachable (one line per outage, see BackgroundLoop).
    paused = "making received series into jobs"
    #: Reads instances by their ref (node.storage); the service sets its spool's for object storage.
    files: Files = POSIX_FILES

    def __init__(
        self,
        db: Database,
        routing: RoutingConfig,
        enabled: set[str],
        disabled: Mapping[str, str],
        default_destinations: list[str],
        on_queued: Callable[[], None] | None = None,
        analysis_keys: Mapping[str, str] | None = None,
        reanalyse_on_change: bool = False,
        on_resent: Callable[[str, int], None] | None = None,
        unrecorded: Callable[[], Collection[str]] | None = None,
        priorities: PriorityPolicy | None = None,
    ) -> None:
        super().__init__("ainode-assembler", log)
        self.db = db
        self.routing = routing
        self.routing_tags = routing_tags(routing)
        self.enabled = enabled
        self.disabled = dict(disabled)
        self.default_destinations = list(default_destinations)
        self.on_queued = on_queued
        self.analysis_keys = dict(analysis_keys or {})
        self.reanalyse_on_change = reanalyse_on_change
        self.on_resent = on_resent
        self.unrecorded = unrecorded
        self.priorities = priorities if priorities is not None else PriorityPolicy()

    def run_once(self) -> float:
        """Queue every stable series; return seconds until the next one may be stable."""
        now = time.time()
        with self.db.session() as session:
            waiting = or_(Series.state == SeriesState.RECEIVING, Series.resend_pending.is_(True))
            ready = session.execute(select(Series.id, Series.series_uid).where(waiting, Series.ready_at <= now)).all()
            upcoming = session.scalar(select(Series.ready_at).where(waiting).order_by(Series.ready_at).limit(1))
        queued = 0
        unrecorded = set(self.unrecorded()) if self.unrecorded is not None and ready else set()
        deferred = False
        for series_id, series_uid in ready:
            if series_uid in unrecorded:
                # An acknowledged instance's row is not committed yet (it moves the deadline): not now.
                deferred = True
                continue
            queued += self._schedule(series_id, now)
        if queued and self.on_queued:
            self.on_queued()
        if deferred:
            return 0.05
        if upcoming is None or upcoming <= now:
            return 1.0
        return max(0.02, min(1.0, upcoming - time.time()))

    def _schedule(self, series_id: int, now: float) -> int:
        self._take_digests(series_id)
        with self.db.session() as session:
            # Locked while deciding (PostgreSQL; SQLite has one writer anyway): every `ainode serve` runs an
            # assembler on the shared database, and a series must become one job, not one per receiver.
            series = session.get(Series, series_id, with_for_update=True)
            if series is None or series.ready_at > now:
                return 0  # more instances arrived since we looked
            resend = bool(series.resend_pending) and series.state != SeriesState.RECEIVING
            if series.state != SeriesState.RECEIVING and not resend:
                return 0
            series.resend_pending = False
            first = session.execute(
                select(Instance.path, Instance.header)
                .where(Instance.series_uid == series.series_uid, Instance.purged_at.is_(None))
                .order_by(Instance.id)
                .limit(1)
            ).first()
            try:
                if first is None:
                    raise FileNotFoundError("the series has no recorded instance")
                header = recorded_dataset(first.header, self.routing_tags)
                if header is None:
                    with self.files.fetch([first.path]) as (path,):
                        header = read_header(path)
            except Exception as exc:
                series.state = SeriesState.UNROUTED
                series.note = f"header unreadable: {exc}"
                return 0
            own = is_own_or_result_object(header)
            if own:
                series.state = SeriesState.IGNORED
                series.note = own
                return 0
            decision = route(header, self.routing)
            if decision.pipeline is None:
                series.state = SeriesState.UNROUTED
                series.note = decision.reason
                log.info("series %s not routed: %s", series.series_uid, decision.reason)
                return 0
            fingerprint = series_fingerprint(
                [
                    (row.sop_uid, row.digest)
                    for row in session.execute(
                        select(Instance.sop_uid, Instance.digest).where(Instance.series_uid == series.series_uid)
                    )
                ]
            )
            key = self.analysis_keys.get(decision.pipeline)
            latest = session.scalar(
                select(Job).where(Job.series_uid == series.series_uid).order_by(Job.id.desc()).limit(1)
            )
            if latest is not None and self._same_analysis(latest, decision.pipeline, fingerprint, key):
                self._record_resend(session, series, latest)
                return 0
            if resend:
                series.generation += 1  # analysed before (or failed): the new results supersede the old
            priority = self.priorities.job_priority(
                header,
                rule=decision.rule,
                rule_priority=decision.priority,
                triaged_urgent=triaged_urgent(session, series.study_uid),
            )
            job = Job(
                series_uid=series.series_uid,
                study_uid=series.study_uid,
                pipeline=decision.pipeline,
                rule=decision.rule,
                destinations=list(decision.destinations) or self.default_destinations,
                generation=series.generation,
                state=JobState.QUEUED,
                fingerprint=fingerprint,
                analysis_key=key,
                priority=priority.level,
                priority_reason=priority.reason,
            )
            series.resent_instances = 0
            if decision.pipeline not in self.enabled:
                job.state = JobState.FAILED
                job.error = self.disabled.get(decision.pipeline, f"pipeline {decision.pipeline!r} is not available")
                job.finished_at = utcnow()
                series.state = SeriesState.DONE
            else:
                series.state = SeriesState.QUEUED
            session.add(job)
            if job.state == JobState.FAILED:
                session.flush()  # the audit row names the job
                session.add(
                    audit_row(
                        AuditKind.JOB_FAILED,
                        job_id=job.id,
                        study_uid=job.study_uid,
                        series_uid=job.series_uid,
                        pipeline=job.pipeline,
                        message=job.error,
                    )
                )
            log.info(
                "series %s -> %s (rule %s, generation %d, %s%s)",
                series.series_uid,
                decision.pipeline,
                decision.rule,
                series.generation,
                level_name(priority.level),
                f": {priority.reason}" if priority.reason else "",
            )
            return 1 if job.state == JobState.QUEUED else 0

    def _take_digests(self, series_id: int) -> None:
        """The SHA-256 of each instance of the series still without one (the receiver leaves new instances'
        to this loop, off the acknowledgement path), hashed outside any write transaction."""
        with self.db.session() as session:
            series_uid = session.scalar(select(Series.series_uid).where(Series.id == series_id))
            missing = session.execute(
                select(Instance.id, Instance.path).where(
                    Instance.series_uid == series_uid, Instance.digest.is_(None), Instance.purged_at.is_(None)
                )
            ).all()
        taken = []
        for row in missing:
            try:
                with self.files.fetch([row.path]) as (path,):
                    taken.append((row.id, file_digest(path)))
            except (OSError, StorageError) as exc:  # unreadable now: no digest, so the series counts as changed
                log.warning("instance file %s unreadable for its digest: %s", Path(row.path).name, exc)
        if not taken:
            return
        with self.db.session() as session:
            for instance_id, content in taken:
                # A re-send in the meantime recorded the digest of what it wrote: that one wins.
                session.execute(
                    update(Instance).where(Instance.id == instance_id, Instance.digest.is_(None)).values(digest=content)
                )

    def _same_analysis(self, latest: Job, pipeline: str, fingerprint: str, key: str | None) -> bool:
        """Whether ``latest`` already analysed (or is analysing) this content the way it would be now."""
        if latest.state == JobState.FAILED or latest.pipeline != pipeline or latest.fingerprint != fingerprint:
            return False
        return latest.analysis_key == key or not self.reanalyse_on_change

    def _record_resend(self, session: Session, series: Series, latest: Job) -> None:
        """An unchanged re-send: back to the state of the analysis that covers it; audited, nothing queued."""
        count = series.resent_instances or series.instance_count
        series.resent_instances = 0
        series.generation = latest.generation
        series.state = SeriesState.DONE if latest.state == JobState.DONE else SeriesState.QUEUED
        what = "analysed" if latest.state == JobState.DONE else "being analysed"
        message = (
            f"series re-sent unchanged ({count} instance(s)); already {what} by job {latest.id}: "
            "not analysed again, no result sent"
        )
        session.add(
            audit_row(
                AuditKind.RESENT,
                job_id=latest.id,
                study_uid=series.study_uid,
                series_uid=series.series_uid,
                instance_count=count,
                pipeline=latest.pipeline,
                calling_ae=series.calling_ae,
                message=message,
            )
        )
        log.info(
            "series %s re-sent unchanged (%d instance(s)); job %s covers it: not analysed again",
            series.series_uid,
            count,
            latest.id,
        )
        if self.on_resent is not None:
            self.on_resent(latest.pipeline, count)
