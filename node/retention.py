"""Retention: received instances and sent results are removed by policy, never anything unfinished.

The spool and the outbox would otherwise keep every file forever, until the
disk is full and every C-STORE is answered 0xA700. Two rules (``retention:``
settings), one plan (:func:`plan_purge`) used by the background loop and by
``ainode purge [--dry-run]``:

age
    A series' instances go ``keep_hours`` (24 h) after the last of: its last
    instance received, its jobs finished, its results delivered. A result file
    goes ``keep_hours`` after its last delivery (or its creation, when it has
    no destination).
watermark
    While free space on the data directory's file system is under
    ``min_free_percent`` (10 %), purgeable files go earlier, oldest first,
    until the free space is back above the watermark.

Purgeable means finished: the series is not receiving nor waiting for a
re-send decision, none of its jobs is queued or running, and every delivery of
its results is done. A pending, sending or dead delivery (a dead letter can
be retried by hand) keeps the series' instances and that result's file.

The database keeps every row (the audit trail): a purged instance or result
gets ``purged_at``; a re-received instance is stored again and loses it. Each
purge run writes one ``purged`` audit row with counts and bytes, no patient data.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from node.audit import audit_row
from node.background import BackgroundLoop
from node.db import (
    AuditKind,
    Database,
    Delivery,
    DeliveryState,
    Instance,
    Job,
    JobState,
    Result,
    Series,
    SeriesState,
    utcnow,
)
from node.errors import StorageError
from node.settings import Settings
from node.storage import S3Files, is_s3_ref, open_files

if TYPE_CHECKING:
    from node.metrics import Metrics

log = logging.getLogger("ainode.retention")

Kind = Literal["instances", "results"]
Reason = Literal["age", "watermark"]
#: A spool file written this much after its row's ``received_at`` was received again while being purged.
RERECEIVED_SLACK_SECONDS = 2.0
#: Seconds between passes while free space is under the watermark (files may have become purgeable).
UNDER_WATERMARK_RETRY_SECONDS = 5.0
#: UIDs or ids per ``IN (...)`` query: a spool of many series must not exceed a database's parameter limit.
CHUNK = 500


def _chunks(values: Iterable[Any]) -> Iterator[list[Any]]:
    items = list(values)
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


@dataclass
class PurgeItem:
    """The files of one series (instances) or of one series' results that may go, and why.

    For instances, the rows are the series' rows still on disk when the item is purged (read
    in the transaction that marks them); for results, ``ids`` and ``paths`` name them.
    """

    kind: Kind
    study_uid: str
    series_uid: str
    files: int
    bytes: int
    finished_at: datetime
    reason: Reason = "age"
    ids: list[int] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


@dataclass
class PurgePlan:
    """What would go now, and the state of the disk it was planned for."""

    items: list[PurgeItem]
    free_fraction: float
    total_bytes: int
    min_free_fraction: float
    #: Series and results kept because something about them is unfinished.
    unfinished_series: int = 0
    unfinished_results: int = 0

    @property
    def files(self) -> int:
        return sum(item.files for item in self.items)

    @property
    def bytes(self) -> int:
        return sum(item.bytes for item in self.items)

    @property
    def under_watermark(self) -> bool:
        return self.free_fraction < self.min_free_fraction

    def still_short(self) -> int:
        """Bytes still missing to reach the watermark after this plan (0 when it reaches it)."""
        if not self.under_watermark:
            return 0
        needed = (self.min_free_fraction - self.free_fraction) * self.total_bytes
        return max(0, int(needed) - self.bytes)


@dataclass
class PurgeOutcome:
    """What a purge removed."""

    files: int = 0
    bytes: int = 0
    by_reason: dict[str, tuple[int, int]] = field(default_factory=dict)  # reason -> (files, bytes)
    skipped: int = 0  # files kept at the last moment (received again, or no longer finished)

    def add(self, reason: str, files: int, size: int) -> None:
        self.files += files
        self.bytes += size
        before = self.by_reason.get(reason, (0, 0))
        self.by_reason[reason] = (before[0] + files, before[1] + size)


def _aware(moment: datetime | None) -> datetime | None:
    """SQLite gives back naive datetimes; they were written in UTC."""
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _latest(*moments: datetime | None) -> datetime:
    present = [m for m in (_aware(x) for x in moments) if m is not None]
    return max(present) if present else datetime.min.replace(tzinfo=UTC)


def _under(path: str, roots: Sequence[str]) -> bool:
    """Whether ``path`` lies in one of ``roots`` (normalised strings: no file system call per row)."""
    normal = os.path.normpath(path)
    return any(normal.startswith(root) for root in roots)


def _root(directory: Path) -> str:
    return os.path.join(os.path.normpath(directory.resolve()), "")


def _area_root(settings: Settings, area: str) -> str:
    """The normalised start of every ref of ``area`` (``spool``, ``outbox``): its folder, or its objects' prefix."""
    files = open_files(settings)
    if isinstance(files, S3Files):
        return os.path.join(os.path.normpath(files.area_ref(area)), "")
    return _root(settings.spool_dir if area == "spool" else settings.outbox_dir)


