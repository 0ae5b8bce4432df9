"""Two receivers on different data folders, S3 storage (moto's server), workers reading from S3 only (issue 17).

Each receiver keeps what it acknowledges in the bucket (its own data folder holds no image); two workers, each with
a data folder of its own that never holds a receiver's file, analyse every study from the bucket and put their
results there; the receivers' dispatchers deliver them. Every study sent to either receiver has one SR in Orthanc.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from node.db import Instance, JobState, Result
from tests.helpers import radiograph_copies, storescu
from tests.helpers.s3 import MotoServer
from tests.integration.scale.cluster import Cluster, Services
from tests.integration.scale.studies import assert_one_sr_per_study, study_uids

pytestmark = pytest.mark.integration

PER_RECEIVER = 3


def test_two_receivers_and_workers_share_only_the_bucket(
    services: Services, moto: MotoServer, cluster: Callable[..., Cluster], tmp_path: Path, rg1_uncr: Path
) -> None:
    bucket = "ainode-two-receivers"
    moto.create_bucket(bucket)
    kit = cluster(services, storage={**moto.storage_settings, "bucket": bucket})
    receivers = [kit.add_receiver(), kit.add_receiver()]
    assert receivers[0].data_dir != receivers[1].data_dir
    workers = kit.add_workers(2)

    sent: list[Path] = []
    for number, receiver in enumerate(receivers, 1):
        files = radiograph_copies(rg1_uncr, tmp_path / f"to-receiver{number}", PER_RECEIVER)
        answer = storescu(files, "127.0.0.1", receiver.port, "AINODE")
        assert answer.returncode == 0 and "E: " not in answer.stderr, answer.stderr
        sent += files

    kit.wait_jobs(2 * PER_RECEIVER, timeout=120)
    kit.wait_delivered(timeout=120)
    jobs = kit.jobs()
    # One job per series, whichever receiver's assembler saw it first (both scan the shared database).
    assert len(jobs) == 2 * PER_RECEIVER, [(j.id, j.series_uid) for j in jobs]
    assert all(j.state == JobState.DONE for j in jobs), kit.diagnostics()
    assert_one_sr_per_study(services.orthanc, study_uids(sent))

    with kit.db.session() as s:
        instance_refs = list(s.scalars(select(Instance.path)).all())
        result_refs = list(s.scalars(select(Result.path)).all())
    assert len(instance_refs) == 2 * PER_RECEIVER
    assert all(ref.startswith(f"s3://{bucket}/") for ref in instance_refs + result_refs), instance_refs + result_refs
    keys = set(moto.keys(bucket))
    assert all(ref.removeprefix(f"s3://{bucket}/") in keys for ref in instance_refs), (instance_refs, sorted(keys))
    # Nothing but the bucket links the roles: no image or result file in any process's data folder.
    for folder in [r.data_dir for r in receivers] + [w.workdir / "data" for w in workers]:
        files = [p for p in folder.rglob("*") if p.is_file() and p.suffix in (".dcm", ".json", "")]
        dicom = [p for p in files if p.suffix == ".dcm" or p.read_bytes()[128:132] == b"DICM"]
        assert not dicom, f"DICOM files in {folder}: {dicom}"
    ran_on = {str(j.worker) for j in kit.jobs()}
    assert all(any(w.owns(int(pid.rsplit(":", 1)[1])) for w in workers) for pid in ran_on), ran_on
