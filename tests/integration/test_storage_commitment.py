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

from node.commitment import CommitmentError, CommitmentListener, CommitmentReport, request_commitment
from tests.helpers import OrthancServer, free_port

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
