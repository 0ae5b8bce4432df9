"""The real node process on PostgreSQL (fsync on), end to end, across a SIGKILL.

Every other test of the node as a process uses SQLite; a site that sets
``database_url`` gets this path: storescu sends radiographs, the node is killed
right after acknowledging them (their rows perhaps not yet committed), restarted,
and every one is recorded and analysed, its SR delivered to a real Orthanc
exactly once, with every row in PostgreSQL done.
"""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select

from node.db import Database, Delivery, DeliveryState, Instance, Job, JobState
from tests.helpers import OrthancServer, radiograph_copies, storescu
from tests.integration.nodeproc import NodeProcess

pytestmark = pytest.mark.integration

COUNT = 3


def test_node_on_postgresql_survives_a_kill_and_delivers_everything_once(
    tmp_path: Path, orthanc: OrthancServer, rg1_uncr: Path, postgres: str
) -> None:
    db = Database(postgres)
    from node.db import Base

    Base.metadata.drop_all(db.engine)  # the session's database: start from an empty schema
    files = radiograph_copies(rg1_uncr, tmp_path / "in", COUNT)
    node = NodeProcess(
        tmp_path / "node",
        database_url=postgres,
        quiet_period={"default": 10, "CR": 2.0},
        destinations={
            "orthanc": {"type": "dicom", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}
        },
    )
    node.start()
    try:
        sent = storescu(files, "127.0.0.1", node.port, "AINODE")
        assert sent.returncode == 0 and "E: " not in sent.stderr, sent.stderr
        node.kill()  # acknowledged, not yet analysed (2 s quiet period)
        # Every acknowledged instance is in the spool; its row may not be committed yet (rows follow the
        # acknowledgement in batches): the restart records what has none.
        assert len(list((node.data_dir / "spool").rglob("*.dcm"))) == COUNT
        with db.session() as s:
            assert s.scalar(select(func.count(Job.id))) == 0
            assert s.scalar(select(func.count(Instance.id))) <= COUNT
        node.start()
        deadline = time.monotonic() + 120
        while True:
            with db.session() as s:
                done = s.scalar(select(func.count(Delivery.id)).where(Delivery.state == DeliveryState.DONE))
                jobs = s.scalars(select(Job)).all()
            if done == COUNT and len(jobs) == COUNT and all(j.state == JobState.DONE for j in jobs):
                break
            assert time.monotonic() < deadline, node.log()
            time.sleep(0.3)
        with db.session() as s:
            assert s.scalar(select(func.count(Instance.id))) == COUNT
        listed = node.cli("jobs")
        assert listed.returncode == 0 and listed.stdout.count("done") >= COUNT, listed.stdout + listed.stderr
    finally:
        node.stop()
        db.dispose()
    srs = orthanc.wait_for_instances(modality="SR", count=COUNT, timeout=30)
    studies = {str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files}
    assert sorted(i.study_instance_uid for i in srs) == sorted(studies)  # each once, in its own study
