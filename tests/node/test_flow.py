"""The node's state machine on a real database (SQLite and PostgreSQL).

receive (durable + recorded) -> quiet period -> route -> job -> pipeline ->
results durable -> deliveries with back-off -> dead letters -> retry by hand;
late instances supersede; a restart resumes what was in flight.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select

from core import status
from core.findings import SeriesResult
from core.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dimse.scp import StoreRequest, spool_part10
from node import dispatcher as dispatch
from node import executor as execution
from node.assembler import Assembler
from node.db import (
    AuditEvent,
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
)
from node.errors import InputError
from node.fakes import FakeDestination
from node.pipelines import PipelineOutput
from node.receiver import Receiver
from node.router import load_routing, routing_tags
from node.settings import Settings
from node.spool import Outbox, Spool

ROUTING = """
rules:
  - name: ct-anything
    pipeline: fake
    match: {all: [{attribute: Modality, equals: CT}]}
  - name: mr-disabled-pipeline
    pipeline: missing
    match: {all: [{attribute: Modality, equals: MR}]}
"""


class TinyPipeline:
    """Writes one small result object per analysis; fails on request."""

    name = "fake"

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, list[str]]] = []
        self.fail_with: Exception | None = None

    def analyse(
        self, study_uid: str, series_uid: str, paths: Sequence[Path], predecessors: Sequence[Dataset] = ()
    ) -> PipelineOutput:
        self.calls.append((series_uid, len(paths), [str(p.SOPInstanceUID) for p in predecessors]))
        if self.fail_with:
            raise self.fail_with
        ds = Dataset()
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = generate_uid()
        ds.Modality = "SR"
        result = SeriesResult(
            pipeline="fake", study_instance_uid=study_uid, series_instance_uid=series_uid, algorithms=[]
        )
        return PipelineOutput(result=result, objects=[ds], summary=f"{len(paths)} instances")


@pytest.fixture
def parts(tmp_path: Path, db: Database):  # type: ignore[no-untyped-def]
    settings = Settings(
        data_dir=tmp_path / "data",
        quiet_period={"default": 0.0},
        delivery={"max_attempts": 3, "backoff_initial": 0.01, "backoff_max": 0.02},
    )
    routing_file = tmp_path / "routing.yaml"
    routing_file.write_text(ROUTING)
    spool = Spool(settings.spool_dir, settings.tmp_dir)
    outbox = Outbox(settings.outbox_dir, settings.tmp_dir)
    routing = load_routing(routing_file)
    # As the service builds it: the receiver records what routing reads, the assembler routes by that.
    receiver = Receiver(settings, db, spool, header_tags=routing_tags(routing))
    assembler = Assembler(db, routing, {"fake"}, {"missing": "pipeline 'missing' disabled: weights absent"}, ["pacs"])
    destination = FakeDestination()
    dispatcher = dispatch.Dispatcher(settings, db, {"pacs": destination})
    return settings, receiver, assembler, outbox, dispatcher, destination


#: The SCP's incoming folder of a node, for the requests _instance makes: one per test process, on the file
#: system of pytest's temporary folders (a receiver keeps each file by renaming it into its spool).
_INCOMING = Path(tempfile.mkdtemp(prefix="ainode-test-incoming-"))
atexit.register(shutil.rmtree, _INCOMING, True)
#: The bytes of each request _instance or _again made, by SOP Instance UID: the receiver takes a request's file.
_SENT: dict[str, bytes] = {}


def _request(data: bytes, like: StoreRequest | None = None, **fields: str) -> StoreRequest:
    """A C-STORE request as the SCP hands it over: ``data`` in a new file of the incoming folder."""
    base = {k: v for k, v in like.__dict__.items() if k not in ("path", "size")} if like else {}
    base.update(fields)
    return spool_part10(_INCOMING, data, **base)  # type: ignore[arg-type]


def _instance(series_uid: str, study_uid: str, source: str = "CT_small.dcm", **changes: str) -> StoreRequest:
    ds = pydicom.dcmread(get_testdata_file(source))
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for key, value in changes.items():
        setattr(ds, key, value)
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    _SENT[str(ds.SOPInstanceUID)] = buffer.getvalue()
    return _request(
        buffer.getvalue(),
        calling_ae="STORESCU",
        peer_address="127.0.0.1",
        peer_port=40000,  # type: ignore[arg-type]
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
    )


def _sent(request: StoreRequest) -> bytes:
    """The bytes last sent as this request's instance (its file is the receiver's once received)."""
    return _SENT[request.sop_instance_uid]


def _again(request: StoreRequest, data: bytes | None = None) -> StoreRequest:
    """The same C-STORE once more, in a new incoming file; with ``data``, the instance changed."""
    if data is not None:
        _SENT[request.sop_instance_uid] = data
    return _request(_sent(request), request)


def _run_all_jobs(db: Database, outbox: Outbox, pipeline: TinyPipeline) -> int:
    count = 0
    while (job := execution.claim_job(db, "test", {"fake"})) is not None:
        execution.run_job(db, outbox, pipeline, job)
        count += 1
    return count


def test_series_is_received_analysed_and_delivered_once(db: Database, parts) -> None:  # type: ignore[no-untyped-def]
    settings, receiver, assembler, outbox, dispatcher, destination = parts
    study, series = generate_uid(), generate_uid()
    requests = [_instance(series, study) for _ in range(3)]
    assert [receiver(r) for r in requests] == [status.SUCCESS] * 3
    assert receiver(_again(requests[0])) == status.SUCCESS  # a repeated C-STORE of the same instance is fine
    with db.session() as s:
        row = s.scalar(select(Series).where(Series.series_uid == series))
        assert row.instance_count == 3 and row.state == SeriesState.RECEIVING
        paths = s.scalars(select(Instance.path)).all()
        assert all(Path(p).is_file() for p in paths)
        assert s.scalar(select(Instance.times_received).where(Instance.sop_uid == requests[0].sop_instance_uid)) == 2
    # The stored bytes are exactly what was received.
    with db.session() as s:
        first = s.scalar(select(Instance.path).where(Instance.sop_uid == requests[0].sop_instance_uid))
    assert Path(first).read_bytes() == _sent(requests[0])
    assembler.run_once()
    pipeline = TinyPipeline()
    assert _run_all_jobs(db, outbox, pipeline) == 1
    assert pipeline.calls[0][:2] == (series, 3)
    dispatcher.run_once()
    with db.session() as s:
        job = s.scalar(select(Job))
        assert job.state == JobState.DONE and job.summary == "3 instances"
        assert s.scalar(select(Series.state).where(Series.series_uid == series)) == SeriesState.DONE
        delivery = s.scalar(select(Delivery))
        assert delivery.state == DeliveryState.DONE and delivery.attempts == 1
        result = s.scalar(select(Result))
    assert destination.received == {result.sop_uid: 1}
    # The result file names ainode, not a library, as the implementation that wrote it (PS3.10 7.1).
    meta = pydicom.dcmread(result.path, stop_before_pixels=True).file_meta
    assert (meta.ImplementationClassUID, meta.ImplementationVersionName) == (
        IMPLEMENTATION_CLASS_UID,
        IMPLEMENTATION_VERSION_NAME,
    )
    dispatcher.run_once()
    assert destination.received == {result.sop_uid: 1}


def test_late_instances_cause_a_new_analysis_that_supersedes(db: Database, parts) -> None:  # type: ignore[no-untyped-def]
    settings, receiver, assembler, outbox, dispatcher, destination = parts
    study, series = generate_uid(), generate_uid()
    receiver(_instance(series, study))
    assembler.run_once()
    pipeline = TinyPipeline()
    _run_all_jobs(db, outbox, pipeline)
    receiver(_instance(series, study))  # arrives after the analysis
    assembler.run_once()
    assert _run_all_jobs(db, outbox, pipeline) == 1
    with db.session() as s:
        first, second = s.scalars(select(Result).order_by(Result.id)).all()
        jobs = s.scalars(select(Job).order_by(Job.id)).all()
    assert [j.generation for j in jobs] == [1, 2]
    assert first.superseded_by == second.id and second.superseded_by is None
    assert pipeline.calls[1][1] == 2 and pipeline.calls[1][2] == [first.sop_uid]


def test_bad_input_fails_its_job_and_the_next_series_still_runs(db: Database, parts) -> None:  # type: ignore[no-untyped-def]
    settings, receiver, assembler, outbox, dispatcher, destination = parts
    study = generate_uid()
    bad_series, good_series = generate_uid(), generate_uid()
    receiver(_instance(bad_series, study))
    assembler.run_once()
    pipeline = TinyPipeline()
    pipeline.fail_with = InputError("pixel data truncated: expected 32768 bytes, found 100")
    _run_all_jobs(db, outbox, pipeline)
    pipeline.fail_with = None
    receiver(_instance(good_series, study))
    assembler.run_once()
    _run_all_jobs(db, outbox, pipeline)
    with db.session() as s:
        jobs = {j.series_uid: j for j in s.scalars(select(Job))}
    assert jobs[bad_series].state == JobState.FAILED
    assert jobs[bad_series].error == "pixel data truncated: expected 32768 bytes, found 100"
    assert jobs[good_series].state == JobState.DONE


def test_routing_outcomes_are_recorded(db: Database, parts) -> None:  # type: ignore[no-untyped-def]
    settings, receiver, assembler, outbox, dispatcher, destination = parts
    study = generate_uid()
    mr, sr, us = generate_uid(), generate_uid(), generate_uid()
    receiver(_instance(mr, study, "MR_small.dcm"))
    receiver(_instance(sr, study, Modality="SR"))
    receiver(_instance(us, study, Modality="US"))
    assembler.run_once()
    with db.session() as s:
        states = {r.series_uid: r for r in s.scalars(select(Series))}
        job = s.scalar(select(Job).where(Job.series_uid == mr))
    assert states[sr].state == SeriesState.IGNORED and "SR" in states[sr].note
    assert states[us].state == SeriesState.UNROUTED
    assert job.state == JobState.FAILED and "weights absent" in job.error
    with db.session() as s:
        audit = s.scalar(select(AuditEvent).where(AuditEvent.job_id == job.id))
    assert audit.kind == AuditKind.JOB_FAILED and "weights absent" in audit.message


def test_the_assembler_routes_by_the_header_recorded_at_receive(db: Database, parts) -> None:  # type: ignore[no-untyped-def]
    settings, receiver, assembler, outbox, dispatcher, destination = parts
    study, ct, sr = generate_uid(), generate_uid(), generate_uid()
    receiver(_instance(ct, study))
    receiver(_instance(ct, study))
    receiver(_instance(sr, study, Modality="SR"))
    with db.session() as s:
        instances = s.scalars(select(Instance).order_by(Instance.id)).all()
    # The instance that opens a series carries the header; one added to a receiving series does not need it.
    assert [i.header is not None for i in instances] == [True, False, True]
    for instance in instances:
        Path(instance.path).unlink()  # routing must not read the files
    assembler.run_once()
    with db.session() as s:
        states = {r.series_uid: r for r in s.scalars(select(Series))}
        job = s.scalar(select(Job).where(Job.series_uid == ct))
    assert job.pipeline == "fake" and job.rule == "ct-anything"
    assert states[sr].state == SeriesState.IGNORED and "SR" in states[sr].note


def test_without_a_recorded_header_the_assembler_reads_the_file(db: Database, parts) -> None:  # type: ignore[no-untyped-def]
    settings, receiver, assembler, outbox, dispatcher, destination = parts
    readable, gone = generate_uid(), generate_uid()
    receiver(_instance(readable, generate_uid()))
    receiver(_instance(gone, generate_uid()))
    with db.session() as s:
        for instance in s.scalars(select(Instance)):
            instance.header = None  # recorded by a version before headers
            if instance.series_uid == gone:
                Path(instance.path).unlink()
    assembler.run_once()
    with db.session() as s:
        states = {r.series_uid: r for r in s.scalars(select(Series))}
    assert states[readable].state == SeriesState.QUEUED
    assert states[gone].state == SeriesState.UNROUTED
    assert states[gone].note.startswith("header unreadable: cannot read: No such file or directory")


def test_unreadable_or_unsafe_instances_are_refused(db: Database, parts) -> None:  # type: ignore[no-untyped-def]
    settings, receiver, assembler, outbox, dispatcher, destination = parts
    good = _instance(generate_uid(), generate_uid())
    garbage = _request(b"\x00" * 128 + b"DICM" + b"\xff" * 50, good)
    assert receiver(garbage) == status.CANNOT_UNDERSTAND
    evil = _instance("1.2.3/../../../tmp", generate_uid())
    assert receiver(evil) == status.CANNOT_UNDERSTAND
    assert not list(Path(settings.data_dir).rglob("tmp.dcm"))
    mismatch = StoreRequest(**{**good.__dict__, "sop_instance_uid": "1.2.3.4"})
    assert receiver(mismatch) == status.CANNOT_UNDERSTAND
    assert receiver.counts["rejected"] == 3


def test_destination_down_backs_off_then_dead_letter_then_retry(db: Database, parts) -> None:  # type: ignore[no-untyped-def]
    settings, receiver, assembler, outbox, dispatcher, destination = parts
    receiver(_instance(generate_uid(), generate_uid()))
    assembler.run_once()
    _run_all_jobs(db, outbox, TinyPipeline())
    destination.down = True
    for _ in range(10):
        dispatcher.run_once()
        time.sleep(0.03)
    with db.session() as s:
        delivery = s.scalar(select(Delivery))
    assert delivery.state == DeliveryState.DEAD and delivery.attempts == 3
    assert "fake destination is down" in delivery.last_error
    destination.down = False
    dispatcher.run_once()
    assert destination.received == {}  # a dead letter waits for a person
    assert dispatch.retry_dead(db) == 1
    dispatcher.run_once()
    with db.session() as s:
        delivery = s.scalar(select(Delivery))
    assert delivery.state == DeliveryState.DONE and len(destination.received) == 1


def test_restart_resumes_running_jobs_and_deliveries(db: Database, parts) -> None:  # type: ignore[no-untyped-def]
    settings, receiver, assembler, outbox, dispatcher, destination = parts
    receiver(_instance(generate_uid(), generate_uid()))
    assembler.run_once()
    job = execution.claim_job(db, "dead-worker", {"fake"})
    assert job is not None
    # The process dies here. A new one recovers:
    assert execution.recover(db) == 1
    assert _run_all_jobs(db, outbox, TinyPipeline()) == 1
    with db.session() as s:
        s.execute(Delivery.__table__.update().values(state=DeliveryState.SENDING))
    assert dispatch.recover(db) == 1
    dispatcher.run_once()
    assert list(destination.received.values()) == [1]


def test_a_job_that_kills_the_process_repeatedly_is_failed(db: Database, parts) -> None:  # type: ignore[no-untyped-def]
    settings, receiver, assembler, outbox, dispatcher, destination = parts
    receiver(_instance(generate_uid(), generate_uid()))
    assembler.run_once()
    for _ in range(execution.MAX_ATTEMPTS):
        assert execution.claim_job(db, "w", {"fake"}) is not None
        execution.recover(db)
    with db.session() as s:
        job = s.scalar(select(Job))
        series_state = s.scalar(select(Series.state).where(Series.series_uid == job.series_uid))
    assert job.state == JobState.FAILED and "given up" in job.error
    assert series_state == SeriesState.DONE  # not left 'queued' with no job to finish it


def test_the_restart_limit_of_a_job_is_a_setting(db: Database, parts) -> None:  # type: ignore[no-untyped-def]
    settings, receiver, assembler, outbox, dispatcher, destination = parts
    receiver(_instance(generate_uid(), generate_uid()))
    assembler.run_once()
    for _ in range(execution.MAX_ATTEMPTS):  # the default limit reached: with a limit of 5 the job is queued again
        assert execution.claim_job(db, "w", {"fake"}) is not None
        execution.recover(db, max_attempts=5)
    with db.session() as s:
        assert s.scalar(select(Job.state)) == JobState.QUEUED


def test_spool_files_without_rows_are_recorded_again_at_start(db: Database, parts) -> None:  # type: ignore[no-untyped-def]
    """A power cut may lose the last database transactions, never an acknowledged (fsynced) instance."""
    settings, receiver, assembler, outbox, dispatcher, destination = parts
    study, series = generate_uid(), generate_uid()
    requests = [_instance(series, study) for _ in range(2)]
    assert [receiver(r) for r in requests] == [status.SUCCESS] * 2
    with db.session() as s:  # the last transactions never reached the disk
        s.execute(Instance.__table__.delete())
        s.execute(Series.__table__.delete())
    assert receiver.recover_spool() == 2
    assert receiver.recover_spool() == 0
    with db.session() as s:
        row = s.scalar(select(Series).where(Series.series_uid == series))
        sops = set(s.scalars(select(Instance.sop_uid)))
    assert row.instance_count == 2 and row.state == SeriesState.RECEIVING
    assert sops == {r.sop_instance_uid for r in requests}
    assembler.run_once()
    assert _run_all_jobs(db, outbox, TinyPipeline()) == 1


def test_queuing_a_job_wakes_the_executor_at_once(db: Database, parts) -> None:  # type: ignore[no-untyped-def]
    """Latency: a queued job must not wait for a worker's poll interval."""
    settings, receiver, assembler, outbox, dispatcher, destination = parts
    woken: list[int] = []
    assembler.on_queued = lambda: woken.append(1)
    receiver(_instance(generate_uid(), generate_uid()))
    assembler.run_once()
    assert woken == [1]
    assembler.run_once()  # nothing new: no wake-up
    assert woken == [1]


