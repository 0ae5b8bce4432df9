"""Chest detector training: ChestX-Det → YOLO conversion, synthetic ChestX-Det, demo recipe, evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.manifest import load_manifest, sha256_file
from sr_writer.codes import CONCEPTS
from training.detector import MODEL_NAME, build_demo, recipe_hash
from training.detector_data import (
    CHESTX_DET_CLASSES,
    KEYS_WITHOUT_CONCEPT,
    LABEL_KEYS,
    PHANTOM_CLASSES,
    chestx_det_to_yolo,
    read_chestx_det,
    write_synthetic_chestx_det,
)

REPO = Path(__file__).resolve().parents[2]


def _png(path: Path, width: int, height: int) -> None:
    Image.fromarray(np.full((height, width), 128, dtype=np.uint8)).save(path)


def _labels(path: Path) -> list[list[float]]:
    return [[float(v) for v in line.split()] for line in path.read_text().splitlines()]


@pytest.fixture
def tiny_chestx_det(tmp_path: Path) -> tuple[Path, Path]:
    """Three hand-made records: two boxes on a 200×100 image, one box clipped at the edge, one negative."""
    images = tmp_path / "train_data"
    images.mkdir()
    _png(images / "a.png", 200, 100)
    _png(images / "b.png", 64, 64)
    _png(images / "c.png", 50, 80)
    records = [
        {
            "file_name": "a.png",
            "syms": ["Nodule", "Effusion"],
            "boxes": [[10, 20, 30, 60], [100, 0, 200, 100]],
            "polygons": [[[10, 20], [30, 20], [30, 60]], [[100, 0], [200, 100], [100, 100]]],
        },
        {"file_name": "b.png", "syms": ["Fracture"], "boxes": [[-8, 32, 16, 80]], "polygons": [[[0, 32], [16, 64]]]},
        {"file_name": "c.png", "syms": [], "boxes": [], "polygons": []},
    ]
    annotations = tmp_path / "ChestX_Det_train.json"
    annotations.write_text(json.dumps(records))
    return annotations, images


def _all_labels(out: Path) -> dict[str, list[list[float]]]:
    return {p.stem: _labels(p) for split in ("train", "val") for p in (out / "labels" / split).glob("*.txt")}


def test_mapping_covers_chestx_det_and_names_concepts() -> None:
    assert list(LABEL_KEYS) == list(CHESTX_DET_CLASSES) and len(CHESTX_DET_CLASSES) == 13
    missing = {key for key in LABEL_KEYS.values() if key not in CONCEPTS}
    # Every key is a concept of sr_writer.codes except the three ChestX-Det-only ones still awaiting a code.
    assert missing <= KEYS_WITHOUT_CONCEPT
    assert all(LABEL_KEYS[c] in CONCEPTS for c in PHANTOM_CLASSES)


def test_converter_writes_normalised_boxes_class_ids_and_keeps_negatives(
    tiny_chestx_det: tuple[Path, Path], tmp_path: Path
) -> None:
    annotations, images = tiny_chestx_det
    out = tmp_path / "yolo"
    summary = chestx_det_to_yolo(annotations, images, out, val_fraction=0.0)
    labels = _all_labels(out)
    nodule, effusion, fracture = (CHESTX_DET_CLASSES.index(c) for c in ("Nodule", "Effusion", "Fracture"))
    assert nodule == 10 and effusion == 5 and fracture == 8
    # a.png is 200 wide, 100 high: centre (20, 40) → (0.1, 0.4), size 20×40 → (0.1, 0.4).
    assert labels["a"] == [[nodule, 0.1, 0.4, 0.1, 0.4], [effusion, 0.75, 0.5, 0.5, 1.0]]
    # b.png: x from -8 is clipped to 0, y2 80 to 64: box (0, 32)-(16, 64) on 64×64.
    assert labels["b"] == [[fracture, 0.125, 0.75, 0.25, 0.5]]
    assert labels["c"] == [] and (out / "images" / "train" / "c.png").is_file()
    assert summary.images == {"train": 3, "val": 0} and summary.negatives == {"train": 1, "val": 0}
    assert summary.boxes == {"Nodule": 1, "Effusion": 1, "Fracture": 1}
    data = (out / "data.yaml").read_text()
    assert "train: images/train" in data and "val: images/val" in data and "nc: 13" in data
    assert '10: "nodule"' in data and '4: "diffuse_nodule"' in data


def test_converter_with_a_class_subset_renumbers_and_rejects_others(
    tiny_chestx_det: tuple[Path, Path], tmp_path: Path
) -> None:
    annotations, images = tiny_chestx_det
    with pytest.raises(ValueError, match=r"unknown class name 'Fracture'"):
        chestx_det_to_yolo(annotations, images, tmp_path / "y", classes=PHANTOM_CLASSES)
    records = json.loads(annotations.read_text())
    records[1]["syms"] = ["Lung Opacity"]
    annotations.write_text(json.dumps(records))
    with pytest.raises(ValueError, match=r"b\.png.*unknown class name 'Lung Opacity'"):
        chestx_det_to_yolo(annotations, images, tmp_path / "y")
    with pytest.raises(ValueError, match="unknown ChestX-Det class name"):
        chestx_det_to_yolo(annotations, images, tmp_path / "y", classes=["Nodule", "Nodules"])


def test_converter_refuses_mismatched_syms_and_missing_images(
    tiny_chestx_det: tuple[Path, Path], tmp_path: Path
) -> None:
    annotations, images = tiny_chestx_det
    records = json.loads(annotations.read_text())
    records[0]["boxes"] = records[0]["boxes"][:1]
    annotations.write_text(json.dumps(records))
    with pytest.raises(ValueError, match="same length"):
        read_chestx_det(annotations)
    records[0]["boxes"] = [[10, 20, 30, 60], [100, 0, 200, 100]]
    annotations.write_text(json.dumps(records))
    (images / "c.png").unlink()
    with pytest.raises(ValueError, match="'c.png' not found"):
        chestx_det_to_yolo(annotations, images, tmp_path / "y")


def test_split_is_reproducible_and_independent_of_record_order(tmp_path: Path) -> None:
    images = tmp_path / "img"
    images.mkdir()
    records = []
    for i in range(40):
        _png(images / f"{i}.png", 32, 32)
        records.append({"file_name": f"{i}.png", "syms": ["Mass"], "boxes": [[1, 1, 9, 9]], "polygons": []})
    forward, backward = tmp_path / "f.json", tmp_path / "b.json"
    forward.write_text(json.dumps(records))
    backward.write_text(json.dumps(records[::-1]))

    def val_names(annotations: Path, seed: int) -> set[str]:
        out = tmp_path / f"y-{annotations.stem}-{seed}"
        chestx_det_to_yolo(annotations, images, out, val_fraction=0.25, seed=seed)
        return {p.name for p in (out / "images" / "val").iterdir()}

    first = val_names(forward, 0)
    assert first == val_names(backward, 0)
    assert 4 <= len(first) <= 18  # about a quarter of 40
    assert val_names(forward, 1) != first


def test_synthetic_writer_output_is_read_by_the_converter(tmp_path: Path) -> None:
    annotations = write_synthetic_chestx_det(
        tmp_path / "cxd", 6, seed=3, phantom_size=160, image_size=128, negative_fraction=0.3
    )
    records = read_chestx_det(annotations)
    assert len(records) == 6 and any(not r["syms"] for r in records) and any(r["syms"] for r in records)
    for rec in records:
        assert len(rec["syms"]) == len(rec["boxes"]) == len(rec["polygons"])
        with Image.open(tmp_path / "cxd" / "images" / rec["file_name"]) as im:
            assert im.size == (128, 128) and im.mode == "L"
        for x1, y1, x2, y2 in rec["boxes"]:
            assert 0 <= x1 < x2 <= 128 and 0 <= y1 < y2 <= 128
    summary = chestx_det_to_yolo(annotations, tmp_path / "cxd" / "images", tmp_path / "yolo", classes=PHANTOM_CLASSES)
    assert sum(summary.images.values()) == 6
    assert sum(summary.boxes.values()) == sum(len(r["boxes"]) for r in records)
    # Same seed, same set.
    again = write_synthetic_chestx_det(
        tmp_path / "again", 6, seed=3, phantom_size=160, image_size=128, negative_fraction=0.3
    )
    assert json.loads(again.read_text()) == json.loads(annotations.read_text())


class _Steps:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int, str]] = []

    def step(self, done: int, total: int, message: str) -> None:
        self.calls.append((done, total, message))


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, _Steps]:
    root = tmp_path_factory.mktemp("detector-demo")
    steps = _Steps()
    build_demo(root / "models", root / "work", steps, quick=True)
    return root / "models", root / "work", steps


@pytest.mark.integration  # trains or exports a model for tens of seconds: not for the fast loop
def test_quick_demo_writes_a_demo_manifest_and_an_onnx_of_the_declared_shape(
    quick_demo: tuple[Path, Path, _Steps],
) -> None:
    import onnxruntime as ort

    models_dir, _, steps = quick_demo
    manifest = load_manifest(models_dir / MODEL_NAME / "model.json")
    assert manifest.name == MODEL_NAME and manifest.task == "detection" and manifest.backend == "onnx" and manifest.demo
    assert manifest.sha256 == sha256_file(manifest.weights_path)
    assert [s.key for s in manifest.labels] == [LABEL_KEYS[c] for c in PHANTOM_CLASSES]
    assert all(s.threshold is not None and 0.0 < s.threshold < 1.0 for s in manifest.labels)
    assert manifest.postprocessing["recipe_hash"] == recipe_hash(quick=True) != recipe_hash(quick=False)
    assert manifest.postprocessing["iou"] == 0.45 and manifest.postprocessing["max_detections"] == 20
    spec = manifest.input
    assert (spec.layout, spec.channels, spec.height, spec.width) == ("NCHW", 3, 128, 128)
    assert (models_dir / MODEL_NAME / "MODEL_CARD.md").read_text().count("DEMO") >= 1

    session = ort.InferenceSession(str(manifest.weights_path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.shape[1:] == [3, 128, 128]
    nc = len(manifest.labels)
    anchors = (128 // 8) ** 2 + (128 // 16) ** 2 + (128 // 32) ** 2
    for batch in (1, 2):
        (out,) = session.run(None, {inp.name: np.full((batch, 3, 128, 128), 0.5, dtype=np.float32)})
        assert out.shape == (batch, 4 + nc, anchors)
        assert np.all((out[:, 4:] >= 0) & (out[:, 4:] <= 1))  # class scores already sigmoid
    # Progress went forward to the end.
    done = [d for d, _, _ in steps.calls]
    assert done == sorted(done) and steps.calls[-1][0] == steps.calls[-1][1] and len(steps.calls) > 3


@pytest.mark.integration  # trains or exports a model for tens of seconds: not for the fast loop
def test_evaluate_prints_the_four_metrics(quick_demo: tuple[Path, Path, _Steps]) -> None:
    models_dir, work, _ = quick_demo
    data_yaml = work / "cxr-detector" / "yolo" / "data.yaml"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.detector",
            "evaluate",
            "--weights",
            str(models_dir / MODEL_NAME / "model.onnx"),
            "--data",
            str(data_yaml),
            "--work",
            str(work / "eval"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    last = result.stdout.strip().splitlines()[-1].split()
    figures = dict(zip(last[::2], (float(v) for v in last[1::2]), strict=False))
    assert set(figures) == {"mAP@0.5", "mAP@0.5:0.95", "precision", "recall"}
    assert all(0.0 <= v <= 1.0 for v in figures.values())
    assert "| all |" in result.stdout


def test_convert_command_and_pretrained_names_refused(
    tiny_chestx_det: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.detector import main, train

    annotations, images = tiny_chestx_det
    assert (
        main(
            [
                "convert",
                "--annotations",
                str(annotations),
                "--images",
                str(images),
                "--out",
                str(tmp_path / "y"),
                "--val-fraction",
                "0",
            ]
        )
        == 0
    )
    assert "train 3 images (1 without boxes)" in capsys.readouterr().out
    # A .pt name makes Ultralytics download pretrained weights: refused before anything is imported.
    with pytest.raises(ValueError, match="model YAML"):
        train(tmp_path / "y" / "data.yaml", tmp_path / "w", model="yolov8n.pt")
