"""Destination down for long: many results to one PACS back off, become dead letters, are listed and retried.

``test_operations.py`` covers one dead letter; this one sends several
results to the same unreachable destination and measures the back-off
spacing between attempts from the node's log (``backoff_initial * 2**(n-1)``
capped at ``backoff_max``, README "What happens to a study"), then brings a
real Orthanc up on the destination's port and retries them all by hand.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from datetime import datetime
from pathlib import Path

import pydicom

from node.db import DeliveryState
from tests.helpers import OrthancServer, storescu
from tests.integration.nodeproc import NodeProcess
from tests.integration.soakkit import small_radiograph_template, write_series

RESULTS, MAX_ATTEMPTS, BACKOFF_INITIAL, BACKOFF_MAX = 5, 5, 0.3, 1.2
_FAILED = re.compile(r"^(\S+ \S+) .*delivery of (\S+) to pacs failed \(attempt (\d+)\)")


class RefusingPeer(threading.Thread):
    """A TCP listener that closes every connection at once: a PACS whose DICOM service is down."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_server(("127.0.0.1", port))
        self.sock.settimeout(0.2)
        self.connections = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(5)
        self.sock.close()


def _attempt_times(log: str) -> dict[str, list[float]]:
    """SOP Instance UID -> times (s) of its failed attempts, from the dispatcher's log lines."""
    times: dict[str, list[float]] = {}
    for line in log.splitlines():
        match = _FAILED.match(line)
        if match:
            stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            times.setdefault(match.group(2), []).append(stamp)
    return times


def test_many_results_back_off_become_dead_letters_and_are_delivered_by_retry(tmp_path: Path) -> None:
    orthanc = OrthancServer(tmp_path / "orthanc")  # ports chosen now, started only at the end
    peer = RefusingPeer(orthanc.dicom_port)
    peer.start()
    template = small_radiograph_template(tmp_path / "in")
    files = [
        p for _ in range(RESULTS) for p in write_series(template, tmp_path / "in", pydicom.uid.generate_uid(), 1, "dx")
    ]
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
        delivery={"max_attempts": MAX_ATTEMPTS, "backoff_initial": BACKOFF_INITIAL, "backoff_max": BACKOFF_MAX},
        quiet_period={"default": 0.3},
    ).start()
    try:
        assert storescu(files, "127.0.0.1", node.port, "AINODE").returncode == 0
        deadline = time.monotonic() + 60
        while node.deliveries(DeliveryState.DEAD) < RESULTS:
            assert time.monotonic() < deadline, node.log()
            time.sleep(0.2)
        peer.stop()
        listing = node.cli("deliveries", "--failed")
        attempts = _attempt_times(node.log_path.read_text())
        orthanc.start()
        try:
            retry = node.cli("deliveries", "retry")
            srs = orthanc.wait_for_instances(modality="SR", count=RESULTS, timeout=60)
        finally:
            orthanc.stop()
    finally:
        if peer.is_alive():
            peer.stop()
        node.stop()
    assert peer.connections >= MAX_ATTEMPTS  # the node did knock, and was turned away
    assert listing.returncode == 0 and listing.stdout.count("dead") >= RESULTS, listing.stdout
    assert "Traceback" not in listing.stdout + listing.stderr
    # Every result failed max_attempts - 1 times with a warning, then became a dead letter on the last.
    assert len(attempts) == RESULTS and all(len(t) == MAX_ATTEMPTS - 1 for t in attempts.values()), attempts
    for uid, times in attempts.items():
        for n, (earlier, later) in enumerate(zip(times, times[1:], strict=False), start=1):
            delay = min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** (n - 1))
            assert delay * 0.9 <= later - earlier <= delay + 1.5, (uid, n, later - earlier, delay)
    assert retry.returncode == 0 and f"{RESULTS} dead letter(s) queued" in retry.stdout, retry.stdout
    assert len({sr.sop_instance_uid for sr in srs}) == RESULTS
    assert {sr.study_instance_uid for sr in srs} == {str(pydicom.dcmread(p).StudyInstanceUID) for p in files}
    assert node.deliveries(DeliveryState.DONE) == RESULTS and node.deliveries(DeliveryState.DEAD) == 0
    assert "Traceback" not in node.log_path.read_text()
