"""The first hour with ainode (issue 14): sample studies, banner, help, tables, /readyz, secure defaults.

``ainode`` runs as a subprocess as a user runs it; a node receiving samples is
a real :class:`node.service.Node` on a loopback port; DCMTK's ``echoscu`` is
the outside peer that the shipped defaults must turn away.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from sqlalchemy import func, select

from node.db import Database, Delivery, DeliveryState, Instance, Job, JobState, Result
from node.preflight import exposure_warning
from node.service import Node
from node.settings import AllowedPeerSettings, Settings, TlsSettings, load_settings
from tests.helpers import echoscu, free_port
from tests.helpers.cli import ainode
from tests.node.test_http import get

REPO = Path(__file__).resolve().parents[2]
LONG_ERROR = "pixel data cannot be decoded: " + "the JPEG 2000 codestream ends early " * 12 + "END-OF-ERROR"


def _view_filter_only(tmp_path: Path) -> dict[str, Any]:
    models_yaml = tmp_path / "models.yaml"
    models_yaml.write_text("models:\n  - manifest: cxr-view-filter/model.json\n")
    return {
        "models_file": str(models_yaml),
        "cxr": {"finding_model": None, "four_class_models": [], "detector_model": None},
    }


@pytest.fixture
def config(tmp_path: Path) -> Path:
    cfg = tmp_path / "node.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "destinations": {},
                "default_destinations": [],
                **_view_filter_only(tmp_path),
            }
        )
    )
    return cfg


# -- ainode sample ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "pipeline", "least"), [("cxr", "cxr", 1), ("ct-pe", "ct_pe", 30), ("ct-lumbar", "ct_lumbar", 20)]
)
def test_sample_writes_a_study_that_routes_to_its_pipeline(
    tmp_path: Path, config: Path, kind: str, pipeline: str, least: int
) -> None:
    out = tmp_path / "sample"
    run = ainode("sample", kind, "--out", str(out), config=config)
    assert run.returncode == 0, run.stderr
    files = sorted(out.glob("*.dcm"))
    assert len(files) >= least
    study = {str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files}
    assert len(study) == 1 and f"study {study.pop()}" in run.stdout
    assert all(str(f) in run.stdout for f in files)
    route = ainode("route", str(out), config=config)
    assert route.returncode == 0, route.stdout + route.stderr
    lines = [line for line in route.stdout.splitlines() if ".dcm" in line]
    assert len(lines) == len(files) and all(line.split()[1] == pipeline for line in lines), route.stdout


def test_sample_imports_no_training_code_nor_tensorflow_or_torch(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from node.sample import write_sample\n"
        f"for kind in ('cxr', 'ct-pe', 'ct-lumbar'): write_sample(kind, Path({str(tmp_path)!r}) / kind)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'torch', 'keras', 'ultralytics')"
        " or (m.startswith('training.') and not m.startswith('training.phantoms')))\n"
        "assert not bad, bad"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    """A node with the shipped allowed_peers (only ORTHANC from 127.0.0.1), on a loopback port."""
    settings = Settings(
        port=0,
        host="127.0.0.1",
        data_dir=tmp_path / "node-data",
        http_enabled=False,
        destinations={},
        default_destinations=[],
        **_view_filter_only(tmp_path),
    )
    assert settings.allowed_peers == [AllowedPeerSettings(ae_title="ORTHANC", host="127.0.0.1")]
    running = Node(settings)
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.mark.integration  # runs the ainode CLI against a node (seconds): not for the fast loop
def test_sample_send_reaches_a_node_with_the_shipped_defaults(tmp_path: Path, config: Path, node: Node) -> None:
    # The quick start: the node accepts its own AE title from this machine, the sample's default calling AE.
    run = ainode(
        "sample", "cxr", "--out", str(tmp_path / "s"), "--send", f"AINODE@127.0.0.1:{node.port}", config=config
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "CXR00001.dcm: status 0x0000" in run.stdout and "sent 1/1 to AINODE@127.0.0.1" in run.stdout
    with node.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 1
    refused = ainode(
        "sample",
        "cxr",
        "--out",
        str(tmp_path / "t"),
        "--send",
        f"AINODE@127.0.0.1:{node.port}",
        "--calling-ae",
        "STORESCU",
        config=config,
    )
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "C-STORE to AINODE@127.0.0.1" in refused.stdout and "allowed" in refused.stdout, refused.stdout


def test_shipped_defaults_admit_only_orthanc_on_loopback(node: Node) -> None:
    assert echoscu("127.0.0.1", node.port, "AINODE", "STORESCU").returncode != 0  # anyone with DCMTK: refused
    assert echoscu("127.0.0.1", node.port, "AINODE", "ORTHANC").returncode == 0
    shipped = load_settings(REPO / "config" / "node.yaml", environ={})
    assert (
        shipped.allowed_peers == Settings().allowed_peers == [AllowedPeerSettings(ae_title="ORTHANC", host="127.0.0.1")]
    )


def test_exposure_warning() -> None:
    assert exposure_warning(Settings()) is None  # all interfaces, but the only peer is pinned to loopback
    open_peer = exposure_warning(Settings(allowed_peers=[{"ae_title": "PACS"}]), 11112)
    assert open_peer is not None and "PACS@any address" in open_peer and "TLS is off" in open_peer
    assert "0.0.0.0:11112" in open_peer and "host:" in open_peer
    assert exposure_warning(Settings(allowed_peers=[{"ae_title": "PACS", "host": "10.0.0.5"}])) is not None
    assert exposure_warning(Settings(host="::", allowed_peers=[{"ae_title": "PACS", "host": "::1"}])) is None
    assert exposure_warning(Settings(host="10.0.0.1", allowed_peers=[{"ae_title": "PACS"}])) is None
    tls = TlsSettings(enabled=True, certificate=Path("c.pem"), private_key=Path("k.pem"))
    assert exposure_warning(Settings(port=None, tls=tls, allowed_peers=[{"ae_title": "PACS"}])) is None
    both = exposure_warning(Settings(tls=tls, allowed_peers=[{"ae_title": "PACS"}]))
    assert both is not None and "plain port is open besides TLS" in both


# -- banner, version, help -----------------------------------------------------------------------


@pytest.mark.integration  # runs ainode serve as a process, as tests/integration does: not for the fast loop
def test_banner_names_version_pipelines_models_destinations_and_data(tmp_path: Path) -> None:
    port, closed = free_port(), free_port()
    cfg = tmp_path / "node.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "host": "0.0.0.0",
                "port": port,
                "http_port": 0,
                "data_dir": str(tmp_path / "data"),
                "allowed_peers": [{"ae_title": "PACS"}],
                # The node itself answers C-ECHO from its own AE title on loopback; nothing listens on 'closed'.
                "destinations": {
                    "itself": {"type": "dicom", "ae_title": "AINODE", "host": "127.0.0.1", "port": port},
                    "down": {"type": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": closed},
                },
                "default_destinations": [],
                **_view_filter_only(tmp_path),
            }
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "node.cli", "serve"],
        cwd=REPO,
        text=True,
        env={"PATH": os.environ.get("PATH", ""), "AINODE_CONFIG": str(cfg)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        while not (
            any("destination itself: C-ECHO" in x for x in lines)
            and any("destination down: C-ECHO" in x for x in lines)
        ):
            line = proc.stdout.readline()
            assert line, "serve stopped before both C-ECHO results"
            lines.append(line.rstrip())
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    out = "\n".join(lines)
    version = ainode("--version", config=cfg).stdout.split()[-1]
    assert lines[0].startswith(f"ainode {version}: AINODE listening on 0.0.0.0 port {port}; HTTP on 127.0.0.1:")
    assert "pipeline cxr: enabled: cxr-view-filter 1.1.0 (real weights; licence: Weights: non-commercial" in out
    assert "pipeline ct_pe: DISABLED (pipeline 'ct_pe' disabled: " in out
    assert f"destination itself: C-ECHO AINODE@127.0.0.1:{port}: status 0x0000 (success)" in out
    assert f"destination down: C-ECHO PACS@127.0.0.1:{closed} failed" in out and "retried" in out
    assert f"data directory {tmp_path / 'data'}: " in out and " free, spool 0 instance(s)" in out
    # The same lines in the log, the failed echo as a warning; and the exposure warning (PACS from anywhere).
    assert "INFO    ainode.banner" in err and "WARNING ainode.banner" in err
    assert "WARNING ainode.service" in err and "PACS@any address" in err
    assert proc.returncode == 0 and "Traceback" not in err


@pytest.mark.integration  # runs the ainode CLI once per command (tens of seconds): not for the fast loop
def test_version_and_help(config: Path) -> None:
    from importlib.metadata import version

    run = ainode("--version", config=config)
    assert run.returncode == 0 and run.stdout.strip() == f"ainode {version('ainode')}"
    for command in ("serve", "analyze", "route", "echo", "jobs", "deliveries", "audit", "models", "sample"):
        help_text = ainode(command, "--help", config=config).stdout
        assert "AINODE_CONFIG" in help_text and "AINODE_<KEY>" in help_text and "config/node.yaml" in help_text, command


# -- jobs and deliveries ---------------------------------------------------------------------------


@pytest.fixture
def recorded(tmp_path: Path, config: Path) -> dict[str, Any]:
    """A database as the node leaves it: a failed job with a long error, a job with a dead-letter result."""
    (tmp_path / "data").mkdir()
    db = Database(f"sqlite:///{tmp_path / 'data' / 'ainode.db'}")
    db.create_schema()
    study = "1.2.826.0.1.3680043.8.498.1234567890123456789012345678901234567890"
    with db.session() as session:
        failed = Job(
            series_uid=study + ".1",
            study_uid=study,
            pipeline="cxr",
            state=JobState.FAILED,
            attempts=1,
            error=LONG_ERROR,
        )
        done = Job(
            series_uid=study + ".2",
            study_uid=study,
            pipeline="cxr",
            state=JobState.DONE,
            attempts=1,
            summary="frontal; effusion 0.91",
        )
        session.add_all([failed, done])
        session.flush()
        result = Result(
            job_id=done.id,
            series_uid=study + ".2",
            study_uid=study,
            sop_uid=study + ".9",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34",
            kind="SR",
            path="/outbox/sr.dcm",
        )
        session.add(result)
        session.flush()
        delivery = Delivery(
            result_id=result.id,
            destination="pacs",
            state=DeliveryState.DEAD,
            attempts=8,
            last_error=LONG_ERROR.replace("pixel data", "association"),
        )
        session.add(delivery)
        session.flush()
        ids = {"failed": failed.id, "done": done.id, "delivery": delivery.id, "study": study}
    db.dispose()
    return ids


@pytest.mark.integration  # runs the ainode CLI nine times (tens of seconds): not for the fast loop
def test_jobs_and_deliveries_fit_the_terminal_and_show_prints_everything(
    config: Path, recorded: dict[str, Any]
) -> None:
    jobs = ainode("jobs", config=config, env={"COLUMNS": "100"})
    assert jobs.returncode == 0, jobs.stderr
    table = jobs.stdout.splitlines()
    assert all(len(line) <= 100 for line in table), jobs.stdout
    assert table[0].split()[:6] == ["id", "state", "priority", "pipeline", "created", "finished"]
    assert "study" in table[0] and "…" in jobs.stdout and "END-OF-ERROR" not in jobs.stdout
    assert "'ainode jobs show ID' shows all" in jobs.stdout
    piped = ainode("jobs", config=config)  # no terminal, no COLUMNS: nothing is cut
    assert LONG_ERROR in piped.stdout and recorded["study"] in piped.stdout and "…" not in piped.stdout
    shown = ainode("jobs", "show", str(recorded["failed"]), config=config)
    assert shown.returncode == 0 and LONG_ERROR in shown.stdout and recorded["study"] in shown.stdout
    assert "failed" in shown.stdout and "created" in shown.stdout
    shown = ainode("jobs", "show", str(recorded["done"]), config=config)
    assert f"SR {recorded['study']}.9 -> pacs: dead (delivery {recorded['delivery']})" in shown.stdout

    listing = ainode("deliveries", "--failed", config=config, env={"COLUMNS": "90"})
    assert listing.returncode == 0 and all(len(line) <= 90 for line in listing.stdout.splitlines())
    assert "dead" in listing.stdout and "pacs" in listing.stdout and "…" in listing.stdout
    assert "delivered" in ainode("deliveries", config=config).stdout.splitlines()[0]
    shown = ainode("deliveries", "show", str(recorded["delivery"]), config=config)
    assert shown.returncode == 0 and "association cannot be decoded" in shown.stdout
    assert "END-OF-ERROR" in shown.stdout and f"{recorded['study']}.9" in shown.stdout

    missing = ainode("jobs", "show", "999", config=config)
    assert missing.returncode == 2 and missing.stderr.strip() == "ainode: error: no job 999 (see 'ainode jobs')"


# -- /readyz -----------------------------------------------------------------------------------------


def test_readyz_is_503_while_no_pipeline_is_loaded(tmp_path: Path) -> None:
    empty = tmp_path / "models"
    empty.mkdir()
    settings = Settings(
        port=0,
        host="127.0.0.1",
        data_dir=tmp_path / "data",
        http_port=0,
        destinations={},
        default_destinations=[],
        models_dir=empty,
    )
    node = Node(settings)
    node.start()
    http = node.http_server()
    http.start()
    try:
        code, _, body = get(f"http://127.0.0.1:{http.port}/readyz")
    finally:
        http.stop()
        node.stop()
    answer = json.loads(body)
    assert code == 503 and answer["status"] == "not ready"
    reason = answer["checks"]["pipelines"]
    assert reason.startswith("no pipeline loaded: pipeline ")
    assert all(f"pipeline {name!r} disabled: model" in reason for name in ("cxr", "ct_pe", "ct_lumbar")), reason
    assert answer["checks"]["dicom"] == answer["checks"]["database"] == answer["checks"]["data_dir"] == "ok"


def test_http_exposure_warning() -> None:
    from node.preflight import http_exposure_warning

    assert http_exposure_warning(Settings()) is None  # loopback: nothing to say
    assert http_exposure_warning(Settings(http_host="10.0.0.5", http_enabled=False)) is None
    plain = http_exposure_warning(Settings(http_host="0.0.0.0"))
    assert plain is not None and "no http_tls" in plain and "/metrics" not in plain
    both = http_exposure_warning(Settings(http_host="0.0.0.0", http_metrics_auth=False))
    assert both is not None and "/metrics is open" in both and "http_host: 127.0.0.1" in both
    tls = {"certificate": "/etc/ainode/http.crt", "private_key": "/etc/ainode/http.key"}
    assert http_exposure_warning(Settings(http_host="::", http_tls=tls)) is None
    assert "/metrics is open" in str(
        http_exposure_warning(Settings(http_host="::", http_tls=tls, http_metrics_auth=False))
    )
