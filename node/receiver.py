"""The C-STORE sink: make a received instance durable, answer, and record it.

Bound to :class:`dimse.scp.StorageSCP` by the service. The SCP has streamed the
data set into a Part 10 file in the spool's temporary folder
(:attr:`dimse.scp.StoreRequest.path`). The receiver reads only the header it
files by (the top-level elements up to group 0020, through a memory map of the
file: a few pages, whatever the instance's size; no pixel decoding, no
inference), then keeps the file as it is: fsync, rename into
``spool/<study>/<series>/<sop>.dcm``, fsync of the folder
(:meth:`node.spool.Spool.keep`). Nothing is copied and the data set is never
held in memory. Only then is success answered (PS3.4 B.2.3). With object storage
(``storage.type: s3``, :mod:`node.storage`) the file is first PUT to the bucket (a failed
PUT answers 0xA700), the row records the object's ref, and the kept file is a staging
copy removed once the row is committed.

The spool file is the durable record of an acknowledged instance; its
database row follows. Once :meth:`Receiver.start` has run (the service does),
a recorder thread commits the rows of what was acknowledged in batches, off
the acknowledgement path: it takes whatever has arrived since its last commit
(at most ``batch_size``), waiting ``batch_delay`` for more, and commits them in
one transaction (one UPDATE per series still receiving and one multi-row
INSERT for new instances of such series; new, re-opened and re-sent series
one by one as before). Until a row is committed:

* the assembler does not schedule the instance's series
  (:meth:`Receiver.unrecorded_series`), so a series is never analysed
  without an instance it acknowledged;
* a process crash loses the row but not the instance: at start-up
  :meth:`Receiver.recover_spool` records every spool file without a row;
* the database being down (PostgreSQL restarting, SQLite locked or full)
  delays the rows: the recorder retries the batch with a growing pause
  (0.2 s to 5 s), and instances keep being acknowledged while the spool holds
  them, up to ``max_unrecorded`` instances waiting for their rows; past that
  a C-STORE is answered 0xA700 (out of resources) and nothing is kept, so a
  long outage turns into refusals a sender retries instead of an unbounded
  queue. A node stopped during an outage leaves the waiting rows to
  :meth:`Receiver.recover_spool` at its next start.

Without :meth:`Receiver.start` (tools, tests) each C-STORE records its row
before answering, as the node did before the recorder existed.

Out of disk answers 0xA700; an unreadable data set or invalid UIDs answer
0xC210; nothing raises to the peer. Before anything is kept, the data set is
checked against its C-STORE request, nothing stored on a refusal:

* its first element must be laid out in the presentation context's transfer
  syntax (:func:`node.dicomheader.encoding_problem`: the VR after its tag in
  explicit VR, a length that fits in implicit VR), else 0xC210 (cannot
  understand: the SCP names the context's syntax in the file's meta, and a
  file whose meta contradicts its data set is unreadable to strict readers;
  pydicom would switch VR silently);
* it must carry a SOP Class UID equal to the request's Affected SOP Class UID
  and a SOP Instance UID, else 0xA900 (data set does not match SOP class,
  PS3.4 B.2.3: every storage IOD has the SOP Common module, whose SOP Class and
  Instance UIDs are Type 1; the data set was understood, it does not conform);
* that SOP Instance UID must be the request's Affected SOP Instance UID, else
  0xC210.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import mmap
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from core import status
from dimse.scp import StoreRequest
from node.db import Database, Instance, Series, SeriesState, Study, retry_locked, utcnow
from node.dicomheader import encoding_problem, read_identifiers, record_elements
from node.errors import InputError, StorageError, StorageFull
from node.idempotency import file_digest
from node.logs import bind_log_context, log_context
from node.settings import Settings
from node.spool import Spool, check_uid

log = logging.getLogger("ainode.receiver")

#: All the receiver reads of a data set; everything else waits for the pipeline.
HEADER_TAGS = ["SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality"]
REQUIRED_TAGS = {"SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"}

#: Instances acknowledged and waiting for their rows, past which a C-STORE is refused (0xA700).
MAX_UNRECORDED = 10_000
#: How long the recorder waits for more instances before committing what it has (seconds).
BATCH_DELAY = 0.02
#: The most rows one commit records.
BATCH_SIZE = 500
#: How long :meth:`Receiver.stop` waits for the rows still queued (seconds).
STOP_TIMEOUT = 10.0
#: Files up to this size are read whole for their header; larger ones are memory-mapped.
_READ_WHOLE = 64 * 1024

# The fast path's statements, built once: building them per batch cost more than executing them.
_EXTEND_SERIES = (
    update(Series)
    .where(Series.series_uid == bindparam("series"), Series.state == SeriesState.RECEIVING)
    .values(
        last_received_at=bindparam("now"),
        ready_at=bindparam("ready"),
        instance_count=Series.instance_count + bindparam("added"),
    )
)
_ADD_INSTANCE = insert(Instance)


class NotOfSOPClass(InputError):
    """The data set does not match the C-STORE's SOP class (answered 0xA900)."""


