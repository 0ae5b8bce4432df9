"""``bash scripts/dev.sh test`` without arguments: two test phases, both always run, one verdict.

The script is sourced (which runs nothing) and its phase functions run real pytest, from the repository's
venv, on a small project of its own in a temporary folder: a test not marked ``integration`` and one marked,
each made to pass or fail. What is checked is what CI depends on: the second phase runs after the first
failed, each phase prints its result and duration, and any failed phase or gate makes the status non-zero.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent  # the venv running these tests: it has pytest and pytest-xdist


def _project(folder: Path, unit_passes: bool, integration_passes: bool) -> Path:
    folder.mkdir()
    (folder / "pytest.ini").write_text("[pytest]\nmarkers =\n    integration: needs a program outside the venv\n")
    (folder / "test_phases.py").write_text(
        "import pytest\n\n\n"
        f"def test_unit():\n    assert {unit_passes}\n\n\n"
        f"@pytest.mark.integration\ndef test_integration():\n    assert {integration_passes}\n"
    )
    return folder


def _run(project: Path, script: str) -> subprocess.CompletedProcess[str]:
    """``script`` in bash after sourcing scripts/dev.sh, in ``project`` with the venv of these tests."""
    command = f'source "$1"; VENV="$2"; cd "$3"; {script}'
    return subprocess.run(
        ["bash", "-c", command, "bash", str(REPO / "scripts" / "dev.sh"), str(VENV), str(project)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _said(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith("[dev.sh]")]


def test_a_failed_first_phase_still_runs_the_second_and_fails_the_verdict(tmp_path: Path) -> None:
    result = _run(_project(tmp_path / "p", unit_passes=False, integration_passes=True), "test_phases")
    said = _said(result)
    assert result.returncode == 1, result.stdout + result.stderr
    assert said[0] == "[dev.sh] tests: not integration, 2 workers"
    assert said[1].startswith("[dev.sh] tests: not integration, 2 workers: FAILED (pytest exit 1) in ")
    assert said[2] == "[dev.sh] tests: integration, 1 process"
    assert said[3].startswith("[dev.sh] tests: integration, 1 process: passed in ") and said[3].endswith(" s")
    assert said[4] == "[dev.sh] failed test phases: not integration, 2 workers"
    assert "2 workers [1 item]" in result.stdout  # the first phase ran on pytest-xdist workers, one test
    assert "1 passed, 1 deselected" in result.stdout  # the second ran the integration test alone
    assert "slowest 25 durations" in result.stdout  # and listed where its time went


def test_a_failed_integration_phase_or_gate_fails_the_verdict_and_all_passing_passes(tmp_path: Path) -> None:
    failing = _run(_project(tmp_path / "f", unit_passes=True, integration_passes=False), "test_phases")
    assert failing.returncode == 1 and _said(failing)[-1] == "[dev.sh] failed test phases: integration, 1 process"
    passing = _project(tmp_path / "p", unit_passes=True, integration_passes=True)
    # (dev.sh runs with set -e: a function's failure is seen through ||, as in the script itself)
    script = 'test_phases && echo "status 0"; FAILED_GATES=(mypy); verdict 0 || echo "status $?"'
    result = _run(passing, script)
    said = [re.sub(r"in \d+ s$", "in N s", line) for line in _said(result)]
    assert said == [
        "[dev.sh] tests: not integration, 2 workers",
        "[dev.sh] tests: not integration, 2 workers: passed in N s",
        "[dev.sh] tests: integration, 1 process",
        "[dev.sh] tests: integration, 1 process: passed in N s",
        "[dev.sh] failed gates: mypy",
    ]
    statuses = [line for line in result.stdout.splitlines() if line.startswith("status ")]
    assert statuses == ["status 0", "status 1"]
