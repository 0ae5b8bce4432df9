"""Re-sends cost nothing: an unchanged series is analysed once, whatever re-sends it and how often.

On a real database (SQLite and PostgreSQL), with the real receiver, assembler,
executor and dispatcher (the pipeline and destination are the small fakes of
``test_flow``). "Unchanged" means the same SOP Instance UIDs with the same bytes
(:mod:`node.idempotency`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select, text

from core import status
from node import executor as execution
from node.assembler import Assembler
from node.db import AuditEvent, AuditKind, Database, Instance, Job, JobState, Result, Series, SeriesState
from node.errors import InputError
from node.idempotency import analysis_key, series_fingerprint
from node.receiver import Receiver
from node.router import load_routing
from tests.node import test_flow
from tests.node.test_flow import ROUTING, TinyPipeline, _again, _instance, _run_all_jobs, _sent

parts = test_flow.parts  # the state machine's parts, a fixture shared with test_flow


def _counts(database: Database) -> tuple[int, int]:
    with database.session() as s:
        return s.scalar(select(func.count(Job.id))), s.scalar(select(func.count(Result.id)))


def _resent_audits(database: Database) -> list[AuditEvent]:
    with database.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.kind == AuditKind.RESENT).order_by(AuditEvent.id)))


def _analysed_once(database: Database, parts):  # type: ignore[no-untyped-def]
    settings, receiver, assembler, outbox, dispatcher, destination = parts
    study, series = generate_uid(), generate_uid()
    requests = [_instance(series, study) for _ in range(3)]
    assert [receiver(r) for r in requests] == [status.SUCCESS] * 3
    assembler.run_once()
    pipeline = TinyPipeline()
    assert _run_all_jobs(database, outbox, pipeline) == 1
    dispatcher.run_once()
    assert sum(destination.received.values()) == 1
    return series, requests, pipeline


def test_a_thousand_unchanged_resends_make_no_job_and_no_result(db: Database, parts) -> None:  # type: ignore[no-untyped-def]
    settings, receiver, assembler, outbox, dispatcher, destination = parts
    series, requests, pipeline = _analysed_once(db, parts)
    for i in range(1000):
        assert receiver(_again(requests[i % 3])) == status.SUCCESS
        if i % 10 == 9:  # the assembler looks after every tenth instance (quiet period 0)
            assembler.run_once()
            assert _run_all_jobs(db, outbox, pipeline) == 0
            dispatcher.run_once()
    assembler.run_once()
    assert _run_all_jobs(db, outbox, pipeline) == 0
    dispatcher.run_once()
    assert _counts(db) == (1, 1)
    assert len(pipeline.calls) == 1
    assert sum(destination.received.values()) == 1  # nothing new was sent
    audits = _resent_audits(db)
    assert len(audits) == 100 and sum(a.instance_count for a in audits) == 1000
    assert all("not analysed again" in a.message for a in audits)
    with db.session() as s:
        row = s.scalar(select(Series).where(Series.series_uid == series))
        assert row.state == SeriesState.DONE and row.generation == 1 and not row.resend_pending
        assert s.scalar(select(Instance.times_received).where(Instance.sop_uid == requests[0].sop_instance_uid)) == 335


def test_a_resend_while_the_job_is_queued_or_running_adds_nothing(db: Database, parts) -> None:  # type: ignore[no-untyped-def]
    settings, receiver, assembler, outbox, dispatcher, destination = parts
    study, series = generate_uid(), generate_uid()
    request = _instance(series, study)
    receiver(request)
    assembler.run_once()
    receiver(_again(request))  # queued
    assembler.run_once()
    job = execution.claim_job(db, "w", {"fake"})
    assert job is not None
    receiver(_again(request))  # running
    assembler.run_once()
    execution.run_job(db, outbox, TinyPipeline(), job)
    assembler.run_once()
    assert _run_all_jobs(db, outbox, TinyPipeline()) == 0
    assert _counts(db) == (1, 1)
    assert [("being analysed" in a.message) for a in _resent_audits(db)] == [True, True]
    with db.session() as s:
        assert s.scalar(select(Series.state).where(Series.series_uid == series)) == SeriesState.DONE


def test_a_changed_instance_is_analysed_again_and_supersedes(db: Database, parts) -> None:  # type: ignore[no-untyped-def]
    settings, receiver, assembler, outbox, dispatcher, destination = parts
    series, requests, pipeline = _analysed_once(db, parts)
    # A correction at the PACS: the same SOP Instance UID with other bytes (the patient's name edited).
    original = _sent(requests[0])
    changed = _again(requests[0], original.replace(b"CompressedSamples^CT1", b"CompressedSamples^CT2"))
    assert changed.data != original
    assert receiver(changed) == status.SUCCESS
    assembler.run_once()
    assert _run_all_jobs(db, outbox, pipeline) == 1
    with db.session() as s:
        first, second = s.scalars(select(Result).order_by(Result.id)).all()
        jobs = s.scalars(select(Job).order_by(Job.id)).all()
    assert [j.generation for j in jobs] == [1, 2] and jobs[0].fingerprint != jobs[1].fingerprint
    assert first.superseded_by == second.id
    # Sending the corrected instance once more is again a no-op.
    receiver(_again(changed))
    assembler.run_once()
    assert _run_all_jobs(db, outbox, pipeline) == 0 and _counts(db) == (2, 2)


def test_a_resend_after_a_failed_analysis_is_analysed_again(db: Database, parts) -> None:  # type: ignore[no-untyped-def]
    settings, receiver, assembler, outbox, dispatcher, destination = parts
    request = _instance(generate_uid(), generate_uid())
    receiver(request)
    assembler.run_once()
    failing = TinyPipeline()
    failing.fail_with = InputError("pixel data truncated")
    _run_all_jobs(db, outbox, failing)
    receiver(_again(request))
    assembler.run_once()
    assert _run_all_jobs(db, outbox, TinyPipeline()) == 1
    with db.session() as s:
        assert [j.state for j in s.scalars(select(Job).order_by(Job.id))] == [JobState.FAILED, JobState.DONE]


@pytest.mark.parametrize("reanalyse", [False, True])
def test_new_models_analyse_a_resend_only_when_configured(
    db: Database,
    parts,
    tmp_path: Path,  # type: ignore[no-untyped-def]
    reanalyse: bool,
) -> None:
    settings, receiver, _, outbox, dispatcher, destination = parts
    routing = tmp_path / "routing.yaml"
    routing.write_text(ROUTING)
    old = Assembler(db, load_routing(routing), {"fake"}, {}, ["pacs"], analysis_keys={"fake": "weights v1"})
    request = _instance(generate_uid(), generate_uid())
    receiver(request)
    old.run_once()
    _run_all_jobs(db, outbox, TinyPipeline())
    # The node restarts with new weights: a new receiver and assembler on the same database.
    new = Assembler(
        db,
        load_routing(routing),
        {"fake"},
        {},
        ["pacs"],
        analysis_keys={"fake": "weights v2"},
        reanalyse_on_change=reanalyse,
    )
    Receiver(settings, db, receiver.spool)(_again(request))
    new.run_once()
    assert _run_all_jobs(db, outbox, TinyPipeline()) == (1 if reanalyse else 0)
    # And with the same weights again, never.
    receiver(_again(request))
    new.run_once()
    assert _run_all_jobs(db, outbox, TinyPipeline()) == 0


def test_resends_across_a_restart_are_not_analysed(db: Database, parts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings, receiver, assembler, outbox, dispatcher, destination = parts
    series, requests, pipeline = _analysed_once(db, parts)
    routing = tmp_path / "routing2.yaml"
    routing.write_text(ROUTING)
    restarted = Database(db.url)
    try:
        again = Receiver(settings, restarted, receiver.spool)
        assert [again(_again(r)) for r in requests] == [status.SUCCESS] * 3
        Assembler(restarted, load_routing(routing), {"fake"}, {}, ["pacs"]).run_once()
        assert _run_all_jobs(restarted, outbox, pipeline) == 0
        assert _counts(restarted) == (1, 1)
    finally:
        restarted.dispose()


def test_fingerprint_and_key_are_order_free_and_sensitive() -> None:
    a = series_fingerprint([("1.2.1", "aa"), ("1.2.2", "bb")])
    assert a == series_fingerprint([("1.2.2", "bb"), ("1.2.1", "aa")])
    assert a != series_fingerprint([("1.2.1", "aa"), ("1.2.2", "bc")])
    assert a != series_fingerprint([("1.2.1", "aa")])
    # An instance recorded before digests existed: its first re-send (which records the digest) counts as a change.
    assert series_fingerprint([("1.2.1", None)]) != series_fingerprint([("1.2.1", "aa")])
    key = analysis_key("cxr", {"m": {"version": "1"}}, {"top_findings": 3})
    assert key == analysis_key("cxr", {"m": {"version": "1"}}, {"top_findings": 3})
    assert key != analysis_key("cxr", {"m": {"version": "2"}}, {"top_findings": 3})
    assert key != analysis_key("cxr", {"m": {"version": "1"}}, {"top_findings": 2})


def test_a_database_of_an_older_version_gets_the_new_columns(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        database.create_schema()
        with database.engine.begin() as conn:  # the schema before re-sends were recognised
            for table, column in (
                ("instances", "digest"),
                ("jobs", "fingerprint"),
                ("jobs", "analysis_key"),
                ("series", "resent_instances"),
            ):
                conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
            conn.execute(text("DROP INDEX ix_series_resend_pending"))
            conn.execute(text("ALTER TABLE series DROP COLUMN resend_pending"))
            conn.execute(
                text(
                    "INSERT INTO jobs (series_uid, study_uid, pipeline, destinations, generation, state, "
                    "attempts, created_at) VALUES ('1.2', '1.3', 'cxr', '[]', 1, 'done', 1, '2026-01-01')"
                )
            )
        database.create_schema()
        with database.session() as s:
            job = s.scalar(select(Job))
        assert job.pipeline == "cxr" and job.fingerprint is None and job.analysis_key is None
    finally:
        database.dispose()
