"""The delivery schedule over simulated hours: a controllable clock, a fake destination, a real database.

A PACS maintenance window lasts hours: the default schedule (back-off capped at
10 min, dead letter 48 h after the first failure) keeps trying for at least
24 h, and a destination that comes back gets its backlog at once, urgent
results first. The clock is the dispatcher's (``clock=``), so 20 hours take
milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select

from core import status
from core.dicomfile import read_dataset
from core.findings import ImageResult, SeriesResult
from node import dispatcher as dispatch
from node import executor as execution
from node.assembler import Assembler
from node.db import AuditEvent, AuditKind, Database, Delivery, DeliveryState, Result
from node.fakes import FakeDestination
from node.pipelines import PipelineOutput
from node.receiver import Receiver
from node.router import load_routing
from node.settings import DeliverySettings, Settings
from node.spool import Outbox, Spool
from tests.node.test_flow import ROUTING, TinyPipeline, _instance

HOUR = 3600.0


class Clock:
    """Epoch seconds that move only when the test says so."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class TriagedPipeline(TinyPipeline):
    """One result object per series, with the triage level the test chose for that series."""

    def __init__(self, triage: dict[str, str]) -> None:
        super().__init__()
        self.triage = triage

    def analyse(
        self, study_uid: str, series_uid: str, paths: Sequence[Path], predecessors: Sequence[Dataset] = ()
    ) -> PipelineOutput:
        output = super().analyse(study_uid, series_uid, paths, predecessors)
        level = self.triage[series_uid]
        output.result.images = [ImageResult(str(generate_uid()), triage=level)]  # type: ignore[arg-type]
        return output


class RecordingDestination(FakeDestination):
    """A fake destination that also keeps the order in which results arrived."""

    def __init__(self, down: bool = False) -> None:
        super().__init__(down=down)
        self.order: list[str] = []

    def send(self, paths):  # type: ignore[no-untyped-def]
        attempt = super().send(paths)
        if attempt.ok:
            self.order.extend(attempt.statuses)
        return attempt


def _node(tmp_path: Path, db: Database, clock: Clock, **delivery: object):  # type: ignore[no-untyped-def]
    settings = Settings(data_dir=tmp_path / "data", quiet_period={"default": 0.0}, delivery=delivery)
    routing_file = tmp_path / "routing.yaml"
    routing_file.write_text(ROUTING)
    receiver = Receiver(settings, db, Spool(settings.spool_dir, settings.tmp_dir))
    assembler = Assembler(db, load_routing(routing_file), {"fake"}, {}, ["pacs"])
    destination = RecordingDestination()
    dispatcher = dispatch.Dispatcher(settings, db, {"pacs": destination}, clock=clock)
    return settings, receiver, assembler, Outbox(settings.outbox_dir, settings.tmp_dir), dispatcher, destination


def _analyse(
    db: Database, receiver: Receiver, assembler: Assembler, outbox: Outbox, levels: Sequence[str]
) -> dict[str, str]:
    """One series per triage level, analysed in this order; SOP Instance UID of each result -> its level."""
    triage: dict[str, str] = {}
    for level in levels:
        series = generate_uid()
        triage[series] = level
        assert receiver(_instance(series, generate_uid())) == status.SUCCESS
    assembler.run_once()
    pipeline = TriagedPipeline(triage)
    while (job := execution.claim_job(db, "test", {"fake"})) is not None:
        execution.run_job(db, outbox, pipeline, job)
    with db.session() as s:
        return {
            r.sop_uid: triage[r.series_uid]
            for r in s.scalars(select(Result).where(Result.series_uid.in_(list(triage))))
        }


def _next_due(db: Database) -> float | None:
    with db.session() as s:
        return s.scalar(
            select(Delivery.next_attempt_at)
            .where(Delivery.state == DeliveryState.PENDING)
            .order_by(Delivery.next_attempt_at)
            .limit(1)
        )


def _states(db: Database) -> dict[DeliveryState, int]:
    with db.session() as s:
        states = s.scalars(select(Delivery.state)).all()
    return {state: states.count(state) for state in set(states)}