@dataclass(frozen=True)
class Received:
    """An instance kept in the spool (durable, acknowledged or about to be), its row still to be recorded."""

    path: Path
    study_uid: str
    series_uid: str
    sop_uid: str
    modality: str | None
    sop_class_uid: str
    transfer_syntax_uid: str
    size: int
    calling_ae: str
    peer_address: str
    received_at: datetime
    ready_at: float  # epoch seconds: the series is stable after this, unless more arrive
    ref: str = ""  # what the row records (node.storage): the path itself in a posix spool, an object's ref with S3
    digest: str | None = None  # taken at receive by an object-store spool only (Spool.digest); else by the assembler

    def row(self) -> dict[str, Any]:
        """The columns of a new instance row (the fast path's INSERT)."""
        return {
            "sop_uid": self.sop_uid,
            "series_uid": self.series_uid,
            "study_uid": self.study_uid,
            "sop_class_uid": self.sop_class_uid,
            "transfer_syntax_uid": self.transfer_syntax_uid,
            "path": self.ref or str(self.path),
            "size": self.size,
            "calling_ae": self.calling_ae,
            "peer_address": self.peer_address,
            "received_at": self.received_at,
            "times_received": 1,
            "header": None,
            "digest": self.digest,
        }


@contextlib.contextmanager
def _file_bytes(path: Path) -> Iterator[bytes]:
    """The file's bytes for a header scan: read whole when small, else a read-only memory map.

    A map reads only the pages the scan touches, so a header is found in a multi-gigabyte file
    without reading the file. The map is used as bytes (``len``, slices, ``struct.unpack_from``).
    """
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size <= _READ_WHOLE:
            yield fh.read()
            return
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            yield cast(bytes, mapped)


