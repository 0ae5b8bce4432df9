"""Package boundaries of ``models/``: explicit public names, no node/TensorFlow at import."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from tests.helpers.radiographs import repo_root

MODULES = [
    "models.errors",
    "models.manifest",
    "models.registry",
    "models.backends.onnx_backend",
    "models.preprocess.radiograph",
    "models.view_filter",
    "training.data",
    "training.card",
    "training.view_filter",
]


@pytest.mark.parametrize("name", MODULES)
def test_public_names_exist(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__all__, name
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names undefined {missing}"


def test_importing_models_loads_neither_node_nor_tensorflow() -> None:
    code = (
        "import sys\n"
        f"for name in {MODULES!r}: __import__(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'node', 'dimse', 'sr_writer', 'tensorflow', 'keras', 'tf2onnx'})\n"
        "print(','.join(bad))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=repo_root(), capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


def test_errors_tree() -> None:
    from models.errors import ChecksumMismatch, ModelError, PreprocessError, WeightsMissing

    assert issubclass(WeightsMissing, ModelError) and issubclass(ChecksumMismatch, ModelError)
    assert issubclass(PreprocessError, ValueError) and not issubclass(PreprocessError, ModelError)
