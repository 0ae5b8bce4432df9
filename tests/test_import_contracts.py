"""The layers hold: ``lint-imports`` keeps every contract of ``[tool.importlinter]`` in pyproject.toml.

core imports nothing of ours; dimse only core; models and sr_writer only core and not each other; node only
``training.phantoms`` of training; serving imports no training framework. CI runs the same command as a gate;
this test makes the fast loop check it too.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _lint_imports() -> str:
    beside = Path(sys.executable).parent / "lint-imports"
    found = str(beside) if beside.exists() else shutil.which("lint-imports")
    assert found is not None, "lint-imports is not installed: it comes with the test extra (pip install -e .[test])"
    return found


def test_every_import_contract_is_kept() -> None:
    run = subprocess.run(
        [_lint_imports(), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    if run.returncode != 0:
        pytest.fail(run.stdout + run.stderr, pytrace=False)
