"""Keras builders of the triage service's and the four-class design's classifiers and their ONNX export (one
input, same outputs); training's sources name the source designs they follow."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from tests.helpers import repo_root
from training.architectures import (
    FOUR_CLASSES,
    export_onnx,
    finding_classifier,
    four_class_cnn,
    four_class_resnet18,
)


def _trainable(model: Any) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_resnet18_has_resnet18_parameter_count() -> None:
    model = four_class_resnet18(256)
    print(f"ResNet-18 (1 channel, 4 classes): {model.count_params():,} parameters, {_trainable(model):,} trainable")
    # Keras counts batch-norm moving mean/variance (4,800 channels x 2) as parameters.
    assert model.count_params() == 11_181_892
    # torchvision's resnet18(num_classes=4) has 11,178,564 with 3 input channels; one grey
    # channel removes 64 x 7 x 7 x 2 = 6,272 stem weights: exactly the same network.
    assert _trainable(model) == 11_178_564 - 6_272
    assert model.output_shape == (None, len(FOUR_CLASSES))


def test_five_layer_cnn_parameter_count_and_layers() -> None:
    model = four_class_cnn(256)
    # conv 3x3: 1->16 (160), 16->32 (4,640), 32->64 (18,496); fc 32*32*64->128 (8,388,736); 128->4 (516)
    assert model.count_params() == 160 + 4_640 + 18_496 + 8_388_736 + 516 == 8_412_548
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("Conv2D") == 3 and kinds.count("MaxPooling2D") == 3 and kinds.count("Dense") == 2
    assert model.output_shape == (None, 4)


def test_finding_classifier_shapes_and_no_imagenet_preprocessing() -> None:
    model = finding_classifier("B0", 512)
    assert model.output_shape == (None, 14)
    assert model.input_shape == (None, 512, 512, 1)
    assert model.layers[-1].get_config()["activation"] == "sigmoid"
    names = {type(layer).__name__ for layer in model.layers[1].layers}
    assert not names & {"Rescaling", "Normalization"}
    print(f"EfficientNetB0 finding classifier at 512: {model.count_params():,} parameters")
    assert model.count_params() == 4_066_922


def test_finding_classifier_rejects_unknown_variant() -> None:
    with pytest.raises(ValueError, match="B9"):
        finding_classifier("B9", 64)


def _check_export(model: Any, path: Path, size: int) -> None:
    export_onnx(model, path, output_name="scores")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    [graph_input] = session.get_inputs()  # exactly one input: no leftover mean/variance inputs
    assert graph_input.name == "image" and graph_input.shape[1:] == [size, size, 1]
    assert [o.name for o in session.get_outputs()] == ["scores"]
    batch = np.random.default_rng(3).random((4, size, size, 1), dtype=np.float32)
    expected = model.predict(batch, verbose=0)
    got = session.run(None, {"image": batch})[0]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.integration  # trains or exports a model for tens of seconds: not for the fast loop
def test_efficientnet_b0_exports_to_onnx_with_one_input(tmp_path: Path) -> None:
    _check_export(finding_classifier("B0", 64), tmp_path / "b0.onnx", 64)


def test_five_layer_cnn_exports_to_onnx(tmp_path: Path) -> None:
    model = four_class_cnn(64)
    _check_export(model, tmp_path / "cnn.onnx", 64)
    probabilities = model.predict(np.zeros((2, 64, 64, 1), np.float32), verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


#: "seed 3", "Seed 2's", "the seed": a source design by its number in a document the repository does not hold (a
#: phantom's or a run's random seed is a number too, but never one of 1-5 standing alone).
_UNNAMED_SOURCE = re.compile(r"\bseeds? [1-5]\b(?![\d,–-])|\bseed's\b|\bthe seed\b", re.IGNORECASE)
_MISSING_DOCS = re.compile(r"ARCHITECTURE\.md|\bSTYLE\b")


def test_training_sources_name_the_designs_and_cite_only_documents_that_exist() -> None:
    root = repo_root()
    files = sorted((root / "training").rglob("*.py"))
    assert len(files) > 15
    found = [
        f"{path.relative_to(root)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if (_UNNAMED_SOURCE.search(line) and "--seed" not in line) or _MISSING_DOCS.search(line)
    ]
    assert found == [], "\n".join(found)
    assert _UNNAMED_SOURCE.search("as in seed 4.") and _UNNAMED_SOURCE.search("Seed 2's table")
    assert not _UNNAMED_SOURCE.search("phantom seeds 2500-2515") and not _UNNAMED_SOURCE.search("seed 501")
