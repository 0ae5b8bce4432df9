"""The HTTP endpoint, metrics exposition, audit of associations and structured logs, in one process.

Real sockets on loopback: a started :class:`node.service.Node` with its HTTP
server on a free port, C-STOREs by the node's own SCU, a real PostgreSQL that
is stopped under the node. The whole ``ainode serve`` process is exercised in
``tests/integration/test_observability.py``.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom import Dataset
from pydicom.uid import generate_uid

from dimse.scu import store_files
from node.audit import query, record
from node.db import AuditKind, Database
from node.logs import ContextFilter, JsonFormatter, TextFormatter, bind_log_context, log_context, patient_values
from node.service import Node
from node.settings import Settings
from tests.helpers import PostgresServer

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

#: An API token the tests' Prometheus sends for /metrics (``http_metrics_auth`` is on by default).
METRICS_TOKEN = "pr0metheus-scrape-token-0123456789"
METRICS_AUTH = {"Authorization": f"Bearer {METRICS_TOKEN}"}


def metrics_token(folder: Path) -> list[dict[str, Any]]:
    """``http_tokens`` with :data:`METRICS_TOKEN` in a file under ``folder``, as a site gives Prometheus one."""
    path = folder / "prometheus.token"
    path.write_text(METRICS_TOKEN + "\n")
    return [{"name": "prometheus", "token_file": str(path)}]


def parse_metrics(text: str) -> Samples:
    """The samples of a text exposition, parsed by prometheus-client's parser; no sample twice."""
    samples: Samples = {}
    assert text.endswith("\n"), "the exposition must end with a newline"
    for family in text_string_to_metric_families(text):
        for name, labels, value, *_ in family.samples:
            key = (name, frozenset(labels.items()))
            assert key not in samples, f"duplicate sample {name}{labels}"
            samples[key] = value
    return samples


