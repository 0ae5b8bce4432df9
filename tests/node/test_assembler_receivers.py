"""Several receivers (``ainode serve`` processes, issue 17) share one PostgreSQL: each runs an assembler, and a series
must become one job, not one per receiver.

Found by tests/integration/scale/test_two_receivers_s3.py: both receivers' assemblers saw the same series ready,
both read it still ``receiving`` and both made a job, so the study got two SRs. The assembler now locks the series'
row while it decides; this test holds that lock as another receiver's assembler would and checks that the second
assembler, once the first one has queued the series, makes no job of its own.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select, update

from core import status
from node.assembler import Assembler
from node.db import Database, Job, Series, SeriesState
from node.receiver import Receiver
from node.router import load_routing
from node.settings import Settings
from node.spool import Spool
from tests.node.test_flow import ROUTING, _instance


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_a_second_assembler_waits_for_the_first_and_makes_no_second_job(tmp_path: Path, db: Database) -> None:
    settings = Settings(data_dir=tmp_path / "data", quiet_period={"default": 0.0})
    routing_file = tmp_path / "routing.yaml"
    routing_file.write_text(ROUTING)
    receiver = Receiver(settings, db, Spool(settings.spool_dir, settings.tmp_dir))
    series_uid = generate_uid()
    assert receiver(_instance(series_uid, generate_uid())) == status.SUCCESS
    second = Assembler(db, load_routing(routing_file), {"fake"}, {}, ["pacs"])

    with db.engine.connect() as first:  # the other receiver's assembler, deciding on the series
        transaction = first.begin()
        first.execute(select(Series.id).where(Series.series_uid == series_uid).with_for_update())
        done = threading.Event()
        runner = threading.Thread(target=lambda: (second.run_once(), done.set()))
        runner.start()
        time.sleep(0.5)
        assert not done.is_set(), "the second assembler did not wait for the series' row"
        first.execute(update(Series).where(Series.series_uid == series_uid).values(state=SeriesState.QUEUED))
        transaction.commit()
    runner.join(30)
    assert done.is_set()
    with db.session() as s:
        assert s.scalar(select(func.count(Job.id)).where(Job.series_uid == series_uid)) == 0