def disk_state(settings: Settings) -> tuple[float, int]:
    """Free fraction and total bytes of the data directory's file system."""
    usage = shutil.disk_usage(settings.data_dir)
    return (usage.free / usage.total if usage.total else 1.0), usage.total


def plan_purge(
    db: Database, settings: Settings, now: datetime, free_fraction: float, total_bytes: int | None = None
) -> PurgePlan:
    """What retention would remove now: the age rule, then (under the watermark) the oldest purgeable.

    Parameters
    ----------
    db : Database
    settings : Settings
        ``retention.keep_hours`` and ``retention.min_free_percent``; files outside the
        settings' spool and outbox directories are never planned.
    now : datetime
        The moment the age rule compares with (aware, UTC).
    free_fraction : float
        Free space of the data directory's file system, 0..1.
    total_bytes : int, optional
        Size of that file system (to turn the watermark into bytes); read from the disk when omitted.

    Returns
    -------
    PurgePlan
        Items oldest first within each reason; nothing unfinished is ever in it.
    """
    policy = settings.retention
    if total_bytes is None:
        total_bytes = shutil.disk_usage(settings.data_dir).total
    cutoff = (now if now.tzinfo else now.replace(tzinfo=UTC)) - timedelta(hours=policy.keep_hours)
    with db.session() as session:
        series_items, unfinished_series = _series_candidates(session, settings)
        result_items, unfinished_results = _result_candidates(session, settings)
    candidates = sorted(series_items + result_items, key=lambda item: (item.finished_at, item.kind, item.series_uid))
    plan = PurgePlan(
        items=[],
        free_fraction=free_fraction,
        total_bytes=total_bytes,
        min_free_fraction=policy.min_free_percent / 100.0,
        unfinished_series=unfinished_series,
        unfinished_results=unfinished_results,
    )
    rest: list[PurgeItem] = []
    for item in candidates:
        if item.finished_at <= cutoff:
            item.reason = "age"
            plan.items.append(item)
        else:
            rest.append(item)
    for item in rest:  # oldest first, only while still under the watermark
        if plan.still_short() <= 0:
            break
        item.reason = "watermark"
        plan.items.append(item)
    return plan


