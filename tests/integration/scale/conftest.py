"""Fixtures of the scale-out tests (issue 17).

- ``services``: PostgreSQL, RabbitMQ and an Orthanc (the destination), shared by every scale test of the session:
  each test works in a database and a broker virtual host of its own, so sharing is safe even across the tests
  that restart the broker or the database;
- ``moto``: moto's S3 server for the session (tests.helpers.s3);
- ``cluster``: ``cluster(services, full_models=False, **settings)`` makes a
  :class:`~tests.integration.scale.cluster.Cluster` in the test's folder; every process it started is stopped
  at the end of the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.s3 import MotoServer
from tests.integration.scale.cluster import Cluster, Services

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    started = Services(tmp_path_factory.mktemp("scale-services")).start()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    server = MotoServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(services: Services, **settings: Any) -> Cluster:
        made.append(Cluster(services, tmp_path / f"cluster{len(made) + 1}", **settings))
        return made[-1]

    yield make
    for one in made:
        one.stop()
