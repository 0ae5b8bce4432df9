"""The distributed executor (``executor: celery``): analysis on Celery workers over RabbitMQ.

PostgreSQL (``database_url``) is the only truth; the broker carries job ids, nothing else, and
Celery keeps no results (``task_ignore_result``). The roles:

``ainode serve`` (:class:`CeleryExecutor`, in place of the local pool)
    The *publisher* sends every queued job whose ``published_priority`` is unset, or lower than
    its broker priority now (its priority was raised, or it waited past ``priorities.promote_after``),
    as the task ``ainode.run_job(job_id)`` with that message priority, to the queue of its pipeline
    (``celery.queues``, else ``celery.default_queue``), and records the priority once the broker
    confirmed the message. The broker down, a job stays unpublished and is published when it is back.
    The *sweeper* puts running jobs whose lease ran out (their worker died or hangs) back in the queue,
    or fails them after ``job_max_restarts`` starts.

``ainode worker`` (:func:`run_worker`)
    A Celery worker (prefork pool). Each child process builds the pipelines of the queues it
    consumes once, after the fork (an ONNX Runtime session is never created in the parent). The task
    claims the job's row (:func:`node.executor.claim_leased`: queued, or running with its lease run
    out), holds it by a heartbeat (``celery.heartbeat_seconds``, lease ``celery.lease_seconds``),
    runs it, and records the end only while it still holds the row. A message for a job already
    finished, or held by a live lease, is acknowledged and does nothing. A job started
    ``job_max_restarts`` times (it killed or hung its worker each time) is failed, and its
    message goes to the dead-letter queue :data:`DEAD_QUEUE`, which no worker consumes.

Delivery: ``task_acks_late`` (a message is acknowledged when its job ended), ``task_reject_on_worker_lost``
(a worker killed mid-job gives its message back), prefetch 1 (a worker holds one message per process).
Queues are durable, messages persistent, every queue declared with ``x-max-priority`` 9
(:data:`node.priority.MAX_BROKER_PRIORITY`).

Time limits: RabbitMQ closes the channel of a consumer that holds an unacknowledged message longer
than its ``consumer_timeout`` (30 minutes by default), and the message goes to another worker: a job
must end before it. Celery's ``celery.soft_time_limit`` (default 1200 s: the job fails with a clear
error) and ``celery.time_limit`` (default 1500 s: the process is killed, and the job counts as a
crash) stay below it. The longest job measured (a CTPA, 54 s on 2 cores) is far below both.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from celery import Celery, signals
from celery.exceptions import CPendingDeprecationWarning, SecurityWarning, SoftTimeLimitExceeded
from kombu import Connection, Exchange, Queue
from kombu.utils.url import maybe_sanitize_url
from sqlalchemy import and_, case, or_, select, update
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from models.backends.providers import set_onnx_providers
from node import executor as execution
from node.background import BackgroundLoop, OutageLog, database_unreachable, short_reason
from node.db import Database, Job, JobState, rowcount
from node.errors import ConfigError, InputError
from node.logs import redact
from node.preflight import wait_for
from node.priority import MAX_BROKER_PRIORITY, PRIORITY, PROMOTED_BROKER_PRIORITY, URGENT, broker_priority, is_promoted

if TYPE_CHECKING:
    from pathlib import Path

    from pydicom import Dataset

    from node.metrics import Metrics
    from node.pipelines import Pipeline, PipelineOutput
    from node.settings import Settings
    from node.spool import Outbox

log = logging.getLogger("ainode.distributed")

#: The task every job message names; its one argument is the job id.
TASK_NAME = "ainode.run_job"
#: Where the message of a job given up after ``job_max_restarts`` starts goes; no worker consumes it.
DEAD_QUEUE = "ainode.dead"
#: Longest wait between two attempts to reach the broker or the database.
MAX_PAUSE = 30.0
#: How often ``ainode serve``'s publisher tries again while the database cannot be reached.
DB_RETRY_SECONDS = 2.0


def broker_label(url: str) -> str:
    """The broker URL as it may be shown: the password hidden."""
    return str(maybe_sanitize_url(url))


def job_queue(settings: Settings, pipeline: str) -> str:
    """The queue the jobs of ``pipeline`` go to."""
    return settings.celery.queues.get(pipeline, settings.celery.default_queue)


def configured_queues(settings: Settings) -> list[str]:
    """Every queue a job can go to: the default one and those of ``celery.queues``."""
    return sorted({settings.celery.default_queue, *settings.celery.queues.values()})


def _queue(name: str) -> Queue:
    return Queue(
        name,
        Exchange(name, type="direct", durable=True),
        routing_key=name,
        durable=True,
        queue_arguments={"x-max-priority": MAX_BROKER_PRIORITY},
    )


def make_app(settings: Settings, queues: Iterable[str] = ()) -> Celery:
    """The Celery app of ``settings``: its broker, its queues (``queues`` too) and the task ``ainode.run_job``.

    Built from settings when a role starts, never at import: nothing is read from the environment here.
    """
    celery = settings.celery
    names = sorted({*configured_queues(settings), *queues, DEAD_QUEUE})
    app = Celery("ainode", set_as_current=False)
    app.conf.update(
        broker_url=celery.broker_url,
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_queues=[_queue(n) for n in names],
        task_default_queue=celery.default_queue,
        task_queue_max_priority=MAX_BROKER_PRIORITY,
        task_default_priority=broker_priority(None, False),
        task_default_delivery_mode="persistent",
        task_create_missing_queues=False,
        task_serializer="json",
        accept_content=["json"],
        task_soft_time_limit=celery.soft_time_limit,
        task_time_limit=celery.time_limit,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a broker restart is waited out, however long
        # The publisher learns that the broker has the message before it records it as published.
        broker_transport_options={"confirm_publish": True},
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.5, "interval_step": 1, "interval_max": 2},
        broker_heartbeat=30,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        worker_enable_remote_control=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    app.task(name=TASK_NAME, bind=True, acks_late=True, ignore_result=True)(_run_job_task)
    return app


# --------------------------------------------------------------------------------------------------
# serve: publisher and sweeper


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def job_broker_priority(job: Job, now: datetime, promote_after: float) -> int:
    """The broker priority ``job`` is to be published with at ``now``."""
    return broker_priority(job.priority, is_promoted(_aware(job.created_at), now, promote_after))


def unpublished_jobs(db: Database, settings: Settings, now: datetime, limit: int = 500) -> list[Job]:
    """Queued jobs never published, or published with a lower priority than they have now."""
    cutoff = now - timedelta(seconds=settings.priorities.promote_after)
    current = case(
        {URGENT: broker_priority(URGENT, False), PRIORITY: broker_priority(PRIORITY, False)},
        value=Job.priority,
        else_=broker_priority(None, False),
    )
    with db.session() as session:
        return list(
            session.scalars(
                select(Job)
                .where(
                    Job.state == JobState.QUEUED,
                    or_(
                        Job.published_priority.is_(None),
                        Job.published_priority < current,
                        and_(Job.published_priority < PROMOTED_BROKER_PRIORITY, Job.created_at <= cutoff),
                    ),
                )
                .order_by(Job.id)
                .limit(limit)
            )
        )


def publish(app: Celery, queue: str, job_id: int, priority: int) -> None:
    """Send ``ainode.run_job(job_id)`` to ``queue`` with ``priority``; returns once the broker has it."""
    app.send_task(TASK_NAME, args=[job_id], queue=queue, priority=priority, retry=True)


def publish_pending(db: Database, app: Celery, settings: Settings, now: datetime | None = None) -> int:
    """Publish what :func:`unpublished_jobs` finds; returns how many. Broker errors propagate, nothing recorded."""
    now = now or datetime.now(UTC)
    published = 0
    for job in unpublished_jobs(db, settings, now):
        priority = job_broker_priority(job, now, settings.priorities.promote_after)
        if job.published_priority is not None and job.published_priority >= priority:
            continue
        publish(app, job_queue(settings, job.pipeline), job.id, priority)
        with db.session() as session:
            # Only while still queued: a worker may have taken it already (its row is then ahead of us).
            session.execute(
                update(Job).where(Job.id == job.id, Job.state == JobState.QUEUED).values(published_priority=priority)
            )
        published += 1
        log.debug("job %s published to %s with priority %d", job.id, job_queue(settings, job.pipeline), priority)
    return published


def sweep_leases(db: Database, max_attempts: int, now: float | None = None) -> tuple[list[int], list[int]]:
    """Queue again the running jobs whose lease ran out, or fail those started ``max_attempts`` times.

    Returns the ids requeued and the ids failed.
    """
    now = time.time() if now is None else now
    expired = and_(Job.state == JobState.RUNNING, or_(Job.lease_until.is_(None), Job.lease_until < now))
    requeued: list[int] = []
    failed: list[int] = []
    with db.session() as session:
        jobs = session.scalars(select(Job).where(expired).order_by(Job.id)).all()
    for job in jobs:
        with db.session() as session:
            if job.attempts >= max_attempts:
                taken = session.execute(
                    update(Job).where(Job.id == job.id, expired).values(state=JobState.FAILED, lease_until=None)
                )
                if rowcount(taken) == 1:
                    execution._mark_finished(
                        session,
                        job,
                        error=f"its worker stopped or stopped answering during this job {job.attempts} times "
                        "(lease not renewed); given up" + execution._last_try(job),
                        summary=None,
                        warnings=[],
                        check_lease=False,
                    )
                    failed.append(job.id)
            else:
                back = session.execute(
                    update(Job)
                    .where(Job.id == job.id, expired)
                    .values(state=JobState.QUEUED, worker=None, lease_until=None, published_priority=None)
                )
                if rowcount(back) == 1:
                    requeued.append(job.id)
    why = {job.id: f"last try: {job.error}" if job.error else "its worker died or hangs" for job in jobs}
    for job_id in requeued:
        log.warning("job %s: its lease ran out (%s); queued again", job_id, why[job_id])
    for job_id in failed:
        log.error("job %s failed: started %d times without finishing (%s); given up", job_id, max_attempts, why[job_id])
    return requeued, failed


class CeleryExecutor(BackgroundLoop):
    """The publisher and sweeper of ``ainode serve`` with ``executor: celery`` (the :class:`Executor` protocol)."""

    paused = "publishing queued jobs and the lease sweep"

    def __init__(self, settings: Settings, db: Database, app: Celery | None = None) -> None:
        super().__init__("ainode-publisher", log)
        self.settings = settings
        self.db = db
        self.app = app or make_app(settings)
        self.on_job_done: Callable[[], None] | None = None
        self.metrics: Metrics | None = None
        self._pause = 1.0
        self._broker_down = False
        self._next_sweep = 0.0

    @property
    def sweep_seconds(self) -> float:
        return max(0.5, min(self.settings.celery.heartbeat_seconds, 5.0))

    def run_once(self) -> float:
        try:
            wait = self._pass()
        except SQLAlchemyError as exc:  # PostgreSQL restarting: one line per outage, not a traceback per pass
            if not database_unreachable(exc):
                raise  # a statement refused: a bug, logged by the loop with its traceback once
            self.outage.failed(exc)
            return DB_RETRY_SECONDS
        self.outage.recovered()
        return wait

    def _pass(self) -> float:
        now = time.time()
        if now >= self._next_sweep:
            requeued, failed = sweep_leases(self.db, self.settings.job_max_restarts, now)
            self._next_sweep = now + self.sweep_seconds
            for job_id in failed:
                self._dead_letter(job_id)
            if failed and self.on_job_done is not None:
                self.on_job_done()
        try:
            published = publish_pending(self.db, self.app, self.settings)
        except SQLAlchemyError:
            raise  # the database, not the broker: see run_once
        except Exception as exc:  # the broker is down or refuses: jobs stay unpublished, published later
            if not self._broker_down:
                log.warning(
                    "broker %s unreachable (%s): queued jobs are published when it is back; retrying in %.0f s",
                    broker_label(self.settings.celery.broker_url),
                    short_reason(exc),
                    self._pause,
                )
            self._broker_down = True
            wait = self._pause
            self._pause = min(self._pause * 2, MAX_PAUSE)
            return wait
        if self._broker_down:
            log.info("broker %s reachable again: publishing", broker_label(self.settings.celery.broker_url))
        self._broker_down = False
        self._pause = 1.0
        return 0.0 if published >= 500 else min(1.0, self.sweep_seconds)

    def stop(self, timeout: float = 30) -> None:
        super().stop(timeout)
        self.app.close()  # the producer pool's broker connections

    def _dead_letter(self, job_id: int) -> None:
        try:
            publish(self.app, DEAD_QUEUE, job_id, 0)
        except Exception as exc:  # the job is failed in the database either way; the dead letter is a copy
            log.warning("job %s: could not put its message in %s (%s)", job_id, DEAD_QUEUE, short_reason(exc))


# --------------------------------------------------------------------------------------------------
# worker


@dataclass
class WorkerContext:
    """What a worker process needs to run jobs; pipelines are built in each child after the fork."""

    settings: Settings
    db: Database
    outbox: Outbox
    factories: dict[str, Callable[[], Pipeline]]
    queues: list[str]
    disabled: dict[str, str] = field(default_factory=dict)
    pipelines: dict[str, Pipeline] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    built: bool = False

    def build(self) -> None:
        """Build every pipeline once in this process (models loaded now)."""
        if self.built:
            return
        self.built = True
        # This process's ONNX Runtime sessions run on the providers of the worker's device (--device).
        providers = set_onnx_providers(self.settings.providers_for())
        for name, factory in self.factories.items():
            try:
                self.pipelines[name] = factory()
            except Exception as exc:
                self.failures[name] = f"pipeline {name!r} could not be built on {worker_id()}: {exc}"
                log.error("%s", self.failures[name])
        log.info(
            "worker process %s built pipelines: %s (device %s: %s)",
            worker_id(),
            ", ".join(sorted(self.pipelines)) or "none",
            self.settings.device,
            ", ".join(providers),
        )


_context: WorkerContext | None = None


def worker_id() -> str:
    """``<hostname>:<pid>`` of this process: the ``worker`` of the jobs it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _after_fork(**_: Any) -> None:
    if _context is not None:
        _context.db.engine.dispose(close=False)  # the parent's connections are not this process's
        _context.build()


