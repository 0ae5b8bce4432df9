"""Retention on a real database: what ``plan_purge`` picks under each rule, what it never picks, what purge does.

Rows are made as the node makes them (series, instances with their spool
files, jobs, results with their outbox files, deliveries); the free space is
given to the plan, so each rule is tested on its own. SQLite and PostgreSQL. The
full node on a small file system is ``tests/integration/test_retention_small_fs.py``.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from pydicom.uid import generate_uid
from sqlalchemy import select

from core import status
from node import executor as execution
from node.cli import main as cli_main
from node.db import (
    AuditEvent,
    AuditKind,
    Database,
    Delivery,
    DeliveryState,
    Instance,
    Job,
    JobState,
    Result,
    Series,
    SeriesState,
    Study,
)
from node.metrics import Metrics, database_gauges
from node.receiver import Receiver
from node.retention import RetentionLoop, plan_purge, purge
from node.settings import Settings
from node.spool import Outbox, Spool
from tests.node.test_flow import TinyPipeline, _again, _instance, _sent

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
TOTAL = 1_000_000  # bytes of the pretend file system


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", retention={"keep_hours": 24, "min_free_percent": 10})


def _series(
    db: Database,
    settings: Settings,
    *,
    age_hours: float,
    instances: int = 2,
    size: int = 1000,
    series_state: SeriesState = SeriesState.DONE,
    job: JobState | None = JobState.DONE,
    deliveries: tuple[DeliveryState, ...] = (DeliveryState.DONE,),
) -> tuple[str, str]:
    """A series finished ``age_hours`` before NOW (received, analysed, delivered); its files written."""
    study, series = generate_uid(), generate_uid()
    when = NOW - timedelta(hours=age_hours)
    spool = Spool(settings.spool_dir, settings.tmp_dir)
    outbox = Outbox(settings.outbox_dir, settings.tmp_dir)
    with db.session() as s:
        s.add(Study(study_uid=study, first_received_at=when))
        s.add(
            Series(
                series_uid=series, study_uid=study, state=series_state, last_received_at=when, instance_count=instances
            )
        )
        for _ in range(instances):
            sop = generate_uid()
            path = spool.store(study, series, sop, b"\0" * size)
            os.utime(path, (when.timestamp(), when.timestamp()))
            s.add(
                Instance(
                    sop_uid=sop,
                    series_uid=series,
                    study_uid=study,
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    transfer_syntax_uid="1.2.840.10008.1.2.1",
                    path=str(path),
                    size=size,
                    received_at=when,
                    header={"00100010": ["PN", "446f655e4a6f686e"]},  # recorded at receive: may hold a name
                )
            )
        if job is not None:
            row = Job(
                series_uid=series,
                study_uid=study,
                pipeline="fake",
                state=job,
                created_at=when,
                finished_at=when if job in (JobState.DONE, JobState.FAILED) else None,
            )
            s.add(row)
            s.flush()
            if job == JobState.DONE:
                sop = generate_uid()
                path = outbox.store(study, series, sop, b"\1" * 300)
                result = Result(
                    job_id=row.id,
                    series_uid=series,
                    study_uid=study,
                    sop_uid=sop,
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.88.33",
                    kind="SR",
                    path=str(path),
                    created_at=when,
                )
                s.add(result)
                s.flush()
                for state in deliveries:
                    s.add(
                        Delivery(
                            result_id=result.id,
                            destination="pacs",
                            state=state,
                            created_at=when,
                            delivered_at=when if state == DeliveryState.DONE else None,
                        )
                    )
    return study, series


def _planned(plan) -> set[tuple[str, str, str]]:  # type: ignore[no-untyped-def]
    return {(item.kind, item.series_uid, item.reason) for item in plan.items}


def test_age_rule_purges_series_and_results_finished_longer_ago_than_keep_hours(
    db: Database, settings: Settings
) -> None:
    _, old = _series(db, settings, age_hours=30)
    _, young = _series(db, settings, age_hours=5)
    plan = plan_purge(db, settings, NOW, free_fraction=0.5, total_bytes=TOTAL)
    assert _planned(plan) == {("instances", old, "age"), ("results", old, "age")}
    item = next(i for i in plan.items if i.kind == "instances")
    assert item.files == 2 and item.bytes == 2000
    assert young not in {i.series_uid for i in plan.items}
    # The age counts from the last delivery, not from the reception.
    with db.session() as s:
        delivery = s.scalar(select(Delivery).join(Result).where(Result.series_uid == old))
        delivery.delivered_at = NOW - timedelta(hours=2)
    assert plan_purge(db, settings, NOW, free_fraction=0.5, total_bytes=TOTAL).items == []


@pytest.mark.parametrize(
    "case",
    [
        "receiving",
        "queued job",
        "running job",
        "pending delivery",
        "sending delivery",
        "dead letter",
        "one of two deliveries pending",
    ],
)
def test_nothing_unfinished_is_ever_planned_even_on_a_full_disk(db: Database, settings: Settings, case: str) -> None:
    kwargs: dict[str, object] = {
        "receiving": {"series_state": SeriesState.RECEIVING, "job": None},
        "queued job": {"series_state": SeriesState.QUEUED, "job": JobState.QUEUED},
        "running job": {"series_state": SeriesState.QUEUED, "job": JobState.RUNNING},
        "pending delivery": {"deliveries": (DeliveryState.PENDING,)},
        "sending delivery": {"deliveries": (DeliveryState.SENDING,)},
        "dead letter": {"deliveries": (DeliveryState.DEAD,)},
        "one of two deliveries pending": {"deliveries": (DeliveryState.DONE, DeliveryState.PENDING)},
    }[case]
    _, kept = _series(db, settings, age_hours=1000, **kwargs)  # type: ignore[arg-type]
    _, finished = _series(db, settings, age_hours=1000)
    plan = plan_purge(db, settings, NOW, free_fraction=0.0, total_bytes=TOTAL)
    assert kept not in {i.series_uid for i in plan.items}, plan.items
    assert ("instances", finished, "age") in _planned(plan)
    assert plan.unfinished_series == 1


def test_a_series_whose_latest_job_failed_is_finished(db: Database, settings: Settings) -> None:
    _, failed = _series(db, settings, age_hours=30, job=JobState.FAILED)
    _, unrouted = _series(db, settings, age_hours=30, job=None, series_state=SeriesState.UNROUTED)
    assert {("instances", failed, "age"), ("instances", unrouted, "age")} == _planned(
        plan_purge(db, settings, NOW, free_fraction=0.5, total_bytes=TOTAL)
    )


def test_watermark_purges_finished_series_oldest_first_until_above_it(db: Database, settings: Settings) -> None:
    # 5 finished series younger than keep_hours, 10 kB of instances + 300 B of results each; free 7.5 %, 10 %
    # wanted: 2.5 % of 1 MB = 25 kB to free: the two oldest series with their results, the third's instances.
    ages = [10, 12, 8, 20, 3]
    made = {age: _series(db, settings, age_hours=age, instances=5, size=2000)[1] for age in ages}
    plan = plan_purge(db, settings, NOW, free_fraction=0.075, total_bytes=TOTAL)
    assert all(item.reason == "watermark" for item in plan.items)
    assert [(i.kind, i.series_uid) for i in plan.items] == [
        ("instances", made[20]),
        ("results", made[20]),
        ("instances", made[12]),
        ("results", made[12]),
        ("instances", made[10]),
    ]
    assert plan.bytes == 30_600 and plan.still_short() == 0
    # Above the watermark, younger than keep_hours: nothing.
    assert plan_purge(db, settings, NOW, free_fraction=0.11, total_bytes=TOTAL).items == []
    # Not enough purgeable: everything finished goes, and the plan says what is still missing.
    everything = plan_purge(db, settings, NOW, free_fraction=0.0, total_bytes=TOTAL)
    assert {i.series_uid for i in everything.items} == set(made.values())
    assert everything.still_short() == 100_000 - everything.bytes


def test_purge_removes_files_and_empty_folders_keeps_rows_audits_and_counts(db: Database, settings: Settings) -> None:
    study, series = _series(db, settings, age_hours=30)
    _, young = _series(db, settings, age_hours=1)
    with db.session() as s:
        paths = [Path(p) for p in s.scalars(select(Instance.path).where(Instance.series_uid == series))]
        result_path = Path(s.scalar(select(Result.path).where(Result.series_uid == series)))
    metrics = Metrics()
    plan = plan_purge(db, settings, NOW, free_fraction=0.5, total_bytes=TOTAL)
    outcome = purge(db, settings, plan, metrics)
    assert outcome.files == 3 and outcome.bytes == 2300 and outcome.skipped == 0
    assert not any(p.exists() for p in paths) and not result_path.exists()
    assert not (settings.spool_dir / study).exists() and not (settings.outbox_dir / study).exists()
    assert settings.spool_dir.is_dir() and settings.outbox_dir.is_dir()
    with db.session() as s:
        assert s.scalar(select(Instance.purged_at).where(Instance.path == str(paths[0]))) is not None
        # The header recorded at receive goes with the file: it may hold patient attributes.
        assert s.scalars(select(Instance.header).where(Instance.series_uid == series)).all() == [None, None]
        assert None not in s.scalars(select(Instance.header).where(Instance.series_uid == young)).all()
        assert len(s.scalars(select(Instance).where(Instance.series_uid == series)).all()) == 2  # rows kept
        assert s.scalar(select(Result.purged_at).where(Result.series_uid == series)) is not None
        assert s.scalar(select(Instance.purged_at).where(Instance.series_uid == young)) is None
        audit = s.scalars(select(AuditEvent).where(AuditEvent.kind == AuditKind.PURGED)).all()
    assert len(audit) == 1 and audit[0].instance_count == 3 and "2300 bytes" in (audit[0].message or "")
    assert metrics.value("ainode_purged_files_total", reason="age") == 3
    assert metrics.value("ainode_purged_bytes_total", reason="age") == 2300
    assert 'ainode_purged_bytes_total{reason="age"} 2300.0' in metrics.exposition()[0].decode()
    # Purged instances no longer count as spool; a second plan has nothing left of that series.
    gauges = {f.name: f.samples[0][2] for f in database_gauges(db, settings.data_dir) if f.samples}
    assert gauges["ainode_spool_instances"] == 2 and gauges["ainode_spool_bytes"] == 2000
    assert plan_purge(db, settings, NOW, free_fraction=0.5, total_bytes=TOTAL).items == []


def test_purge_checks_again_and_keeps_what_changed_since_the_plan(db: Database, settings: Settings) -> None:
    _, series = _series(db, settings, age_hours=30)
    plan = plan_purge(db, settings, NOW, free_fraction=0.5, total_bytes=TOTAL)
    with db.session() as s:  # a re-sent, changed series was queued for analysis after the plan was made
        s.scalar(select(Series).where(Series.series_uid == series)).state = SeriesState.QUEUED
        s.add(Job(series_uid=series, study_uid="1.2", pipeline="fake", state=JobState.QUEUED))
    outcome = purge(db, settings, plan)
    assert outcome.files == 1 and outcome.skipped == 2  # the result file (delivered) went; the instances stay
    with db.session() as s:
        paths = s.scalars(
            select(Instance.path).where(Instance.series_uid == series, Instance.purged_at.is_(None))
        ).all()
    assert len(paths) == 2 and all(Path(p).is_file() for p in paths)


def test_a_file_received_again_while_purging_is_kept(
    db: Database, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    _, series = _series(db, settings, age_hours=30, instances=1)
    plan = plan_purge(db, settings, NOW, free_fraction=0.5, total_bytes=TOTAL)
    with db.session() as s:
        path = Path(s.scalar(select(Instance.path).where(Instance.series_uid == series)))
    path.write_bytes(b"\2" * 1000)  # the receiver wrote it again (its row is recorded just after)
    with caplog.at_level("WARNING", logger="ainode.retention"):
        outcome = purge(db, settings, plan)
    assert path.read_bytes() == b"\2" * 1000 and outcome.skipped == 1
    assert any("written after their database row" in r.getMessage() for r in caplog.records)
    with db.session() as s:
        assert s.scalar(select(Instance.purged_at).where(Instance.series_uid == series)) is None


def test_re_received_instance_is_stored_again_and_a_job_never_reads_a_purged_file(
    db: Database, settings: Settings
) -> None:
    receiver = Receiver(settings, db, Spool(settings.spool_dir, settings.tmp_dir))
    study, series = generate_uid(), generate_uid()
    requests = [_instance(series, study) for _ in range(2)]
    assert [receiver(r) for r in requests] == [status.SUCCESS] * 2
    with db.session() as s:
        s.scalar(select(Series).where(Series.series_uid == series)).state = SeriesState.DONE
    plan = plan_purge(db, settings, datetime.now(UTC) + timedelta(hours=25), 0.5, TOTAL)
    assert purge(db, settings, plan).files == 2
    assert receiver(_again(requests[0])) == status.SUCCESS  # sent again: stored again, no longer purged
    with db.session() as s:
        rows = {r.sop_uid: r for r in s.scalars(select(Instance).where(Instance.series_uid == series))}
        s.add(Job(series_uid=series, study_uid=study, pipeline="fake", state=JobState.QUEUED))
    back = rows[requests[0].sop_instance_uid]
    assert back.purged_at is None and Path(back.path).read_bytes() == _sent(requests[0])
    assert rows[requests[1].sop_instance_uid].purged_at is not None
    pipeline = TinyPipeline()
    outbox = Outbox(settings.outbox_dir, settings.tmp_dir)
    job = execution.claim_job(db, "test", {"fake"})
    assert job is not None
    execution.run_job(db, outbox, pipeline, job)
    assert pipeline.calls[0][1] == 1  # only the instance on disk

    # Every file of a series purged: the job fails with a clear error, it does not read missing files.
    _, gone = _series(db, settings, age_hours=30, job=None, series_state=SeriesState.DONE)
    purge(db, settings, plan_purge(db, settings, NOW, 0.5, TOTAL))
    with db.session() as s:
        s.add(Job(series_uid=gone, study_uid="1.2", pipeline="fake", state=JobState.QUEUED))
    job = execution.claim_job(db, "test", {"fake"})
    assert job is not None
    execution.run_job(db, outbox, pipeline, job)
    with db.session() as s:
        failed = s.get(Job, job.id)
    assert failed.state == JobState.FAILED and "removed by retention" in (failed.error or "")
    assert len(pipeline.calls) == 1


def test_loop_purges_on_its_own_pass(db: Database, settings: Settings) -> None:
    _, series = _series(db, settings, age_hours=1)
    loop = RetentionLoop(
        settings.model_copy(
            update={"retention": settings.retention.model_copy(update={"keep_hours": 0.5, "interval_seconds": 7})}
        ),
        db,
        Metrics(),
    )
    assert loop.run_once() == 7
    with db.session() as s:
        assert s.scalar(select(Instance.purged_at).where(Instance.series_uid == series)) is not None


def test_cli_purge_dry_run_lists_then_purge_removes(
    tmp_path: Path, db: Database, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(
        yaml.safe_dump({"data_dir": str(settings.data_dir), "database_url": db.url, "retention": {"keep_hours": 24}})
    )
    _, old = _series(db, settings, age_hours=24 * 400)  # the CLI plans for the real now
    _, pending = _series(db, settings, age_hours=24 * 400, deliveries=(DeliveryState.PENDING,))
    assert cli_main(["--config", str(config), "purge", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "kind" in out and "reason" in out and old in out and pending not in out
    assert "instances" in out and "results" in out and "age" in out
    assert "would purge 3 file(s), 2300 bytes" in out and "1 series and 1 result(s) unfinished" in out
    with db.session() as s:
        assert s.scalar(select(Instance.purged_at).where(Instance.series_uid == old)) is None  # dry run
    assert cli_main(["--config", str(config), "purge"]) == 0
    assert "purged 3 file(s), 2300 bytes" in capsys.readouterr().out
    assert cli_main(["--config", str(config), "purge", "--dry-run"]) == 0
    assert "nothing to purge" in capsys.readouterr().out


def test_loop_under_the_watermark_with_nothing_purgeable_warns_once_and_looks_again_soon(
    db: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import node.retention as retention

    _, pending = _series(db, settings, age_hours=1000, deliveries=(DeliveryState.DEAD,))
    free = {"fraction": 0.02}
    monkeypatch.setattr(retention, "disk_state", lambda _settings: (free["fraction"], TOTAL))
    loop = RetentionLoop(settings, db, Metrics())
    with caplog.at_level("WARNING", logger="ainode.retention"):
        waits = [loop.run_once(), loop.run_once()]
    assert waits == [retention.UNDER_WATERMARK_RETRY_SECONDS] * 2
    warnings = [r.getMessage() for r in caplog.records if "under the retention watermark" in r.getMessage()]
    assert len(warnings) == 1 and "1 series and 1 result(s) are unfinished" in warnings[0], warnings
    with db.session() as s:  # the dead letter's series is not touched
        assert s.scalar(select(Instance.purged_at).where(Instance.series_uid == pending)) is None
    free["fraction"] = 0.5
    assert loop.run_once() == settings.retention.interval_seconds
    free["fraction"] = 0.02
    caplog.clear()
    with caplog.at_level("WARNING", logger="ainode.retention"):
        loop.run_once()
    assert any("under the retention watermark" in r.getMessage() for r in caplog.records)  # a new episode


def test_a_database_made_before_retention_gets_the_new_columns_at_start(tmp_path: Path) -> None:
    """Only nullable columns were added: ``create_schema`` adds them to an existing database, rows untouched."""
    from sqlalchemy import inspect, text

    database = Database(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        database.create_schema()
        new = {"instances": ["purged_at"], "results": ["priority", "purged_at"], "deliveries": ["first_failed_at"]}
        with database.engine.begin() as conn:
            for table, columns in new.items():
                for column in columns:
                    conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
            conn.execute(
                text(
                    "INSERT INTO series (series_uid, study_uid, state, generation, last_received_at, "
                    "ready_at, instance_count) VALUES ('1.2', '1.3', 'done', 1, '2026-01-01 00:00:00', 0, 0)"
                )
            )
        database.create_schema()
        columns = {t: {c["name"] for c in inspect(database.engine).get_columns(t)} for t in new}
        assert all(set(wanted) <= columns[t] for t, wanted in new.items()), columns
        settings = Settings(data_dir=tmp_path / "data")
        assert plan_purge(database, settings, NOW, 0.5, TOTAL).items == []
        with database.session() as s:
            assert s.scalar(select(Series.state).where(Series.series_uid == "1.2")) == SeriesState.DONE
    finally:
        database.dispose()
