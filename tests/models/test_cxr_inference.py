"""Chest radiograph inference: letterbox geometry, YOLO decoding and NMS, classifiers over ONNX and Keras."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.backends import load_backend
from models.backends.keras_backend import KerasModel
from models.backends.onnx_backend import OnnxModel
from models.detector import Detector, decode, letterbox, letterbox_geometry, nms
from models.errors import ModelError
from models.finding_classifier import FindingClassifier
from models.four_class import FourClassClassifier
from models.manifest import Manifest, manifest_from_mapping, sha256_file
from sr_writer.codes import CHESTXRAY14_LABELS
from training.architectures import FOUR_CLASSES, export_onnx, four_class_cnn


def make_manifest(
    weights: Path,
    *,
    task: str,
    backend: str,
    labels: list[tuple[str, float | None]],
    size: tuple[int, int],
    channels: int = 1,
    layout: str = "NHWC",
    postprocessing: dict[str, Any] | None = None,
    name: str = "test-model",
) -> Manifest:
    """A manifest for ``weights`` (its real SHA-256), written beside it as model.json and read back."""
    data = {
        "name": name,
        "version": "test-1",
        "task": task,
        "backend": backend,
        "weights": weights.name,
        "sha256": sha256_file(weights),
        "labels": [{"key": k, "display": k, **({} if t is None else {"threshold": t})} for k, t in labels],
        "input": {"height": size[0], "width": size[1], "channels": channels, "layout": layout},
        "demo": True,
        "postprocessing": postprocessing or {},
    }
    (weights.parent / f"{weights.stem}.json").write_text(json.dumps(data), encoding="utf-8")
    return manifest_from_mapping(data, weights.parent, str(weights.parent / f"{weights.stem}.json"))


# --------------------------------------------------------------------------- letterbox


@pytest.mark.parametrize(
    ("source", "canvas"),
    [
        ((1500, 2000), (128, 128)),
        ((900, 300), (128, 128)),
        ((2048, 2500), (320, 320)),
        ((333, 777), (96, 160)),
        ((50, 60), (128, 128)),
    ],
)
def test_letterbox_round_trip_keeps_a_source_box_within_one_pixel(
    source: tuple[int, int], canvas: tuple[int, int]
) -> None:
    rows, cols = source
    image = np.zeros(source, dtype=np.float32)
    # A bright rectangle whose edges are known in source pixels.
    x1, y1, x2, y2 = int(cols * 0.31), int(rows * 0.42), int(cols * 0.58), int(rows * 0.77)
    image[y1:y2, x1:x2] = 1.0
    boxed, geometry = letterbox(image, canvas)
    assert boxed.shape == canvas and boxed.dtype == np.float32

    # Where the rectangle landed on the canvas, measured on the pixels (half-bright edges count half).
    on_canvas = geometry.to_canvas(np.array([[x1, y1, x2, y2]], dtype=np.float64))[0]
    bright = boxed > 0.5
    ys, xs = np.nonzero(bright)
    assert abs(xs.min() - on_canvas[0]) <= 1 and abs(xs.max() + 1 - on_canvas[2]) <= 1
    assert abs(ys.min() - on_canvas[1]) <= 1 and abs(ys.max() + 1 - on_canvas[3]) <= 1

    # The box measured on the canvas, mapped back, is the source box within 1 source pixel per canvas pixel error.
    measured = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=np.float64)
    back = geometry.to_source(measured)[0]
    tolerance = 1.0 / min(geometry.gain_x, geometry.gain_y)  # one canvas pixel in source pixels
    np.testing.assert_allclose(back, [x1, y1, x2, y2], atol=tolerance)
    # And the exact inverse: source → canvas → source within 1 px, clipped to the image.
    np.testing.assert_allclose(geometry.to_source(on_canvas[None])[0], [x1, y1, x2, y2], atol=1e-6)

    # Padding is Ultralytics' grey 114 and the image is centred as LetterBox centres it.
    assert geometry.left + geometry.resized_width <= canvas[1] and geometry.top + geometry.resized_height <= canvas[0]
    if geometry.left > 0:
        np.testing.assert_allclose(boxed[:, : geometry.left], 114 / 255)
    if geometry.top > 0:
        np.testing.assert_allclose(boxed[: geometry.top], 114 / 255)


def test_letterbox_padding_rounds_as_ultralytics() -> None:
    # 300×900 into 128: r = 128/900, width round(42.67) = 43, dw = 85 → left round(42.5 - 0.1) = 42, right 43.
    g = letterbox_geometry((900, 300), (128, 128))
    assert (g.resized_height, g.resized_width, g.top, g.left) == (128, 43, 0, 42)
    # 1500×2000 into 320: 320 × 240, dh = 80 → 40 on top.
    g = letterbox_geometry((1500, 2000), (320, 320))
    assert (g.resized_height, g.resized_width, g.top, g.left) == (240, 320, 40, 0)
    # 127 columns scale up to 128, 100 rows to round(100.79) = 101: dh = 13.5 → top round(13.4) = 13, bottom 14.
    g = letterbox_geometry((100, 127), (128, 128))
    assert (g.resized_height, g.resized_width, g.top, g.left) == (101, 128, 13, 0)
    g = letterbox_geometry((200, 255), (128, 128))
    assert (g.resized_height, g.resized_width) == (100, 128) and g.top == 14


def test_box_outside_the_image_is_clipped_to_it() -> None:
    g = letterbox_geometry((900, 300), (128, 128))
    box = g.to_source(np.array([[0.0, -5.0, 128.0, 140.0]]))[0]
    np.testing.assert_allclose(box, [0.0, 0.0, 300.0, 900.0])


# --------------------------------------------------------------------------- decode and NMS


def raw_tensor(
    boxes: list[tuple[float, float, float, float]], scores: list[list[float]], anchors: int = 12
) -> np.ndarray:
    """A raw YOLO output (4 + nc, anchors) with the given xyxy boxes and class scores, the rest zero."""
    nc = len(scores[0])
    raw = np.zeros((4 + nc, anchors), dtype=np.float32)
    for i, ((x1, y1, x2, y2), s) in enumerate(zip(boxes, scores, strict=False)):
        raw[:4, i] = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
        raw[4:, i] = s
    return raw


def test_decode_suppresses_overlaps_of_one_class_and_keeps_other_classes() -> None:
    raw = raw_tensor(
        [
            (10, 10, 50, 50),  # class 0, 0.9
            (12, 12, 52, 52),  # class 0, 0.8: IoU 0.82 with the first → suppressed
            (11, 11, 51, 51),  # class 1, 0.7: same place, other class → kept
            (60, 60, 100, 100),  # class 0, 0.6: no overlap → kept
            (30, 30, 70, 70),  # class 0, 0.85: IoU 0.14 with the first → kept
        ],
        [[0.9, 0.1], [0.8, 0.1], [0.2, 0.7], [0.6, 0.0], [0.85, 0.0]],
    )
    boxes, scores, classes = decode(raw, np.array([0.25, 0.25]), iou=0.45)
    np.testing.assert_allclose(scores, [0.9, 0.85, 0.7, 0.6], atol=1e-6)
    assert classes.tolist() == [0, 0, 1, 0]
    np.testing.assert_allclose(boxes[0], [10, 10, 50, 50])
    np.testing.assert_allclose(boxes[2], [11, 11, 51, 51])


def test_decode_applies_each_label_its_own_threshold_and_the_limit() -> None:
    raw = raw_tensor(
        [(0, 0, 10, 10), (20, 20, 30, 30), (40, 40, 50, 50), (60, 60, 70, 70)],
        [[0.5, 0.0], [0.0, 0.35], [0.0, 0.29], [0.61, 0.0]],
    )
    _, scores, classes = decode(raw, np.array([0.6, 0.3]))
    assert list(zip(classes.tolist(), np.round(scores, 2).tolist(), strict=False)) == [(0, 0.61), (1, 0.35)]
    _, scores, _ = decode(raw, np.array([0.1, 0.1]), max_detections=3)
    np.testing.assert_allclose(scores, [0.61, 0.5, 0.35], atol=1e-6)
    boxes, scores, classes = decode(raw, np.array([0.99, 0.99]))  # nothing reaches its threshold
    assert boxes.shape == (0, 4) and scores.shape == classes.shape == (0,)
    # Only the best class of an anchor counts unless multi_label.
    raw = raw_tensor([(0, 0, 10, 10)], [[0.7, 0.65]])
    assert decode(raw, np.array([0.5, 0.5]))[2].tolist() == [0]
    assert sorted(decode(raw, np.array([0.5, 0.5]), multi_label=True)[2].tolist()) == [0, 1]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return float(w * h / union)


def test_nms_matches_the_definition_on_random_boxes() -> None:
    rng = np.random.default_rng(7)
    xy = rng.uniform(0, 100, (60, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (60, 2))], axis=1)
    scores = rng.random(60)
    keep = nms(boxes, scores, 0.3).tolist()
    assert 1 < len(keep) < 60 and np.all(np.diff(scores[keep]) <= 0)
    for i, a in enumerate(keep):  # no two kept boxes overlap more than the threshold
        assert all(_iou(boxes[a], boxes[b]) <= 0.3 for b in keep[i + 1 :])
    for d in set(range(60)) - set(keep):  # every dropped box overlaps a kept, better one
        assert max(_iou(boxes[d], boxes[k]) for k in keep if scores[k] >= scores[d]) > 0.3
    assert nms(boxes, scores, 0.3, limit=2).tolist() == keep[:2]


# --------------------------------------------------------------------------- classifiers over ONNX and Keras


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1 - p))


@pytest.fixture(scope="module")
def finding_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Manifest, Manifest, np.ndarray]:
    """A tiny 14-label sigmoid model whose outputs are known biases plus a small image term."""
    import keras

    folder = tmp_path_factory.mktemp("findings")
    image = keras.Input(shape=(48, 48, 1), name="image")
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(image)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(14, activation="sigmoid", name="findings")(x)
    model = keras.Model(image, out)
    target = np.linspace(0.05, 0.95, 14)
    kernel, _ = model.get_layer("findings").get_weights()
    model.get_layer("findings").set_weights([kernel * 0.01, _logit(target).astype(np.float32)])
    model.save(folder / "findings.keras")
    export_onnx(model, folder / "findings.onnx")
    # Thresholds just above/below the planted probabilities decide `present` unambiguously.
    thresholds = [float(t + (0.03 if i % 2 else -0.03)) for i, t in enumerate(target)]
    labels = list(zip(CHESTXRAY14_LABELS, thresholds, strict=False))
    common = dict(task="multilabel-classification", labels=labels, size=(48, 48), postprocessing={"batch": 3})
    return (
        make_manifest(folder / "findings.onnx", backend="onnx", **common),  # type: ignore[arg-type]
        make_manifest(folder / "findings.keras", backend="keras", **common),  # type: ignore[arg-type]
        target,
    )


def _images(rng: np.random.Generator) -> list[np.ndarray]:
    shapes = [(64, 64), (120, 90), (40, 200), (48, 48), (300, 250), (33, 47), (80, 80)]
    return [rng.random(shape, dtype=np.float32) for shape in shapes]


def test_finding_classifier_same_on_onnx_and_keras_and_thresholds_per_label(
    finding_models: tuple[Manifest, Manifest, np.ndarray],
) -> None:
    onnx_manifest, keras_manifest, target = finding_models
    via_onnx = FindingClassifier.from_manifest(onnx_manifest)
    via_keras = FindingClassifier.from_manifest(keras_manifest)
    assert isinstance(via_onnx._model, OnnxModel) and isinstance(via_keras._model, KerasModel)
    images = _images(np.random.default_rng(1))
    uids = [f"1.2.3.{i}" for i in range(len(images))]
    p_onnx, p_keras = via_onnx.probabilities(images), via_keras.probabilities(images)
    assert p_onnx.shape == (7, 14)
    np.testing.assert_allclose(p_onnx, p_keras, atol=1e-4)
    np.testing.assert_allclose(p_onnx, np.broadcast_to(target, p_onnx.shape), atol=0.02)

    # 7 images in batches of 3 give what one image at a time gives.
    one_by_one = np.concatenate([via_onnx.probabilities([im]) for im in images])
    np.testing.assert_allclose(one_by_one, p_onnx, atol=1e-6)

    results = via_keras.predict(images, uids)
    assert len(results) == 7
    for uid, findings in zip(uids, results, strict=False):
        assert [f.label for f in findings] == list(CHESTXRAY14_LABELS)
        # Odd labels have their threshold above the planted probability, even ones below.
        assert [f.present for f in findings] == [i % 2 == 0 for i in range(14)]
        assert {f.source_sop_uid for f in findings} == {uid}
        assert {f.group for f in findings} == {"finding"} and {f.algorithm for f in findings} == {"test-model"}
    info = via_onnx.algorithm
    assert (info.name, info.version, info.weights_sha256, info.display_name) == (
        "test-model",
        "test-1",
        onnx_manifest.sha256,
        "test-model (DEMO)",
    )
    assert via_onnx.predict([], []) == []


@pytest.fixture(scope="module")
def four_class_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Manifest, Manifest, Manifest]:
    """The four-class design's 5-layer CNN, tiny and untrained, as .keras, .h5 and ONNX."""
    import keras

    keras.utils.set_random_seed(4)
    folder = tmp_path_factory.mktemp("four")
    model = four_class_cnn(32, filters=(4, 8, 8), hidden=16)
    model.save(folder / "cnn.keras")
    model.save(folder / "cnn.h5")
    export_onnx(model, folder / "cnn.onnx")
    labels: list[tuple[str, float | None]] = [(c, 0.9) for c in FOUR_CLASSES]  # thresholds do not decide the class
    common = dict(task="classification", labels=labels, size=(32, 32))
    return (
        make_manifest(folder / "cnn.onnx", backend="onnx", **common),  # type: ignore[arg-type]
        make_manifest(folder / "cnn.keras", backend="keras", **common),  # type: ignore[arg-type]
        make_manifest(folder / "cnn.h5", backend="keras", **common),  # type: ignore[arg-type]
    )


