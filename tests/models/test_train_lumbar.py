"""Training and evaluation of the lumbar-level classifier on a tiny data set in the lumbar folder format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image

from core.findings import LUMBAR_LEVELS
from models.lumbar import LumbarModel, hu_to_unit
from models.manifest import load_manifest
from models.preprocess.ct_series import plan_series
from tests.models.test_lumbar import _truth, write_abdomen
from training import lumbar as train_lumbar
from training.phantoms.ct_datasets import LUMBAR_PNG_WINDOW, window_to_uint8


def write_folders(root: Path, per_level: dict[str, int], size: int = 48) -> None:
    """PNG slices windowed as serving does (one window → 8-bit grey), a disc whose HU depends on the level."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for index, level in enumerate(LUMBAR_LEVELS):
            folder = root / split / level
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_level.get(level, 0)):
                hu = rng.normal(-900.0, 20.0, (size, size))
                yy, xx = np.mgrid[0:size, 0:size]
                hu[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2] = 100.0 * index
                grey = np.round(hu_to_unit(hu, [(400.0, 1800.0)])[..., 0] * 255).astype(np.uint8)
                assert (grey == window_to_uint8(hu, 400.0, 1800.0)).all()  # the data sets' own writer
                Image.fromarray(grey, mode="L").save(folder / f"{split}-{level}-{k}.png")


def test_list_split_reads_the_lumbar_folder_format(tmp_path: Path) -> None:
    write_folders(tmp_path, {"T": 2, "L3": 1, "S": 1})
    samples = train_lumbar.list_split(tmp_path, "train")
    assert [(p.parent.name, label) for p, label in samples] == [("T", 0), ("T", 0), ("L3", 3), ("S", 6)]
    images = train_lumbar.load_images([p for p, _ in samples], 32, 1)
    assert images.shape == (4, 32, 32, 1) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    with pytest.raises(FileNotFoundError, match="no PNG"):
        train_lumbar.list_split(tmp_path / "missing", "train")


def test_parse_defaults_are_the_seed_and_one_mode_is_required(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = train_lumbar._parse(["--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert (args.variant, args.input_size, args.batch_size, args.epochs, args.learning_rate) == (
        "V2M",
        512,
        16,
        100,
        1e-4,
    )
    assert args.windows == [(40.0, 400.0)] == [LUMBAR_PNG_WINDOW]  # the window of the phantom data sets
    with pytest.raises(SystemExit):
        train_lumbar._parse(["--data", str(tmp_path)])


@pytest.mark.integration  # trains or exports a model for tens of seconds: not for the fast loop
def test_seed_architecture_has_seven_softmax_outputs() -> None:
    model = train_lumbar.build_model("V2S", 64)
    assert model.output_shape == (None, 7) and model.input_shape == (None, 64, 64, 1)
    out = model(np.random.default_rng(0).random((2, 64, 64, 1), dtype=np.float32), training=False)
    np.testing.assert_allclose(np.asarray(out).sum(axis=1), 1.0, rtol=1e-5)
    assert 20e6 < model.count_params() < 21e6  # EfficientNetV2-S backbone + 7-class head
    with pytest.raises(ValueError, match="variant"):
        train_lumbar.build_model("B9", 64)


def _small_cnn(variant: str, input_size: int, *, channels: int = 1, dropout: float = 0.2) -> Any:
    """Stand-in for the EfficientNetV2 backbone with the same contract (tracing V2 costs a minute)."""
    import keras
    from keras import layers

    image = keras.Input(shape=(input_size, input_size, channels), name="image")
    x = layers.Conv2D(8, 3, strides=2, activation="relu")(image)
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(len(LUMBAR_LEVELS), activation="softmax", name="levels")(layers.Dropout(dropout)(x))
    return keras.Model(image, out, name=f"lumbar_small_{variant}")


def test_train_export_evaluate_and_serve_a_tiny_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(train_lumbar, "build_model", _small_cnn)
    data, out = tmp_path / "data", tmp_path / "ct-lumbar"
    write_folders(data, {level: 3 for level in LUMBAR_LEVELS})
    status = train_lumbar.main(
        [
            "--data",
            str(data),
            "--out",
            str(out),
            "--variant",
            "V2B0",
            "--input-size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "7",
            "--demo",
            "--version",
            "demo-test",
            "--fp16-weights",
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "recall" in printed
    evaluation = json.loads((out / "evaluation.json").read_text())
    confusion = np.array(evaluation["confusion"])
    assert confusion.shape == (7, 7) and confusion.sum() == 21 and (confusion.sum(axis=1) == 3).all()
    assert evaluation["accuracy"] == pytest.approx(np.trace(confusion) / 21)
    card = (out / "MODEL_CARD.md").read_text()
    assert "EfficientNetV2B0" in card and "DEMO" in card

    manifest = load_manifest(out / "model.json")
    assert manifest.demo and manifest.input.height == 32 and [lab.key for lab in manifest.labels] == list(LUMBAR_LEVELS)
    # Evaluation alone gives the same matrix.
    assert train_lumbar.main(["--data", str(data), "--evaluate", str(out)]) == 0
    again = capsys.readouterr().out
    assert f"accuracy {evaluation['accuracy']:.4f} on 21 test images" in again

    # The exported model serves a DICOM series through the node's lumbar model.
    paths = write_abdomen(tmp_path / "series", _truth([3, 3, 3, 3, 3, 3, 3]), head_first_iop=False)
    plan = plan_series([pydicom.dcmread(p, stop_before_pixels=True) for p in paths.values()])
    model = LumbarModel.from_manifest(manifest)
    assert model.algorithm.demo
    result, _ = model.analyse(plan, paths)
    assert len(result.levels) == 21 and set(result.levels) <= set(LUMBAR_LEVELS)
    order = [LUMBAR_LEVELS.index(v) for v in result.levels]
    assert order == sorted(order, reverse=True)  # plan runs feet → head: levels never go back caudally


def test_fp16_weights_halve_the_file_and_keep_the_outputs(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = rng.normal(0.0, 0.5, (256, 7)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"]), helper.make_node("Softmax", ["logits"], ["p"], axis=1)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 256])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 7])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    x = rng.random((4, 256), dtype=np.float32)
    before = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    sizes = train_lumbar.store_fp16_weights(path, min_elements=16)
    assert sizes["converted"] == 1 and sizes["bytes_after"] < 0.6 * sizes["bytes_before"]
    stored = onnx.load(str(path))
    assert [i.data_type for i in stored.graph.initializer] == [TensorProto.FLOAT16]
    after = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(after, before, atol=2e-3)
