"""What an administrator does with a running node: echo, dead letters, retry; late instances."""

from __future__ import annotations

import time
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from node.db import DeliveryState
from tests.helpers import OrthancServer, storescu
from tests.integration.nodeproc import NodeProcess
from tests.integration.srread import texts


def _wait(predicate, timeout: float, what: str, node: NodeProcess) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{node.log()}"
        time.sleep(0.1)


def test_dead_letters_are_listed_and_delivered_by_retry(tmp_path: Path, rg1_uncr: Path) -> None:
    orthanc = OrthancServer(tmp_path / "orthanc")  # not started: the PACS is down
    node = NodeProcess(
        tmp_path / "node",
        destinations={
            "pacs": {
                "type": "dicom",
                "ae_title": "ORTHANC",
                "host": "127.0.0.1",
                "port": orthanc.dicom_port,
                "timeout": 2,
            }
        },
        delivery={"max_attempts": 2, "backoff_initial": 0.1, "backoff_max": 0.2},
    ).start()
    try:
        echo_self = node.cli("echo")
        assert echo_self.returncode == 0 and "success" in echo_self.stdout, echo_self.stdout + echo_self.stderr
        echo_down = node.cli("echo", "pacs")
        assert echo_down.returncode == 1 and "failed" in echo_down.stdout
        assert storescu([rg1_uncr], "127.0.0.1", node.port, "AINODE").returncode == 0
        _wait(lambda: node.deliveries(DeliveryState.DEAD) == 1, 30, "a dead letter", node)
        listing = node.cli("deliveries", "--failed")
        assert listing.returncode == 0
        assert "dead" in listing.stdout and "pacs" in listing.stdout and "SR" in listing.stdout
        orthanc.start()
        try:
            assert node.cli("echo", "pacs").returncode == 0
            retry = node.cli("deliveries", "retry")
            assert retry.returncode == 0 and "1 dead letter(s) queued" in retry.stdout
            study = str(pydicom.dcmread(rg1_uncr, stop_before_pixels=True).StudyInstanceUID)
            orthanc.wait_for_instances(study_uid=study, modality="SR", timeout=30)
        finally:
            orthanc.stop()
        assert "done" in node.cli("deliveries").stdout
    finally:
        node.stop()
    assert node.deliveries(DeliveryState.DONE) == 1


def test_late_instance_causes_a_new_sr_that_supersedes_the_first(
    tmp_path: Path, rg1_uncr: Path, orthanc: OrthancServer
) -> None:
    node = NodeProcess(
        tmp_path / "node",
        destinations={
            "orthanc": {"type": "dicom", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port}
        },
    ).start()
    source = pydicom.dcmread(rg1_uncr)
    study = str(source.StudyInstanceUID)
    try:
        assert storescu([rg1_uncr], "127.0.0.1", node.port, "AINODE").returncode == 0
        [first] = orthanc.wait_for_instances(study_uid=study, modality="SR", timeout=30)
        late = source.copy()
        late.SOPInstanceUID = generate_uid()
        late.file_meta.MediaStorageSOPInstanceUID = late.SOPInstanceUID
        late.InstanceNumber = 2
        path = tmp_path / "late.dcm"
        late.save_as(path, enforce_file_format=True)
        assert storescu([path], "127.0.0.1", node.port, "AINODE").returncode == 0
        srs = orthanc.wait_for_instances(study_uid=study, modality="SR", count=2, timeout=30)
    finally:
        node.stop()
    [second] = [s for s in srs if s.id != first.id]
    sr = pydicom.dcmread(BytesIO(orthanc.download_instance(second.id)))
    predecessors = [
        ref.ReferencedSOPInstanceUID
        for study_item in sr.PredecessorDocumentsSequence
        for series_item in study_item.ReferencedSeriesSequence
        for ref in series_item.ReferencedSOPSequence
    ]
    assert predecessors == [first.sop_instance_uid]
    assert any("supersede" in t.lower() for t in texts(sr)), texts(sr)