def test_four_class_softmax_same_on_onnx_keras_and_h5_and_only_the_argmax_is_present(
    four_class_models: tuple[Manifest, Manifest, Manifest],
) -> None:
    classifiers = [FourClassClassifier.from_manifest(m) for m in four_class_models]
    images = _images(np.random.default_rng(2))
    uids = [f"1.2.4.{i}" for i in range(len(images))]
    probabilities = [c.probabilities(images) for c in classifiers]
    np.testing.assert_allclose(probabilities[0].sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probabilities[0], probabilities[1], atol=1e-4)
    np.testing.assert_allclose(probabilities[0], probabilities[2], atol=1e-4)
    for row, findings in zip(probabilities[0], classifiers[0].predict(images, uids), strict=False):
        assert [f.label for f in findings] == list(FOUR_CLASSES)
        assert [f.present for f in findings] == [i == int(np.argmax(row)) for i in range(4)]
        assert sum(f.present for f in findings) == 1 and {f.group for f in findings} == {"class"}


def test_four_class_logits_output_gets_a_softmax(tmp_path: Path) -> None:
    import keras

    image = keras.Input(shape=(16, 16, 1), name="image")
    x = keras.layers.GlobalAveragePooling2D()(image)
    out = keras.layers.Dense(4, name="logits")(x)
    model = keras.Model(image, out)
    model.get_layer("logits").set_weights([np.zeros((1, 4), np.float32), np.array([0.0, 1.0, 3.0, 0.5], np.float32)])
    model.save(tmp_path / "logits.keras")
    manifest = make_manifest(
        tmp_path / "logits.keras",
        task="classification",
        backend="keras",
        labels=[(c, None) for c in FOUR_CLASSES],
        size=(16, 16),
        postprocessing={"output": "logits"},
    )
    [findings] = FourClassClassifier.from_manifest(manifest).predict([np.zeros((20, 20), np.float32)], ["1.2"])
    expected = np.exp([0.0, 1.0, 3.0, 0.5]) / np.exp([0.0, 1.0, 3.0, 0.5]).sum()
    np.testing.assert_allclose([f.probability for f in findings], expected, atol=1e-6)
    assert [f.label for f in findings if f.present] == ["pneumonia"]


