"""Job execution: a bounded local pool of workers that claim jobs from the database.

The interface the rest of the node sees is narrow (:class:`Executor`:
``start``, ``notify``, ``stop``) so that a distributed engine can take its
place: jobs are rows, claimed atomically, so any number of workers in any
number of processes can share one database.

Each worker builds its pipelines once, at start, and reuses the loaded models
for every job. A job that was running when the process died is put back in
the queue at start-up (:func:`recover`); after ``job_max_restarts`` such restarts
(setting, default ``MAX_ATTEMPTS``) it is failed, so one poisonous series cannot stop the node.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pydicom
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from core.dicomfile import encode_part10
from core.sop import result_kind
from node.audit import audit_row, model_versions
from node.db import (
    AuditKind,
    Database,
    Delivery,
    Instance,
    Job,
    JobState,
    Result,
    Series,
    SeriesState,
    rowcount,
    utcnow,
)
from node.dicomheader import read_header
from node.errors import InputError, StorageError
from node.logs import bind_log_context, log_context, read_patient_values, redact
from node.pipelines import Pipeline, PipelineOutput
from node.priority import URGENT, claim_order, raise_study
from node.spool import Outbox
from sr_writer.uids import deterministic_uids

if TYPE_CHECKING:
    from node.metrics import Metrics

log = logging.getLogger("ainode.executor")

MAX_ATTEMPTS = 3


class Executor(Protocol):
    def start(self) -> None: ...
    def notify(self) -> None: ...
    def stop(self) -> None: ...


def recover(db: Database, max_attempts: int = MAX_ATTEMPTS) -> int:
    """Put jobs left running by a dead process back in the queue, or fail those already started
    ``max_attempts`` times; returns how many."""
    with db.session() as session:
        stuck = session.scalars(select(Job).where(Job.state == JobState.RUNNING)).all()
        for job in stuck:
            if job.attempts >= max_attempts:
                # Finished like any failed job, series included: a series left 'queued' would wait forever.
                _mark_finished(
                    session,
                    job,
                    error=f"the node stopped during this job {job.attempts} times; given up",
                    summary=None,
                    warnings=[],
                )
            else:
                job.state = JobState.QUEUED
                job.worker = None
        return len(stuck)


def claim_job(db: Database, worker: str, pipelines: set[str], promote_after: float | None = None) -> Job | None:
    """Atomically take the next queued job of one of ``pipelines``.

    Next (:func:`node.priority.claim_order`): a job that has waited ``promote_after`` seconds or more
    (oldest first), then the most urgent (``Job.priority``), then the oldest. All routine: first in,
    first out.
    """
    with db.session() as session:
        candidates = session.scalars(
            select(Job.id)
            .where(Job.state == JobState.QUEUED, Job.pipeline.in_(pipelines))
            .order_by(*claim_order(utcnow(), promote_after))
            .limit(5)
        ).all()
        for job_id in candidates:
            claimed = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == JobState.QUEUED)
                .values(state=JobState.RUNNING, worker=worker, started_at=utcnow(), attempts=Job.attempts + 1)
            )
            if rowcount(claimed) == 1:
                session.commit()
                return session.get(Job, job_id)
    return None


def run_job(db: Database, outbox: Outbox, pipeline: Pipeline, job: Job) -> None:
    """Run one claimed job to completion: results durable, deliveries queued, states set, audited.

    The UIDs of the objects written are derived from the job (:func:`sr_writer.uids.deterministic_uids`):
    the job, its series and generation, its pipeline, the models' versions and settings (analysis key)
    and what was received (fingerprint). The same job run again, after a crash or a broker's
    redelivery, writes the same SOP Instance UIDs, so a PACS never holds two copies of one result.
    """
    uid_seed = (job.id, job.series_uid, job.generation, job.pipeline, job.analysis_key, job.fingerprint)
    with log_context(job=job.id, study=job.study_uid, series=job.series_uid), deterministic_uids(*uid_seed):
        _run_job(db, outbox, pipeline, job)


def _run_job(db: Database, outbox: Outbox, pipeline: Pipeline, job: Job) -> None:
    with db.session() as session:
        # Files removed by retention (``purged_at``) are not read: the job analyses what is on disk.
        refs = list(
            session.scalars(
                select(Instance.path)
                .where(Instance.series_uid == job.series_uid, Instance.purged_at.is_(None))
                .order_by(Instance.id)
            )
        )
        purged = (
            session.scalar(
                select(func.count())
                .select_from(Instance)
                .where(Instance.series_uid == job.series_uid, Instance.purged_at.is_not(None))
            )
            or 0
        )
        earlier = session.scalars(
            select(Result).where(
                Result.series_uid == job.series_uid, Result.superseded_by.is_(None), Result.kind == "SR"
            )
        ).all()
        predecessor_refs = [r.path for r in earlier if r.purged_at is None]
    if not refs and purged:
        _finish(
            db,
            job,
            error=f"the {purged} instance(s) of this series were removed by retention "
            "(ainode purge) before this job ran; send the series again to analyse it",
        )
        log.warning("job %s (series %s) failed: its instances were purged", job.id, job.series_uid)
        return
    # Refs are file paths (posix storage: read in place) or objects, downloaded for the job and removed after it.
    with contextlib.ExitStack() as fetched:
        try:
            paths = fetched.enter_context(outbox.files.fetch(refs))
            predecessor_paths = fetched.enter_context(outbox.files.fetch(predecessor_refs))
        except StorageError as exc:
            _finish(db, job, error=f"the series could not be read from storage: {exc}")
            log.error("job %s (series %s) failed: %s", job.id, job.series_uid, exc)
            return
        _analyse(db, outbox, pipeline, job, paths, predecessor_paths, earlier)


def _analyse(
    db: Database,
    outbox: Outbox,
    pipeline: Pipeline,
    job: Job,
    paths: list[Path],
    predecessor_paths: list[Path],
    earlier: Sequence[Result],
) -> None:
    if paths:  # a library's message or a traceback may quote them: keep them out of logs and job errors
        bind_log_context(redact=read_patient_values(paths[0]))
    predecessors = []
    for path in predecessor_paths:
        try:
            predecessors.append(read_header(path))
        except InputError as exc:
            log.warning("job %s: earlier result %s unreadable, not referenced: %s", job.id, path.name, exc)
    try:
        output = pipeline.analyse(job.study_uid, job.series_uid, paths, predecessors)
    except InputError as exc:
        _finish(db, job, error=redact(str(exc)))
        log.warning("job %s (series %s) failed: %s", job.id, job.series_uid, exc)
        return
    except Exception as exc:  # a bug or an unforeseen input must not stop the worker
        _finish(db, job, error=redact(f"internal error: {type(exc).__name__}: {exc}"))
        # One line for the administrator; the traceback, for a bug report, only at DEBUG.
        log.error(
            "job %s (series %s) failed unexpectedly: %s: %s",
            job.id,
            job.series_uid,
            type(exc).__name__,
            redact(str(exc).splitlines()[0] if str(exc) else ""),
        )
        log.debug("traceback of job %s:\n%s", job.id, redact(traceback.format_exc()))
        return
    _store_output(db, outbox, job, output, [r.id for r in earlier])
    log.info("job %s (series %s, %s) done: %s", job.id, job.series_uid, job.pipeline, output.summary)


#: ``Result.priority`` per triage level (lower goes first when a destination has a backlog).
PRIORITY_BY_TRIAGE = {"urgent": 0, "priority": 1, "routine": 2}


def result_priority(output: PipelineOutput) -> int | None:
    """The delivery priority of a job's results: its most urgent image's triage, ``None`` without triage."""
    levels = [PRIORITY_BY_TRIAGE[image.triage] for image in output.result.images if image.triage in PRIORITY_BY_TRIAGE]
    return min(levels) if levels else None


def _store_output(db: Database, outbox: Outbox, job: Job, output: PipelineOutput, superseded: list[int]) -> None:
    written: list[tuple[pydicom.Dataset, str]] = []
    for ds in output.objects:
        ref = outbox.put(job.study_uid, job.series_uid, str(ds.SOPInstanceUID), encode_part10(ds))
        written.append((ds, ref))
    triage = result_priority(output)
    with db.session() as session:
        # Delivery order: the more urgent of the triage and the job's own priority (from its row).
        levels = [p for p in (triage, session.scalar(select(Job.priority).where(Job.id == job.id))) if p is not None]
        priority = min(levels) if levels else None
        first_id: int | None = None
        for ds, ref in written:
            sop_class = str(ds.SOPClassUID)
            kind = result_kind(sop_class)
            result = Result(
                job_id=job.id,
                series_uid=job.series_uid,
                study_uid=job.study_uid,
                sop_uid=str(ds.SOPInstanceUID),
                sop_class_uid=sop_class,
                kind=kind,
                path=ref,
                payload=output.result.to_json() if kind == "SR" else None,
                priority=priority,
            )
            session.add(result)
            session.flush()
            first_id = first_id or result.id
            for destination in job.destinations:
                session.add(Delivery(result_id=result.id, destination=destination))
        if superseded and first_id is not None:
            session.execute(update(Result).where(Result.id.in_(superseded)).values(superseded_by=first_id))
        if triage == URGENT and (raised := raise_study(session, job.study_uid)):
            log.info("job %s triaged urgent: %d queued job(s) of its study raised to urgent", job.id, raised)
        _mark_finished(
            session,
            job,
            error=None,
            summary=output.summary,
            warnings=output.warnings,
            models=model_versions(output.result),
        )


def _finish(db: Database, job: Job, error: str) -> None:
    with db.session() as session:
        _mark_finished(session, job, error=error, summary=None, warnings=[])


class LeaseLost(Exception):
    """A leased job's row is no longer this run's (its lease ran out and it was queued again or taken
    by another worker): nothing of this run is recorded (the session rolls back)."""


def _holds_lease(row: Job, job: Job) -> bool:
    return row.state == JobState.RUNNING and row.worker == job.worker and row.attempts == job.attempts


def claim_leased(
    db: Database, job_id: int, worker: str, lease_seconds: float, max_attempts: int, now: float | None = None
) -> tuple[str, Job | None]:
    """Take job ``job_id`` for ``worker`` with a lease of ``lease_seconds`` (the Celery executor's claim).

    The job is taken when it is queued, or running with its lease run out (its worker died), and
    was started fewer than ``max_attempts`` times. Returns ``("claimed", job)``; else
    ``("finished", row)`` (done or failed), ``("held", row)`` (another worker's lease is live),
    ``("gone", None)`` (no such job), or ``("exhausted", row)``: started ``max_attempts`` times
    without finishing, the job is failed now.
    """
    now = time.time() if now is None else now
    takeable = and_(
        Job.id == job_id,
        or_(
            Job.state == JobState.QUEUED,
            and_(Job.state == JobState.RUNNING, or_(Job.lease_until.is_(None), Job.lease_until < now)),
        ),
    )
    with db.session() as session:
        claimed = session.execute(
            update(Job)
            .where(takeable, Job.attempts < max_attempts)
            .values(
                state=JobState.RUNNING,
                worker=worker,
                started_at=utcnow(),
                attempts=Job.attempts + 1,
                lease_until=now + lease_seconds,
            )
        )
        if rowcount(claimed) == 1:
            session.commit()
            return "claimed", session.get_one(Job, job_id)
        given_up = session.execute(update(Job).where(takeable).values(state=JobState.FAILED, lease_until=None))
        row = session.get(Job, job_id)
        if row is None:
            return "gone", None
        if rowcount(given_up) == 1:
            _mark_finished(
                session,
                row,
                error=f"started {row.attempts} times without finishing (each run stopped its worker); "
                "given up, its message moved to the dead-letter queue" + _last_try(row),
                summary=None,
                warnings=[],
                check_lease=False,
            )
            return "exhausted", row
        return ("held" if row.state == JobState.RUNNING else "finished"), row


def _last_try(row: Job) -> str:
    """What the last run said about itself (a run that could not finish records it in ``error``), or nothing."""
    return f"; last try: {row.error}" if row.error else ""


def renew_lease(db: Database, job: Job, lease_seconds: float, now: float | None = None) -> bool:
    """Extend the lease of ``job`` (as claimed by :func:`claim_leased`); ``False`` when it is no longer held."""
    now = time.time() if now is None else now
    with db.session() as session:
        renewed = session.execute(
            update(Job)
            .where(
                Job.id == job.id,
                Job.state == JobState.RUNNING,
                Job.worker == job.worker,
                Job.attempts == job.attempts,
            )
            .values(lease_until=now + lease_seconds)
        )
        return rowcount(renewed) == 1


def fail_leased(db: Database, job: Job, error: str) -> None:
    """Fail a leased job with ``error`` (raises :class:`LeaseLost` when it is no longer held)."""
    _finish(db, job, error=error)


def _mark_finished(
    session: Session,
    job: Job,
    *,
    error: str | None,
    summary: str | None,
    warnings: list[str],
    models: str | None = None,
    check_lease: bool = True,
) -> None:
    row = session.get_one(Job, job.id, with_for_update=job.lease_until is not None and check_lease)
    # A leased job (Celery executor) ends only in the run that still holds it: a worker whose lease ran
    # out while another took the job over records nothing, results included (the session rolls back).
    if check_lease and job.lease_until is not None and not _holds_lease(row, job):
        raise LeaseLost(f"job {job.id} is no longer held by {job.worker} (try {job.attempts})")
    row.lease_until = None
    row.state = JobState.FAILED if error else JobState.DONE
    row.error = error if error else (redact("; ".join(warnings)) or None)
    row.summary = summary if summary is None else redact(summary)
    row.finished_at = utcnow()
    session.add(
        audit_row(
            AuditKind.JOB_FAILED if error else AuditKind.JOB_DONE,
            job_id=job.id,
            study_uid=job.study_uid,
            series_uid=job.series_uid,
            pipeline=job.pipeline,
            model_versions=models,
            message=row.error if error else row.summary,
        )
    )
    series = session.scalar(select(Series).where(Series.series_uid == job.series_uid))
    # Instances that arrived while this job ran bumped the generation: leave the series to be analysed again.
    if series is not None and series.generation == job.generation and series.state == SeriesState.QUEUED:
        series.state = SeriesState.DONE


PipelineFactory = Callable[[], Pipeline]
#: Longest wait of a worker between attempts while the database cannot be reached.
MAX_WORKER_PAUSE = 30.0


class LocalExecutor:
    """``workers`` threads; each builds its pipelines once and loops over claimed jobs.

    ONNX Runtime releases the GIL while it computes, so threads give real
    parallelism for inference while sharing one process's memory.
    """

    def __init__(
        self,
        db: Database,
        outbox: Outbox,
        factories: Mapping[str, PipelineFactory],
        workers: int = 2,
        poll_seconds: float = 1.0,
        promote_after: float | None = None,
    ) -> None:
        self.db = db
        self.outbox = outbox
        self.factories = dict(factories)
        self.workers = workers
        self.poll_seconds = poll_seconds
        self.promote_after = promote_after  # priorities.promote_after: see claim_job
        self._wake = threading.Condition()
        self._signals = 0  # counts notifications, so one sent while a worker is busy is not lost
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.on_job_done: Callable[[], None] | None = None
        self.metrics: Metrics | None = None

    def start(self) -> None:
        for i in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"ainode-worker-{i}", args=(i,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def notify(self) -> None:
        with self._wake:
            self._signals += 1
            self._wake.notify_all()

    def stop(self, timeout: float = 30) -> None:
        self._stopping.set()
        self.notify()
        for thread in self._threads:
            thread.join(timeout)

    def _work(self, index: int) -> None:
        name = f"{os.uname().nodename}:{os.getpid()}:{index}"
        pipelines: dict[str, Pipeline] = {}
        for pipeline_name, factory in self.factories.items():
            try:
                pipelines[pipeline_name] = factory()
            except Exception as exc:
                log.error("worker %s: pipeline %s could not be built: %s", index, pipeline_name, exc)
        pause = self.poll_seconds
        while not self._stopping.is_set():
            with self._wake:
                seen = self._signals
            try:
                job = claim_job(self.db, name, set(pipelines), self.promote_after) if pipelines else None
                if job is not None:
                    started = time.monotonic()
                    run_job(self.db, self.outbox, pipelines[job.pipeline], job)
                    if self.metrics is not None:
                        self.metrics.analysis_seconds.labels(pipeline=job.pipeline).observe(time.monotonic() - started)
                    if self.on_job_done is not None:
                        self.on_job_done()
            except Exception as exc:
                # The database went away (PostgreSQL restarted, a locked SQLite file): the worker
                # must outlive it, or the node would receive and never analyse again. A job whose
                # end could not be recorded stays running and is queued again at the next start.
                log.error("worker %s: cannot claim or finish a job (%s); trying again in %.0f s", index, exc, pause)
                self._stopping.wait(pause)
                pause = min(pause * 2, MAX_WORKER_PAUSE)
                continue
            pause = self.poll_seconds
            if job is None:
                with self._wake:
                    if self._signals == seen:
                        self._wake.wait(self.poll_seconds)