signals.worker_process_init.connect(_after_fork, weak=False)


class _Heartbeat:
    """Renews a claimed job's lease every ``celery.heartbeat_seconds`` while it runs."""

    def __init__(self, db: Database, job: Job, lease_seconds: float, every: float) -> None:
        self.db, self.job, self.lease_seconds, self.every = db, job, lease_seconds, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"ainode-lease-{job.id}", daemon=True)
        self.lost = False
        self.outage = OutageLog(log, f"renewing the lease of job {job.id}", "the job runs on, beating again")

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            try:
                held = execution.renew_lease(self.db, self.job, self.lease_seconds)
            except Exception as exc:  # the database is away for a moment: beat again next time
                if database_unreachable(exc):
                    self.outage.failed(exc)  # one line per outage, not one per beat
                else:
                    log.warning("job %s: lease not renewed (%s)", self.job.id, short_reason(exc))
                continue
            self.outage.recovered()
            if not held and not self.lost:
                # Said at the end (LeaseLost) if it matters: a renewal racing the job's own end also lands here.
                self.lost = True
                log.debug("job %s: lease not renewed: the row is no longer this run's", self.job.id)


def _run_job_task(task: Any, job_id: int) -> None:
    context = _context
    if context is None:  # the task ran in a process that is not an ainode worker
        raise ConfigError("ainode.run_job runs only in 'ainode worker'")
    context.build()  # a no-op after worker_process_init; builds here in a solo pool
    redelivered = bool((task.request.delivery_info or {}).get("redelivered"))
    run_one(
        context,
        job_id,
        dead_letter=lambda: task.app.send_task(TASK_NAME, args=[job_id], queue=DEAD_QUEUE),
        redelivered=redelivered,
    )