def _series_candidates(session: Session, settings: Settings) -> tuple[list[PurgeItem], int]:
    """Series whose instances (those still on disk) are finished with, and how many series are not."""
    # One row per series (aggregated by the database): a spool of 100,000 instances is planned in a moment.
    files = {
        row.series_uid: row
        for row in session.execute(
            select(
                Instance.series_uid,
                func.min(Instance.study_uid).label("study_uid"),
                func.count().label("files"),
                func.coalesce(func.sum(Instance.size), 0).label("size"),
                func.max(Instance.received_at).label("received_at"),
            )
            .where(Instance.purged_at.is_(None))
            .group_by(Instance.series_uid)
        )
    }
    if not files:
        return [], 0
    # Filters by sub-query, not by lists of UIDs: no parameter limit, one query each.
    live = select(Instance.series_uid).where(Instance.purged_at.is_(None))
    series = {
        s.series_uid: s
        for s in session.execute(
            select(Series.series_uid, Series.state, Series.resend_pending, Series.last_received_at).where(
                Series.series_uid.in_(live)
            )
        )
    }
    busy_jobs: set[str] = set()
    job_end: dict[str, datetime] = {}
    for uid, job_state, finished in session.execute(
        select(Job.series_uid, Job.state, Job.finished_at).where(Job.series_uid.in_(live))
    ):
        if job_state in (JobState.QUEUED, JobState.RUNNING):
            busy_jobs.add(uid)
        job_end[uid] = _latest(job_end.get(uid), finished)
    undelivered: set[str] = set()
    delivered: dict[str, datetime] = {}
    for uid, state, when in session.execute(
        select(Result.series_uid, Delivery.state, Delivery.delivered_at)
        .join(Delivery, Delivery.result_id == Result.id)
        .where(Result.series_uid.in_(live))
    ):
        if state != DeliveryState.DONE:
            undelivered.add(uid)
        else:
            delivered[uid] = _latest(delivered.get(uid), when)
    items: list[PurgeItem] = []
    unfinished = 0
    for uid, row in files.items():
        s = series.get(uid)
        if (
            s is None
            or s.state in (SeriesState.RECEIVING, SeriesState.QUEUED)
            or s.resend_pending
            or uid in busy_jobs
            or uid in undelivered
        ):
            unfinished += 1
            continue
        finished = _latest(s.last_received_at, job_end.get(uid), delivered.get(uid), row.received_at)
        items.append(
            PurgeItem(
                kind="instances",
                study_uid=row.study_uid,
                series_uid=uid,
                files=int(row.files),
                bytes=int(row.size),
                finished_at=finished,
            )
        )
    return items, unfinished


def _result_candidates(session: Session, settings: Settings) -> tuple[list[PurgeItem], int]:
    """Result files (still in the outbox) whose deliveries are all done, grouped per source series."""
    results = session.execute(
        select(Result.id, Result.study_uid, Result.series_uid, Result.path, Result.created_at).where(
            Result.purged_at.is_(None)
        )
    ).all()
    if not results:
        return [], 0
    undelivered: set[int] = set()
    delivered: dict[int, datetime] = {}
    for result_id, state, when in session.execute(
        select(Delivery.result_id, Delivery.state, Delivery.delivered_at).where(
            Delivery.result_id.in_(select(Result.id).where(Result.purged_at.is_(None)))
        )
    ):
        if state != DeliveryState.DONE:
            undelivered.add(result_id)
        else:
            delivered[result_id] = _latest(delivered.get(result_id), when)
    roots = [_area_root(settings, "outbox")]
    files = open_files(settings)
    groups: dict[tuple[str, str], PurgeItem] = {}
    for r in results:
        if r.id in undelivered or not _under(r.path, roots):
            continue
        finished = _latest(r.created_at, delivered.get(r.id))
        try:
            found = files.stat(r.path)
        except StorageError:
            found = None
        size = found[0] if found is not None else 0  # already gone: the row is marked, nothing to free
        item = groups.get((r.study_uid, r.series_uid))
        if item is None:
            groups[(r.study_uid, r.series_uid)] = PurgeItem(
                kind="results",
                study_uid=r.study_uid,
                series_uid=r.series_uid,
                files=1,
                ids=[r.id],
                paths=[r.path],
                bytes=size,
                finished_at=finished,
            )
        else:
            item.ids.append(r.id)
            item.paths.append(r.path)
            item.files += 1
            item.bytes += size
            item.finished_at = max(item.finished_at, finished)
    return list(groups.values()), len({r.id for r in results} & undelivered)


