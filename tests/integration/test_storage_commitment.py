"""Storage Commitment Push Model against Orthanc 1.10.1 (node.commitment).

Orthanc answers the N-ACTION at once, then a job looks the instances up and
sends the N-EVENT-REPORT on a new association to the DicomModalities entry of
the AE title that made the request.
"""

from __future__ import annotations

import queue
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import select

from node.commitment import CommitmentError, CommitmentListener, CommitmentReport, request_commitment
from node.db import Delivery, DeliveryState
from tests.helpers import OrthancServer, free_port, storescu
from tests.integration.nodeproc import NodeProcess
from tests.integration.soakkit import small_radiograph_template, write_series

SC_AE = "AINODE-SC"
CT = str(get_testdata_file("CT_small.dcm"))


def _listener(port: int) -> tuple[CommitmentListener, queue.Queue[tuple[float, CommitmentReport]]]:
    reports: queue.Queue[tuple[float, CommitmentReport]] = queue.Queue()

    def on_report(report: CommitmentReport) -> bool:
        reports.put((time.monotonic(), report))
        return True

    return CommitmentListener(SC_AE, host="127.0.0.1", port=port, on_report=on_report), reports


def test_orthanc_commits_what_it_holds_and_reports_on_a_new_association(orthanc_factory) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    orthanc: OrthancServer = orthanc_factory(modalities={"ainode-sc": [SC_AE, "127.0.0.1", port]})
    orthanc.upload(CT)
    stored = dcmread(CT, stop_before_pixels=True)
    missing = generate_uid()
    listener, reports = _listener(port)
    listener.start()
    try:
        started = time.monotonic()
        transaction = request_commitment(
            [(stored.SOPClassUID, stored.SOPInstanceUID), (stored.SOPClassUID, missing)],
            host="127.0.0.1",
            port=orthanc.dicom_port,
            called_ae=orthanc.aet,
            calling_ae=SC_AE,
            timeout=10,
        )
        arrived, report = reports.get(timeout=10)
    finally:
        listener.stop()
    assert report.transaction_uid == transaction
    assert report.calling_ae == orthanc.aet  # Orthanc's own association to us
    assert report.committed == {stored.SOPInstanceUID}
    assert report.failed == {missing: 0x0112}  # no such object instance
    assert arrived - started < 5
    assert reports.empty()


def test_orthanc_not_knowing_the_commitment_ae_title_aborts_the_request(orthanc: OrthancServer) -> None:
    orthanc.upload(CT)
    stored = dcmread(CT, stop_before_pixels=True)
    with pytest.raises(CommitmentError) as raised:
        request_commitment(
            [(stored.SOPClassUID, stored.SOPInstanceUID)],
            host="127.0.0.1",
            port=orthanc.dicom_port,
            called_ae=orthanc.aet,
            calling_ae=SC_AE,
            timeout=5,
        )
    assert not raised.value.permanent  # the PACS' configuration may be fixed: retried
    assert f"does the destination know the AE title {SC_AE}?" in raised.value.reason


def test_a_stopped_listener_gets_no_report(orthanc_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    orthanc: OrthancServer = orthanc_factory(modalities={"ainode-sc": [SC_AE, "127.0.0.1", port]})
    orthanc.upload(CT)
    stored = dcmread(CT, stop_before_pixels=True)
    request_commitment(
        [(stored.SOPClassUID, stored.SOPInstanceUID)],
        host="127.0.0.1",
        port=orthanc.dicom_port,
        called_ae=orthanc.aet,
        calling_ae=SC_AE,
        timeout=5,
    )  # accepted: Orthanc only finds out later that nobody listens
    deadline = time.monotonic() + 10
    while "Job has completed with failure" not in orthanc.log_tail(20000) and time.monotonic() < deadline:
        time.sleep(0.1)
    listener, reports = _listener(port)  # started after Orthanc gave up: nothing comes
    listener.start()
    try:
        time.sleep(1)
    finally:
        listener.stop()
    assert reports.empty()


# -- the node: deliveries end committed, or are sent again ---------------------------------------


def _node_with_commitment(tmp_path: Path, orthanc: OrthancServer, listener_port: int, timeout: float) -> NodeProcess:
    return NodeProcess(
        tmp_path / "node",
        destinations={
            "pacs": {
                "type": "dicom",
                "ae_title": orthanc.aet,
                "host": "127.0.0.1",
                "port": orthanc.dicom_port,
                "timeout": 5,
                "storage_commitment": True,
                "commitment_timeout": timeout,
            }
        },
        storage_commitment={"ae_title": SC_AE, "host": "127.0.0.1", "port": listener_port},
        quiet_period={"default": 0.3},
    ).start()


def _deliveries(node: NodeProcess) -> list[Delivery]:
    db = node.database()
    try:
        with db.session() as session:
            return list(session.scalars(select(Delivery)))
    finally:
        db.dispose()


def _send_one_series(node: NodeProcess, tmp_path: Path) -> None:
    template = small_radiograph_template(tmp_path / "in")
    series = write_series(template, tmp_path / "in" / "s", generate_uid(), 1, "dx")
    assert storescu(series, "127.0.0.1", node.port, "AINODE").returncode == 0


def test_a_delivery_with_commitment_is_done_when_orthanc_commits_it(orthanc_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    orthanc: OrthancServer = orthanc_factory(modalities={"ainode-sc": [SC_AE, "127.0.0.1", port]})
    node = _node_with_commitment(tmp_path, orthanc, port, timeout=30)
    try:
        _send_one_series(node, tmp_path)
        (sr,) = orthanc.wait_for_instances(modality="SR", count=1, timeout=60)
        deadline = time.monotonic() + 30
        while node.deliveries(DeliveryState.DONE) < 1:
            assert time.monotonic() < deadline, node.log()
            time.sleep(0.1)
        shown = node.cli("deliveries", "show", "1")
    finally:
        node.stop()
    (delivery,) = _deliveries(node)
    assert delivery.committed_at is not None and delivery.commitment_uid
    assert delivery.attempts == 1
    assert delivery.commitment_uid in shown.stdout  # ainode deliveries show: the transaction and when committed
    assert sr.sop_instance_uid in shown.stdout


@pytest.mark.parametrize("case", ["orthanc does not know the AE title", "nobody listens at its address"])
def test_without_a_report_the_delivery_is_sent_again_never_done(orthanc_factory, tmp_path: Path, case: str) -> None:  # type: ignore[no-untyped-def]
    listener_port, elsewhere = free_port(), free_port()
    modalities = {} if case.startswith("orthanc") else {"ainode-sc": [SC_AE, "127.0.0.1", elsewhere]}
    orthanc: OrthancServer = orthanc_factory(modalities=modalities)
    node = _node_with_commitment(tmp_path, orthanc, listener_port, timeout=1)
    try:
        _send_one_series(node, tmp_path)
        orthanc.wait_for_instances(modality="SR", count=1, timeout=60)
        deadline = time.monotonic() + 30
        while node.delivery_attempts() < 3:
            assert time.monotonic() < deadline, node.log()
            time.sleep(0.2)
        (delivery,) = _deliveries(node)
    finally:
        node.stop()
    assert delivery.state in (DeliveryState.PENDING, DeliveryState.SENDING, DeliveryState.COMMITTING)
    assert delivery.committed_at is None and delivery.delivered_at is None
    expected = "storage commitment request failed" if case.startswith("orthanc") else "no storage commitment report"
    assert delivery.last_error is not None and expected in delivery.last_error, delivery.last_error
