"""What the admin pages and the CLI read (node.web.queries), on a database filled by the node's own code.

A study goes through the real receiver, assembler, executor and dispatcher:
one series is analysed and its SR delivered to one destination and refused
by another (a dead letter), another series fails with the patient's name in
the pipeline's error. Each query then says what the node did, and none of
what it returns carries the patient's name, ID or birth date.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from core import status
from node import dispatcher as dispatch
from node import executor as execution
from node.assembler import Assembler
from node.audit import ReceiveAudit
from node.db import Database
from node.errors import InputError
from node.fakes import FakeDestination
from node.receiver import Receiver
from node.router import load_routing, routing_tags
from node.settings import Settings
from node.spool import Outbox, Spool
from node.web import queries
from tests.node.test_flow import ROUTING, TinyPipeline, _instance

REPO = Path(__file__).resolve().parents[2]
#: The patient of the study: none of it may appear in what the queries return.
PHI = {"PatientName": "Doe^Jane", "PatientID": "PID-4711", "PatientBirthDate": "19230417"}
PHI_TEXTS = ("Doe", "Jane", "PID-4711", "19230417")


@dataclass
class Scenario:
    settings: Settings
    study: str
    done_job: int
    failed_job: int
    dead: int  # the delivery the PACS refused
    delivered: int  # the delivery the archive took
    pacs: FakeDestination
    dispatcher: dispatch.Dispatcher


def fill(db: Database, tmp_path: Path) -> Scenario:
    """Two series of one study through receiver, assembler, executor and dispatcher (see the module's text)."""
    settings = Settings(data_dir=tmp_path / "data", quiet_period={"default": 0.0})
    routing_file = tmp_path / "routing.yaml"
    routing_file.write_text(ROUTING)
    routing = load_routing(routing_file)
    receiver = Receiver(settings, db, Spool(settings.spool_dir, settings.tmp_dir), header_tags=routing_tags(routing))
    assembler = Assembler(db, routing, {"fake"}, {}, ["pacs", "archive"])
    outbox = Outbox(settings.outbox_dir, settings.tmp_dir)
    pacs = FakeDestination(down=True, permanent=True)  # refuses: a dead letter at the first try
    dispatcher = dispatch.Dispatcher(settings, db, {"pacs": pacs, "archive": FakeDestination()})
    received = ReceiveAudit(db)

    study, good, bad = generate_uid(), generate_uid(), generate_uid()
    for series in (good, bad):
        request = _instance(series, study, **PHI)
        assert receiver(request) == status.SUCCESS
        received.instance(request, study, True)
    received.flush()  # the association's "received" row, as when the node stops
    assembler.run_once()
    pipeline = TinyPipeline()
    jobs = {}
    while (job := execution.claim_job(db, "worker-1", {"fake"})) is not None:
        pipeline.fail_with = (
            InputError(f"value {PHI['PatientName']!r} not understood") if job.series_uid == bad else None
        )
        execution.run_job(db, outbox, pipeline, job)
        jobs[job.series_uid] = job.id
    dispatcher.run_once()
    listed = {d.destination: d.id for d in queries.list_deliveries(db)}
    return Scenario(settings, study, jobs[good], jobs[bad], listed["pacs"], listed["archive"], pacs, dispatcher)


@pytest.fixture
def scenario(tmp_path: Path, db: Database) -> Scenario:
    return fill(db, tmp_path)


def _no_phi(*values: object) -> None:
    text = json.dumps(queries.to_json(list(values)))
    for phi in PHI_TEXTS:
        assert phi not in text


def test_jobs_and_a_job_in_full(db: Database, scenario: Scenario) -> None:
    jobs = queries.recent_jobs(db)
    assert [j.id for j in jobs] == sorted([scenario.done_job, scenario.failed_job], reverse=True)
    assert [j.id for j in queries.recent_jobs(db, state="failed")] == [scenario.failed_job]
    assert len(queries.recent_jobs(db, limit=1)) == 1

    detail = queries.job_detail(db, scenario.done_job, scenario.settings.delivery)
    job = detail.job
    assert (job.state, job.pipeline, job.rule, job.priority, job.study_uid) == (
        "done",
        "fake",
        "ct-anything",
        "routine",
        scenario.study,
    )
    assert job.summary == "1 instances" and job.attempts == 1 and detail.worker == "worker-1"
    assert job.duration_seconds is not None and job.duration_seconds >= 0
    assert detail.destinations == ["pacs", "archive"] and not detail.demo
    [result] = detail.results
    assert (result.kind, result.sop_class, result.kind_label) == ("SR", "Comprehensive SR Storage", "SR")
    assert {d.destination: d.state for d in result.deliveries} == {"pacs": "dead", "archive": "done"}
    kinds = [e.kind for e in detail.events]
    assert kinds[0] == "received" and detail.events[0].calling_ae == "STORESCU"
    assert {"job_done", "delivered", "dead_letter"} <= set(kinds)
    assert all(e.job_id == scenario.done_job for e in detail.events[1:])

    failed = queries.job_detail(db, scenario.failed_job)
    assert failed.job.state == "failed" and failed.results == []
    assert failed.job.error == "value '<patient data>' not understood"  # redacted before it was stored
    assert [e.kind for e in failed.events] == ["received", "job_failed"]
    _no_phi(jobs, detail, failed)

    as_json = queries.to_json(detail)
    assert as_json["job"]["created_at"].endswith("Z") and as_json["job"]["duration_seconds"] is not None
    assert as_json["results"][0]["deliveries"][0]["state"] in ("dead", "done")
    with pytest.raises(queries.NotFound):
        queries.job_detail(db, 999_999)


def test_deliveries_filtered_by_state_and_destination(db: Database, scenario: Scenario) -> None:
    everything = queries.list_deliveries(db)
    assert {d.id for d in everything} == {scenario.dead, scenario.delivered}
    [dead] = queries.list_deliveries(db, states=["dead"])
    assert (dead.id, dead.destination, dead.attempts, dead.kind) == (scenario.dead, "pacs", 1, "SR")
    assert dead.last_error == "fake destination is down" and dead.path is not None
    assert [d.id for d in queries.list_deliveries(db, states=["delivered"])] == [scenario.delivered]
    assert [d.id for d in queries.list_deliveries(db, destination="archive")] == [scenario.delivered]
    assert queries.list_deliveries(db, states=["pending", "sending"]) == []
    with pytest.raises(ValueError, match="unknown delivery state 'lost': one of pending, sending, done, dead"):
        queries.list_deliveries(db, states=["lost"])
    assert queries.get_delivery(db, scenario.delivered).delivered_at is not None
    with pytest.raises(queries.NotFound):
        queries.get_delivery(db, 999_999)
    _no_phi(everything)


def test_retry_queues_a_dead_letter_audited_and_refuses_anything_else(db: Database, scenario: Scenario) -> None:
    woken: list[bool] = []
    retried = queries.retry_delivery(
        db, scenario.dead, caller="alice", peer_address="10.0.0.7", wake=lambda: woken.append(True)
    )
    assert (retried.state, retried.attempts, retried.last_error) == ("pending", 0, "fake destination is down")
    assert woken == [True]
    [row] = queries.audit_page(db, kinds=["retried"]).events
    assert (row.calling_ae, row.peer_address, row.instance_count) == ("alice", "10.0.0.7", 1)
    assert row.message == f"1 dead letter(s) queued again by hand by alice (deliveries {scenario.dead})"

    with pytest.raises(queries.NotDead, match=f"delivery {scenario.dead} is pending, not a dead letter"):
        queries.retry_delivery(db, scenario.dead, caller="alice")
    with pytest.raises(queries.NotDead) as refused:
        queries.retry_delivery(db, scenario.delivered, caller="alice")
    assert refused.value.state == "done"
    with pytest.raises(queries.NotFound):
        queries.retry_delivery(db, 999_999, caller="alice")
    assert len(queries.audit_page(db, kinds=["retried"]).events) == 1  # refusals change nothing

    scenario.pacs.down = False  # the PACS is back: the retried delivery goes out
    scenario.dispatcher.run_once()
    assert queries.get_delivery(db, scenario.dead).state == "done"


def test_audit_filters_and_pages(db: Database, scenario: Scenario) -> None:
    queries.retry_delivery(db, scenario.dead, caller="alice", peer_address="10.0.0.7")
    every = queries.audit_page(db, limit=1000).events
    ids = [e.id for e in every]
    assert ids == sorted(ids, reverse=True) and len(ids) >= 6
    kinds = {e.kind for e in every}
    assert {"received", "job_done", "job_failed", "delivered", "dead_letter", "retried"} <= kinds

    assert {e.kind for e in queries.audit_page(db, kinds=["job_done", "job_failed"]).events} == {
        "job_done",
        "job_failed",
    }
    assert [e.kind for e in queries.audit_page(db, caller="STORESCU").events] == ["received"]
    assert [e.kind for e in queries.audit_page(db, peer="10.0.0.7").events] == ["retried"]
    assert {e.study_uid for e in queries.audit_page(db, study=scenario.study).events} == {scenario.study}
    assert queries.audit_page(db, study="1.2.3.4").events == []
    now = datetime.now(UTC)
    assert len(queries.audit_page(db, since=now - timedelta(hours=1)).events) == len(every)
    assert queries.audit_page(db, since=now + timedelta(hours=1)).events == []
    assert queries.audit_page(db, until=now - timedelta(hours=1)).events == []
    assert len(queries.audit_page(db, until=now + timedelta(hours=1)).events) == len(every)

    pages, before = [], None
    while True:
        page = queries.audit_page(db, limit=2, before=before)
        pages.append([e.id for e in page.events])
        if page.next_before is None:
            break
        before = page.next_before
    assert [i for p in pages for i in p] == ids and all(len(p) <= 2 for p in pages)
    with pytest.raises(ValueError, match="unknown audit kind 'login'"):
        queries.audit_page(db, kinds=["login"])
    _no_phi(every)


def test_models_with_their_versions_demo_flag_licence_and_checksum_state(tmp_path: Path) -> None:
    models = tmp_path / "models"
    for name in ("cxr-view-filter", "cxr-four-class-cnn"):
        shutil.copytree(REPO / "weights" / name, models / name)
    weights = next((models / "cxr-four-class-cnn").glob("*.onnx"))
    weights.write_bytes(weights.read_bytes() + b"\0")  # changed weights: the checksum no longer matches
    (models / "broken").mkdir()
    (models / "broken" / "model.json").write_text('{"name": "broken", "version": "1"}')

    listed = {m.name: m for m in queries.list_models(models)}
    assert set(listed) == {"broken", "cxr-four-class-cnn", "cxr-view-filter"}
    ok = listed["cxr-view-filter"]
    manifest = json.loads((models / "cxr-view-filter" / "model.json").read_text())
    assert (ok.version, ok.task, ok.backend, ok.weights, ok.problem) == (
        manifest["version"],
        "view-filter",
        "onnx",
        "ok",
        None,
    )
    assert ok.sha256 == manifest["sha256"] and ok.demo is manifest["demo"] and ok.licence == manifest["licence"]
    changed = listed["cxr-four-class-cnn"]
    assert changed.weights == "mismatch" and "changed" in (changed.problem or "")
    broken = listed["broken"]
    assert (broken.weights, broken.version, broken.demo) == ("invalid", None, None) and broken.problem
    assert queries.to_json(ok)["licence"] == manifest["licence"]


def test_the_commands_read_the_same_records(
    tmp_path: Path, db: Database, scenario: Scenario, capsys: pytest.CaptureFixture[str]
) -> None:
    import getpass

    import yaml

    from node.cli import main as cli_main

    config = tmp_path / "cli.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(scenario.settings.data_dir), "database_url": db.url}))

    def ainode(*args: str) -> str:
        assert cli_main(["--config", str(config), *args]) == 0
        return capsys.readouterr().out

    shown = ainode("jobs", "show", str(scenario.done_job))
    [result] = queries.job_detail(db, scenario.done_job).results
    assert f"SR {result.sop_uid} -> pacs: dead (delivery {scenario.dead})" in shown
    assert f"SR {result.sop_uid} -> archive: done (delivery {scenario.delivered})" in shown
    assert "1 dead letter(s) queued for delivery again" in ainode("deliveries", "retry", str(scenario.dead))
    [row] = queries.audit_page(db, kinds=["retried"]).events
    assert row.calling_ae == getpass.getuser()[:16] and f"by {row.calling_ae} " in (row.message or "")
    # ainode audit takes the pages' filters: until, caller, peer.
    listed = ainode("audit", "--caller", "STORESCU", "--peer", "127.0.0.1")
    assert "received" in listed and "job_done" not in listed
    assert "job_done" in ainode("audit", "--until", "2999-01-01T00:00")
    assert "job_done" not in ainode("audit", "--until", "2000-01-01T00:00")
    assert cli_main(["--config", str(config), "audit", "--until", "soon"]) == 2
    assert "--until 'soon': expected a time like 2026-11-22T10:00 (UTC)" in capsys.readouterr().err
