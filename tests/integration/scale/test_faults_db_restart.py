"""PostgreSQL restarted under load (issue 17): receivers queue (or answer 0xA700) meanwhile and recover; nothing
acknowledged is lost.

One receiver and two workers on PostgreSQL. The database is stopped (fast shutdown: every connection is cut) while
radiographs are being sent, and started again five seconds later. Every instance the receiver acknowledged then
has its row, every such study its SR in Orthanc, once; a refusal, if any, is 0xA700 (out of resources, the
sender retries later); the workers are still there and studies sent afterwards are analysed as before. No log
holds a traceback: each loop of the receiver says the outage in one line when it starts (and one when it ends).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from node.db import Instance, JobState
from tests.helpers import pynetdicom_store, radiograph_copies
from tests.integration.scale.cluster import Cluster, Services
from tests.integration.scale.quiet import assert_quiet_fault, loud_lines, mark
from tests.integration.scale.studies import assert_one_sr_per_study

pytestmark = pytest.mark.integration

DURING = 6
OUTAGE_SECONDS = 5.0
#: The receiver's lines for one outage: the recorder, assembler, publisher, dispatcher, audit (and retention).
RECEIVER_LINES = 7
#: A worker's: one per job whose lease renewal or claim met the outage (most see none).
WORKER_LINES = 3


def _send(port: int, files: list[Path], pause: float = 0.0) -> dict[str, int | None]:
    """C-STORE each file on an association of its own, ``pause`` apart; the status of each SOP Instance UID."""
    statuses: dict[str, int | None] = {}
    for path in files:
        ds = pydicom.dcmread(path)
        try:
            (statuses[str(ds.SOPInstanceUID)],) = pynetdicom_store(port, [ds])
        except AssertionError:  # the association itself was refused
            statuses[str(ds.SOPInstanceUID)] = None
        time.sleep(pause)
    return statuses


def test_database_restart_loses_nothing_acknowledged(
    services: Services, cluster: Callable[..., Cluster], tmp_path: Path, rg1_uncr: Path
) -> None:
    kit = cluster(services)
    receiver = kit.add_receiver()
    workers = kit.add_workers(2)
    warm = radiograph_copies(rg1_uncr, tmp_path / "warm", 2)
    assert set(_send(receiver.port, warm).values()) == {0}
    kit.wait_delivered(timeout=60)

    during = radiograph_copies(rg1_uncr, tmp_path / "during", DURING)
    statuses: dict[str, int | None] = {}
    sender = threading.Thread(target=lambda: statuses.update(_send(receiver.port, during, pause=0.5)))
    quiet_since = mark(kit)
    services.postgres_down()
    try:
        sender.start()
        time.sleep(OUTAGE_SECONDS)
    finally:
        services.postgres_up()
    sender.join(120)
    assert not sender.is_alive()
    after = radiograph_copies(rg1_uncr, tmp_path / "after", 2)
    after_statuses = _send(receiver.port, after)
    assert set(after_statuses.values()) == {0}, f"the receiver did not recover: {after_statuses}"

    assert set(statuses.values()) <= {0x0000, 0xA700}, f"answers while the database was down: {statuses}"
    acknowledged = {uid for uid, status in statuses.items() if status == 0} | set(after_statuses)
    assert len(acknowledged) > len(after_statuses), "nothing was sent during the outage"
    kit.wait(
        "a row for every acknowledged instance",
        lambda: acknowledged <= set(_recorded(kit)),
        90,
    )
    kit.wait_delivered(timeout=180)
    assert all(j.state == JobState.DONE for j in kit.jobs()), kit.diagnostics()
    assert all(w.alive for w in workers), "a worker did not survive the database restart:\n" + kit.diagnostics()
    studies = {i.study_uid for i in _instances(kit) if i.sop_uid in acknowledged}
    assert_one_sr_per_study(services.orthanc, studies)
    said = loud_lines(kit, quiet_since)["receiver1"]
    assert sum("database unreachable" in line for line in said) >= 2, "\n".join(said)  # the outage is said
    assert_quiet_fault(kit, quiet_since, RECEIVER_LINES, WORKER_LINES)


def _instances(kit: Cluster) -> list[Instance]:
    with kit.db.session() as s:
        return list(s.scalars(select(Instance)).all())


def _recorded(kit: Cluster) -> list[str]:
    return [i.sop_uid for i in _instances(kit)]
