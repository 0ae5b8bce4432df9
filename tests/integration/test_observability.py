"""Watching a running node: /healthz, /readyz, /metrics, ``ainode audit``, structured logs, no patient data.

A real ``ainode serve`` process with its HTTP endpoint on a free port;
DCMTK's ``storescu`` sends a chest radiograph of a patient with an unusual
name, ID and birth date, plus one image without pixel data (its job fails),
one instance with an invalid Study Instance UID (refused 0xC210) and one
association from an unknown AE title (rejected). Results go to a real Orthanc
and to a destination that is down (a dead letter). Then the metrics, the
audit log and the node's log are checked as an administrator would.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import time
import warnings
from copy import deepcopy
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from node.db import DeliveryState
from tests.helpers import OrthancServer, free_port, storescu
from tests.integration.nodeproc import NodeProcess
from tests.node.test_http import METRICS_AUTH, Samples, get, metrics_token, parse_metrics, sample

PATIENT = {"PatientName": "Quaxwellby^Zebulonia^Ignatz", "PatientID": "PHI7Q3X9ZK", "PatientBirthDate": "19230417"}
# Every way these could show up in a log line.
PHI_NEEDLES = ["Quaxwellby", "Zebulonia", "Ignatz", "PHI7Q3X9ZK", "19230417", "1923-04-17", "17.04.1923"]


def _wait(predicate, timeout: float, what: str, node: NodeProcess) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{node.log()}"
        time.sleep(0.1)


def _patient_study(source: Path, folder: Path) -> tuple[str, list[Path], Path]:
    """The study UID; a radiograph, an image without pixel data and one whose birth date is not a DICOM date
    (its results leave the birth date out and the job says so, without the value), all of one study; an
    instance with a bad study UID.
    """
    ds = pydicom.dcmread(source)
    for keyword, value in PATIENT.items():
        setattr(ds, keyword, value)
    study = generate_uid()
    paths = []
    for name in ("frontal", "no-pixels", "bad-birth-date", "bad-uid"):
        copy = deepcopy(ds)  # Dataset.copy() is shallow: deleting PixelData would delete it from all
        copy.StudyInstanceUID = study if name != "bad-uid" else "1.2.3.x/../4"
        copy.SeriesInstanceUID = generate_uid()
        copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        if name == "no-pixels":
            del copy.PixelData
        if name == "bad-birth-date":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # invalid on purpose
                copy.PatientBirthDate = "1923-04-17"
        path = folder / f"{name}.dcm"
        copy.save_as(path, enforce_file_format=True)
        paths.append(path)
    return study, paths[:3], paths[3]


def _metrics(base: str) -> Samples:
    code, _, body = get(base + "/metrics", METRICS_AUTH)  # as Prometheus scrapes: with its bearer token
    assert code == 200
    return parse_metrics(body)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_metrics_audit_and_logs_of_a_study_through_the_node(
    tmp_path: Path, orthanc: OrthancServer, rg1_uncr: Path, log_format: str
) -> None:
    study, good_files, bad_uid = _patient_study(rg1_uncr, tmp_path)
    frontal = good_files[0]
    http_port = free_port()
    node = NodeProcess(
        tmp_path / "node",
        destinations={
            "orthanc": {"type": "dicom", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port},
            "down": {"type": "dicom", "ae_title": "NOBODY", "host": "127.0.0.1", "port": free_port(), "timeout": 2},
        },
        delivery={"max_attempts": 2, "backoff_initial": 0.1, "backoff_max": 0.2},
        http_port=http_port,
        http_tokens=metrics_token(tmp_path),
        log_format=log_format,
    ).start()
    base = f"http://127.0.0.1:{http_port}"
    try:
        assert get(base + "/healthz")[::2] == (200, "ok\n")
        assert get(base + "/readyz")[0] == 200
        assert get(base + "/metrics")[0] == 401  # a login by default
        before = _metrics(base)
        assert sample(before, "ainode_instances_received_total") == 0
        assert sample(before, "ainode_dead_letters") == 0

        assert storescu(good_files, "127.0.0.1", node.port, "AINODE").returncode == 0
        storescu([bad_uid], "127.0.0.1", node.port, "AINODE")  # answered 0xC210
        assert storescu([frontal], "127.0.0.1", node.port, "AINODE", "INTRUDER").returncode != 0
        jobs = node.wait_jobs(3)
        srs = orthanc.wait_for_instances(study_uid=study, modality="SR", count=2, timeout=60)
        _wait(lambda: node.deliveries(DeliveryState.DEAD) == 2, 30, "two dead letters", node)

        after = _metrics(base)
        assert sample(after, "ainode_instances_received_total") == 3
        assert sample(after, "ainode_instances_rejected_total", status="0xC210", reason="Error: cannot understand") == 1
        assert sample(after, "ainode_associations_total", outcome="accepted") == 2
        assert sample(after, "ainode_associations_total", outcome="released") == 2
        assert sample(after, "ainode_associations_total", outcome="rejected") == 1
        assert sample(after, "ainode_jobs", state="done", pipeline="cxr") == 2
        assert sample(after, "ainode_jobs", state="failed", pipeline="cxr") == 1
        assert sample(after, "ainode_analysis_seconds_count", pipeline="cxr") == 3
        assert 0 < sample(after, "ainode_analysis_seconds_sum", pipeline="cxr") < 60
        assert sample(after, "ainode_deliveries_total", destination="orthanc", outcome="delivered") == 2
        assert sample(after, "ainode_delivery_seconds_count", destination="orthanc") == 2
        assert sample(after, "ainode_deliveries_total", destination="down", outcome="failed") == 2
        assert sample(after, "ainode_deliveries_total", destination="down", outcome="dead") == 2
        assert sample(after, "ainode_dead_letters") == 2
        assert sample(after, "ainode_spool_instances") == 3
        assert sample(after, "ainode_spool_bytes") > frontal.stat().st_size
        assert sample(after, "ainode_data_dir_free_bytes") > 0

        audit = node.cli("audit")
        assert audit.returncode == 0, audit.stderr
        lines = audit.stdout.splitlines()
        done_jobs = [j for j in jobs if j.state.value == "done"]
        done_job = done_jobs[0]
        failed_jobs = [j for j in jobs if j.state.value == "failed"]
        # The invalid birth date was left out of the results; the job names the attribute, never its value.
        [dropped] = [j for j in done_jobs if "PatientBirthDate" in (j.summary or "")]
        assert not [n for n in PHI_NEEDLES if n in (dropped.summary or "")], dropped.summary

        def row(*words: str) -> str:
            found = [line for line in lines if all(w in line for w in words)]
            assert len(found) == 1, f"expected one audit row with {words}:\n{audit.stdout}"
            return found[0]

        assert re.search(r"\b3\b", row("received", "STORESCU", "127.0.0.1", study))
        assert "1 refused" in row("received", "STORESCU", "0 instance(s) stored")
        assert "calling-AE-title-not-recognised" in row("association_rejected", "INTRUDER", "127.0.0.1")
        for done in done_jobs:
            assert "cxr-view-filter 1.1.0" in row("job_done", study, "cxr", f" {done.id} ")
        for failed in failed_jobs:
            row("job_failed", study, "cxr", f" {failed.id} ")
        for sr in srs:
            row("delivered", "orthanc", sr.sop_instance_uid, study)
            row("delivery_failed", "down", sr.sop_instance_uid)
            row("dead_letter", "down", sr.sop_instance_uid)

        only_received = node.cli("audit", "--study", study, "--kind", "received").stdout.splitlines()
        assert len(only_received) == 3 and "received" in only_received[2]  # headers, rule, one row
        assert len(node.cli("audit", "--since", "2999-01-01T00:00").stdout.splitlines()) == 2
        since_start = node.cli("audit", "--since", "2000-01-01T00:00", "--kind", "dead_letter", "--limit", "5")
        assert "dead_letter" in since_start.stdout and "job_done" not in since_start.stdout
        bad = node.cli("audit", "--since", "yesterday")
        assert bad.returncode == 2 and "2026-11-22T10:00" in bad.stderr and "Traceback" not in bad.stderr
        assert node.cli("deliveries", "retry").returncode == 0
        assert "2 dead letter(s) queued again by hand" in node.cli("audit", "--kind", "retried").stdout

        for command in (("audit",), ("jobs",), ("deliveries",)):
            output = node.cli(*command).stdout
            assert not [n for n in PHI_NEEDLES if n.lower() in output.lower()], command
    finally:
        node.stop()

    log_text = node.log_path.read_text()
    # The log did talk about this study (else the search below proves nothing) ...
    assert study in log_text and all(sr.sop_instance_uid in log_text for sr in srs)
    # ... and never named the patient.
    leaks = [line for line in log_text.splitlines() if any(n.lower() in line.lower() for n in PHI_NEEDLES)]
    assert not leaks, "patient data in the node's log:\n" + "\n".join(leaks)

    if log_format == "json":
        entries = [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]
        assert entries and all(
            {"time", "level", "logger", "message", "job", "study", "series"} <= set(e) for e in entries
        )
        about_jobs = [e for e in entries if e["logger"] == "ainode.executor"]
        assert {e["job"] for e in about_jobs} == {j.id for j in jobs}
        assert all(e["study"] == study and e["series"] for e in about_jobs)
        delivery_lines = [e for e in entries if e["logger"] == "ainode.dispatcher"]
        assert any("delivered" in e["message"] for e in delivery_lines)
        assert all(e["job"] in {j.id for j in done_jobs} and e["study"] == study for e in delivery_lines)
    else:
        done_line = next(line for line in log_text.splitlines() if f"job {done_job.id} " in line and "done" in line)
        assert f"[job={done_job.id} study={study} series={done_job.series_uid}]" in done_line
        delivered = next(line for line in log_text.splitlines() if "delivered" in line and "orthanc" in line)
        assert any(f"[job={j.id} study={study}" in delivered for j in done_jobs)


def test_data_directory_and_its_files_are_for_the_owner_only(
    tmp_path: Path, orthanc: OrthancServer, rg1_uncr: Path
) -> None:
    node = NodeProcess(
        tmp_path / "node",
        destinations={
            "orthanc": {"type": "dicom", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}
        },
        http_port=free_port(),
    )
    old_umask = os.umask(0o022)  # what a service usually runs with; the node must not rely on a stricter one
    try:
        node.start()
        assert storescu([rg1_uncr], "127.0.0.1", node.port, "AINODE").returncode == 0
        study = str(pydicom.dcmread(rg1_uncr, stop_before_pixels=True).StudyInstanceUID)
        orthanc.wait_for_instances(study_uid=study, modality="SR", timeout=60)
        data = node.data_dir
        files = [p for p in data.rglob("*") if p.is_file()]
        names = {p.name for p in files}
        assert {"ainode.db", "ainode.db-wal"} <= names, names
        assert any(p.suffix == ".dcm" and "spool" in p.parts for p in files)
        assert any(p.suffix == ".dcm" and "outbox" in p.parts for p in files)
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        readable = {
            str(p.relative_to(data)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files if p.stat().st_mode & 0o077
        }
        assert not readable, f"files open to group or others: {readable}"
        if os.geteuid() == 0:
            # What counts: another local account cannot list the folder nor read an instance.
            spool_file = next(p for p in files if "spool" in p.parts)
            for command in (["ls", str(data)], ["cat", str(spool_file)]):
                other = subprocess.run(["runuser", "-u", "nobody", "--", *command], capture_output=True, text=True)
                assert other.returncode != 0 and "Permission denied" in other.stderr, (command, other)
    finally:
        os.umask(old_umask)
        node.stop()


def test_a_taken_http_port_stops_start_up_with_one_line(tmp_path: Path) -> None:
    # Issue 14: a node running on without its monitoring is not what was configured; the fix is named.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = NodeProcess(tmp_path / "node", http_port=port)
        with pytest.raises(RuntimeError, match="exited with 2"):
            node.start()
    log = node.log_path.read_text()
    assert f"ainode: error: HTTP port 127.0.0.1:{port} is already in use" in log
    assert "http_enabled: false" in log and "Traceback" not in log