class _TimeLimited:
    """``pipeline`` whose analysis, stopped by Celery's soft time limit, fails its job with that reason."""

    def __init__(self, pipeline: Pipeline, seconds: float) -> None:
        self.pipeline, self.seconds = pipeline, seconds
        self.name = pipeline.name

    def analyse(
        self, study_uid: str, series_uid: str, paths: Sequence[Path], predecessors: Sequence[Dataset] = ()
    ) -> PipelineOutput:
        try:
            return self.pipeline.analyse(study_uid, series_uid, paths, predecessors)
        except SoftTimeLimitExceeded as exc:
            raise InputError(
                f"the analysis took longer than celery.soft_time_limit ({self.seconds:.0f} s) and was stopped"
            ) from exc


def _log_no_op(job_id: int, outcome: str, row: Job | None, redelivered: bool) -> None:
    again = " (delivered again)" if redelivered else ""
    if row is None:
        log.warning("job %s: no such job in the database%s; its message is dropped", job_id, again)
    elif outcome == "held":
        left = max(0.0, (row.lease_until or 0.0) - time.time())
        log.info(
            "job %s is held by %s (lease %.0f s more)%s: this copy of its message does nothing; "
            "if that worker is gone, the job is queued again when its lease runs out",
            job_id,
            row.worker,
            left,
            again,
        )
    else:
        log.info("job %s is already %s%s: this copy of its message does nothing", job_id, row.state.value, again)


