"""node.commitment against a pynetdicom Storage Commitment SCP on loopback: failures, refusals, a listener error."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, StorageCommitmentPushModel  # type: ignore[attr-defined]
from sqlalchemy import select

from node.commitment import CommitmentError, CommitmentListener, CommitmentReport, request_commitment
from node.db import Database, Delivery, DeliveryState, Job, Result
from node.dispatcher import Dispatcher
from node.fakes import FakeDestination
from node.settings import Settings
from tests.helpers import free_port

SC_AE, PACS_AE = "AINODE-SC", "FAKEPACS"
CT = str(CTImageStorage)


class FakeCommitmentScp:
    """Answers N-ACTION with ``action_status``; then reports to the listener, failing the UIDs in ``failing``."""

    def __init__(self, listener_port: int, failing: set[str], action_status: int = 0x0000) -> None:
        self.listener_port = listener_port
        self.failing = failing
        self.action_status = action_status
        self.report_status: queue.Queue[int | None] = queue.Queue()
        self.ae = AE(ae_title=PACS_AE)
        self.ae.add_supported_context(StorageCommitmentPushModel)
        self.port = free_port()
        server = self.ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_N_ACTION, self._action)]
        )
        assert server is not None
        self.server = server

    def _action(self, event: Any) -> tuple[int, None]:
        request: Dataset = event.action_information
        if self.action_status == 0x0000:
            threading.Thread(target=self._report, args=(request,), daemon=True).start()
        return self.action_status, None

    def _report(self, request: Dataset) -> None:
        report = Dataset()
        report.TransactionUID = request.TransactionUID
        report.ReferencedSOPSequence, report.FailedSOPSequence = [], []
        for item in request.ReferencedSOPSequence:
            if item.ReferencedSOPInstanceUID in self.failing:
                failed = Dataset()
                failed.ReferencedSOPClassUID = item.ReferencedSOPClassUID
                failed.ReferencedSOPInstanceUID = item.ReferencedSOPInstanceUID
                failed.FailureReason = 0x0110
                report.FailedSOPSequence.append(failed)
            else:
                report.ReferencedSOPSequence.append(item)
        reporter = AE(ae_title=PACS_AE)
        reporter.add_requested_context(StorageCommitmentPushModel)
        assoc = reporter.associate("127.0.0.1", self.listener_port, ae_title=SC_AE)
        if not assoc.is_established:
            self.report_status.put(None)
            return
        event_type = 2 if self.failing else 1
        status, _ = assoc.send_n_event_report(report, event_type, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")
        assoc.release()
        self.report_status.put(int(status.Status) if status else None)

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def listener() -> Iterator[tuple[CommitmentListener, queue.Queue[CommitmentReport]]]:
    reports: queue.Queue[CommitmentReport] = queue.Queue()

    def on_report(report: CommitmentReport) -> bool:
        if report.transaction_uid == "1.2.3.666":
            raise RuntimeError("database unavailable")
        reports.put(report)
        return True

    listening = CommitmentListener(SC_AE, host="127.0.0.1", port=0, on_report=on_report)
    listening.start()
    yield listening, reports
    listening.stop()


def _request(scp: FakeCommitmentScp, uids: list[str]) -> str:
    return request_commitment(
        [(CT, uid) for uid in uids], host="127.0.0.1", port=scp.port, called_ae=PACS_AE, calling_ae=SC_AE, timeout=5
    )


def test_a_failed_instance_is_reported_as_failed_with_its_reason(listener) -> None:  # type: ignore[no-untyped-def]
    listening, reports = listener
    kept, lost = generate_uid(), generate_uid()
    scp = FakeCommitmentScp(listening.port, failing={lost})
    try:
        transaction = _request(scp, [kept, lost])
        report = reports.get(timeout=10)
        assert scp.report_status.get(timeout=10) == 0x0000
    finally:
        scp.stop()
    assert report == CommitmentReport(transaction, PACS_AE, frozenset({kept}), {lost: 0x0110})


def test_a_refused_request_is_an_error(listener) -> None:  # type: ignore[no-untyped-def]
    listening, _ = listener
    scp = FakeCommitmentScp(listening.port, failing=set(), action_status=0x0110)
    try:
        with pytest.raises(CommitmentError) as raised:
            _request(scp, [generate_uid()])
    finally:
        scp.stop()
    assert not raised.value.permanent
    assert "refused the storage commitment request (status 0x0110)" in raised.value.reason


def test_a_peer_without_storage_commitment_is_a_permanent_error() -> None:
    ae = AE(ae_title=PACS_AE)
    ae.add_supported_context(CTImageStorage)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False)
    assert server is not None
    try:
        with pytest.raises(CommitmentError) as raised:
            request_commitment(
                [(CT, generate_uid())], host="127.0.0.1", port=port, called_ae=PACS_AE, calling_ae=SC_AE, timeout=5
            )
    finally:
        server.shutdown()
    assert raised.value.permanent
    assert "does not support Storage Commitment Push Model" in raised.value.reason


def test_no_listener_at_the_destination_is_not_permanent() -> None:
    with pytest.raises(CommitmentError) as raised:
        request_commitment(
            [(CT, generate_uid())], host="127.0.0.1", port=free_port(), called_ae=PACS_AE, calling_ae=SC_AE, timeout=2
        )
    assert not raised.value.permanent
    assert "could not associate" in raised.value.reason


def test_a_report_that_cannot_be_recorded_is_answered_with_a_processing_failure(listener) -> None:  # type: ignore[no-untyped-def]
    listening, reports = listener
    reporter = AE(ae_title=PACS_AE)
    reporter.add_requested_context(StorageCommitmentPushModel)
    report = Dataset()
    report.TransactionUID = "1.2.3.666"
    report.ReferencedSOPSequence = []
    assoc = reporter.associate("127.0.0.1", listening.port, ae_title=SC_AE)
    assert assoc.is_established
    status, _ = assoc.send_n_event_report(report, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")
    assoc.release()
    assert status.Status == 0x0110  # the PACS learns the report was not taken
    assert reports.empty()


# -- the dispatcher: a failed instance is sent again, a committed one is done ---------------------


def _results(db: Database, folder: Path, count: int) -> list[str]:
    """``count`` results (CT files) with a delivery to ``pacs`` each; returns their SOP Instance UIDs."""
    folder.mkdir()
    template = dcmread(get_testdata_file("CT_small.dcm"))
    uids = []
    with db.session() as session:
        job = Job(series_uid="1.2.3", study_uid="1.2", pipeline="fake")
        session.add(job)
        session.flush()
        for index in range(count):
            uid = generate_uid()
            template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = uid
            path = folder / f"{index}.dcm"
            template.save_as(path)
            result = Result(
                job_id=job.id,
                series_uid="1.2.3",
                study_uid="1.2",
                sop_uid=uid,
                sop_class_uid=CT,
                kind="SC",
                path=str(path),
            )
            session.add(result)
            session.flush()
            session.add(Delivery(result_id=result.id, destination="pacs"))
            uids.append(uid)
    return uids


def _states(db: Database) -> dict[str, tuple[DeliveryState, int, str | None]]:
    with db.session() as session:
        rows = session.execute(select(Result.sop_uid, Delivery).join(Delivery, Delivery.result_id == Result.id)).all()
        return {uid: (d.state, d.attempts, d.last_error) for uid, d in rows}


def _settings(tmp_path: Path, pacs_port: int, listener_port: int, **more: Any) -> Settings:
    """A node whose destination ``pacs`` (the fake SCP) asks for commitment; ``more``: destination or node keys."""
    destination = {"type": "dicom", "ae_title": PACS_AE, "host": "127.0.0.1", "port": pacs_port}
    destination |= {"storage_commitment": True} | {k: v for k, v in more.items() if k == "commitment_timeout"}
    return Settings(
        data_dir=tmp_path / "data",
        destinations={"pacs": destination},
        storage_commitment={"ae_title": SC_AE, "host": "127.0.0.1", "port": listener_port},
        **{k: v for k, v in more.items() if k != "commitment_timeout"},
    )


def test_the_dispatcher_sends_a_failed_instance_again_and_finishes_the_committed_one(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'node.db'}")
    db.create_schema()
    kept, lost = _results(db, tmp_path / "outbox", 2)
    listener_port = free_port()
    scp = FakeCommitmentScp(listener_port, failing={lost})
    settings = _settings(tmp_path, scp.port, listener_port, delivery={"backoff_initial": 10, "backoff_max": 10})
    now = [1_800_000_000.0]
    destination = FakeDestination()  # the C-STORE side; the commitment goes to the fake SCP
    dispatcher = Dispatcher(settings, db, {"pacs": destination}, clock=lambda: now[0])
    assert dispatcher.listener is not None
    dispatcher.listener.start()
    try:
        dispatcher.run_once()
        assert scp.report_status.get(timeout=10) == 0x0000
        states = _states(db)
        assert states[kept][:2] == (DeliveryState.DONE, 1)
        assert states[lost][:2] == (DeliveryState.PENDING, 1)
        assert "storage commitment failed (Failure Reason 0x0110)" in (states[lost][2] or "")

        scp.failing = set()  # the PACS keeps it this time
        now[0] += 11  # after the back-off
        dispatcher.run_once()
        assert scp.report_status.get(timeout=10) == 0x0000
    finally:
        dispatcher.listener.stop()
        scp.stop()
    assert destination.received == {kept: 1, lost: 2}  # sent again, the committed one not
    assert {uid: state[:2] for uid, state in _states(db).items()} == {
        kept: (DeliveryState.DONE, 1),
        lost: (DeliveryState.DONE, 2),
    }
    db.dispose()


def test_the_dispatcher_sends_again_when_no_report_comes_in_time(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'node.db'}")
    db.create_schema()
    (uid,) = _results(db, tmp_path / "outbox", 1)
    scp = FakeCommitmentScp(free_port(), failing=set())  # reports to a port nobody listens on
    settings = _settings(tmp_path, scp.port, free_port(), commitment_timeout=60)
    now = [1_800_000_000.0]
    dispatcher = Dispatcher(settings, db, {"pacs": FakeDestination()}, clock=lambda: now[0])
    try:
        dispatcher.run_once()
        assert scp.report_status.get(timeout=10) is None  # the report could not be delivered
        assert _states(db)[uid][:2] == (DeliveryState.COMMITTING, 1)
        now[0] += 59
        dispatcher.run_once()
        assert _states(db)[uid][:2] == (DeliveryState.COMMITTING, 1)
        now[0] += 2
        dispatcher.run_once()  # expired: a failed attempt, pending on its back-off
    finally:
        scp.stop()
    state, attempts, error = _states(db)[uid]
    assert (state, attempts) == (DeliveryState.PENDING, 1)
    assert error is not None and "no storage commitment report in time" in error
    db.dispose()