def _outage(db: Database, dispatcher: dispatch.Dispatcher, clock: Clock, hours: float) -> int:
    """Run the dispatcher at every due time for ``hours`` of simulated time; returns the passes."""
    end = clock.now + hours * HOUR
    passes = 0
    while True:
        dispatcher.run_once()
        passes += 1
        due = _next_due(db)
        if due is None or due > end:
            clock.now = end
            return passes
        clock.now = max(clock.now, due)


def test_default_schedule_keeps_trying_for_more_than_24_hours() -> None:
    policy = DeliverySettings()
    assert policy.max_attempts is None and policy.backoff_max == 600 and policy.give_up_after_hours >= 24
    dispatcher = dispatch.Dispatcher(Settings(), Database("sqlite://"), {})
    delays = [dispatcher.delay(n) for n in range(1, 200)]
    assert delays[:5] == [2, 4, 8, 16, 32] and max(delays) == 600  # 2 -> 512 s, then every 10 min
    # Attempts before the give-up time: the retries alone span the give-up time, every one at most 10 min apart.
    elapsed, attempts = 0.0, 0
    while elapsed < policy.give_up_after_hours * HOUR:
        attempts += 1
        elapsed += dispatcher.delay(attempts)
    assert attempts > 24 * 6 and elapsed >= 24 * HOUR


def test_destination_down_20_hours_gets_every_result_urgent_first_and_no_dead_letter(
    tmp_path: Path, db: Database
) -> None:
    clock = Clock()
    settings, receiver, assembler, outbox, dispatcher, destination = _node(tmp_path, db, clock)
    # Routine results are created first (lower ids): order by creation alone would send them first.
    levels = _analyse(
        db, receiver, assembler, outbox, ["routine", "routine", "priority", "urgent", "routine", "urgent"]
    )
    destination.down = True
    passes = _outage(db, dispatcher, clock, hours=20)
    assert DeliveryState.DEAD not in _states(db), _states(db)
    with db.session() as s:
        attempts = s.scalars(select(Delivery.attempts)).all()
        failed = s.scalar(select(AuditEvent.id).where(AuditEvent.kind == AuditKind.DEAD_LETTER))
    # 2 + 4 + ... + 512 s, then every 600 s for the rest of 20 h: about 128 attempts each, not 8.
    assert all(110 <= n <= 140 for n in attempts), attempts
    assert failed is None and passes < 200  # one pass per due time: simulated, not waited for

    destination.down = False
    back = clock.now
    clock.now = _next_due(db) or back  # the next retry finds the PACS back: at most 10 min later
    assert clock.now - back <= 600
    for _ in range(5):
        dispatcher.run_once()
    assert _states(db) == {DeliveryState.DONE: len(levels)}
    assert sorted(destination.received) == sorted(levels) and set(destination.received.values()) == {1}
    arrived = [levels[uid] for uid in destination.order]
    assert arrived == sorted(arrived, key=["urgent", "priority", "routine"].index), arrived


def test_backlog_goes_at_once_urgent_first_when_the_destination_returns(tmp_path: Path, db: Database) -> None:
    """Deliveries queued at different times have different back-offs; the first success makes all due now."""
    clock = Clock()
    settings, receiver, assembler, outbox, dispatcher, destination = _node(tmp_path, db, clock)
    destination.down = True
    levels: dict[str, str] = {}
    for level in ["routine", "routine", "urgent", "priority", "urgent"]:  # one every 7 simulated minutes
        levels.update(_analyse(db, receiver, assembler, outbox, [level]))
        _outage(db, dispatcher, clock, hours=7 / 60)
    _outage(db, dispatcher, clock, hours=3)
    with db.session() as s:
        due_times = set(s.scalars(select(Delivery.next_attempt_at)).all())
    assert len(due_times) == len(levels)  # each on its own schedule, up to 10 min away

    destination.down = False
    clock.now = min(due_times)  # the earliest retry finds the PACS back; the clock stands still from here
    for _ in range(4):
        dispatcher.run_once()
    assert _states(db) == {DeliveryState.DONE: len(levels)}, "the backlog waited for its own back-off"
    probe, *rest = [levels[uid] for uid in destination.order]
    assert len(rest) == len(levels) - 1
    assert rest == sorted(rest, key=["urgent", "priority", "routine"].index), (probe, rest)