def run_one(
    context: WorkerContext,
    job_id: int,
    *,
    dead_letter: Callable[[], object] | None = None,
    redelivered: bool = False,
    stop: threading.Event | None = None,
) -> str:
    """Claim and run job ``job_id`` in this worker; returns what happened (for logs and tests).

    ``claimed`` (ran to its end), ``finished`` (already done or failed), ``held`` (another worker's
    lease is live), ``gone`` (no such job), ``exhausted`` (failed: started too often), ``lost``
    (another worker took it over while it ran; nothing recorded), ``unavailable`` (failed: this
    worker cannot build its pipeline), ``error`` (it could not be finished, e.g. the storage refused its
    results: its lease ends now and the sweeper queues it again). A database that cannot be reached is
    waited for with back-off
    (1 s doubling to 30 s), the message kept unacknowledged meanwhile.
    """
    settings = context.settings
    me = worker_id()
    pause = 1.0
    job: Job | None = None
    while True:
        try:
            if job is None or not execution.renew_lease(context.db, job, settings.celery.lease_seconds):
                outcome, job = execution.claim_leased(
                    context.db, job_id, me, settings.celery.lease_seconds, settings.job_max_restarts
                )
                if outcome == "exhausted":
                    log.error(
                        "job %s failed: started %d times without finishing (it stops its worker); message moved to %s",
                        job_id,
                        settings.job_max_restarts,
                        DEAD_QUEUE,
                    )
                    if dead_letter is not None:
                        dead_letter()
                    return outcome
                if outcome != "claimed" or job is None:
                    _log_no_op(job_id, outcome, job, redelivered)
                    return outcome
            pipeline = context.pipelines.get(job.pipeline)
            if pipeline is None:
                reason = (
                    context.failures.get(job.pipeline)
                    or context.disabled.get(job.pipeline)
                    or (
                        f"pipeline {job.pipeline!r} is not built by the workers of queue "
                        f"{job_queue(settings, job.pipeline)!r}"
                    )
                )
                execution.fail_leased(context.db, job, reason)
                log.error("job %s (series %s) failed: %s", job.id, job.series_uid, reason)
                return "unavailable"
            log.info(
                "job %s (series %s, %s) started by %s (try %d)", job.id, job.series_uid, job.pipeline, me, job.attempts
            )
            started = time.monotonic()
            with _Heartbeat(context.db, job, settings.celery.lease_seconds, settings.celery.heartbeat_seconds):
                execution.run_job(
                    context.db, context.outbox, _TimeLimited(pipeline, settings.celery.soft_time_limit), job
                )
            log.info("job %s ended after %.1f s", job.id, time.monotonic() - started)
            return "claimed"
        except execution.LeaseLost:
            log.warning("job %s: another worker took it over while it ran here; this run's end is not recorded", job_id)
            return "lost"
        except SoftTimeLimitExceeded:
            raise
        except (OperationalError, DBAPIError) as exc:
            if isinstance(exc, DBAPIError) and not (exc.connection_invalidated or isinstance(exc, OperationalError)):
                return _give_back(context, job_id, job, exc)  # a statement the database refused: not an outage
            log.error(
                "job %s: database unreachable (%s); trying again in %.0f s (message kept)",
                job_id,
                short_reason(exc),
                pause,
            )
            if stop is not None:
                if stop.wait(pause):
                    raise
            else:
                time.sleep(pause)
            pause = min(pause * 2, MAX_PAUSE)
        except Exception as exc:  # the storage refused the results, or a bug: one line, the job tried again
            return _give_back(context, job_id, job, exc)


