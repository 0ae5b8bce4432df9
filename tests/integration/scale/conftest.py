"""Fixtures of the scale-out tests (issue 17): the module's servers, and a cluster of its own for each test.

- ``services``: PostgreSQL, RabbitMQ and the module's Orthanc, shared by the tests of a module;
- ``s3_services``: the same and moto's S3 server;
- ``cluster``: a :class:`~tests.integration.scale.cluster.Cluster` factory on ``services`` (a database and a broker
  virtual host of the test's own); every process it started is stopped at the end of the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import OrthancServer
from tests.integration.scale.cluster import Cluster, Services

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def services(module_orthanc: OrthancServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    started = Services(tmp_path_factory.mktemp("services"), module_orthanc).start()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def s3_services(module_orthanc: OrthancServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    started = Services(tmp_path_factory.mktemp("services"), module_orthanc, s3=True).start()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """``cluster(services, full_models=False, **settings)`` makes a cluster; all are stopped afterwards."""
    made: list[Cluster] = []

    def make(services: Services, **settings: Any) -> Cluster:
        made.append(Cluster(services, tmp_path / f"cluster{len(made) + 1}", **settings))
        return made[-1]

    yield make
    for one in made:
        one.stop()