def test_dead_letter_after_give_up_hours_then_retry_by_hand_starts_a_new_period(tmp_path: Path, db: Database) -> None:
    clock = Clock()
    settings, receiver, assembler, outbox, dispatcher, destination = _node(
        tmp_path, db, clock, give_up_after_hours=30, backoff_initial=60, backoff_max=1800
    )
    _analyse(db, receiver, assembler, outbox, ["routine"])
    destination.down = True
    _outage(db, dispatcher, clock, hours=29.4)
    assert _states(db) == {DeliveryState.PENDING: 1}
    _outage(db, dispatcher, clock, hours=1.0)
    assert _states(db) == {DeliveryState.DEAD: 1}
    with db.session() as s:
        delivery = s.scalar(select(Delivery))
        audit = s.scalar(select(AuditEvent.message).where(AuditEvent.kind == AuditKind.DEAD_LETTER))
    assert "failing for 30." in audit and "fake destination is down" in audit
    assert dispatch.retry_dead(db) == 1
    with db.session() as s:
        assert s.scalar(select(Delivery.first_failed_at)) is None  # a new period, not an instant dead letter
    clock.now += HOUR
    dispatcher.run_once()
    assert _states(db) == {DeliveryState.PENDING: 1}
    destination.down = False
    clock.now += HOUR
    dispatcher.run_once()
    assert _states(db) == {DeliveryState.DONE: 1} and delivery.id is not None


def test_max_attempts_when_set_still_makes_a_dead_letter(tmp_path: Path, db: Database) -> None:
    clock = Clock()
    settings, receiver, assembler, outbox, dispatcher, destination = _node(
        tmp_path, db, clock, max_attempts=4, backoff_initial=1, backoff_max=2
    )
    _analyse(db, receiver, assembler, outbox, ["routine"])
    destination.down = True
    _outage(db, dispatcher, clock, hours=1)
    with db.session() as s:
        delivery = s.scalar(select(Delivery))
    assert delivery.state == DeliveryState.DEAD and delivery.attempts == 4


def test_permanent_refusal_is_a_dead_letter_at_once(tmp_path: Path, db: Database) -> None:
    clock = Clock()
    settings, receiver, assembler, outbox, dispatcher, destination = _node(tmp_path, db, clock)
    _analyse(db, receiver, assembler, outbox, ["routine"])
    destination.down = destination.permanent = True
    dispatcher.run_once()
    with db.session() as s:
        delivery = s.scalar(select(Delivery))
    assert delivery.state == DeliveryState.DEAD and delivery.attempts == 1


def test_result_priority_is_the_most_urgent_image_triage() -> None:
    def output(*levels: str | None) -> PipelineOutput:
        images = [ImageResult(str(generate_uid()), triage=level) for level in levels]  # type: ignore[arg-type]
        return PipelineOutput(result=SeriesResult("cxr", "1.2", "1.2.3", [], images=images), objects=[], summary="")

    assert execution.result_priority(output("routine", "urgent", "priority")) == 0
    assert execution.result_priority(output("routine", "priority")) == 1
    assert execution.result_priority(output("routine")) == 2
    assert execution.result_priority(output(None)) is None and execution.result_priority(output()) is None


def test_invalid_delivery_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="give_up_after_hours"):
        DeliverySettings(give_up_after_hours=0)
    with pytest.raises(ValueError, match="max_attempts"):
        DeliverySettings(max_attempts=0)


def test_a_destination_that_answers_nothing_costs_two_connections_per_pass_not_one_per_study(
    tmp_path: Path, db: Database
) -> None:
    clock = Clock()
    settings, receiver, assembler, outbox, dispatcher, destination = _node(tmp_path, db, clock)
    _analyse(db, receiver, assembler, outbox, ["routine"] * 6)  # six studies: six sends per pass before
    destination.down = True
    dispatcher.run_once()
    assert destination.attempts == dispatch.UNANSWERED_IS_DOWN == 2
    with db.session() as s:
        rows = s.scalars(select(Delivery)).all()
    assert [(d.state, d.attempts) for d in rows] == [(DeliveryState.PENDING, 1)] * 6
    assert all(d.first_failed_at == clock.now and d.next_attempt_at == clock.now + 2 for d in rows)
    assert all("fake destination is down" in (d.last_error or "") for d in rows)


