"""Native weights: an Ultralytics ``.pt`` served as-is agrees with its ONNX export; clear errors otherwise.

The YOLO model is built from Ultralytics' bundled ``yolov8n.yaml`` (2 classes, random
head so that boxes and scores vary) — never from a ``.pt`` name, which would download.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.backends import load_backend
from models.backends.onnx_backend import OnnxModel
from models.backends.ultralytics_backend import UltralyticsModel
from models.detector import Detector, letterbox_geometry
from models.errors import ModelError
from models.manifest import Manifest, manifest_from_mapping, sha256_file

IMGSZ = 128
LABELS: list[tuple[str, float | None]] = [("nodule", 0.55), ("mass", None)]  # mass: postprocessing.conf


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
    name: str = "test-detector",
) -> Manifest:
    """A manifest for ``weights`` with its real SHA-256 (as ``tests/models/test_cxr_inference.py`` builds them)."""
    data = {
        "name": name,
        "version": "test-1",
        "task": task,
        "backend": backend,
        "weights": weights.name,
        "sha256": sha256_file(weights),
        "demo": True,
        "postprocessing": postprocessing or {},
        "labels": [{"key": k, "display": k, **({} if t is None else {"threshold": t})} for k, t in labels],
        "input": {"height": size[0], "width": size[1], "channels": channels, "layout": layout},
    }
    return manifest_from_mapping(data, weights.parent, f"{weights.name} manifest")


@pytest.fixture(scope="module")
def yolo_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Ultralytics offline, with its settings in a folder of the test (not the home directory)."""
    folder = tmp_path_factory.mktemp("yolo-config")
    saved = {k: os.environ.get(k) for k in ("YOLO_CONFIG_DIR", "YOLO_OFFLINE", "YOLO_AUTOINSTALL")}
    os.environ.update(YOLO_CONFIG_DIR=str(folder), YOLO_OFFLINE="1", YOLO_AUTOINSTALL="False")
    yield folder
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def yolo_files(yolo_env: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 2-class YOLOv8n saved as an Ultralytics .pt and exported to ONNX (batch 1, as ``dynamic=False`` gives)."""
    import torch
    import yaml
    from ultralytics import YOLO
    from ultralytics.nn.tasks import yaml_model_load

    folder = tmp_path_factory.mktemp("yolo")
    config = yaml_model_load("yolov8n.yaml")
    config["nc"] = 2
    # The scale ("n") is read from the file name.
    (folder / "yolov8n-cxr.yaml").write_text(yaml.safe_dump({k: v for k, v in config.items() if k != "yaml_file"}))
    torch.manual_seed(0)
    yolo = YOLO(str(folder / "yolov8n-cxr.yaml"), task="detect")
    # An untrained YOLOv8 gives the same box and a score of ~0 at every anchor, and its signal fades
    # through the default initialisation: re-initialise to keep it, and scale the head's last layers so
    # that boxes (10-50 px) and scores (0.5 ± 0.2) vary from anchor to anchor.
    with torch.no_grad():
        for module in yolo.model.modules():
            if isinstance(module, torch.nn.Conv2d) and module.weight.requires_grad:  # not the fixed DFL conv
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        head = yolo.model.model[-1]
        for box_branch, class_branch in zip(head.cv2, head.cv3, strict=False):
            box_branch[-1].weight.mul_(300.0)
            box_branch[-1].bias.copy_((-1.2 * torch.arange(16.0)).repeat(4))  # favour short distances
            class_branch[-1].weight.mul_(100.0)
            class_branch[-1].bias.fill_(0.0)
    yolo.model.names = {0: "nodule", 1: "mass"}
    yolo.save(folder / "det.pt")
    exported = YOLO(str(folder / "det.pt"), task="detect").export(
        format="onnx", imgsz=IMGSZ, simplify=False, dynamic=False, verbose=False
    )
    onnx_path = folder / "det.onnx"
    if Path(exported) != onnx_path:
        shutil.move(exported, onnx_path)
    return folder / "det.pt", onnx_path


def _detector_manifest(weights: Path, backend: str, **post: Any) -> Manifest:
    return make_manifest(
        weights,
        task="detection",
        backend=backend,
        labels=LABELS,
        size=(IMGSZ, IMGSZ),
        channels=3,
        layout="NCHW",
        postprocessing={"conf": 0.5, "iou": 0.45, "batch": 3, **post},
    )


def _radiographs(rng: np.random.Generator) -> list[np.ndarray]:
    """Grey images of several sizes and aspects with bright blobs (the net is random; anything textured will do)."""
    images = []
    for rows, cols in [(1500, 2000), (900, 300), (128, 128), (200, 255)]:
        image = rng.random((rows, cols), dtype=np.float32) * 0.3
        yy, xx = np.mgrid[:rows, :cols]
        for _ in range(3):
            cy, cx, r = (
                rng.uniform(0.2, 0.8) * rows,
                rng.uniform(0.2, 0.8) * cols,
                rng.uniform(0.05, 0.15) * min(rows, cols),
            )
            image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 0.95
        images.append(image)
    return images


def test_ultralytics_pt_and_its_onnx_export_give_the_same_raw_output_and_boxes(yolo_files: tuple[Path, Path]) -> None:
    pt, onnx_path = yolo_files
    native = load_backend(_detector_manifest(pt, "ultralytics"))
    exported = load_backend(_detector_manifest(onnx_path, "onnx"))
    assert isinstance(native, UltralyticsModel) and isinstance(exported, OnnxModel)
    assert exported.fixed_batch == 1 and native.names == {0: "nodule", 1: "mass"}

    images = _radiographs(np.random.default_rng(5))
    batch, geometries = Detector(native).prepare(images)
    assert batch.shape == (4, 3, IMGSZ, IMGSZ) and batch.dtype == np.float32
    raw_native, raw_onnx = native.run(batch), exported.run(batch)  # ONNX: 4 runs of batch 1
    assert raw_native.shape == raw_onnx.shape == (4, 6, (16 * 16 + 8 * 8 + 4 * 4))
    np.testing.assert_allclose(raw_native[:, :4], raw_onnx[:, :4], atol=1e-3)  # boxes, letterboxed pixels
    np.testing.assert_allclose(raw_native[:, 4:], raw_onnx[:, 4:], atol=1e-4)  # sigmoid scores
    assert raw_native[:, 4:].min() >= 0.0 and raw_native[:, 4:].max() <= 1.0
    assert raw_native[:, 4:].std() > 0.01 and raw_native[:, 2:4].std() > 0.5  # the random head makes varied output

    uids = [f"1.2.5.{i}" for i in range(len(images))]
    by_native = Detector(native).predict(images, uids)
    by_onnx = Detector(exported).predict(images, uids)
    assert sum(len(f) for f in by_native) > 4, "the test needs boxes to compare"
    for image, uid, a, b in zip(images, uids, by_native, by_onnx, strict=False):
        assert [f.label for f in a] == [f.label for f in b]
        for fa, fb in zip(a, b, strict=False):
            assert fa.region is not None and fb.region is not None
            np.testing.assert_allclose(
                [fa.region.x_min, fa.region.y_min, fa.region.x_max, fa.region.y_max],
                [fb.region.x_min, fb.region.y_min, fb.region.x_max, fb.region.y_max],
                atol=0.02 * max(image.shape) / IMGSZ,  # 0.02 canvas px (the atol of the raw boxes), in source pixels
            )
            assert abs(fa.probability - fb.probability) < 1e-4
            # Boxes in source pixels, inside the image, thresholds per label.
            assert 0 <= fa.region.x_min < fa.region.x_max <= image.shape[1]
            assert 0 <= fa.region.y_min < fa.region.y_max <= image.shape[0]
            assert fa.probability >= (0.55 if fa.label == "nodule" else 0.5)
            assert (fa.source_sop_uid, fa.group, fa.present, fa.algorithm) == (uid, "detection", True, "test-detector")
        assert [f.probability for f in a] == sorted((f.probability for f in a), reverse=True) and len(a) <= 20


def test_letterbox_geometry_is_ultralytics_letterbox(yolo_env: Path) -> None:
    from ultralytics.data.augment import LetterBox
    from ultralytics.utils.ops import scale_boxes

    rng = np.random.default_rng(11)
    shapes = [(1500, 2000), (900, 300), (100, 127), (200, 255), (2048, 2500), (37, 1001)]
    shapes += [tuple(int(v) for v in rng.integers(20, 3000, 2)) for _ in range(40)]
    for canvas in [(128, 128), (320, 320), (96, 160)]:
        for rows, cols in shapes:
            theirs = LetterBox(new_shape=canvas)
            params = theirs.get_params({"img": np.zeros((rows, cols, 3), np.uint8)})
            ours = letterbox_geometry((rows, cols), canvas)
            assert (ours.resized_width, ours.resized_height) == tuple(params["new_unpad"]), (rows, cols, canvas)
            assert (ours.top, ours.left) == (params["top"], params["left"]), (rows, cols, canvas)
            box = np.array([[3.5, 7.25, canvas[1] - 9.0, canvas[0] - 2.0]])
            expected = scale_boxes(canvas, box.copy(), (rows, cols))
            np.testing.assert_allclose(ours.to_source(box), expected, atol=1e-6)


def test_missing_extras_and_corrupt_weights_are_model_errors(
    yolo_files: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pt, _ = yolo_files
    # A corrupt .pt and a corrupt .keras: the message names the file and the model.
    bad_pt = tmp_path / "broken.pt"
    bad_pt.write_bytes(pt.read_bytes()[:5000])
    with pytest.raises(ModelError, match=r"cannot load Ultralytics weights .*broken\.pt of 'test-detector'"):
        load_backend(_detector_manifest(bad_pt, "ultralytics"))

    def two_classes(weights: Path) -> Manifest:
        return make_manifest(
            weights, task="classification", backend="keras", labels=[("a", None), ("b", None)], size=(32, 32)
        )

    def on_pt(size: tuple[int, int], channels: int, layout: str) -> Manifest:
        return make_manifest(
            pt, task="detection", backend="ultralytics", labels=LABELS, size=size, channels=channels, layout=layout
        )

    bad_keras = tmp_path / "broken.keras"
    bad_keras.write_bytes(b"PK\x03\x04 not really a zip archive")
    with pytest.raises(ModelError, match=r"cannot load Keras weights .*broken\.keras"):
        load_backend(two_classes(bad_keras))
    # An input size that is not a multiple of the stride, and a one-channel NHWC input, are refused.
    with pytest.raises(ModelError, match="not a multiple of the model's stride 32"):
        load_backend(on_pt((100, 128), 3, "NCHW"))
    with pytest.raises(ModelError, match=r"takes \(N, 3, H, W\) NCHW input"):
        load_backend(on_pt((128, 128), 1, "NHWC"))
    # The extras missing: importing them fails as it does where they are not installed.
    monkeypatch.setitem(sys.modules, "ultralytics", None)
    with pytest.raises(ModelError, match=r"install the \[yolo\] extra"):
        load_backend(_detector_manifest(pt, "ultralytics"))
    monkeypatch.setitem(sys.modules, "keras", None)
    with pytest.raises(ModelError, match=r"install the \[train\] extra"):
        load_backend(two_classes(bad_keras))


def test_a_detector_manifest_with_the_wrong_class_count_is_refused(yolo_files: tuple[Path, Path]) -> None:
    _, onnx_path = yolo_files
    data = _detector_manifest(onnx_path, "onnx").to_json_dict()
    data["labels"] = [{"key": "nodule", "display": "Nodule"}]
    detector = Detector.from_manifest(manifest_from_mapping(data, onnx_path.parent, "one label"))
    with pytest.raises(ModelError, match=r"shape \(1, 6, 336\); expected the raw YOLO layout \(N, 4 \+ 1 labels"):
        detector.predict([np.zeros((64, 64), np.float32)], ["1.2"])
