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

Markers: ``pytest -m "not integration"`` is the fast loop (``bash scripts/dev.sh test-fast``); it
needs only the venv. Marked ``integration`` here, at collection:

- a test that uses a fixture or helper starting a program outside the venv (Orthanc, PostgreSQL,
  DCMTK, dicom3tools, openssl, strace, mount, Chromium); a helper about to start such a program in an
  unmarked test fails it with a message that says so (``tests.helpers.externals``);
- every test in tests/integration/ (the node end to end, as a process);
- every ``slow`` test (minutes each).

Tests that train a model for tens of seconds are marked by hand where they are.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import CodeType
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

from tests.helpers import OrthancServer, PostgresServer, externals, rg1_uncr_path  # noqa: E402

OrthancFactory = Callable[..., OrthancServer]

# What makes a test an integration test. Fixtures (requested directly or through other fixtures) that
# start a program outside the venv:
_EXTERNAL_FIXTURES = frozenset({"orthanc", "orthanc_factory", "module_orthanc", "postgres"})
# Parametrized fixtures whose given parameter needs one: tests/node/conftest.py's db on PostgreSQL.
_EXTERNAL_PARAMS = frozenset({("db", "postgresql")})
# Names of helpers that start one (tests.helpers; tests/dimse/dimse_helpers.py), found in the code of
# the test, of its fixtures, and of the functions and classes of tests/ that they call, transitively.
_EXTERNAL_HELPERS = frozenset(
    {
        "MotoServer",
        "OhifBrowser",
        "OrthancServer",
        "PostgresServer",
        "RabbitMQServer",
        "assert_dciodvfy_clean",
        "dciodvfy",
        "echoscu",
        "find_dicomweb_plugin",
        "find_postgres_bindir",
        "mount_small_fs",
        "require_tool",
        "require_viewer",
        "run_dcmtk",
        "running_storescp",
        "small_file_systems",
        "store_with_storescu",
        "storescu",
    }
)
# Programs named in the code as a string (shutil.which("openssl"), subprocess.run(["mount", ...])).
_EXTERNAL_PROGRAMS = frozenset(
    {"Orthanc", "chromium", "dciodvfy", "dcmdump", "dcmp2pgm", "dsr2html", "echoscu", "initdb", "mount", "openssl"}
    | {"psql", "storescp", "storescu", "strace"}
)
_TESTS_DIR = Path(__file__).resolve().parent
_INTEGRATION_DIR = _TESTS_DIR / "integration"


def _external_use(obj: object, seen: set[int]) -> str | None:
    """The first helper or program that ``obj`` (a function or class of tests/) uses, directly or through
    the functions and classes of tests/ it names; None when it uses none."""
    if id(obj) in seen:
        return None
    seen.add(id(obj))
    if inspect.isclass(obj):
        for member in vars(obj).values():
            found = _external_use(getattr(member, "__func__", member), seen)
            if found:
                return found
        return None
    func = inspect.unwrap(obj)  # type: ignore[arg-type]
    code = getattr(func, "__code__", None)
    if code is None or not Path(code.co_filename).resolve().is_relative_to(_TESTS_DIR):
        return None
    namespace = getattr(func, "__globals__", {})
    codes: list[CodeType] = [code]
    while codes:
        current = codes.pop()
        for const in current.co_consts:
            if isinstance(const, CodeType):
                codes.append(const)
            elif isinstance(const, str) and const in _EXTERNAL_PROGRAMS:
                return const
        for name in current.co_names:
            if name in _EXTERNAL_HELPERS:
                return name
            target = namespace.get(name)
            if inspect.isfunction(target) or inspect.isclass(target):
                found = _external_use(target, seen)
                if found:
                    return found
    return None


def _needs_external_program(item: pytest.Item) -> str | None:
    """Why ``item`` needs a program outside the venv (a fixture, parameter or helper name), or None."""
    fixtures = set(getattr(item, "fixturenames", ()))
    if fixtures & _EXTERNAL_FIXTURES:
        return sorted(fixtures & _EXTERNAL_FIXTURES)[0]
    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        for name, value in callspec.params.items():
            if isinstance(value, str) and (name, value) in _EXTERNAL_PARAMS:
                return f"{name}[{value}]"
    seen: set[int] = set()
    found = _external_use(getattr(item, "function", None), seen)
    if found:
        return found
    fixtureinfo = getattr(item, "_fixtureinfo", None)
    for name in sorted(fixtures):
        for definition in getattr(fixtureinfo, "name2fixturedefs", {}).get(name, ()):
            found = _external_use(definition.func, seen)
            if found:
                return found
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``integration`` the tests of tests/integration/, the slow ones and those that need a program outside
    the venv."""
    for item in items:
        if item.get_closest_marker("integration") is not None:
            continue
        if (
            item.path.is_relative_to(_INTEGRATION_DIR)
            or item.get_closest_marker("slow") is not None
            or _needs_external_program(item)
        ):
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Tell the helpers whether the running test may start programs outside the venv."""
    externals.running_unit_test(None if item.get_closest_marker("integration") else item.nodeid)
    try:
        return (yield)
    finally:
        externals.running_unit_test(None)


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
