"""A node on S3 storage (moto's server on loopback): received, analysed and delivered through the bucket.

``executor: local``, ``storage.type: s3``: storescu sends a chest radiograph, the instance is an
object in the bucket (and no file is left in the node's spool once its row is committed), the job
reads it from the bucket, the SR written to the bucket reaches Orthanc, and ``ainode purge``
deletes the objects. With the object store down a C-STORE is refused with 0xA700, the node keeps
answering, and the same instance sent again once the store is back is kept and analysed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from node.db import Instance, JobState, Result
from tests.helpers import OrthancServer, echoscu, pynetdicom_store, radiograph_copies, storescu
from tests.helpers.s3 import MotoServer
from tests.integration.nodeproc import NodeProcess

BUCKET = "ainode-test"
OUT_OF_RESOURCES = 0xA700


@pytest.fixture
def moto() -> Iterator[MotoServer]:
    with MotoServer() as server:
        server.create_bucket(BUCKET)
        yield server


def _node(workdir: Path, moto: MotoServer, orthanc: OrthancServer) -> NodeProcess:
    return NodeProcess(
        workdir,
        destinations={
            "orthanc": {"type": "dicom", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}
        },
        storage={**moto.storage_settings, "bucket": BUCKET, "prefix": "node1/"},
        # Purged by the test's own `ainode purge`, not by the loop in the middle of its checks.
        retention={"keep_hours": 0, "interval_seconds": 3600},
    )


def _rows(node: NodeProcess) -> tuple[list[str], list[str]]:
    db = node.database()
    try:
        with db.session() as s:
            return list(s.scalars(select(Instance.path))), list(s.scalars(select(Result.path)))
    finally:
        db.dispose()


def test_radiograph_is_kept_analysed_and_delivered_through_the_bucket_then_purged(
    tmp_path: Path, rg1_uncr: Path, orthanc: OrthancServer, moto: MotoServer
) -> None:
    node = _node(tmp_path / "node", moto, orthanc).start()
    try:
        sent = storescu([rg1_uncr], "127.0.0.1", node.port, "AINODE")
        assert sent.returncode == 0, sent.stderr
        ds = pydicom.dcmread(rg1_uncr, stop_before_pixels=True)
        key = f"node1/spool/{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
        assert key in moto.keys(BUCKET, "node1/spool/")  # acknowledged: the PUT is done
        [job] = node.wait_jobs(1, timeout=120)
        assert job.state == JobState.DONE, job.error
        [sr] = orthanc.wait_for_instances(study_uid=str(ds.StudyInstanceUID), modality="SR", timeout=60)
        node.wait_delivered()
        instances, results = _rows(node)
        assert instances == [f"s3://{BUCKET}/{key}"]
        assert len(results) == 1 and results[0].startswith(f"s3://{BUCKET}/node1/outbox/{ds.StudyInstanceUID}/")
        assert results[0].removeprefix(f"s3://{BUCKET}/") in moto.keys(BUCKET, "node1/outbox/")
        # The node's own folders hold no instance and no result: the bucket is the store.
        assert not list((node.data_dir / "spool").rglob("*.dcm"))
        assert not list((node.data_dir / "outbox").rglob("*.dcm"))
        purged = node.cli("purge")
        assert purged.returncode == 0, purged.stderr
        assert "purged 2 file(s)" in purged.stdout, purged.stdout
        assert moto.keys(BUCKET) == []
    finally:
        node.stop()
    assert "Traceback" not in node.log()


def test_store_down_refuses_with_out_of_resources_and_the_resend_is_kept_once_it_is_back(
    tmp_path: Path, rg1_uncr: Path, orthanc: OrthancServer, moto: MotoServer
) -> None:
    [first, second] = radiograph_copies(rg1_uncr, tmp_path / "in", 2)
    node = _node(tmp_path / "node", moto, orthanc).start()
    try:
        moto.stop()
        started = time.monotonic()
        assert pynetdicom_store(node.port, [pydicom.dcmread(first)]) == [OUT_OF_RESOURCES]
        took = time.monotonic() - started
        assert echoscu("127.0.0.1", node.port, "AINODE", "STORESCU").returncode == 0  # still serving
        assert _rows(node) == ([], [])  # nothing recorded for what was refused
        assert node.log().count("object storage PUT of node1/spool/") == 1, node.log()
        moto.start()  # moto keeps nothing across a restart: an empty server, the bucket made again
        moto.create_bucket(BUCKET)
        for path in (first, second):
            again = storescu([path], "127.0.0.1", node.port, "AINODE")
            assert again.returncode == 0, again.stderr
        jobs = node.wait_jobs(2, timeout=120)
        assert [j.state for j in jobs] == [JobState.DONE] * 2, [j.error for j in jobs]
        study = str(pydicom.dcmread(first, stop_before_pixels=True).StudyInstanceUID)
        orthanc.wait_for_instances(study_uid=study, modality="SR", timeout=60)
        assert len(moto.keys(BUCKET, "node1/spool/")) == 2
    finally:
        node.stop()
    assert "Traceback" not in node.log()
    print(f"refusal with the object store down took {took:.1f} s")