def purge(db: Database, settings: Settings, plan: PurgePlan, metrics: Metrics | None = None) -> PurgeOutcome:
    """Remove the plan's files; rows are kept and marked ``purged_at``; one audit row for the run.

    Each item is checked again in the transaction that marks it (another process, or a
    re-sent series, may have changed it since the plan), and a spool file written after
    its row was planned (an instance received again meanwhile) is kept.
    """
    outcome = PurgeOutcome()
    for item in plan.items:
        removed, size, kept = _purge_item(db, settings, item)
        outcome.skipped += kept
        if removed:
            outcome.add(item.reason, removed, size)
            if metrics is not None:
                metrics.purged_files.labels(reason=item.reason).inc(removed)
                metrics.purged_bytes.labels(reason=item.reason).inc(size)
    if outcome.files:
        parts = ", ".join(
            f"{reason}: {files} file(s), {size} bytes" for reason, (files, size) in sorted(outcome.by_reason.items())
        )
        with db.session() as session:
            session.add(
                audit_row(
                    AuditKind.PURGED,
                    instance_count=outcome.files,
                    message=f"purged {outcome.files} file(s), {outcome.bytes} bytes ({parts}); database rows kept",
                )
            )
        log.info("retention purged %d file(s), %d bytes (%s)", outcome.files, outcome.bytes, parts)
    return outcome


def _still_finished(session: Session, item: PurgeItem) -> bool:
    if item.kind == "results":
        return not session.scalar(
            select(Delivery.id).where(Delivery.result_id.in_(item.ids), Delivery.state != DeliveryState.DONE).limit(1)
        )
    series = session.scalar(select(Series).where(Series.series_uid == item.series_uid))
    if series is None or series.state in (SeriesState.RECEIVING, SeriesState.QUEUED) or series.resend_pending:
        return False
    if session.scalar(
        select(Job.id)
        .where(Job.series_uid == item.series_uid, Job.state.in_([JobState.QUEUED, JobState.RUNNING]))
        .limit(1)
    ):
        return False
    return not session.scalar(
        select(Delivery.id)
        .join(Result, Result.id == Delivery.result_id)
        .where(Result.series_uid == item.series_uid, Delivery.state != DeliveryState.DONE)
        .limit(1)
    )


