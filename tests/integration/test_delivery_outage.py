"""A real destination down and back: Orthanc stopped while results queue up, then started again.

With the default give-up time (48 h) and no attempt limit, results keep being
retried through an outage that outlasts the old 8 attempts, none becomes a
dead letter, and when Orthanc is back the whole backlog arrives. The simulated
20-hour outage, the backlog made due by the first success, and the
urgent-first order (which needs the triage of the chest models) are in
``tests/node/test_delivery_schedule.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pydicom

from node.db import DeliveryState
from tests.helpers import OrthancServer, storescu
from tests.integration.nodeproc import NodeProcess
from tests.integration.soakkit import small_radiograph_template, write_series

BACKLOG, BACKOFF_INITIAL, BACKOFF_MAX = 4, 0.2, 3.0
OLD_ATTEMPT_LIMIT = 8


def test_results_wait_through_an_outage_and_the_backlog_arrives_at_once(tmp_path: Path) -> None:
    orthanc = OrthancServer(tmp_path / "orthanc").start()
    template = small_radiograph_template(tmp_path / "in")
    node = NodeProcess(
        tmp_path / "node",
        destinations={
            "pacs": {
                "type": "dicom",
                "ae_title": orthanc.aet,
                "host": "127.0.0.1",
                "port": orthanc.dicom_port,
                "timeout": 2,
            }
        },
        delivery={"backoff_initial": BACKOFF_INITIAL, "backoff_max": BACKOFF_MAX, "max_attempts": None},
        quiet_period={"default": 0.3},
    ).start()
    try:
        first = write_series(template, tmp_path / "in" / "first", pydicom.uid.generate_uid(), 1, "dx")
        assert storescu(first, "127.0.0.1", node.port, "AINODE").returncode == 0
        orthanc.wait_for_instances(modality="SR", count=1, timeout=60)
        orthanc.stop()  # PACS maintenance

        backlog = [
            p
            for i in range(BACKLOG)
            for p in write_series(template, tmp_path / "in" / f"b{i}", pydicom.uid.generate_uid(), 1, "dx")
        ]
        assert storescu(backlog, "127.0.0.1", node.port, "AINODE").returncode == 0
        node.wait_jobs(1 + BACKLOG)
        deadline = time.monotonic() + 90
        # Every waiting result has failed more often than the old limit allowed, and is still waiting.
        while node.delivery_attempts() < 1 + BACKLOG * (OLD_ATTEMPT_LIMIT + 2):
            assert time.monotonic() < deadline, node.log()
            time.sleep(0.2)
        assert node.deliveries(DeliveryState.DEAD) == 0
        assert node.deliveries(DeliveryState.PENDING) == BACKLOG

        orthanc._set_ports(orthanc.http_port, orthanc.dicom_port)  # the same address as before, a fresh client
        orthanc.start()
        back = time.monotonic()
        srs = orthanc.wait_for_instances(modality="SR", count=1 + BACKLOG, timeout=60)
        took = time.monotonic() - back
        deadline = time.monotonic() + 30
        while node.deliveries(DeliveryState.DONE) < 1 + BACKLOG:
            assert time.monotonic() < deadline, node.log()
            time.sleep(0.1)
    finally:
        node.stop()
        orthanc.stop()
    log = node.log_path.read_text()
    assert len({sr.sop_instance_uid for sr in srs}) == 1 + BACKLOG
    assert {sr.study_instance_uid for sr in srs} == {str(pydicom.dcmread(p).StudyInstanceUID) for p in first + backlog}
    assert node.deliveries(DeliveryState.DEAD) == 0
    assert "dead letter" not in log
    assert took < BACKOFF_MAX + 10, took  # the next retry found Orthanc back
    assert "Traceback" not in log