def test_sender_log_lines_name_their_study_and_job(db: Database, parts, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    """Structured logs: what a destination logs while sending carries the study (and job) it sends for."""
    import logging

    from node.logs import ContextFilter

    settings, receiver, assembler, outbox, dispatcher, destination = parts
    studies = [generate_uid(), generate_uid()]
    for study in studies:
        receiver(_instance(generate_uid(), study))
    assembler.run_once()
    _run_all_jobs(db, outbox, TinyPipeline())
    sender_log = logging.getLogger("ainode.destinations.test")

    class LoggingDestination(FakeDestination):
        def send(self, paths):  # type: ignore[no-untyped-def]
            sender_log.warning("sending %d file(s)", len(paths))
            return super().send(paths)

    dispatcher.senders["pacs"] = LoggingDestination()
    caplog.handler.addFilter(ContextFilter())
    with caplog.at_level(logging.WARNING, logger="ainode.destinations.test"):
        dispatcher.run_once()
    lines = [r for r in caplog.records if r.name == "ainode.destinations.test"]
    assert sorted(r.study for r in lines) == sorted(studies)  # type: ignore[attr-defined]
    assert all(r.job is not None for r in lines)  # type: ignore[attr-defined]


def test_a_worker_outlives_a_database_that_goes_away(  # type: ignore[no-untyped-def]
    db: Database, parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL restarting under a worker must not end the worker: the node would receive and never analyse."""
    from sqlalchemy.exc import OperationalError

    settings, receiver, assembler, outbox, dispatcher, destination = parts
    real_claim = execution.claim_job
    failures = [OperationalError("SELECT", {}, Exception("server closed the connection unexpectedly"))] * 2

    def flaky_claim(*args: object) -> Job | None:
        if failures:
            raise failures.pop()
        return real_claim(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(execution, "claim_job", flaky_claim)
    pipeline = TinyPipeline()
    executor = execution.LocalExecutor(db, outbox, {"fake": lambda: pipeline}, workers=1, poll_seconds=0.05)
    executor.start()
    try:
        receiver(_instance(generate_uid(), generate_uid()))
        assembler.run_once()
        executor.notify()
        deadline = time.monotonic() + 10
        while not pipeline.calls and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        executor.stop()
    assert not failures and len(pipeline.calls) == 1
    with db.session() as s:
        assert s.scalar(select(Job.state)) == JobState.DONE
