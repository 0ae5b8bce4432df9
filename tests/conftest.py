"""Fixtures shared by every test: a real Orthanc, a real PostgreSQL.

- ``orthanc``: a fresh Orthanc (AE title ``ORTHANC``) for one test.
- ``orthanc_factory``: ``start(aet="ORTHANC", modalities=None, extra_config=None)``
  starts more, e.g. ``start(modalities={"ainode": ["AINODE", "127.0.0.1", port]})``;
  all are stopped at the end of the test.
- ``module_orthanc``: one Orthanc shared by a test module (filter by study UID).
- ``postgres``: a PostgreSQL cluster for the session; its value is a SQLAlchemy URL
  (``postgresql+psycopg://...``). Use a schema or table names of your own.
- ``rg1_uncr``: path of the real chest CR ``RG1_UNCR.dcm``.

Helpers (``dciodvfy``, ``storescu``, ``lateral_radiograph``...) are in
``tests.helpers``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# pytest puts tests/ first on sys.path (no __init__.py there), where the
# folder tests/models/ would shadow the real ``models`` package when pytest is
# started without ``python -m``. The repository root goes first instead, and
# makes ``tests.helpers`` importable.
_REPO_ROOT = str(Path(__file__).resolve().parents[1])
if sys.path[0] != _REPO_ROOT:
    sys.path.insert(0, _REPO_ROOT)

# TensorFlow imported before torchvision (Ultralytics) in one process segfaults (seen with TF 2.21 and
# torch 2.14): the whole suite runs in one process, so torch and torchvision come first when installed.
try:  # pragma: no cover - depends on the installed extras
    import torch  # noqa: F401,E402
    import torchvision  # noqa: F401,E402
except ImportError:
    pass

from tests.helpers import OrthancServer, PostgresServer, rg1_uncr_path  # noqa: E402

OrthancFactory = Callable[..., OrthancServer]


@pytest.fixture(scope="session")
def _orthanc_reaper() -> Iterator[list[OrthancServer]]:
    """Servers terminated at teardown; waited for once, at the end of the session."""
    terminated: list[OrthancServer] = []
    yield terminated
    for server in terminated:
        server.wait_stopped()


@pytest.fixture
def orthanc_factory(
    tmp_path_factory: pytest.TempPathFactory, _orthanc_reaper: list[OrthancServer]
) -> Iterator[OrthancFactory]:
    """Start Orthanc servers for one test; all get SIGTERM at teardown."""
    servers: list[OrthancServer] = []

    def start(
        aet: str = "ORTHANC",
        modalities: dict[str, Any] | None = None,
        extra_config: dict[str, Any] | None = None,
    ) -> OrthancServer:
        server = OrthancServer(tmp_path_factory.mktemp("orthanc"), aet, modalities, extra_config)
        servers.append(server)
        return server.start()

    yield start
    for server in reversed(servers):
        server.terminate()
        _orthanc_reaper.append(server)


@pytest.fixture
def orthanc(orthanc_factory: OrthancFactory) -> OrthancServer:
    """A fresh Orthanc (AE ``ORTHANC``, DICOMweb on) for one test."""
    return orthanc_factory()


@pytest.fixture(scope="module")
def module_orthanc(
    tmp_path_factory: pytest.TempPathFactory, _orthanc_reaper: list[OrthancServer]
) -> Iterator[OrthancServer]:
    """One Orthanc shared by the tests of a module; add peers with ``add_modality``."""
    server = OrthancServer(tmp_path_factory.mktemp("orthanc-module"))
    _orthanc_reaper.append(server)
    server.start()
    yield server
    server.terminate()


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """SQLAlchemy URL of a PostgreSQL database that lives for the test session."""
    server = PostgresServer()
    try:
        server.start()
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def rg1_uncr() -> Path:
    """Path of the real PA chest CR ``RG1_UNCR.dcm`` (pydicom-data)."""
    return rg1_uncr_path()
