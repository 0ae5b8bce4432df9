"""Train a chest detector (Ultralytics YOLO on ChestX-Det classes), export ONNX, evaluate.

The design is the emergency-department triage service's detector (see :mod:`training`).

The source design trains YOLOv5 on 14 classes and reports mAP@0.5 0.972, mAP@0.5:0.95 0.702,
precision 0.894, recall 0.936. Here an Ultralytics YOLO is built from its YAML
(``yolov8n.yaml`` by default, ``--model yolo11n.yaml`` allowed; no pretrained weights,
nothing is downloaded) and trained on ChestX-Det converted to the YOLO layout by
:mod:`training.detector_data`, on CPU, with AMP off and a fixed seed.

Serving form (what ``models.detector.Detector`` reads): ONNX (opset 17) with input
``images`` of shape (batch, 3, imgsz, imgsz), NCHW float32 RGB 0..1 (the grey
radiograph repeated into three channels, letterboxed with grey 114/255) and output
``output0`` of shape (batch, 4 + nc, anchors): cx, cy, w, h in letterboxed pixels and
the nc class scores after the sigmoid. ``model.json`` lists the label keys in class-id
order, each with the confidence threshold that maximised its F1 on the validation
images, and ``postprocessing`` {iou 0.45, max_detections 20, letterbox_pad 114}.

Usage::

    python -m training.detector convert --annotations ChestX_Det_train.json --images train_data --out YOLO
    python -m training.detector train --data YOLO/data.yaml --out MODELS_DIR/cxr-detector --work WORK
    python -m training.detector evaluate --weights MODELS_DIR/cxr-detector/model.onnx --data YOLO/data.yaml

``evaluate`` prints mAP@0.5, mAP@0.5:0.95, precision and recall (overall and per class)
computed by Ultralytics' own validator on the YOLO layout's ``val`` images.

Ultralytics and torch are imported inside functions only, and :func:`build_demo` runs
the training in a child process: torch imported after TensorFlow in one process
segfaults. Needs the ``[yolo]`` extra.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from models.manifest import manifest_from_mapping, sha256_file
from training.demo import demo_recipe
from training.detector_data import (
    CHESTX_DET_CLASSES,
    LABEL_KEYS,
    PHANTOM_CLASSES,
    chestx_det_to_yolo,
    write_synthetic_chestx_det,
)


class Progress(Protocol):
    """What :func:`build_demo` reports to (``training.demo.Progress`` has this shape)."""

    def step(self, done: int, total: int, message: str) -> None: ...


__all__ = [
    "DEMO",
    "MODEL_NAME",
    "QUICK",
    "Evaluation",
    "build_demo",
    "evaluate",
    "export_onnx",
    "format_table",
    "main",
    "recipe_hash",
    "train",
    "ultralytics_offline",
]

MODEL_NAME = "cxr-detector"
DEFAULT_MODEL = "yolov8n.yaml"
IOU = 0.45
MAX_DETECTIONS = 20
LETTERBOX_PAD = 114
_PROGRESS = "@@progress"
_ROOT = Path(__file__).resolve().parents[1]
"""The folder that holds the ``training`` package (the checkout): the demo child process runs from it."""

DEMO: dict[str, Any] = {
    "images": 400,
    "phantom_size": 320,
    "imgsz": 320,
    "epochs": 20,
    "batch": 8,
    "seed": 2,
    "model": DEFAULT_MODEL,
    "holdout": 40,
    "lr0": 0.002,
    "warmup_epochs": 0.0,
}
"""Demo recipe: phantoms drawn, image and input size, epochs, batch, seed, held-out phantoms per kind.

