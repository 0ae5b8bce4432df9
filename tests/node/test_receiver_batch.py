"""Rows follow acknowledgements in batches (the receiver's recorder), on a real database.

A C-STORE is answered once its file is durable in the spool; the recorder commits the
rows of what was acknowledged afterwards, several instances per transaction. These tests
hold the database's write lock (another connection, as a long transaction would) or take
a PostgreSQL server's connections away, and check what must still hold: nothing
acknowledged is lost or left unrecorded, the assembler never schedules a series without an
acknowledged instance, re-sends in one batch are counted as re-sends, and a queue that is
full refuses with 0xA700 instead of growing.
"""

from __future__ import annotations

import logging
import resource
import sqlite3
import struct
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import func, select, text

from core import status
from dimse.scp import StoreRequest
from node.assembler import Assembler
from node.db import Base, Database, Instance, Job, Series, SeriesState
from node.receiver import Receiver
from node.router import load_routing, routing_tags
from node.settings import Settings
from node.spool import Outbox, Spool
from tests.helpers.postgres import PostgresServer
from tests.node.test_flow import ROUTING, TinyPipeline, _again, _instance, _request, _run_all_jobs, _sent


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", quiet_period={"default": 0.0})


def _receiver(settings: Settings, db: Database, **options: float) -> Receiver:
    """A receiver as the service runs it: recorder started; the routing tags recorded."""
    routing = settings.data_dir.parent / "routing.yaml"
    routing.write_text(ROUTING)
    receiver = Receiver(
        settings,
        db,
        Spool(settings.spool_dir, settings.tmp_dir),
        header_tags=routing_tags(load_routing(routing)),
        **options,  # type: ignore[arg-type]
    )
    receiver.start()
    return receiver


