"""Programs outside the venv (Orthanc, PostgreSQL, DCMTK, dicom3tools, strace, mount) are for integration tests.

``pytest -m "not integration"`` is the fast loop: it must pass on a machine with only the venv. tests/conftest.py
marks a test ``integration`` when it uses a fixture or helper that starts such a program, and tells this module
which test is running unmarked; a helper calls :func:`require_integration` before it starts a program, so an
unmarked test that would need one fails at once with a message that says so, even where the program is installed.
"""

from __future__ import annotations

import pytest

__all__ = ["missing_program_hint", "require_integration", "running_unit_test"]

_unit_test: str | None = None


def running_unit_test(nodeid: str | None) -> None:
    """Record the test now running that is not marked ``integration`` (None: an integration test, or none)."""
    global _unit_test
    _unit_test = nodeid


def require_integration(program: str) -> None:
    """Fail the running test if it is not marked ``integration``: it is about to start ``program``."""
    if _unit_test is not None:
        pytest.fail(
            f"{_unit_test} starts {program}, a program outside the venv, but is not marked integration: "
            "mark it (pytestmark = pytest.mark.integration, or @pytest.mark.integration on the test), "
            "or name the helper or fixture it uses in tests/conftest.py so that it is marked automatically",
            pytrace=False,
        )


def missing_program_hint() -> str:
    """The end of a 'not installed' message: how to get the program, or how to leave such tests out."""
    return (
        "bash scripts/dev.sh test installs it; without it, run the fast loop "
        '(bash scripts/dev.sh test-fast, or pytest -m "not integration")'
    )