def _purge_item(db: Database, settings: Settings, item: PurgeItem) -> tuple[int, int, int]:
    """Mark, then delete one item's files; returns (files removed, bytes, files kept)."""
    table = Instance if item.kind == "instances" else Result
    root = settings.spool_dir if item.kind == "instances" else settings.outbox_dir
    files = open_files(settings)
    moment = utcnow()
    received: dict[int, datetime] = {}
    with db.session() as session:
        if not _still_finished(session, item):
            return 0, 0, item.files
        if item.kind == "instances":
            rows = session.execute(
                select(Instance.id, Instance.path, Instance.received_at).where(
                    Instance.series_uid == item.series_uid, Instance.purged_at.is_(None)
                )
            ).all()
            targets = [(r.id, r.path) for r in rows]
            received = {r.id: a for r in rows if (a := _aware(r.received_at)) is not None}
        else:
            targets = list(zip(item.ids, item.paths, strict=False))
        roots = [_area_root(settings, "spool" if item.kind == "instances" else "outbox")]
        foreign = [path for _, path in targets if not _under(path, roots)]
        if foreign:  # a row naming a file elsewhere (data_dir changed by hand): never deleted, left as it is
            log.warning(
                "retention: %d file(s) of series %s are outside %s; left alone", len(foreign), item.series_uid, root
            )
            targets = [(row_id, path) for row_id, path in targets if _under(path, roots)]
        if not targets:
            return 0, 0, len(foreign)
        # A purged instance also loses the header recorded at receive: it may hold patient attributes
        # a routing rule tests, and nothing routes a purged file again.
        cleared: dict[str, object] = {"header": None} if item.kind == "instances" else {}
        for ids in _chunks(row_id for row_id, _ in targets):
            session.execute(
                update(table).where(table.id.in_(ids), table.purged_at.is_(None)).values(purged_at=moment, **cleared)
            )
    removed = size = 0
    kept = len(foreign)
    back: list[int] = []
    newer = 0
    dirs: set[Path] = set()
    for row_id, ref in targets:  # file paths, or objects' refs (node.storage)
        try:
            found = files.stat(ref)
        except StorageError as exc:
            log.warning("retention: %s", exc)
            back.append(row_id)
            continue
        if found is None:
            continue  # gone already (by hand): the row stays marked
        st_size, st_mtime = found
        planned = received.get(row_id)
        if planned is not None and st_mtime > planned.timestamp() + RERECEIVED_SLACK_SECONDS:
            back.append(row_id)  # received again while we planned: the new file stays
            newer += 1
            continue
        try:
            files.delete(ref)
        except StorageError as exc:
            log.warning("retention: %s", exc)
            back.append(row_id)
            continue
        removed += 1
        size += st_size
        if not is_s3_ref(ref):
            dirs.add(Path(ref).parent)
    if back:
        kept += len(back)
        with db.session() as session:
            for ids in _chunks(back):
                session.execute(
                    update(table).where(table.id.in_(ids), table.purged_at == moment).values(purged_at=None)
                )
    if newer:
        # Normally an instance sent again while it was being purged. Every pass, for every series: the file
        # system's clock (a network mount) runs ahead of this machine's, and nothing in the spool can be purged.
        log.warning(
            "retention: kept %d file(s) of series %s written after their database row (sent again "
            "meanwhile, or the data directory's file system clock is ahead of this machine's)",
            newer,
            item.series_uid,
        )
    _remove_empty_dirs(dirs, root)
    return removed, size, kept


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_empty_dirs(dirs: Iterable[Path], root: Path) -> None:
    """fsync each directory files left; remove it, then its parent, while empty and below ``root``."""
    root = root.resolve()
    for directory in dirs:
        current = directory.resolve()
        _fsync_dir(current)
        while current != root and current.is_relative_to(root):
            try:
                current.rmdir()
            except OSError:
                break  # not empty (or a receiver is writing into it): it stays
            _fsync_dir(current.parent)
            current = current.parent


class RetentionLoop(BackgroundLoop):
    """Applies the retention policy every ``retention.interval_seconds`` (sooner while under the watermark)."""

    retry_seconds = 10.0
    #: What waits while the database is unreachable (one line per outage, see BackgroundLoop).
    paused = "retention"

    def __init__(self, settings: Settings, db: Database, metrics: Metrics | None = None) -> None:
        super().__init__("ainode-retention", log)
        self.settings = settings
        self.db = db
        self.metrics = metrics
        self._warned = False

    def run_once(self) -> float:
        interval = self.settings.retention.interval_seconds
        free, total = disk_state(self.settings)
        plan = plan_purge(self.db, self.settings, utcnow(), free, total)
        if plan.items:
            purge(self.db, self.settings, plan, self.metrics)
        if plan.under_watermark:
            free, total = disk_state(self.settings)
            if free < plan.min_free_fraction:
                if not self._warned:
                    log.warning(
                        "free space %.1f %% is under the retention watermark (%.0f %%) and nothing more "
                        "can be purged: %d series and %d result(s) are unfinished (jobs or deliveries)",
                        100 * free,
                        100 * plan.min_free_fraction,
                        plan.unfinished_series,
                        plan.unfinished_results,
                    )
                    self._warned = True
                return min(interval, UNDER_WATERMARK_RETRY_SECONDS)
        self._warned = False
        return interval