@contextmanager
def _writes_held(db: Database) -> Iterator[None]:
    """Another connection holds the database's write lock: every write waits (reads go on)."""
    if db.is_sqlite:
        holder = sqlite3.connect(db.engine.url.database or "", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    with db.engine.connect() as conn:
        conn.execute(text("LOCK TABLE series, instances IN EXCLUSIVE MODE"))
        try:
            yield
        finally:
            conn.rollback()


def _rows(db: Database) -> dict[str, Instance]:
    with db.session() as s:
        return {i.sop_uid: i for i in s.scalars(select(Instance))}


def _series(db: Database, uid: str) -> Series:
    with db.session() as s:
        row = s.scalar(select(Series).where(Series.series_uid == uid))
        assert row is not None
        return row


def test_acknowledged_before_the_row_and_the_assembler_waits_for_it(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    receiver = _receiver(settings, db)
    routing = tmp_path / "routing.yaml"
    assembler = Assembler(db, load_routing(routing), {"fake"}, {}, ["pacs"], unrecorded=receiver.unrecorded_series)
    try:
        study, series = generate_uid(), generate_uid()
        assert receiver(_instance(series, study)) == status.SUCCESS
        assert receiver.flush(30)
        later = [_instance(series, study) for _ in range(2)]
        with _writes_held(db):
            # Answered while no row can be written: the acknowledgement waits for the file only.
            assert [receiver(r) for r in later] == [status.SUCCESS] * 2
            assert receiver.unrecorded() == 2 and receiver.unrecorded_series() == {series}
            assert all(settings.spool_dir.joinpath(study, series, f"{r.sop_instance_uid}.dcm").is_file() for r in later)
            assert len(_rows(db)) == 1
            # The series is past its quiet period by its recorded row, but two acknowledged instances have none.
            assert assembler.run_once() == 0.05
            with db.session() as s:
                assert s.scalar(select(func.count(Job.id))) == 0
        assert receiver.flush(60)
        assert receiver.unrecorded() == 0 and receiver.unrecorded_series() == set()
        assert _series(db, series).instance_count == 3
        assembler.run_once()
        pipeline = TinyPipeline()
        assert _run_all_jobs(db, Outbox(settings.outbox_dir, settings.tmp_dir), pipeline) == 1
        assert pipeline.calls[0][:2] == (series, 3)
    finally:
        assert receiver.stop() == 0


def test_one_batch_counts_new_instances_new_series_and_resends_as_one_by_one_would(
    db: Database, settings: Settings
) -> None:
    receiver = _receiver(settings, db)
    try:
        study, a, b = generate_uid(), generate_uid(), generate_uid()
        a1, a2, b1 = _instance(a, study), _instance(a, study), _instance(b, study, Modality="MR")
        with _writes_held(db):  # all of these wait for one commit
            for request in (a1, a2, _again(a1), b1):
                assert receiver(request) == status.SUCCESS
            assert receiver.unrecorded() == 4
        assert receiver.flush(60)
        rows = _rows(db)
        assert rows[a1.sop_instance_uid].times_received == 2 and rows[a2.sop_instance_uid].times_received == 1
        assert _series(db, a).instance_count == 2 and _series(db, b).instance_count == 1
        assert _series(db, b).modality == "MR"
        # The instance that opened each series carries what routing reads; the others need not.
        assert rows[b1.sop_instance_uid].header is not None
        # A batch on series still receiving (one UPDATE, one INSERT) beside a re-send of an instance recorded before.
        a3 = _instance(a, study)
        with _writes_held(db):
            assert receiver(a3) == status.SUCCESS
            assert receiver(_again(a2)) == status.SUCCESS
        assert receiver.flush(60)
        rows = _rows(db)
        assert _series(db, a).instance_count == 3 and _series(db, a).state == SeriesState.RECEIVING
        assert rows[a2.sop_instance_uid].times_received == 2 and rows[a3.sop_instance_uid].times_received == 1
        assert rows[a2.sop_instance_uid].digest is not None  # a re-send is told apart by its content
        assert Path(rows[a3.sop_instance_uid].path).read_bytes() == _sent(a3)
        assert rows[a3.sop_instance_uid].size == len(_sent(a3))
    finally:
        receiver.stop()


def test_stopping_records_everything_acknowledged(db: Database, settings: Settings) -> None:
    receiver = _receiver(settings, db, batch_delay=0.5)  # a long wait: the stop must not leave the rows
    series = generate_uid()
    requests = [_instance(series, generate_uid()) for _ in range(5)]
    assert [receiver(r) for r in requests] == [status.SUCCESS] * 5
    assert receiver.stop() == 0
    assert set(_rows(db)) == {r.sop_instance_uid for r in requests}
    # Stopped, it records each row before answering, as a receiver that was never started does.
    late = _instance(series, generate_uid())
    assert receiver(late) == status.SUCCESS and late.sop_instance_uid in _rows(db)


def test_a_database_outage_is_ridden_out_from_the_spool_then_refused_when_the_queue_is_full(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL stops taking connections: acknowledged instances wait for their rows; past the limit, 0xA700."""
    server = PostgresServer().start()
    db = Database(server.url)
    Base.metadata.drop_all(db.engine)
    db.create_schema()
    settings = Settings(data_dir=tmp_path / "data", quiet_period={"default": 0.0})
    receiver = _receiver(settings, db, max_unrecorded=3)

    def outage(on: bool) -> None:
        server.psql(f"ALTER DATABASE {server.database} ALLOW_CONNECTIONS {'false' if on else 'true'}")
        if on:
            server.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{server.database}'")

    try:
        study, series = generate_uid(), generate_uid()
        assert receiver(_instance(series, study)) == status.SUCCESS
        assert receiver.flush(30)
        outage(True)
        waiting = [_instance(series, study) for _ in range(3)]
        with caplog.at_level(logging.ERROR, logger="ainode.receiver"):
            assert [receiver(r) for r in waiting] == [status.SUCCESS] * 3
            refused = _instance(series, study)
            assert receiver(refused) == status.OUT_OF_RESOURCES
            assert receiver.flush(1.0) is False  # the rows cannot be written
        assert "safe in the spool" in caplog.text and "wait for the database" in caplog.text
        spooled = {p.stem for p in settings.spool_dir.rglob("*.dcm")}
        assert {r.sop_instance_uid for r in waiting} <= spooled and refused.sop_instance_uid not in spooled
        outage(False)
        assert receiver.flush(60), "the rows were not written once the database came back"
        assert _series(db, series).instance_count == 4
        assert receiver(_again(refused)) == status.SUCCESS  # the sender's retry is taken
        assert receiver.flush(30)
        # Stopped during an outage: the rows still waiting are recorded from the spool at the next start.
        outage(True)
        unrecorded = [_instance(series, study) for _ in range(2)]
        assert [receiver(r) for r in unrecorded] == [status.SUCCESS] * 2
        assert receiver.stop(timeout=15) == 2
        outage(False)
        restarted = Receiver(settings, db, Spool(settings.spool_dir, settings.tmp_dir))
        assert restarted.recover_spool() == 2
        assert set(_rows(db)) == spooled | {refused.sop_instance_uid} | {r.sop_instance_uid for r in unrecorded}
        assert _series(db, series).instance_count == 7
    finally:
        receiver.stop()
        db.dispose()
        server.stop()


def _large_instance(folder: Path, series_uid: str, sop_uid: str, pixel_bytes: int) -> StoreRequest:
    """A CT whose Pixel Data is ``pixel_bytes`` long, written as the SCP writes a received file (sparse zeros)."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    del ds.PixelData
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    path = folder / f".incoming-scp-{generate_uid()}.dcm"
    with open(path, "wb") as fh:
        fh.write(buffer.getvalue())
        fh.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_bytes))  # explicit VR LE, OW: long length
        fh.truncate(fh.tell() + pixel_bytes)
        size = fh.tell() + pixel_bytes
    return StoreRequest(
        calling_ae="STORESCU",
        peer_address="127.0.0.1",
        peer_port=40000,
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        path=path,
        size=size,
    )


def test_a_500_mib_instance_is_kept_without_reading_it_into_memory(db: Database, settings: Settings) -> None:
    receiver = _receiver(settings, db)
    series, sop = generate_uid(), generate_uid()
    try:
        # The same instance twice: the second is a re-send, whose content digest is taken from the file.
        big, again = (_large_instance(receiver.spool.tmp_dir, series, sop, 500 << 20) for _ in range(2))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tracemalloc.start()
        try:
            assert receiver(big) == status.SUCCESS
            assert receiver.flush(60)
            assert receiver(again) == status.SUCCESS
            assert receiver.flush(60)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
        assert peak < 16 << 20, f"{peak / 2**20:.0f} MiB allocated for a 500 MiB instance"
        assert grown < 100 << 20, f"peak RSS grew by {grown / 2**20:.0f} MiB for a 500 MiB instance"
        kept = _rows(db)[sop]
        assert kept.size == big.size and Path(kept.path).stat().st_size == big.size
        assert kept.times_received == 2 and kept.digest is not None
        assert not big.path.exists() and not again.path.exists()  # moved, not copied
    finally:
        receiver.stop()


def test_identifiers_past_the_first_pages_are_found(db: Database, settings: Settings) -> None:
    """A large element before the UIDs (a private block here) moves them past what is read first."""
    receiver = _receiver(settings, db)
    try:
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        block = ds.private_block(0x0009, "AINODE TEST", create=True)
        block.add_new(0x01, "OB", b"\x01" * 200_000)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        request = _request(buffer.getvalue(), _instance(generate_uid(), generate_uid()))
        request = StoreRequest(**{**request.__dict__, "sop_instance_uid": str(ds.SOPInstanceUID)})
        assert receiver(request) == status.SUCCESS
        assert receiver.flush(30)
        row = _rows(db)[str(ds.SOPInstanceUID)]
        assert (row.study_uid, row.series_uid) == (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))
        assert _series(db, str(ds.SeriesInstanceUID)).modality == "CT"
    finally:
        receiver.stop()


def test_flush_commits_at_once_and_waits_only_for_what_was_queued_before(db: Database, settings: Settings) -> None:
    """What an association's release waits for: its rows, committed without the batch delay."""
    receiver = _receiver(settings, db, batch_delay=30.0)
    try:
        series = generate_uid()
        first = [_instance(series, generate_uid()) for _ in range(3)]
        assert [receiver(r) for r in first] == [status.SUCCESS] * 3
        assert receiver.flush(10)  # well before the 30 s the recorder would otherwise wait for more
        assert {r.sop_instance_uid for r in first} <= set(_rows(db))
        with _writes_held(db):
            assert receiver(_instance(series, generate_uid())) == status.SUCCESS
            assert receiver.flush(0.5) is False  # its row cannot be written yet
        assert receiver.flush(30)
        assert _series(db, series).instance_count == 4
    finally:
        receiver.stop()