YOLOv8n (heads at strides 8, 16, 32): at 320 px on a 43 cm detector a 15–30 mm nodule spans
11–22 pixels, so stride-8 anchors fall inside every nodule box (Ultralytics' assigner trains only
anchors whose centre lies inside a box). The stride-4 head of ``yolov8-p2.yaml`` costs about
40 % more per image and was needed only for the 5–15 mm nodules of earlier phantoms. A fixed
number of epochs, not a time budget: 5 epochs boxed 23 of 40 held-out nodules, 12 epochs 21 of 40
with confidences just under the nodule threshold; 24 epochs 39 of 40 on one machine (45 s an epoch on
2 cores) and 35 of 40 on another (23 s an epoch), where 20 epochs also boxed 35 of 40: 20 keeps the
chest build within its 15 minutes there."""

QUICK: dict[str, Any] = {
    "images": 16,
    "phantom_size": 128,
    "imgsz": 128,
    "epochs": 1,
    "batch": 4,
    "seed": 2,
    "model": DEFAULT_MODEL,
    "holdout": 2,
    "lr0": 0.002,
    "warmup_epochs": 0.0,
}
"""Tiny recipe for tests (seconds; quality not checked)."""

DEMO_VERSION = "demo-3"
VAL_FRACTION = 0.2
"""Share of the demo's phantoms in the validation split (thresholds are chosen on it)."""
DEMO_GENERATORS = ("training.detector_data", "training.phantoms.chest")
"""Phantom generators whose ``GENERATOR_VERSION`` is part of the recipe hash (``training.demo``)."""


def demo_parameters(quick: bool = False) -> dict[str, Any]:
    """Everything the demo run depends on (:data:`DEMO` or :data:`QUICK` and the fixed choices): the recipe's
    parameters, hashed by ``training.demo``."""
    return {
        **(QUICK if quick else DEMO),
        "name": MODEL_NAME,
        "version": DEMO_VERSION,
        "classes": list(PHANTOM_CLASSES),
        "val_fraction": VAL_FRACTION,
        "holdout_size": 128 if quick else 512,
    }


# --------------------------------------------------------------------------- Ultralytics, offline


def ultralytics_offline(config_dir: Path) -> None:
    """Make Ultralytics work without a network: call before importing it.

    Sets ``YOLO_OFFLINE=1`` (no hub events, no update checks), ``YOLO_AUTOINSTALL=False``
    (no pip installs) and ``YOLO_CONFIG_DIR`` to ``config_dir``, and puts a TrueType font
    at ``config_dir/Ultralytics/Arial.ttf`` (Ultralytics' dataset check fetches Arial
    otherwise).
    """
    font_dir = Path(config_dir) / "Ultralytics"
    font_dir.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "False"
    os.environ["YOLO_CONFIG_DIR"] = str(Path(config_dir).resolve())
    target = font_dir / "Arial.ttf"
    if not target.exists():
        shutil.copyfile(_find_font(), target)


