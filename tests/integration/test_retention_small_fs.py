"""Retention on a small file system: the real node frees space by policy and keeps answering 0x0000.

The test makes a small file system (``tests.helpers.smallfs``), fills it with
ballast to just above the retention watermark, then sends more delivered
studies than the free space could ever hold. The node analyses them, delivers
their results to a real Orthanc, and its retention loop removes the delivered
files once free space falls under the watermark, so every C-STORE succeeds.
Meanwhile two series are unfinished and must survive: a CT series still
receiving (a long quiet period) and a radiograph whose result waits for a
destination that is down.
"""

from __future__ import annotations

import copy
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from node.db import AuditEvent, AuditKind, Delivery, DeliveryState, Instance, Job, JobState, Result
from tests.helpers import OrthancServer, free_port, pynetdicom_store
from tests.helpers.smallfs import small_file_systems
from tests.integration.nodeproc import NodeProcess
from tests.integration.soakkit import ct_template, small_radiograph_template

FS_MB = 48
WATERMARK_PERCENT = 30
ROUNDS, PER_ROUND = 10, 4  # radiographs of about 1 MB: 40 MB sent, about twice the free space

ROUTING = """
rules:
  - name: held
    pipeline: cxr
    destinations: [down]
    match: {all: [{attribute: Modality, one_of: [DX]}, {attribute: StudyDescription, regex: HOLD}]}
  - name: chest
    pipeline: cxr
    destinations: []
    match: {all: [{attribute: Modality, one_of: [DX]}]}
"""


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    server = OrthancServer(tmp_path / "orthanc").start()
    try:
        yield server
    finally:
        server.stop()


def _series(template: pydicom.Dataset, count: int, description: str | None = None) -> list[pydicom.Dataset]:
    study, series = generate_uid(), generate_uid()
    out = []
    for _ in range(count):
        ds = copy.deepcopy(template)  # Dataset(template) would share its elements: a change would reach all
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if description:
            ds.StudyDescription = description
        out.append(ds)
    return out


def _free(fs: Path) -> float:
    usage = shutil.disk_usage(fs)
    return usage.free / usage.total


def _wait(condition, timeout: float, what: str, node: NodeProcess) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{node.log()}"
        time.sleep(0.2)


def test_watermark_frees_space_by_policy_node_keeps_answering_and_unfinished_is_kept(
    tmp_path: Path, orthanc: OrthancServer
) -> None:
    template = small_radiograph_template(tmp_path / "in", size=700)
    routing = tmp_path / "routing.yaml"
    routing.write_text(ROUTING)
    with small_file_systems(tmp_path) as make:
        fs = make("fs", FS_MB)
        node = NodeProcess(
            tmp_path / "node",
            destinations={
                "pacs": {
                    "type": "dicom",
                    "ae_title": orthanc.aet,
                    "host": "127.0.0.1",
                    "port": orthanc.dicom_port,
                    "timeout": 5,
                },
                "down": {"type": "dicom", "ae_title": "DOWN", "host": "127.0.0.1", "port": free_port(), "timeout": 2},
            },
            default_destinations=["pacs"],
            routing_file=str(routing),
            data_dir=str(fs / "data"),
            quiet_period={"default": 0.3, "CT": 3600.0},
            delivery={"backoff_initial": 0.5, "backoff_max": 2.0, "max_attempts": None},
            retention={"keep_hours": 24, "min_free_percent": WATERMARK_PERCENT, "interval_seconds": 0.5},
        )
        node.data_dir = fs / "data"
        node.start()
        db = node.database()
        try:
            # Unfinished: a CT series still receiving, a radiograph whose destination is down.
            receiving = _series(ct_template(), 1)
            held = _series(template, 1, description="HOLD chest")
            assert pynetdicom_store(node.port, receiving) == [0] and pynetdicom_store(node.port, held) == [0]
            node.wait_jobs(1)
            _wait(lambda: node.delivery_attempts() >= 1, 30, "the held result's first failed delivery", node)

            # Ballast: free space just above the watermark, far less than what will be sent.
            ballast = fs / "ballast"
            target = (WATERMARK_PERCENT / 100 + 0.16) * shutil.disk_usage(fs).total
            ballast.write_bytes(b"\0" * int(shutil.disk_usage(fs).free - target))
            free_at_start = shutil.disk_usage(fs).free
            statuses: list[int | None] = []
            sent = 0
            for round_ in range(ROUNDS):
                batch = _series(template, PER_ROUND)
                statuses += pynetdicom_store(node.port, batch)
                sent += sum(len(ds.PixelData) for ds in batch)
                node.wait_jobs(round_ + 2, timeout=60)

                def delivered() -> bool:
                    with db.session() as s:
                        return not s.scalar(
                            select(func.count())
                            .select_from(Delivery)
                            .where(Delivery.destination == "pacs", Delivery.state != DeliveryState.DONE)
                        )

                _wait(delivered, 60, f"round {round_}'s results delivered", node)
                # Each round lands under the watermark at most briefly: the loop purges within a pass.
                _wait(lambda: _free(fs) >= WATERMARK_PERCENT / 100, 30, "free space back above the watermark", node)
            assert statuses == [0] * ROUNDS * PER_ROUND, [hex(s) if s is not None else s for s in statuses]
            assert sent > 1.5 * free_at_start  # impossible without retention

            with db.session() as s:
                rows = {r.sop_uid: r for r in s.scalars(select(Instance))}
                held_result = s.scalar(select(Result).where(Result.series_uid == held[0].SeriesInstanceUID))
                held_delivery = s.scalar(select(Delivery).where(Delivery.result_id == held_result.id))
                purged_results = s.scalar(select(func.count()).select_from(Result).where(Result.purged_at.is_not(None)))
                audit = s.scalars(select(AuditEvent.message).where(AuditEvent.kind == AuditKind.PURGED)).all()
                jobs = s.scalars(select(Job.state)).all()
            # Nothing unfinished went: the receiving CT, the held radiograph and its undelivered result.
            for ds in receiving + held:
                row = rows[ds.SOPInstanceUID]
                assert row.purged_at is None and Path(row.path).is_file(), ds.SOPInstanceUID
            assert held_delivery.state == DeliveryState.PENDING and held_delivery.attempts >= 1
            assert held_result.purged_at is None and Path(held_result.path).is_file()
            # Delivered studies went by the watermark rule (younger than keep_hours); their rows stay.
            purged = [r for r in rows.values() if r.purged_at is not None]
            assert len(purged) >= ROUNDS * PER_ROUND // 2 and purged_results >= ROUNDS // 2
            assert not any(Path(r.path).exists() for r in purged)
            assert len(rows) == ROUNDS * PER_ROUND + 2
            assert audit and all("watermark:" in (m or "") and "age:" not in (m or "") for m in audit), audit
            assert set(jobs) == {JobState.DONE}

            listing = node.cli("purge", "--dry-run")
            assert listing.returncode == 0, listing.stderr
            assert "2 series and 1 result(s) unfinished" in listing.stdout, listing.stdout
            ballast.unlink()
        finally:
            db.dispose()
            node.stop()
        assert "Traceback" not in node.log()
        assert "under the retention watermark" not in node.log()  # space could always be freed
        assert os.path.isdir(fs / "data" / "spool")
