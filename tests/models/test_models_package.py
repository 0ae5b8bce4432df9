"""Package boundaries of ``models/`` (serving only): explicit public names, nothing heavy at import.

Every module of the package is found by walking it, so a module added later is checked too.
Importing all of them in a fresh interpreter must load no training code (``training``), no
deep-learning framework (TensorFlow, Keras, torch, Ultralytics: the native backends import
theirs inside the function that needs them) and none of the node's other packages.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import subprocess
import sys
from types import ModuleType

import pytest

import models
from tests.helpers.radiographs import repo_root

#: Top-level packages that importing ``models`` must never load.
FORBIDDEN = (
    "training",
    "tensorflow",
    "keras",
    "tf2onnx",
    "torch",
    "torchvision",
    "ultralytics",
    "node",
    "dimse",
    "sr_writer",
)

#: Training modules whose ``__all__`` is checked here too (they were part of ``models`` before the re-cut).
TRAINING_MODULES = ["training.data", "training.card", "training.view_filter"]


def models_modules() -> list[str]:
    """Every module of the ``models`` package, the package itself first."""
    return ["models", *(m.name for m in pkgutil.walk_packages(models.__path__, "models."))]


def loaded_by_importing(modules: list[str]) -> list[str]:
    """Forbidden modules in ``sys.modules`` after a fresh interpreter imports ``modules``."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"forbidden = set({list(FORBIDDEN)!r})\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in forbidden)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=repo_root(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


def test_the_walk_finds_every_kind_of_module() -> None:
    names = models_modules()
    for expected in (
        "models.registry",
        "models.preprocess.ct_series",
        "models.backends.keras_backend",
        "models.backends.ultralytics_backend",
        "models.pe",
        "models.lumbar",
    ):
        assert expected in names


def test_importing_every_models_module_loads_no_training_code_nor_framework() -> None:
    assert loaded_by_importing(models_modules()) == []


def test_the_import_probe_sees_a_forbidden_import() -> None:
    """The check above would fail if a models module imported training code at module level."""
    loaded = loaded_by_importing(["models.errors", "training.card"])
    assert "training" in loaded and "training.card" in loaded


def _public(module: ModuleType) -> list[str]:
    return [n for n, v in vars(module).items() if not n.startswith("_") and not isinstance(v, ModuleType)]


@pytest.mark.parametrize("name", models_modules() + TRAINING_MODULES)
def test_public_names_exist(name: str) -> None:
    module = importlib.import_module(name)
    if not hasattr(module, "__all__"):
        # Only a package whose __init__ holds nothing but its docstring may go without __all__.
        assert _public(module) == [], f"{name} defines names but no __all__"
        return
    assert module.__all__, name
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names undefined {missing}"


#: "seed 3", "Seed 2's": the source designs' numbers in a document the repository does not hold.
_UNNAMED_SOURCE = re.compile(r"\bseeds? ?\d|\bseed's\b|\bthe seed\b", re.IGNORECASE)
_MISSING_DOCS = re.compile(r"ARCHITECTURE\.md|\bSTYLE\b")


def test_sources_name_the_designs_and_cite_only_documents_that_exist() -> None:
    root = repo_root()
    files = sorted((root / "models").rglob("*.py")) + [root / "core" / "findings.py"]
    assert len(files) > 15
    found = [
        f"{path.relative_to(root)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if _UNNAMED_SOURCE.search(line) or _MISSING_DOCS.search(line)
    ]
    assert found == [], "\n".join(found)


def test_errors_tree() -> None:
    from models.errors import ChecksumMismatch, ModelError, PreprocessError, SeriesError, WeightsMissing

    for error in (WeightsMissing, ChecksumMismatch, PreprocessError, SeriesError):
        assert issubclass(error, ModelError), error
    # Bad input stays a ValueError for code that catches it as one.
    assert issubclass(SeriesError, PreprocessError) and issubclass(PreprocessError, ValueError)
    assert not issubclass(ModelError, ValueError)
