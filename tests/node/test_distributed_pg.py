"""A worker whose PostgreSQL goes away in the middle of a job (issue 17): it keeps the job (and so its message),
waits with back-off, and ends the job once the database answers again, without counting a new start.

The database's connections are cut and new ones refused for a few seconds (what a PostgreSQL restart does to
its clients), on a server of this test's own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from pydicom import Dataset
from sqlalchemy import select

from node import distributed
from node.db import Database, Job, JobState, Result
from node.pipelines import PipelineOutput
from node.settings import Settings
from node.spool import Outbox
from tests.helpers import PostgresServer
from tests.node.test_flow import TinyPipeline


@pytest.fixture
def server() -> Iterator[PostgresServer]:
    pg = PostgresServer()
    try:
        pg.start()
        yield pg
    finally:
        pg.stop()


class CutsTheDatabase(TinyPipeline):
    """The first analysis cuts the database off (connections ended, new ones refused) for ``seconds``."""

    def __init__(self, server: PostgresServer, seconds: float) -> None:
        super().__init__()
        self.server, self.seconds = server, seconds

    def analyse(
        self, study_uid: str, series_uid: str, paths: Sequence[Path], predecessors: Sequence[Dataset] = ()
    ) -> PipelineOutput:
        if not self.calls:
            name = self.server.database
            self.server.psql(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
            self.server.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
            back = threading.Timer(self.seconds, self.server.psql, [f"ALTER DATABASE {name} ALLOW_CONNECTIONS true"])
            back.start()
        return super().analyse(study_uid, series_uid, paths, predecessors)


def test_a_job_outlives_its_database_going_away_mid_job(
    server: PostgresServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = Database(server.url)
    db.create_schema()
    settings = Settings(data_dir=tmp_path, executor="celery", database_url=server.url)
    with db.session() as s:
        job = Job(series_uid="1.2.3.4", study_uid="1.2.3", pipeline="fake")
        s.add(job)
        s.flush()
        job_id = job.id
    pipeline = CutsTheDatabase(server, seconds=4.0)
    context = distributed.WorkerContext(settings, db, Outbox(settings.outbox_dir, settings.tmp_dir), {}, ["cpu"])
    context.built = True
    context.pipelines["fake"] = pipeline
    caplog.set_level(logging.WARNING, logger="ainode.distributed")
    try:
        assert distributed.run_one(context, job_id) == "claimed"
        with db.session() as s:
            row = s.get_one(Job, job_id)
            results = s.scalars(select(Result).where(Result.job_id == job_id)).all()
    finally:
        db.dispose()
    assert (row.state, row.attempts, row.lease_until) == (JobState.DONE, 1, None)
    assert len(results) == 1
    assert len(pipeline.calls) == 2  # analysed again once the database was back: its results were never recorded
    waits = [r.getMessage() for r in caplog.records if "database unreachable" in r.getMessage()]
    assert waits and all("message kept" in w for w in waits), caplog.text
    assert server.password not in caplog.text