def _give_back(context: WorkerContext, job_id: int, job: Job | None, exc: Exception) -> str:
    """End this run of a job that could not be finished: its lease ends now, so the sweeper queues it again
    (a start counted: after ``job_max_restarts`` it is failed)."""
    log.error(
        "job %s could not be finished here (%s: %s); it is queued again", job_id, type(exc).__name__, short_reason(exc)
    )
    log.debug("traceback of job %s", job_id, exc_info=True)
    if job is not None:
        try:
            with context.db.session() as session:  # lease_until 0: run out; the reason kept for `ainode jobs`
                session.execute(
                    update(Job)
                    .where(
                        Job.id == job.id,
                        Job.state == JobState.RUNNING,
                        Job.worker == job.worker,
                        Job.attempts == job.attempts,
                    )
                    .values(lease_until=0.0, error=redact(f"{type(exc).__name__}: {short_reason(exc)}"))
                )
        except Exception as again:  # the database too: the lease runs out by itself
            log.warning("job %s: its lease could not be ended (%s)", job_id, short_reason(again))
    return "error"


# --------------------------------------------------------------------------------------------------
# waiting for the broker and the database at start-up


def probe_broker(url: str, timeout: float = 5.0) -> None:
    """Connect to the broker once; raises when it cannot be reached."""
    with Connection(url, connect_timeout=timeout) as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)