def _find_font() -> Path:
    """A TTF font of the system (fc-list, then the usual folders)."""
    candidates: list[Path] = []
    fc_list = shutil.which("fc-list")
    if fc_list:
        out = subprocess.run(
            [fc_list, ":fontformat=TrueType", "file"], capture_output=True, text=True, check=False
        ).stdout
        candidates += [Path(line.split(":")[0].strip()) for line in out.splitlines() if line.strip()]
    for root in (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"), Path("/Library/Fonts")):
        if root.is_dir():
            candidates += sorted(root.rglob("*.ttf"))
    for path in sorted(candidates, key=lambda p: ("Sans" not in p.name, p.name)):
        if path.suffix.lower() == ".ttf" and path.is_file():
            return path
    raise RuntimeError("no TrueType font found for Ultralytics (install fonts-dejavu-core or any .ttf)")


def _import_ultralytics(config_dir: Path) -> Any:
    ultralytics_offline(config_dir)
    import torch  # before anything that might pull TensorFlow in
    from ultralytics import YOLO

    return torch, YOLO


# --------------------------------------------------------------------------- training


@dataclass
class TrainRun:
    """What :func:`train` produced."""

    best_pt: Path
    seconds: float
    epochs: int
    names: list[str]


def train(
    data_yaml: Path,
    work_dir: Path,
    *,
    model: str = DEFAULT_MODEL,
    imgsz: int = 320,
    epochs: int = 30,
    batch: int = 16,
    seed: int = 0,
    lr0: float = 0.002,
    warmup_epochs: float = 0.0,
    threads: int = 2,
    on_epoch: Callable[[int, int], None] | None = None,
) -> TrainRun:
    """Train an Ultralytics YOLO from its YAML on a YOLO-layout data set (CPU, no downloads).

    Parameters
    ----------
    data_yaml : Path
        ``data.yaml`` written by :func:`training.detector_data.chestx_det_to_yolo`.
    work_dir : Path
        Gets the Ultralytics run folder (``runs/train``) and its config folder.
    model : str
        An Ultralytics model YAML (``yolov8n.yaml``, ``yolo11n.yaml``...), never a ``.pt`` name
        (a ``.pt`` name downloads pretrained weights).
    imgsz, epochs, batch, seed : int
        Ultralytics' training arguments.
    lr0, warmup_epochs : float
        AdamW's learning rate and the warm-up (Ultralytics warms up for at least 100
        steps when warm-up is on, which is most of a short CPU run: off by default).
    threads : int
        torch threads (the data loader runs in the main process).
    on_epoch : callable, optional
        Called as ``on_epoch(done, epochs)`` after each epoch.
    """
    if not model.endswith((".yaml", ".yml")):
        raise ValueError(f"--model must be an Ultralytics model YAML such as {DEFAULT_MODEL}, got {model!r}")
    work_dir = Path(work_dir)
    torch, YOLO = _import_ultralytics(work_dir / "ultralytics-config")
    torch.set_num_threads(max(1, threads))
    yolo = YOLO(model)
    if on_epoch is not None:
        yolo.add_callback("on_train_epoch_end", lambda trainer: on_epoch(int(trainer.epoch) + 1, int(trainer.epochs)))
    start = time.monotonic()
    yolo.train(
        data=str(data_yaml),
        imgsz=imgsz,
        epochs=epochs,
        batch=batch,
        seed=seed,
        deterministic=True,
        device="cpu",
        workers=0,
        amp=False,
        plots=False,
        val=False,
        pretrained=False,
        optimizer="AdamW",
        lr0=lr0,
        warmup_epochs=warmup_epochs,
        cos_lr=False,
        project=str((work_dir / "runs").resolve()),
        name="train",
        exist_ok=True,
        verbose=False,
        # Grey radiographs: no colour jitter. Mirrored chests still look like chests.
        hsv_h=0.0,
        hsv_s=0.0,
        hsv_v=0.2,
        fliplr=0.5,
        scale=0.25,
        translate=0.08,
        mosaic=1.0,
        close_mosaic=max(1, epochs // 4),
        patience=epochs,
        # Ultralytics accumulates gradients up to a nominal batch of 64: with batch 8 that is one
        # optimizer step in 8 batches, far too few steps for a short CPU run. Step every batch.
        nbs=batch,
    )
    trainer = yolo.trainer
    best = Path(trainer.best if Path(trainer.best).exists() else trainer.last)
    return TrainRun(
        best_pt=best,
        seconds=time.monotonic() - start,
        epochs=int(trainer.epoch) + 1,
        names=list(trainer.data["names"].values()),
    )


def export_onnx(weights: Path, out_path: Path, imgsz: int, work_dir: Path, opset: int = 17) -> Path:
    """Export a trained ``.pt`` to ONNX with a dynamic batch and a fixed ``imgsz × imgsz`` input.

    Ultralytics exports its raw head, (batch, 4 + nc, anchors); ``dynamic`` there also
    frees height and width, which are pinned back to ``imgsz`` here so that the graph
    states the input the manifest declares.
    """
    _, YOLO = _import_ultralytics(Path(work_dir) / "ultralytics-config")
    import onnx

    yolo = YOLO(str(weights))
    strides = [int(v) for v in yolo.model.stride]  # 8, 16, 32 (and 4 with a P2 head)
    exported = Path(
        yolo.export(
            format="onnx",
            imgsz=imgsz,
            opset=opset,
            dynamic=True,
            simplify=False,
            nms=False,
            half=False,
            device="cpu",
            verbose=False,
        )
    )
    graph = onnx.load(str(exported))
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = imgsz
    dims[3].dim_value = imgsz
    anchors = sum((imgsz // stride) ** 2 for stride in strides)
    graph.graph.output[0].type.tensor_type.shape.dim[2].dim_value = anchors
    onnx.checker.check_model(graph)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(graph, str(out_path))
    return out_path


# --------------------------------------------------------------------------- evaluation


@dataclass
class Evaluation:
    """Detection metrics on the validation images (Ultralytics' validator, IoU 0.5 and 0.5:0.95)."""

    precision: float
    recall: float
    map50: float
    map50_95: float
    images: int
    instances: int
    rows: list[tuple[str, int, int, float, float, float, float]] = field(default_factory=list)
    f1_thresholds: dict[str, float] = field(default_factory=dict)


def evaluate(weights: Path, data_yaml: Path, imgsz: int, work_dir: Path, batch: int = 8) -> Evaluation:
    """Validate ``weights`` (``.pt`` or our ONNX) on the ``val`` images of ``data_yaml``.

    Ultralytics' ``val`` (confidence 0.001, NMS IoU 0.7, its letterbox) gives mAP@0.5,
    mAP@0.5:0.95 and, at the confidence of best mean F1, precision and recall; per class
    also the confidence where that class's F1 peaks (used as its threshold).
    """
    _, YOLO = _import_ultralytics(Path(work_dir) / "ultralytics-config")
    model = YOLO(str(weights), task="detect")
    metrics = model.val(
        data=str(data_yaml),
        imgsz=imgsz,
        batch=batch,
        device="cpu",
        workers=0,
        plots=False,
        rect=False,
        verbose=False,
        project=str((Path(work_dir) / "runs").resolve()),
        name="val",
        exist_ok=True,
    )
    box = metrics.box
    names = metrics.names
    rows = []
    thresholds = {}
    for i, cls in enumerate(box.ap_class_index):
        p, r, ap50, ap = box.class_result(i)
        rows.append(
            (
                names[int(cls)],
                int(metrics.nt_per_image[cls]),
                int(metrics.nt_per_class[cls]),
                float(p),
                float(r),
                float(ap50),
                float(ap),
            )
        )
        f1 = np.asarray(box.f1_curve[i])
        if f1.size and float(f1.max()) > 0:
            thresholds[names[int(cls)]] = float(np.asarray(box.px)[int(f1.argmax())])
    return Evaluation(
        precision=float(box.mp),
        recall=float(box.mr),
        map50=float(box.map50),
        map50_95=float(box.map),
        images=_val_images(data_yaml),
        instances=int(np.sum(metrics.nt_per_class)),
        rows=rows,
        f1_thresholds=thresholds,
    )


def _val_images(data_yaml: Path) -> int:
    import yaml  # an Ultralytics dependency

    data = yaml.safe_load(Path(data_yaml).read_text(encoding="utf-8"))
    folder = Path(data.get("path") or Path(data_yaml).parent) / data["val"]
    return sum(1 for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"))


def format_table(ev: Evaluation) -> str:
    """The metrics as a Markdown table, overall row first (the source design reports the overall one)."""
    lines = [
        "| class | images | instances | precision | recall | mAP@0.5 | mAP@0.5:0.95 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| all | {ev.images} | {ev.instances} | {ev.precision:.3f} | {ev.recall:.3f} | {ev.map50:.3f} | "
        f"{ev.map50_95:.3f} |",
    ]
    lines += [f"| {n} | {im} | {k} | {p:.3f} | {r:.3f} | {a50:.3f} | {a:.3f} |" for n, im, k, p, r, a50, a in ev.rows]
    return "\n".join(lines)


def _thresholds(names: Sequence[str], ev: Evaluation) -> dict[str, float]:
    # The confidence of best F1 on the validation images, bounded to 0.005..0.9. A short CPU run leaves
    # the model under-confident (a well-placed nodule box may score 0.05 while clean lungs score 0.001):
    # a fixed floor such as Ultralytics' 0.25 would hide every such box. A class never seen: 0.25.
    return {n: round(min(max(ev.f1_thresholds.get(n, 0.25), 0.005), 0.9), 3) for n in names}


# --------------------------------------------------------------------------- manifest


def recipe_hash(quick: bool = False) -> str:
    """The demo recipe's hash, as ``ainode-train build-demo`` computes and checks it.

    One definition for both ways in (``build-demo`` and this module's own ``demo`` command), so
    weights built either way are recognised as up to date (``training.demo.recipe_hash``:
    :func:`demo_parameters` and the versions of :data:`DEMO_GENERATORS`).
    """
    from training.demo import recipe_hash as demo_recipe_hash

    return demo_recipe_hash("training.detector:build_demo", quick)


def write_manifest(
    out_dir: Path,
    names: Sequence[str],
    thresholds: dict[str, float],
    imgsz: int,
    *,
    version: str,
    demo: bool,
    description: str,
    recipe: str | None,
    train_command: str,
) -> dict[str, Any]:
    """Write ``model.json`` for ``out_dir/model.onnx`` (validated by ``models.manifest``)."""
    displays = {key: name for name, key in LABEL_KEYS.items()}
    post: dict[str, Any] = {"iou": IOU, "max_detections": MAX_DETECTIONS, "letterbox_pad": LETTERBOX_PAD}
    if recipe:
        post["recipe_hash"] = recipe
    data = {
        "name": MODEL_NAME,
        "version": version,
        "task": "detection",
        "backend": "onnx",
        "weights": "model.onnx",
        "sha256": sha256_file(out_dir / "model.onnx"),
        "labels": [{"key": n, "display": displays.get(n, n), "threshold": thresholds[n]} for n in names],
        "input": {
            "height": imgsz,
            "width": imgsz,
            "channels": 3,
            "layout": "NCHW",
            "dtype": "float32",
            "preprocessing": {
                "kind": "radiograph",
                "range": [0.0, 1.0],
                "resize": "letterbox",
                "pad": LETTERBOX_PAD,
                "colour": "grey repeated to RGB",
            },
        },
        "manufacturer": "ainode",
        "demo": demo,
        "description": description,
        "licence": "Demo weights trained on synthetic phantoms only (no patient data)."
        if demo
        else "ChestX-Det annotations and NIH ChestX-ray14 images: check their terms before use.",
        "card": "MODEL_CARD.md",
        "postprocessing": post,
        "train_command": train_command,
    }
    manifest_from_mapping(data, out_dir, str(out_dir / "model.json"))  # refuse to write an invalid manifest
    (out_dir / "model.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return data


# --------------------------------------------------------------------------- held-out phantoms


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def holdout_phantoms(out_dir: Path, count: int, *, seed: int = 9_000_000, size: int = 512) -> dict[str, Any]:
    """Run the served model (``models.detector.Detector`` on ``out_dir/model.json``) on unseen phantoms.

    ``count`` phantoms with one planted nodule and ``count`` without findings, drawn at
    ``size`` from seeds no training phantom uses. A nodule is *hit* when a box labelled
    ``nodule`` has IoU ≥ 0.5 with the planted one (in source pixels, as the pipeline
    reports it); a clean phantom counts a false positive for any box, and apart for any
    ``nodule`` box.
    """
    from models.detector import Detector
    from models.manifest import load_manifest
    from training.phantoms.chest import chest_phantom

    detector = Detector.from_manifest(load_manifest(out_dir / "model.json"), threads=2)
    hits = 0
    best_ious: list[float] = []
    sizes_hit: list[float] = []
    sizes_missed: list[float] = []
    clean_any, clean_nodule = 0, 0
    for i in range(count):
        nodule = chest_phantom(seed + i, ["Nodule"], size=size)
        truth = nodule.boxes_of("Nodule")[0].as_tuple()
        found = detector.predict([nodule.image], [f"n{i}"])[0]
        ious = [
            _iou(truth, (f.region.x_min, f.region.y_min, f.region.x_max, f.region.y_max))
            for f in found
            if f.label == "nodule" and f.region is not None
        ]
        best = max(ious, default=0.0)
        best_ious.append(best)
        diameter_mm = (truth[2] - truth[0]) * nodule.pixel_spacing_mm
        (sizes_hit if best >= 0.5 else sizes_missed).append(round(diameter_mm, 1))
        hits += best >= 0.5
        clean = chest_phantom(seed + 50_000 + i, [], size=size)
        boxes = detector.predict([clean.image], [f"c{i}"])[0]
        clean_any += bool(boxes)
        clean_nodule += any(f.label == "nodule" for f in boxes)
    return {
        "phantoms": count,
        "size": size,
        "nodule_hits": hits,
        "nodule_hit_rate": hits / max(count, 1),
        "median_best_iou": float(np.median(best_ious)) if best_ious else 0.0,
        "hit_diameters_mm": sorted(sizes_hit),
        "missed_diameters_mm": sorted(sizes_missed),
        "clean_with_any_box": clean_any,
        "clean_with_nodule_box": clean_nodule,
    }


# --------------------------------------------------------------------------- model card


def write_card(
    out_dir: Path,
    manifest: dict[str, Any],
    params: dict[str, Any],
    ev: Evaluation,
    holdout: dict[str, Any] | None,
    run: TrainRun,
    data_note: str,
) -> None:
    """Write ``MODEL_CARD.md``: data, design, figures, limits, how to reproduce."""
    thresholds = ", ".join(f"{spec['key']} {spec['threshold']}" for spec in manifest["labels"])
    held = ""
    if holdout:
        held = f"""
## Held-out phantoms (through `models.detector.Detector`, as the pipeline runs it)

{holdout["phantoms"]} phantoms ({holdout["size"]}×{holdout["size"]}) with one planted nodule and
{holdout["phantoms"]} without findings, from seeds no training image used:

- nodule boxed with IoU ≥ 0.5: **{holdout["nodule_hits"]}/{holdout["phantoms"]}**
  (median best IoU {holdout["median_best_iou"]:.2f}); diameters missed (mm): {holdout["missed_diameters_mm"] or "none"}
- clean phantoms with a nodule box: **{holdout["clean_with_nodule_box"]}/{holdout["phantoms"]}**;
  with any box: {holdout["clean_with_any_box"]}/{holdout["phantoms"]}
"""
    title = (
        f"{manifest['name']} {manifest['version']} — chest radiograph detector "
        f"(the emergency-department triage service's design){' — DEMO' if manifest['demo'] else ''}"
    )
    use = (
        "These are **demo weights**, trained on synthetic phantoms only: they find the phantoms drawn shapes and mean "
        "nothing on real radiographs."
        if manifest["demo"]
        else "Validate on your own images before relying on it."
    )
    text = f"""# {title}

Trained {_dt.date.today().isoformat()} with `training/detector.py` (random seed {params["seed"]}).
Weights `{manifest["weights"]}`, SHA-256 `{manifest["sha256"]}`.

## Data

{data_note}

## Design

Ultralytics `{params["model"]}` built from its YAML (no pretrained weights), {len(manifest["labels"])} classes
({", ".join(spec["key"] for spec in manifest["labels"])}), input {params["imgsz"]}×{params["imgsz"]}.
Trained {run.epochs} epochs, batch {params["batch"]}, CPU, AMP off, deterministic seed,
mosaic and horizontal flips, no colour jitter ({run.seconds:.0f} s).
ONNX (opset 17): input `images` (batch, 3, {params["imgsz"]}, {params["imgsz"]}), NCHW float32 RGB 0..1 = the grey
radiograph repeated, letterboxed as Ultralytics does (pad grey {LETTERBOX_PAD}); output `output0` (batch, 4 + nc,
anchors) = cx, cy, w, h in letterboxed pixels and sigmoid class scores (no NMS inside).
Postprocessing: per-class confidence thresholds ({thresholds}) = the confidence of best F1
on the validation images (bounded to 0.005–0.9), class-wise NMS at IoU {IOU}, at most {MAX_DETECTIONS} boxes.

## Validation images (Ultralytics' validator)

{format_table(ev)}

The source design (YOLOv5, 14 classes, real ChestX-Det images, 300 epochs): mAP@0.5 0.972, mAP@0.5:0.95 0.702,
precision 0.894, recall 0.936.
{held}
## Intended use and limits

- Not a diagnostic device. {use}
- Small findings suffer from the input size: a 5 mm nodule on a 43 cm detector spans about
  {5 * params["imgsz"] / 430:.1f} pixels at {params["imgsz"]} px.

## How to reproduce

```
pip install -e '.[yolo]'
{manifest["train_command"]}
```
"""
    (out_dir / "MODEL_CARD.md").write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------- demo and CLI


def _emit(done: int, total: int, message: str) -> None:
    print(f"{_PROGRESS} {done} {total} {message}", flush=True)


def _run_demo(out_dir: Path, work_dir: Path, quick: bool, overrides: Sequence[str] = ()) -> int:
    """The demo recipe itself (runs in the child process that :func:`build_demo` starts).

    ``overrides`` (``key=value``, for experiments) change recipe parameters; the recipe
    hash then no longer matches the built-in recipe's.
    """
    params = demo_parameters(quick)
    tunable = QUICK if quick else DEMO
    for item in overrides:
        key, _, value = item.partition("=")
        if key not in tunable:
            raise SystemExit(f"unknown recipe parameter {key!r}; choose from {', '.join(tunable)}")
        params[key] = type(params[key])(value)
    total = 100
    work_dir.mkdir(parents=True, exist_ok=True)
    raw = work_dir / "chestx-det"
    shutil.rmtree(raw, ignore_errors=True)
    _emit(0, total, "drawing phantoms")
    annotations = write_synthetic_chestx_det(
        raw,
        params["images"],
        seed=params["seed"],
        phantom_size=params["phantom_size"],
        image_size=params["imgsz"],
        workers=2,
        progress=lambda d, n: _emit(int(20 * d / n), total, f"phantom {d}/{n}") if d % 20 == 0 or d == n else None,
    )
    summary = chestx_det_to_yolo(
        annotations,
        raw / "images",
        work_dir / "yolo",
        classes=params["classes"],
        val_fraction=params["val_fraction"],
        seed=params["seed"],
    )
    run = train(
        summary.data_yaml,
        work_dir,
        model=params["model"],
        imgsz=params["imgsz"],
        epochs=params["epochs"],
        batch=params["batch"],
        seed=params["seed"],
        lr0=params["lr0"],
        warmup_epochs=params["warmup_epochs"],
        on_epoch=lambda d, n: _emit(20 + int(65 * d / n), total, f"epoch {d}/{n}"),
    )
    _emit(86, total, "exporting ONNX")
    target = out_dir / MODEL_NAME
    staging = out_dir / f".{MODEL_NAME}.building"
    shutil.rmtree(staging, ignore_errors=True)
    export_onnx(run.best_pt, staging / "model.onnx", params["imgsz"], work_dir)
    _emit(90, total, "evaluating")
    ev = evaluate(staging / "model.onnx", summary.data_yaml, params["imgsz"], work_dir)
    print(format_table(ev), flush=True)
    thresholds = _thresholds(summary.names, ev)
    manifest = write_manifest(
        staging,
        summary.names,
        thresholds,
        params["imgsz"],
        version=params["version"],
        demo=True,
        description=f"Chest detector ({', '.join(summary.names)}) trained on synthetic phantoms with planted findings; "
        "for demonstration only.",
        recipe=recipe_hash(quick) if not overrides else None,
        train_command="ainode-train build-demo  # or: ainode-train detector train ...",
    )
    _emit(94, total, "checking held-out phantoms")
    holdout = holdout_phantoms(staging, params["holdout"], size=params["holdout_size"])
    print("HOLDOUT " + json.dumps(holdout), flush=True)
    data_note = (
        f"{params['images']} synthetic chest phantoms (`training/phantoms/chest.py`) drawn at "
        f"{params['phantom_size']} px with planted findings ({', '.join(PHANTOM_CLASSES)}; about a quarter "
        "without any, kept as negatives), written as a ChestX-Det JSON + PNGs and converted to the YOLO "
        f"layout by `training/detector_data.py`: {summary.images['train']} training and "
        f"{summary.images['val']} validation images."
    )
    write_card(staging, manifest, params, ev, holdout, run, data_note)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)  # the model appears complete or not at all
    _emit(total, total, "done")
    return 0


@demo_recipe(MODEL_NAME, parameters=demo_parameters, generators=DEMO_GENERATORS)
def build_demo(out_dir: Path, work_dir: Path, progress: Progress, quick: bool) -> None:
    """Demo recipe ``cxr-detector``: phantoms → ChestX-Det JSON → YOLO → train → ONNX + manifest.

    Writes ``out_dir/cxr-detector/{model.json, model.onnx, MODEL_CARD.md}`` (a demo
    manifest; ``postprocessing.recipe_hash`` = :func:`recipe_hash`). The work runs in a
    child process (``python -m training.detector demo``) because torch must not be
    imported where TensorFlow already is; its progress lines are passed to
    ``progress.step`` and its whole log is kept in ``work_dir/cxr-detector.log``.

    Raises
    ------
    RuntimeError
        The child failed; the message ends with the last lines of its log.
    """
    out_dir, work_dir = Path(out_dir), Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    log_path = work_dir / "cxr-detector.log"
    command = [
        sys.executable,
        "-m",
        "training.detector",
        "demo",
        "--out",
        str(out_dir.resolve()),
        "--work",
        str((work_dir / "cxr-detector").resolve()),
    ] + (["--quick"] if quick else [])
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
    )
    tail: list[str] = []
    with (
        open(log_path, "w", encoding="utf-8") as log,
        subprocess.Popen(
            command,
            cwd=_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        ) as child,
    ):
        assert child.stdout is not None
        for line in child.stdout:
            log.write(line)
            tail = (tail + [line.rstrip()])[-25:]
            if line.startswith(_PROGRESS):
                _, done, total, message = (line.rstrip("\n").split(" ", 3) + [""])[:4]
                progress.step(int(done), int(total), message)
        code = child.wait()
    if code != 0:
        raise RuntimeError(f"cxr-detector demo build failed (exit {code}); log {log_path}:\n" + "\n".join(tail))


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.detector", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("convert", help="ChestX-Det JSON + images → YOLO layout")
    p.add_argument("--annotations", type=Path, required=True)
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--classes", nargs="+", default=list(CHESTX_DET_CLASSES), help="ChestX-Det names kept, in id order")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("train", help="train on a YOLO layout, export ONNX, write model.json and the card")
    p.add_argument("--data", type=Path, required=True, help="data.yaml of the YOLO layout")
    p.add_argument("--out", type=Path, required=True, help="model folder (model.onnx, model.json, MODEL_CARD.md)")
    p.add_argument("--work", type=Path, required=True, help="folder for Ultralytics runs")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--keep-pt", action="store_true", help="also copy the trained model.pt (ultralytics backend)")
    p = sub.add_parser("evaluate", help="print mAP@0.5, mAP@0.5:0.95, precision, recall on the val images")
    p.add_argument("--weights", type=Path, required=True, help="model.onnx or a .pt")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--imgsz", type=int, default=None, help="default: the manifest's beside the weights, else 640")
    p.add_argument(
        "--work", type=Path, default=None, help="folder for Ultralytics' config and run (default: a temp dir)"
    )
    p = sub.add_parser("demo", help="the demo recipe (build_demo runs this in a child process)")
    p.add_argument("--out", type=Path, required=True, help="models directory")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override recipe parameters (experiments)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``convert``, ``train``, ``evaluate`` or ``demo`` (see the module docstring)."""
    args = _parse(argv)
    if args.command == "convert":
        s = chestx_det_to_yolo(
            args.annotations,
            args.images,
            args.out,
            classes=args.classes,
            val_fraction=args.val_fraction,
            seed=args.seed,
        )
        print(
            f"{s.data_yaml}: train {s.images['train']} images ({s.negatives['train']} without boxes), "
            f"val {s.images['val']} ({s.negatives['val']}); boxes {dict(s.boxes)}; skipped {s.skipped_boxes}"
        )
        return 0
    if args.command == "demo":
        return _run_demo(args.out, args.work, args.quick, args.set)
    if args.command == "evaluate":
        imgsz = args.imgsz
        beside = args.weights.parent / "model.json"
        if imgsz is None:
            imgsz = json.loads(beside.read_text())["input"]["height"] if beside.is_file() else 640
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            ev = evaluate(args.weights, args.data, imgsz, args.work or Path(tmp))
        print(format_table(ev))
        print(
            f"mAP@0.5 {ev.map50:.4f}  mAP@0.5:0.95 {ev.map50_95:.4f}  precision {ev.precision:.4f}  recall "
            f"{ev.recall:.4f}"
        )
        return 0
    run = train(
        args.data,
        args.work,
        model=args.model,
        imgsz=args.imgsz,
        epochs=args.epochs,
        batch=args.batch,
        seed=args.seed,
        on_epoch=lambda d, n: print(f"epoch {d}/{n}", flush=True),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    export_onnx(run.best_pt, args.out / "model.onnx", args.imgsz, args.work)
    if args.keep_pt:
        shutil.copyfile(run.best_pt, args.out / "model.pt")
    ev = evaluate(args.out / "model.onnx", args.data, args.imgsz, args.work)
    print(format_table(ev))
    manifest = write_manifest(
        args.out,
        run.names,
        _thresholds(run.names, ev),
        args.imgsz,
        version=args.version,
        demo=False,
        description=f"Chest detector ({', '.join(run.names)}), Ultralytics {args.model} trained on "
        f"{args.data.parent.name}.",
        recipe=None,
        train_command=f"ainode-train detector train --data DATA_YAML --out OUT --work WORK "
        f"--model {args.model} --imgsz {args.imgsz} --epochs {args.epochs} --seed {args.seed}",
    )
    params = {"seed": args.seed, "model": args.model, "imgsz": args.imgsz, "batch": args.batch}
    write_card(args.out, manifest, params, ev, None, run, f"YOLO layout `{args.data}` (converted from ChestX-Det).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