def read_received_header(path: Path) -> Mapping[str, Any] | Dataset:
    """SOP Class, Study, Series and SOP Instance UIDs and Modality of a received file, reading only its header.

    The scanner of :mod:`node.dicomheader` on the file's first pages; pydicom (pixels and
    large values left unread) for what it declines.

    Raises
    ------
    InputError
        The file is not a readable DICOM data set, or its data set is not encoded in the
        transfer syntax its meta names (:func:`node.dicomheader.encoding_problem`).
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(_READ_WHOLE)
            size = os.fstat(fh.fileno()).st_size
        problem = encoding_problem(head, size)
        if problem is not None:
            raise InputError(f"unreadable data set: {problem}")
        # The first pages hold these in any common header: a scan of them (microseconds) that finds
        # all four UIDs is complete, since an element cut at the end fails the scan (then the map).
        found = read_identifiers(head)
        if found is None or not found.keys() >= REQUIRED_TAGS:
            with _file_bytes(path) as data:
                found = read_identifiers(data)
        if found is not None and found.keys() >= REQUIRED_TAGS:
            return found
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS, defer_size=1024)
    except (InvalidDicomError, EOFError, ValueError, TypeError, AttributeError, KeyError, OSError) as exc:
        raise InputError(f"unreadable data set: {exc}") from exc
    if not any(key in ds for key in REQUIRED_TAGS):
        # pydicom stops at what it cannot parse and returns what it read: nothing here is understood (0xC210),
        # unlike a data set that was read but lacks its SOP Class or Instance UID (0xA900).
        raise InputError("unreadable data set: none of its SOP Class, SOP Instance, Study and Series UIDs found")
    return ds


class Receiver:
    """Callable sink for the storage SCP.

    Parameters
    ----------
    settings, db, spool
        The node's settings, database and spool.
    on_stored : callable, optional
        Called when a series is new or re-opened, so it may be due before any
        other (wakes the assembler); after its row is committed.
    on_instance : callable, optional
        Called after each C-STORE with the request, its study UID (``None``
        when unreadable) and the status answered: metrics and audit counts,
        in memory only.
    header_tags : collection of int, optional
        The attributes routing reads (:func:`node.router.routing_tags`): recorded
        as received (``Instance.header``) for an instance that opens or re-opens
        a series, so that the assembler need not read its file. None: not recorded.
    max_unrecorded, batch_delay, batch_size
        The recorder's queue limit, wait and batch size (see the module's description).
    """

    def __init__(
        self,
        settings: Settings,
        db: Database,
        spool: Spool,
        on_stored: Callable[[], None] | None = None,
        on_instance: Callable[[StoreRequest, str | None, int], None] | None = None,
        header_tags: Collection[int] | None = None,
        *,
        max_unrecorded: int = MAX_UNRECORDED,
        batch_delay: float = BATCH_DELAY,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self.settings = settings
        self.header_tags = frozenset(header_tags or ())
        self.db = db
        self.spool = spool
        self.on_stored = on_stored
        self.on_instance = on_instance
        self.counts = {"stored": 0, "rejected": 0}
        self.max_unrecorded = max_unrecorded
        self.batch_delay = batch_delay
        self.batch_size = batch_size
        self._lock = threading.Lock()
        # The recorder's queue: what waits (_queue) and the batch being committed (_batch).
        self._rows = threading.Condition()
        self._queue: deque[Received] = deque()
        self._batch: list[Received] = []
        self._stopping = False
        self._hurry = False  # someone waits in flush(): commit what is queued without the batch delay
        self._enqueued = 0  # instances ever queued, and of those, how many are recorded (or given up)
        self._recorded = 0
        self._recorder: threading.Thread | None = None

    # -- the acknowledgement path ------------------------------------------------------------------------------

    def __call__(self, request: StoreRequest) -> int:
        study: list[str] = []  # filled by _store once the header is read
        with log_context():  # the study and series _store binds apply to this instance only
            code = self._answer(request, study)
        if self.on_instance is not None:
            self.on_instance(request, study[0] if study else None, code)
        return code

    def _answer(self, request: StoreRequest, study: list[str]) -> int:
        try:
            self._store(request, study)
        except StorageFull as exc:
            log.error("refused %s from %s: %s", request.sop_instance_uid, request.calling_ae, exc)
            return self._reject(status.OUT_OF_RESOURCES)
        except NotOfSOPClass as exc:
            log.warning(
                "refused %s from %s (0xA900, data set does not match SOP class): %s",
                request.sop_instance_uid,
                request.calling_ae,
                exc,
            )
            return self._reject(status.DATASET_DOES_NOT_MATCH_SOP_CLASS)
        except InputError as exc:
            log.warning(
                "refused %s from %s (0xC210, cannot understand): %s", request.sop_instance_uid, request.calling_ae, exc
            )
            return self._reject(status.CANNOT_UNDERSTAND)
        except (StorageError, SQLAlchemyError) as exc:
            full = isinstance(exc, OperationalError) and "full" in str(exc).lower()
            log.error("could not record %s: %s", request.sop_instance_uid, _cause(exc))
            return self._reject(
                status.OUT_OF_RESOURCES if full or isinstance(exc, StorageError) else status.PROCESSING_FAILURE
            )
        with self._lock:
            self.counts["stored"] += 1
        return status.SUCCESS

    def _reject(self, code: int) -> int:
        with self._lock:
            self.counts["rejected"] += 1
        return code

    def _store(self, request: StoreRequest, study: list[str]) -> None:
        ds = read_received_header(request.path)
        sop_uid = check_uid(request.sop_instance_uid, "SOPInstanceUID")
        _check_sop_class(ds, str(request.sop_class_uid))
        if str(ds.get("SOPInstanceUID")) != sop_uid:
            raise InputError("SOPInstanceUID in the data set differs from the C-STORE request")
        study_uid = check_uid(ds.get("StudyInstanceUID"), "StudyInstanceUID")
        study.append(study_uid)
        series_uid = check_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID")
        modality = str(ds.get("Modality", "") or "")[:16] or None
        bind_log_context(study=study_uid, series=series_uid)
        batched = self._recorder is not None
        if batched:
            waiting = self.unrecorded()
            if waiting >= self.max_unrecorded:
                raise StorageFull(
                    f"{waiting} received instances wait for the database (unreachable or too slow); "
                    "refused until it catches up"
                )
        path = self.spool.keep(request.path, study_uid, series_uid, sop_uid)
        item = Received(
            path=path,
            study_uid=study_uid,
            series_uid=series_uid,
            sop_uid=sop_uid,
            modality=modality,
            sop_class_uid=str(request.sop_class_uid),
            transfer_syntax_uid=str(request.transfer_syntax_uid),
            size=request.size,
            calling_ae=request.calling_ae,
            peer_address=request.peer_address,
            received_at=utcnow(),
            ready_at=time.time() + self.settings.quiet_seconds(modality),
            ref=self.spool.ref(path),
            digest=self.spool.digest(path),
        )
        if batched:
            with self._rows:
                self._queue.append(item)
                self._enqueued += 1
                # Wake the recorder only when it waits for a first row or a full batch: waking it for every
                # instance cost the association thread a GIL hand-over per C-STORE.
                if len(self._queue) == 1 or len(self._queue) == self.batch_size:
                    self._rows.notify_all()
        else:
            self._record([item], strict=True)
        log.debug("stored %s (series %s) from %s", sop_uid, series_uid, request.calling_ae)

    # -- the recorder ------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Record rows in batches on a thread of their own from now on (see the module's description)."""
        if self._recorder is not None:
            return
        self._stopping = False
        self._recorder = threading.Thread(target=self._record_loop, name="ainode-recorder", daemon=True)
        self._recorder.start()

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """Record what is queued (waiting at most ``timeout`` seconds) and end the recorder.

        Returns how many acknowledged instances are left without a row (the database was
        unreachable): their spool files are recorded at the next start.
        """
        thread = self._recorder
        if thread is None:
            return 0
        with self._rows:
            self._stopping = True
            self._rows.notify_all()
        thread.join(timeout)
        with self._rows:
            left = len(self._queue) + len(self._batch)
        if thread.is_alive():
            log.warning(
                "%d received instances still without their database rows at stop; "
                "their spool files are recorded at the next start",
                left,
            )
        self._recorder = None
        return left

    def unrecorded(self) -> int:
        """How many kept instances wait for their rows."""
        with self._rows:
            return len(self._queue) + len(self._batch)

    def unrecorded_series(self) -> set[str]:
        """Series UIDs with an instance kept in the spool whose row is not committed yet (the assembler waits)."""
        with self._rows:
            return {item.series_uid for item in self._queue} | {item.series_uid for item in self._batch}

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the rows of every instance queued so far are committed; False if ``timeout`` passed first.

        The recorder commits at once instead of waiting for more; instances queued meanwhile
        (other associations) are not waited for.
        """
        with self._rows:
            target = self._enqueued
            if self._recorded >= target:
                return True
            self._hurry = True
            self._rows.notify_all()
            return self._rows.wait_for(lambda: self._recorded >= target, timeout)

    def _record_loop(self) -> None:
        pause = 0.0
        failing_since: float | None = None
        while True:
            with self._rows:
                self._rows.wait_for(lambda: self._queue or self._stopping)
                if not self._queue and self._stopping:
                    return
                if len(self._queue) < self.batch_size and not self._stopping and not self._hurry:
                    # A short wait gathers the instances of every association into one commit.
                    self._rows.wait_for(
                        lambda: len(self._queue) >= self.batch_size or self._stopping or self._hurry, self.batch_delay
                    )
                self._hurry = False
                count = min(len(self._queue), self.batch_size)
                self._batch = [self._queue.popleft() for _ in range(count)]
            batch = self._batch
            try:
                self._record(batch)
            except Exception as exc:  # noqa: BLE001 (the recorder must outlive anything; the rows wait)
                # The database is down (or a fault of ours): the rows wait, the spool files are the record meanwhile.
                left = exc if isinstance(exc, _Unrecorded) else _Unrecorded(batch)
                if left is not exc:
                    log.error("recording received instances failed", exc_info=True)
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.error(
                        "cannot record %d received instances (retrying; they are safe in the spool): %s",
                        len(left.items),
                        _cause(exc.__cause__ or exc),
                    )
                pause = min(5.0, max(0.2, pause * 2))
                with self._rows:
                    self._queue.extendleft(reversed(left.items))
                    self._recorded += len(batch) - len(left.items)
                    self._batch = []
                    self._rows.notify_all()
                    if self._stopping or self._rows.wait_for(lambda: self._stopping, pause):
                        return  # stopping: what is left is recorded from the spool at the next start
                continue
            if failing_since is not None:
                log.info("recording received instances again after %.0f s", time.monotonic() - failing_since)
            pause, failing_since = 0.0, None
            with self._rows:
                self._recorded += len(batch)
                self._batch = []
                self._rows.notify_all()

    def _record(self, items: Sequence[Received], *, strict: bool = False) -> int:
        """Commit the rows of ``items`` (in order), in one transaction when possible; returns how many.

        An instance whose row cannot be written for a reason of its own (not the database being
        unreachable) is logged and left to :meth:`recover_spool`; the others are recorded. Wakes
        the assembler when a series opened or re-opened.

        Raises
        ------
        SQLAlchemyError
            With ``strict``, whatever kept the rows out (the caller answers for its one instance).
        _Unrecorded
            The database is unreachable; its ``items`` are those of ``items`` not recorded.
        """
        try:
            opened = self._commit(items)
            recorded = len(items)
            self.spool.release(item.path for item in items)  # object-store staging files (node.storage)
        except SQLAlchemyError as exc:
            if strict:
                raise
            if _transient(exc):
                raise _Unrecorded(items) from exc
            # One instance's row is refused (a clash, a value the database rejects): record one by one.
            opened, recorded = False, 0
            for at, item in enumerate(items):
                try:
                    opened |= self._commit([item])
                    recorded += 1
                    self.spool.release([item.path])
                except SQLAlchemyError as one:
                    if _transient(one):
                        raise _Unrecorded(items[at:]) from one
                    log.error("instance %s could not be recorded: %s", item.sop_uid, _cause(one))
        if opened and self.on_stored is not None:
            self.on_stored()  # a new or re-opened series may be due before any other
        return recorded

    def _commit(self, items: Sequence[Received]) -> bool:
        """One transaction for ``items``, retried while SQLite is locked; True if a series opened or re-opened."""
        headers: dict[Path, dict[str, Any] | None] = {}

        def record() -> bool:
            with self.db.session() as session:
                return self._record_rows(session, items, headers)

        for attempt in range(3):
            try:
                return bool(retry_locked(record))
            except IntegrityError:
                # Another writer (a receiver without recorder, recover_spool) created the same study or
                # series row first: read it and go on.
                if attempt == 2:
                    raise
        return False

    def _record_rows(
        self, session: Session, items: Sequence[Received], headers: dict[Path, dict[str, Any] | None]
    ) -> bool:
        """The common case in one UPDATE per series and one INSERT: new instances of series still receiving.

        Everything else (a new or no longer receiving series, an instance received before or twice in
        the batch) takes :meth:`_record_one`, in order. Returns whether a series opened or re-opened.
        """
        sops = [item.sop_uid for item in items]
        known: set[str] = set()
        for start in range(0, len(sops), 500):
            known.update(
                session.scalars(select(Instance.sop_uid).where(Instance.sop_uid.in_(sops[start : start + 500])))
            )
        by_series: dict[str, list[Received]] = {}
        slow: list[Received] = []
        seen: set[str] = set()
        for item in items:
            if item.sop_uid in known or item.sop_uid in seen:
                slow.append(item)
            else:
                by_series.setdefault(item.series_uid, []).append(item)
            seen.add(item.sop_uid)
        fast: list[Received] = []
        connection = session.connection()
        for series_uid, group in by_series.items():
            moved = connection.execute(
                _EXTEND_SERIES,
                {
                    "series": series_uid,
                    "now": max(i.received_at for i in group),
                    "ready": max(i.ready_at for i in group),
                    "added": len(group),
                },
            )
            if cast(Any, moved).rowcount == 1:
                fast += group
            else:
                slow += group
        if fast:
            connection.execute(_ADD_INSTANCE, [item.row() for item in fast])
        opened = False
        if slow and fast:
            order = {id(item): at for at, item in enumerate(items)}
            slow.sort(key=lambda item: order[id(item)])
        for item in slow:
            if item.path not in headers:
                headers[item.path] = self._header_record(item.path)
            opened |= self._record_one(session, item, headers[item.path])
            session.flush()  # the next instance of the same series or study sees this one's rows
        return opened

    def _header_record(self, path: Path) -> dict[str, Any] | None:
        """What routing reads of an instance, as received (:func:`node.dicomheader.record_elements`)."""
        if not self.header_tags:
            return None
        try:
            with _file_bytes(path) as data:
                return record_elements(data, self.header_tags)
        except (OSError, ValueError) as exc:  # the assembler reads the file when it routes
            log.warning("header of %s not recorded: %s", path.name, exc)
            return None

    def _record_one(self, session: Session, item: Received, header: dict[str, Any] | None) -> bool:
        """A new or re-opened series, or an instance received again; True if the series opened or re-opened."""
        if session.scalar(select(Study.id).where(Study.study_uid == item.study_uid)) is None:
            session.add(Study(study_uid=item.study_uid))
            session.flush()
        series = session.scalar(select(Series).where(Series.series_uid == item.series_uid).with_for_update())
        instance = session.scalar(select(Instance).where(Instance.sop_uid == item.sop_uid))
        # The same SOP instance with the same content: a re-send (Orthanc's stable events, a PACS that
        # re-sends the whole study after each new object, an operator). It never re-opens a series that
        # was scheduled or analysed; the assembler only records it, after the quiet period.
        # Digests are taken here, off the fast path of new instances, and by the assembler for the rest
        # (node.idempotency): 0.3 ms per 0.5 MB instance was 8 % of a durable receive.
        content = _digest_or_none(item.path) if instance is not None else None
        unchanged = instance is not None and instance.digest == content and instance.series_uid == item.series_uid
        opened = True
        if series is None:
            series = Series(
                series_uid=item.series_uid,
                study_uid=item.study_uid,
                modality=item.modality,
                instance_count=0,
                generation=1,
                state=SeriesState.RECEIVING,
                calling_ae=item.calling_ae,
            )
            session.add(series)
        elif unchanged and series.state in (SeriesState.QUEUED, SeriesState.DONE, SeriesState.UNROUTED):
            series.resend_pending = True
            series.resent_instances = (series.resent_instances or 0) + 1
        elif series.state in (SeriesState.QUEUED, SeriesState.DONE):
            # A new or changed instance after the series was scheduled or analysed: analyse again; the
            # new results supersede the old ones.
            series.generation += 1
            series.state = SeriesState.RECEIVING
        elif series.state == SeriesState.UNROUTED:
            series.state = SeriesState.RECEIVING
        else:
            opened = False  # still receiving (or ignored): its deadline only moves later
        series.last_received_at = item.received_at
        series.ready_at = max(series.ready_at or 0.0, item.ready_at)
        if instance is None:
            session.add(
                Instance(
                    sop_uid=item.sop_uid,
                    series_uid=item.series_uid,
                    study_uid=item.study_uid,
                    sop_class_uid=item.sop_class_uid,
                    transfer_syntax_uid=item.transfer_syntax_uid,
                    path=item.ref or str(item.path),
                    size=item.size,
                    calling_ae=item.calling_ae,
                    peer_address=item.peer_address,
                    received_at=item.received_at,
                    header=header,
                    digest=item.digest,
                )
            )
            series.instance_count += 1
        else:
            instance.times_received += 1
            instance.path = item.ref or str(item.path)
            instance.purged_at = None  # the file is back if retention had removed it
            instance.size = item.size
            instance.transfer_syntax_uid = item.transfer_syntax_uid
            instance.received_at = item.received_at
            instance.digest = content
            instance.header = header
        return opened

    # -- start-up ----------------------------------------------------------------------------------------------

    def recover_spool(self) -> int:
        """Record spool files that have no database row (after a crash or power cut); returns how many.

        The spool file is fsynced before a C-STORE is acknowledged, so it is the durable truth;
        the row may be lost with a killed process (rows are committed after the acknowledgement)
        or with the last WAL transactions. With object storage the spool folder holds the staging
        files of instances whose rows were pending (:mod:`node.storage`): those with a row by now
        are removed, the others recorded under their object's ref.
        """
        with self.db.session() as session:
            known = set(session.scalars(select(Instance.path)))
        recovered = 0
        pending: list[Received] = []
        recorded: list[Path] = []
        for path in self.spool.root.rglob("*.dcm"):
            if self.spool.ref(path) in known:
                recorded.append(path)
                continue
            try:
                pending.append(self._recovered(path))
            except (InputError, OSError, ValueError, AttributeError) as exc:
                log.error("spool file %s could not be recovered: %s", path.name, exc)
                continue
            if len(pending) >= self.batch_size:
                recovered += self._record_recovered(pending)
                pending = []
        self.spool.release(recorded)
        return recovered + self._record_recovered(pending)

    def _recovered(self, path: Path) -> Received:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS, defer_size=1024)
        except (InvalidDicomError, EOFError, ValueError, TypeError, AttributeError, KeyError) as exc:
            raise InputError(f"unreadable data set: {exc}") from exc
        meta = ds.file_meta
        modality = str(ds.get("Modality", "") or "")[:16] or None
        return Received(
            path=path,
            study_uid=check_uid(ds.get("StudyInstanceUID"), "StudyInstanceUID"),
            series_uid=check_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID"),
            sop_uid=check_uid(ds.get("SOPInstanceUID"), "SOPInstanceUID"),
            modality=modality,
            sop_class_uid=str(meta.MediaStorageSOPClassUID),
            transfer_syntax_uid=str(meta.TransferSyntaxUID),
            size=path.stat().st_size,
            calling_ae="",
            peer_address="",
            received_at=utcnow(),
            ready_at=time.time() + self.settings.quiet_seconds(modality),
            ref=self.spool.ref(path),
        )

    def _record_recovered(self, items: list[Received]) -> int:
        if not items:
            return 0
        try:
            return self._record(items)
        except _Unrecorded as exc:
            log.error("%d spool files could not be recovered: %s", len(exc.items), _cause(exc.__cause__ or exc))
            return len(items) - len(exc.items)


def _check_sop_class(ds: Mapping[str, Any] | Dataset, affected: str) -> None:
    """The data set carries a SOP Instance UID and the request's SOP class, else :class:`NotOfSOPClass`."""
    missing = [key for key in ("SOPClassUID", "SOPInstanceUID") if not str(ds.get(key) or "").strip()]
    if missing:
        raise NotOfSOPClass(f"the data set has no {' and no '.join(missing)} (SOP Common module, Type 1)")
    sop_class = str(ds.get("SOPClassUID")).strip()
    if sop_class != affected.strip():
        raise NotOfSOPClass(f"the data set's SOP Class UID {sop_class[:64]} is not the request's {affected[:64]}")


class _Unrecorded(Exception):
    """The database is unreachable; ``items`` were not recorded."""

    def __init__(self, items: Sequence[Received]) -> None:
        super().__init__(f"{len(items)} instances not recorded")
        self.items = list(items)


def _transient(exc: SQLAlchemyError) -> bool:
    """Whether ``exc`` says the database is unreachable, locked or full, rather than refusing these rows."""
    return isinstance(exc, (OperationalError, InterfaceError)) or bool(getattr(exc, "connection_invalidated", False))


def _cause(exc: BaseException) -> str:
    """SQLAlchemy's text carries the statement and its parameters over many lines: the cause only."""
    return str(getattr(exc, "orig", None) or exc).splitlines()[0]


def _digest_or_none(path: Path) -> str | None:
    try:
        return file_digest(path)
    except OSError as exc:  # unreadable now: no digest, so the instance counts as changed
        log.warning("instance file %s unreadable for its digest: %s", path.name, exc)
        return None


def digest(data: bytes | memoryview) -> str:
    """SHA-256 of a data set as received (hex): what makes a re-sent instance "unchanged"."""
    return hashlib.sha256(data).hexdigest()