def wait_for_broker(settings: Settings, stop: threading.Event) -> bool:
    """Wait until the broker answers (see :func:`wait_for`)."""
    url = settings.celery.broker_url
    return wait_for("the broker", broker_label(url), lambda: probe_broker(url), stop)


class _AckLost(logging.Filter):
    """Celery's "Couldn't ack" (CRITICAL, with a traceback) after a broker restart, as one warning line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith(("Couldn't ack", "Couldn't reject")):
            reason = record.exc_info[1] if record.exc_info else (record.args or ("", ""))[-1]  # type: ignore[index]
            record.msg = (
                "a job message was not acknowledged: the broker connection was lost (%s); the broker delivers "
                "it again, and that copy finds its job finished and does nothing"
            )
            record.args = (short_reason(reason) if isinstance(reason, BaseException) else str(reason),)
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class _BrokerOutage(logging.Filter):
    """Celery's consumer logs an ERROR with a retry plan for every failed reconnection attempt (one every few
    seconds while the broker is down): the first of an outage passes as one WARNING line, the others are dropped.
    The broker's return is Celery's own "Connected to ..." line. Celery's CPendingDeprecationWarning about
    cancelling running acks_late tasks on a lost connection (re-armed by Celery's logging set-up, so a
    ``warnings`` filter of ours does not hold) is dropped too: ours keep running on purpose (see run_worker)."""

    def __init__(self) -> None:
        super().__init__()
        self._said = False

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg if isinstance(record.msg, str) else ""
        if message.startswith("consumer: Connection to broker lost"):
            self._said = False  # a new outage: its first failed attempt is said
        elif message.startswith("consumer: Cannot connect to"):
            if self._said:
                return False
            self._said = True
            where, reason = (tuple(record.args) + ("", ""))[:2] if isinstance(record.args, tuple) else ("", "")
            record.msg = "broker %s unreachable (%s): Celery reconnects with back-off (attempts not logged)"
            record.args = (where, reason)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        elif "worker_cancel_long_running_tasks_on_connection_loss" in record.getMessage():
            return False
        return True


def run_worker(
    settings: Settings,
    queues: list[str] | None = None,
    concurrency: int = 1,
    stop: threading.Event | None = None,
    device: str | None = None,
) -> int:
    """``ainode worker``: wait for the database and the broker, then consume ``queues`` until stopped.

    ``device`` (default the ``device`` setting) chooses the ONNX Runtime providers (``devices``) of the
    sessions each pool process creates after the fork.
    """
    from node import preflight
    from node.pipelines.registry import build_pipeline
    from node.service import plan_models
    from node.storage import open_outbox

    global _context
    if concurrency < 1:
        raise ConfigError(f"--concurrency {concurrency}: a worker runs at least one job at a time")
    if settings.executor != "celery":
        raise ConfigError("ainode worker needs 'executor: celery' (and celery.broker_url) in node.yaml")
    if device is not None:
        settings.providers_for(device)  # a device not in `devices` is a one-line error now, not in each child
        settings = settings.model_copy(update={"device": device})
    chosen = queues or configured_queues(settings)
    if DEAD_QUEUE in chosen:
        raise ConfigError(f"{DEAD_QUEUE} holds the messages of jobs given up; workers do not consume it")
    stop = stop or threading.Event()
    preflight.prepare_data_dir(settings)
    opened = preflight.wait_for_database(settings, stop)
    if opened is None:
        log.info("ainode worker stopped while waiting for the database")
        return 0
    db = opened
    if not wait_for_broker(settings, stop):
        log.info("ainode worker stopped while waiting for the broker")
        db.dispose()
        return 0
    plan = plan_models(settings)
    wanted = {name for name in plan.enabled if job_queue(settings, name) in chosen}
    disabled = {name: reason for name, reason in plan.disabled.items() if job_queue(settings, name) in chosen}
    for reason in disabled.values():
        log.warning("%s", reason)
    factories: dict[str, Callable[[], Pipeline]] = {
        name: partial(build_pipeline, name, settings, plan.registry) for name in sorted(wanted)
    }
    _context = WorkerContext(settings, db, open_outbox(settings), factories, chosen, disabled=disabled)
    app = make_app(settings, chosen)
    db.engine.dispose()  # no connection of the parent is inherited by a child

    def ready(**_: Any) -> None:
        log.info(
            "ainode worker %s ready: queues %s; pipelines %s (concurrency %d, device %s)",
            worker_id(),
            ", ".join(chosen),
            ", ".join(sorted(wanted)) or "none",
            concurrency,
            settings.device,
        )

    signals.worker_ready.connect(ready, weak=False)
    if stop.is_set():
        return 0
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # Celery's own warning is ten lines about pickle, unused here
        warnings.filterwarnings("ignore", category=SecurityWarning)
        log.warning(
            "ainode worker runs as root: a fault in a model, a decoder or a received file then reaches the whole "
            "machine; run it as a user of its own where you can"
        )
    # Celery warns that it will cancel running acks_late tasks when the broker connection is lost. Ours keep
    # running on purpose: the job's row, not the message, says who holds it; the job ends and is recorded,
    # and the copy the broker delivers again finds it finished (or held) and does nothing.
    warnings.filterwarnings("ignore", category=CPendingDeprecationWarning, module=r"celery\.worker\.consumer")
    logging.getLogger("celery.worker.request").addFilter(_AckLost())
    outage = _BrokerOutage()
    logging.getLogger("celery.worker.consumer.consumer").addFilter(outage)
    logging.getLogger("py.warnings").addFilter(outage)
    worker = app.Worker(
        hostname=f"ainode@{socket.gethostname()}:{os.getpid()}",
        queues=chosen,
        concurrency=concurrency,
        pool="prefork",
        quiet=True,
        without_gossip=True,
        without_mingle=True,
        loglevel=settings.log_level.upper() if isinstance(settings.log_level, str) else "INFO",
    )
    # Celery installs its own handlers: SIGTERM is a warm shutdown (the running jobs end first).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    worker.start()
    db.dispose()
    return int(worker.exitcode or 0)