class ChokingDestination(RecordingDestination):
    """Answers nothing (like a crash of the peer) when one chosen object is in the batch; stores the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.poison: str | None = None

    def send(self, paths):  # type: ignore[no-untyped-def]
        import pydicom

        uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}
        if self.poison in uids:
            self.attempts += 1
            from node.destinations import DeliveryAttempt

            return DeliveryAttempt(ok=False, permanent=False, message="association aborted", statuses={})
        return super().send(paths)


def test_one_object_the_destination_chokes_on_does_not_hold_back_the_others(tmp_path: Path, db: Database) -> None:
    clock = Clock()
    settings, receiver, assembler, outbox, dispatcher, _ = _node(tmp_path, db, clock)
    destination = ChokingDestination()
    dispatcher.senders["pacs"] = destination
    levels = _analyse(db, receiver, assembler, outbox, ["urgent", "routine", "routine"])
    destination.poison = next(uid for uid, level in levels.items() if level == "urgent")  # first in every batch
    dispatcher.run_once()
    assert sorted(destination.order) == sorted(uid for uid in levels if uid != destination.poison)
    assert _states(db) == {DeliveryState.PENDING: 1, DeliveryState.DONE: 2}


class StatusDestination(RecordingDestination):
    """Answers each object with the status the test chose for it (success when none)."""

    def __init__(self, codes: dict[str, int]) -> None:
        super().__init__()
        self.codes = codes

    def send(self, paths):  # type: ignore[no-untyped-def]
        from node.destinations import DeliveryAttempt

        self.attempts += 1
        uids = [str(read_dataset(p, header_only=True).SOPInstanceUID) for p in paths]
        statuses = {uid: self.codes.get(uid, status.SUCCESS) for uid in uids}
        ok = all(code == status.SUCCESS for code in statuses.values())
        return DeliveryAttempt(ok=ok, permanent=False, message="answered per instance", statuses=statuses)


def test_each_instance_status_decides_its_delivery_a_warning_is_stored(tmp_path: Path, db: Database) -> None:
    clock = Clock()
    settings, receiver, assembler, outbox, dispatcher, _ = _node(tmp_path, db, clock)
    levels = _analyse(db, receiver, assembler, outbox, ["routine", "routine", "routine"])
    warned, refused, stored = list(levels)
    # 0xB007: data set does not match SOP class, stored anyway (a warning, PS3.4 B.2.3); 0xA700: out of resources.
    dispatcher.senders["pacs"] = StatusDestination({warned: 0xB007, refused: status.OUT_OF_RESOURCES})
    dispatcher.run_once()
    with db.session() as s:
        outcome = {r.sop_uid: d.state for d, r in s.execute(select(Delivery, Result).join(Result)).all()}
    assert outcome == {warned: DeliveryState.DONE, refused: DeliveryState.PENDING, stored: DeliveryState.DONE}


def test_deliveries_show_says_since_when_a_delivery_fails_and_when_it_becomes_a_dead_letter(
    tmp_path: Path, db: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    from node.cli import main as cli_main

    clock = Clock(start=datetime(2026, 12, 5, 8, 0, tzinfo=UTC).timestamp())
    settings, receiver, assembler, outbox, dispatcher, destination = _node(tmp_path, db, clock)
    _analyse(db, receiver, assembler, outbox, ["routine"])
    destination.down = True
    _outage(db, dispatcher, clock, hours=3)
    config = tmp_path / "cli.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(settings.data_dir), "database_url": db.url}))
    with db.session() as s:
        delivery_id = s.scalar(select(Delivery.id))
    assert cli_main(["--config", str(config), "deliveries", "show", str(delivery_id)]) == 0
    out = capsys.readouterr().out
    assert "failing since      2026-12-05 08:00:00" in out, out
    assert "dead letter after  2026-12-07 08:00:00" in out, out  # 48 h, the default
    assert "next try           2026-12-05 11:0" in out, out
    destination.down = False
    clock.now = _next_due(db) or clock.now
    dispatcher.run_once()
    assert cli_main(["--config", str(config), "deliveries", "show", str(delivery_id)]) == 0
    assert "failing since" not in capsys.readouterr().out  # delivered: no schedule