def sample(samples: Samples, name: str, **labels: str) -> float:
    """The value of one sample (0 when absent, as Prometheus treats a counter not yet seen)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


# -- a running node ------------------------------------------------------------------------------


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(
        port=0,
        host="127.0.0.1",
        data_dir=tmp_path / "data",
        http_port=0,
        destinations={},
        default_destinations=[],
        allowed_peers=[{"ae_title": "STORESCU"}],
        **overrides,
    )


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Node, str]]:
    node = Node(_settings(tmp_path, http_tokens=metrics_token(tmp_path)))
    node.start()
    http = node.http_server()
    http.start()
    try:
        yield node, f"http://127.0.0.1:{http.port}"
    finally:
        http.stop()
        node.stop()


def test_healthz_readyz_and_metrics_answer(running: tuple[Node, str]) -> None:
    node, base = running
    assert get(base + "/healthz")[::2] == (200, "ok\n")
    code, content_type, body = get(base + "/readyz")
    assert (code, content_type) == (200, "application/json")
    assert json.loads(body) == {
        "status": "ready",
        "checks": {"dicom": "ok", "database": "ok", "data_dir": "ok", "pipelines": "ok"},
    }
    code, content_type, body = get(base + "/metrics", METRICS_AUTH)
    assert code == 200 and content_type == "text/plain; version=0.0.4; charset=utf-8"
    samples = parse_metrics(body)
    assert sample(samples, "ainode_database_up") == 1
    assert sample(samples, "ainode_data_dir_free_bytes") > 0
    assert sample(samples, "ainode_instances_received_total") == 0
    assert get(base + "/nothing", METRICS_AUTH)[0] == 404  # with credentials past the admin guard: not found


def test_readyz_names_the_data_directory_and_the_dicom_port_when_they_fail(running: tuple[Node, str]) -> None:
    node, base = running
    shutil.rmtree(node.settings.tmp_dir)  # as when the data volume is gone
    code, _, body = get(base + "/readyz")
    answer = json.loads(body)
    assert code == 503 and answer["status"] == "not ready"
    assert answer["checks"]["data_dir"].startswith("data directory not writable")
    assert answer["checks"]["dicom"] == "ok" and answer["checks"]["database"] == "ok"
    node.settings.tmp_dir.mkdir(mode=0o700)
    assert get(base + "/readyz")[0] == 200
    node.scp.stop()
    code, _, body = get(base + "/readyz")
    assert code == 503 and "not accepting connections" in json.loads(body)["checks"]["dicom"]


def test_readyz_and_metrics_when_postgresql_goes_away(tmp_path: Path) -> None:
    server = PostgresServer().start()
    node = Node(_settings(tmp_path, database_url=server.url, http_tokens=metrics_token(tmp_path)))
    try:
        node.start()
        http = node.http_server()
        http.start()
        base = f"http://127.0.0.1:{http.port}"
        assert get(base + "/readyz")[0] == 200
        server.stop()
        code, _, body = get(base + "/readyz")
        assert code == 503 and json.loads(body)["checks"]["database"].startswith("database not answering")
        code, _, body = get(base + "/metrics", METRICS_AUTH)  # still served: counters need no database
        assert code == 200 and sample(parse_metrics(body), "ainode_database_up") == 0
        http.stop()
    finally:
        server.stop()
        node.stop()


def _copy(source: Path, folder: Path, study_uid: str) -> Path:
    ds = pydicom.dcmread(source)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_one_received_audit_row_per_association_and_study(
    running: tuple[Node, str], rg1_uncr: Path, tmp_path: Path
) -> None:
    node, base = running
    study_a, study_b = generate_uid(), generate_uid()
    files = [_copy(rg1_uncr, tmp_path, study_a) for _ in range(3)] + [_copy(rg1_uncr, tmp_path, study_b)]
    outcomes = store_files(files, host="127.0.0.1", port=node.port, called_ae="AINODE", calling_ae="STORESCU")
    assert [o.status for o in outcomes] == [0, 0, 0, 0]
    # The audit row is written as the association is released, before the release is answered.
    rows = query(node.db, kinds=[AuditKind.RECEIVED.value])
    assert sorted((r.study_uid, r.instance_count, r.calling_ae, r.peer_address) for r in rows) == sorted(
        [(study_a, 3, "STORESCU", "127.0.0.1"), (study_b, 1, "STORESCU", "127.0.0.1")]
    )
    assert all("association released" in (r.message or "") for r in rows)
    samples = parse_metrics(get(base + "/metrics", METRICS_AUTH)[2])
    assert sample(samples, "ainode_instances_received_total") == 4
    assert sample(samples, "ainode_associations_total", outcome="accepted") == 1
    assert sample(samples, "ainode_associations_total", outcome="released") == 1
    assert sample(samples, "ainode_spool_instances") == 4


# -- structured logs ------------------------------------------------------------------------------


def _logger(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(ContextFilter())
    logger = logging.getLogger(f"ainode.test.{id(stream)}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return logger, stream


def test_json_lines_carry_the_job_and_study_of_their_own_thread() -> None:
    logger, stream = _logger(JsonFormatter())

    def work(job: int) -> None:
        with log_context(job=job, study=f"1.2.{job}"):
            for i in range(200):
                with log_context(series=f"1.2.{job}.{i}"):
                    logger.info("step %d", i)
        logger.info("outside")

    threads = [threading.Thread(target=work, args=(job,)) for job in (1, 2, 3, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 4 * 201
    inside = [e for e in lines if e["message"] != "outside"]
    assert all(set(e) >= {"time", "level", "logger", "message", "job", "study", "series"} for e in lines)
    assert all(
        e["study"] == f"1.2.{e['job']}" and e["series"] == f"1.2.{e['job']}.{e['message'].split()[1]}" for e in inside
    )
    assert all(e["job"] is None and e["study"] is None for e in lines if e["message"] == "outside")


def test_text_lines_append_the_context_and_bound_values_end_with_their_block() -> None:
    logger, stream = _logger(TextFormatter())
    with log_context():
        bind_log_context(study="1.2.3", series="1.2.3.4")
        logger.warning("refused")
    logger.warning("after")
    first, second = stream.getvalue().splitlines()
    assert first.endswith("refused [study=1.2.3 series=1.2.3.4]")
    assert second.endswith("after")


def test_patient_values_bound_to_a_job_are_redacted_from_messages_and_tracebacks() -> None:
    ds = Dataset()
    ds.PatientName = "Quaxwellby^Zebulonia"
    ds.PatientID = "PHI7Q3X9ZK"
    ds.PatientBirthDate = "19230417"
    values = patient_values(ds)
    assert {"Quaxwellby^Zebulonia", "Quaxwellby", "Zebulonia", "PHI7Q3X9ZK", "19230417", "1923-04-17"} <= set(values)
    logger, stream = _logger(JsonFormatter())
    with log_context(job=9, study="1.2.9", redact=values):
        logger.warning("Invalid value for VR PN: %r", "quaxwellby^zebulonia")
        try:
            raise ValueError("Unable to convert '1923-04-17' to 'DA' object (patient PHI7Q3X9ZK)")
        except ValueError:
            logger.exception("job failed")
    logger.warning("after the job: %s", "Zebulonia")  # outside the job nothing is known to redact
    first, second, third = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "Invalid value for VR PN: '<patient data>'"
    assert "<patient data>" in second["exception"] and "Unable to convert '<patient data>'" in second["exception"]
    assert not any(v.lower() in json.dumps([first, second]).lower() for v in values)
    assert third["message"] == "after the job: Zebulonia" and third["job"] is None


def test_audit_query_filters_by_time_in_any_offset_study_and_kind(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'audit.db'}")
    db.create_schema()
    start = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    for minute, kind, study in ((0, "received", "1.2.1"), (10, "job_done", "1.2.1"), (20, "received", "1.2.2")):
        record(db, kind, time=start + timedelta(minutes=minute), study_uid=study)
    paris = timezone(timedelta(hours=1))
    assert [e.study_uid for e in query(db, since=datetime(2026, 11, 22, 11, 5, tzinfo=paris))] == ["1.2.2", "1.2.1"]
    assert len(query(db, since=datetime(2026, 11, 22, 10, 5))) == 2  # naive means UTC
    assert [e.kind for e in query(db, study="1.2.1")] == [AuditKind.JOB_DONE, AuditKind.RECEIVED]
    assert [e.study_uid for e in query(db, kinds=["received"], limit=1)] == ["1.2.2"]
    db.dispose()