def test_wrong_task_label_count_and_input_shape_are_model_errors(
    finding_models: tuple[Manifest, Manifest, np.ndarray], tmp_path: Path
) -> None:
    onnx_manifest, keras_manifest, _ = finding_models
    with pytest.raises(ModelError, match="not 'classification'"):
        FourClassClassifier.from_manifest(onnx_manifest)
    with pytest.raises(ModelError, match="not 'detection'"):
        Detector.from_manifest(onnx_manifest)
    # A manifest with 3 labels for a 14-output model fails on the first batch, naming both counts.
    three = manifest_from_mapping(
        {**onnx_manifest.to_json_dict(), "labels": [{"key": k, "display": k} for k in CHESTXRAY14_LABELS[:3]]},
        onnx_manifest.base_dir,
        "three labels",
    )
    with pytest.raises(ModelError, match="14 outputs per image; its manifest has 3 labels"):
        FindingClassifier.from_manifest(three).predict([np.zeros((48, 48), np.float32)], ["1.2"])
    # The Keras file's input is 48×48; a manifest saying 64×64 is refused at load time.
    wrong_size = manifest_from_mapping(
        {**keras_manifest.to_json_dict(), "input": {"height": 64, "width": 64, "channels": 1, "layout": "NHWC"}},
        keras_manifest.base_dir,
        "wrong size",
    )
    with pytest.raises(ModelError, match=r"Keras input has shape \(None, 48, 48, 1\), manifest says \(N, 64, 64, 1\)"):
        load_backend(wrong_size)
    with pytest.raises(ValueError, match="2 images but 1 SOP Instance UIDs"):
        FindingClassifier.from_manifest(onnx_manifest).predict([np.zeros((9, 9))] * 2, ["1.2"])
