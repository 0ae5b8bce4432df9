"""ChestX-Det annotations → Ultralytics YOLO layout, and a synthetic ChestX-Det set from phantoms.

ChestX-Det (Liu, Lian and Yu; 3,578 NIH ChestX-ray14 images annotated by three
radiologists) ships each split as one JSON file, a list of one record per image::

    [{"file_name": "36302.png", "syms": ["Effusion"],
      "boxes": [[799, 666, 937, 761]], "polygons": [[[799, 678], [799, 680], ...]]},
     {"file_name": "36199.png", "syms": [], "boxes": [], "polygons": []}, ...]

``syms[i]`` is the class of ``boxes[i]`` (left, top, right, bottom in pixels) and of
``polygons[i]`` (its contour); an image without findings has empty lists. The images
are 8-bit grey PNGs, 255 = bone white. This module converts such a file and its image
folder to what Ultralytics trains on::

    out/images/{train,val}/<stem>.png
    out/labels/{train,val}/<stem>.txt    one line per box: "class cx cy w h", all in 0..1
    out/data.yaml                        path, train, val, names (our label keys)

Images without boxes are kept, with an empty label file, as negatives. The split is
reproducible and independent of record order: an image goes to ``val`` when a hash
of ``(seed, file name)`` falls below ``val_fraction``.

Class mapping (:data:`LABEL_KEYS`): each ChestX-Det class name maps to a key of
``sr_writer.codes.CONCEPTS`` and class ids follow :data:`CHESTX_DET_CLASSES` order
(ChestX-Det's own alphabetical order), or the order of a subset given by the caller.
Three classes have no concept in ``sr_writer.codes`` yet: ``calcification``,
``diffuse_nodule`` and ``fracture`` (see :data:`KEYS_WITHOUT_CONCEPT`); their
intended keys are kept so that a 13-class model trained on the real set keeps the
real class ids.

The synthetic writer (:func:`write_synthetic_chestx_det`) draws phantoms of
``training.phantoms.chest`` with planted findings and writes them in exactly this
layout, so the demo detector goes through the same converter as real data. Phantoms
have no traced contours: a synthetic record's polygon is its box outline.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "GENERATOR_VERSION",
    "CHESTX_DET_CLASSES",
    "KEYS_WITHOUT_CONCEPT",
    "LABEL_KEYS",
    "PHANTOM_CLASSES",
    "ConversionSummary",
    "chestx_det_to_yolo",
    "read_chestx_det",
    "write_synthetic_chestx_det",
]

GENERATOR_VERSION = 1
"""Version of what this module writes (the synthetic ChestX-Det set and its YOLO conversion): bump it when a
change alters the output for the same arguments, so that the demo recipes built on it are rebuilt
(``training.demo.recipe_hash``)."""

CHESTX_DET_CLASSES: tuple[str, ...] = (
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Consolidation",
    "Diffuse Nodule",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Fracture",
    "Mass",
    "Nodule",
    "Pleural Thickening",
    "Pneumothorax",
)
"""ChestX-Det's 13 class names as spelled in its ``syms``, in its (alphabetical) order."""

LABEL_KEYS: dict[str, str] = {
    "Atelectasis": "atelectasis",
    "Calcification": "calcification",
    "Cardiomegaly": "cardiomegaly",
    "Consolidation": "consolidation",
    "Diffuse Nodule": "diffuse_nodule",
    "Effusion": "effusion",
    "Emphysema": "emphysema",
    "Fibrosis": "fibrosis",
    "Fracture": "fracture",
    "Mass": "mass",
    "Nodule": "nodule",
    "Pleural Thickening": "pleural_thickening",
    "Pneumothorax": "pneumothorax",
}
"""ChestX-Det class name → label key (a key of ``sr_writer.codes.CONCEPTS``)."""

KEYS_WITHOUT_CONCEPT: frozenset[str] = frozenset({"calcification", "diffuse_nodule", "fracture"})
"""Intended keys that ``sr_writer.codes`` does not define yet (ChestX-Det-only classes)."""

PHANTOM_CLASSES: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Effusion",
    "Mass",
    "Nodule",
    "Pneumothorax",
)
"""The ChestX-Det classes a chest phantom can draw (same spelling as its NIH labels)."""

_SPLITS = ("train", "val")


@dataclass
class ConversionSummary:
    """What :func:`chestx_det_to_yolo` wrote.

    Attributes
    ----------
    data_yaml : Path
        The Ultralytics data file.
    names : list of str
        Label keys by class id.
    images : dict
        Images per split (``train``, ``val``).
    negatives : dict
        Images without boxes per split.
    boxes : dict
        Boxes per class name, over both splits.
    skipped_boxes : int
        Boxes of zero area once clipped to the image, left out.
    """

    data_yaml: Path
    names: list[str]
    images: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_SPLITS, 0))
    negatives: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_SPLITS, 0))
    boxes: Counter[str] = field(default_factory=Counter)
    skipped_boxes: int = 0


def read_chestx_det(path: Path, classes: Sequence[str] = CHESTX_DET_CLASSES) -> list[dict[str, Any]]:
    """Read and check a ChestX-Det annotation file.

    Parameters
    ----------
    path : Path
        ``ChestX_Det_train.json`` or ``ChestX_Det_test.json`` (or a file of that layout).
    classes : sequence of str
        Class names accepted; a ``syms`` entry outside them is an error.

    Returns
    -------
    list of dict
        The records, each with ``file_name``, ``syms`` and ``boxes`` (``polygons`` optional).

    Raises
    ------
    ValueError
        Not a list of records, a record without ``file_name``, ``syms`` and ``boxes`` of
        different lengths, a box that is not four numbers, or an unknown class name.
    """
    path = Path(path)
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a list of image records, got {type(records).__name__}")
    allowed = set(classes)
    seen: set[str] = set()
    for n, rec in enumerate(records):
        where = f"{path} record {n}"
        if not isinstance(rec, dict) or not isinstance(rec.get("file_name"), str) or not rec["file_name"]:
            raise ValueError(f"{where}: no 'file_name'")
        where = f"{path} record {n} ({rec['file_name']})"
        if rec["file_name"] in seen:
            raise ValueError(f"{where}: file name listed twice")
        seen.add(rec["file_name"])
        syms, boxes = rec.get("syms", []), rec.get("boxes", [])
        if not isinstance(syms, list) or not isinstance(boxes, list) or len(syms) != len(boxes):
            raise ValueError(f"{where}: 'syms' and 'boxes' must be lists of the same length")
        for sym, box in zip(syms, boxes, strict=False):
            if sym not in allowed:
                known = ", ".join(classes)
                raise ValueError(f"{where}: unknown class name {sym!r}; expected one of: {known}")
            if (
                not isinstance(box, list)
                or len(box) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)
            ):
                raise ValueError(f"{where}: box {box!r} is not [x1, y1, x2, y2]")
    return records


def _is_val(file_name: str, seed: int, val_fraction: float) -> bool:
    # A hash of the name, not a shuffle: the split does not depend on record order or count.
    digest = hashlib.sha256(f"{seed}:{file_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < val_fraction


def _place(src: Path, dst: Path) -> None:
    """Hard-link an image into the layout (no copy of large data sets), copy across devices."""
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:  # reads the header only
        return im.size


def chestx_det_to_yolo(
    annotations: Path,
    images: Path,
    out: Path,
    *,
    classes: Sequence[str] = CHESTX_DET_CLASSES,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> ConversionSummary:
    """Convert a ChestX-Det annotation file and its images to the Ultralytics YOLO layout.

    Parameters
    ----------
    annotations : Path
        The ChestX-Det JSON file (see the module docstring).
    images : Path
        Folder holding the PNGs named by ``file_name``.
    out : Path
        Folder to write ``images/``, ``labels/`` and ``data.yaml`` into (existing
        ``images/`` and ``labels/`` there are replaced).
    classes : sequence of str
        ChestX-Det class names to keep, in class-id order (default: all 13 in
        ChestX-Det's order). A class name in the file that is not among them is an error.
    val_fraction : float
        Share of images put in ``val`` (reproducible, by hash of the file name).
    seed : int
        Changes which images go to ``val``.

    Returns
    -------
    ConversionSummary
        Counts of images, negatives and boxes, and the ``data.yaml`` path.

    Raises
    ------
    ValueError
        An unknown class name (in ``classes`` or the file), a malformed record, or a
        missing image.
    """
    unknown = [c for c in classes if c not in LABEL_KEYS]
    if unknown:
        raise ValueError(
            f"unknown ChestX-Det class name(s) {unknown}; expected some of: {', '.join(CHESTX_DET_CLASSES)}"
        )
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    records = read_chestx_det(annotations, classes)
    class_id = {name: i for i, name in enumerate(classes)}
    out = Path(out)
    for sub in ("images", "labels"):
        shutil.rmtree(out / sub, ignore_errors=True)
        for split in _SPLITS:
            (out / sub / split).mkdir(parents=True, exist_ok=True)
    names = [LABEL_KEYS[c] for c in classes]
    summary = ConversionSummary(data_yaml=out / "data.yaml", names=names)
    for rec in records:
        src = Path(images) / rec["file_name"]
        if not src.is_file():
            raise ValueError(f"{annotations}: image {rec['file_name']!r} not found in {images}")
        width, height = _image_size(src)
        lines = []
        for sym, (x1, y1, x2, y2) in zip(rec.get("syms", []), rec.get("boxes", []), strict=False):
            x1, x2 = sorted((min(max(float(x1), 0.0), width), min(max(float(x2), 0.0), width)))
            y1, y2 = sorted((min(max(float(y1), 0.0), height), min(max(float(y2), 0.0), height)))
            if x2 - x1 <= 0 or y2 - y1 <= 0:
                summary.skipped_boxes += 1
                continue
            cx, cy = (x1 + x2) / 2.0 / width, (y1 + y2) / 2.0 / height
            w, h = (x2 - x1) / width, (y2 - y1) / height
            lines.append(f"{class_id[sym]} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
            summary.boxes[sym] += 1
        split = "val" if _is_val(rec["file_name"], seed, val_fraction) else "train"
        stem = Path(rec["file_name"]).stem
        _place(src, out / "images" / split / src.name)
        (out / "labels" / split / f"{stem}.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        summary.images[split] += 1
        summary.negatives[split] += 0 if lines else 1
    # YAML by hand (JSON strings are valid YAML scalars): no YAML writer needed.
    names_yaml = "".join(f"  {i}: {json.dumps(n)}\n" for i, n in enumerate(names))
    summary.data_yaml.write_text(
        f"# ChestX-Det → YOLO, from {json.dumps(Path(annotations).name)}; names are ainode label keys\n"
        f"path: {json.dumps(str(out.resolve()))}\ntrain: images/train\nval: images/val\n"
        f"nc: {len(names)}\nnames:\n{names_yaml}",
        encoding="utf-8",
    )
    return summary


def _pick_findings(rng: np.random.Generator, classes: Sequence[str], negative_fraction: float) -> list[str]:
    """None (a negative), one finding, or now and then two; nodules drawn three times as often (small, the hardest
    to learn)."""
    if rng.random() < negative_fraction:
        return []
    weights = np.array([3.0 if c == "Nodule" else 1.0 for c in classes])
    count = 2 if rng.random() < 0.25 and len(classes) > 1 else 1
    picks = rng.choice(len(classes), size=count, replace=False, p=weights / weights.sum())
    return [classes[int(i)] for i in picks]


def _draw_one(job: tuple[Path, str, int, Sequence[str], int, int, tuple[str, ...]]) -> dict[str, Any]:
    """Draw one phantom, save its PNG, return its ChestX-Det record (runs in a worker process)."""
    from PIL import Image

    from training.phantoms.chest import chest_phantom

    folder, file_name, phantom_seed, findings, phantom_size, size, classes = job
    phantom = chest_phantom(phantom_seed, findings, size=phantom_size)
    pixels = Image.fromarray(np.round(phantom.image * 255.0).astype(np.uint8))
    if size != phantom_size:
        pixels = pixels.resize((size, size), Image.Resampling.BOX)
    pixels.save(folder / file_name)
    scale = size / phantom_size
    syms, boxes, polygons = [], [], []
    for box in phantom.boxes:
        if box.label not in classes:  # e.g. a class pattern's label outside the detector's classes
            continue
        x1, y1, x2, y2 = (
            int(np.floor(box.x_min * scale)),
            int(np.floor(box.y_min * scale)),
            int(np.ceil(box.x_max * scale)),
            int(np.ceil(box.y_max * scale)),
        )
        syms.append(box.label)
        boxes.append([x1, y1, x2, y2])
        polygons.append([[x1, y1], [x2, y1], [x2, y2], [x1, y2]])
    return {"file_name": file_name, "syms": syms, "boxes": boxes, "polygons": polygons}


def write_synthetic_chestx_det(
    out: Path,
    count: int,
    *,
    seed: int = 0,
    phantom_size: int = 512,
    image_size: int | None = None,
    classes: Sequence[str] = PHANTOM_CLASSES,
    negative_fraction: float = 0.25,
    name: str = "ChestX_Det_train.json",
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write a ChestX-Det-format data set of chest phantoms with planted findings.

    Parameters
    ----------
    out : Path
        Folder; gets ``images/<n>.png`` (8-bit grey, 255 = bone white) and the JSON file.
    count : int
        Number of images.
    seed : int
        Phantom ``i`` is drawn with seed ``seed * 100003 + i`` (same seed, same set).
    phantom_size : int
        Size the phantoms are drawn at (rows = columns).
    image_size : int, optional
        Size the PNGs are stored at (area-averaged down from ``phantom_size``, boxes
        scaled); default ``phantom_size``.
    classes : sequence of str
        Findings to plant, from :data:`PHANTOM_CLASSES`.
    negative_fraction : float
        Share of images with no finding (kept as negatives by the converter).
    name : str
        File name of the annotation file.
    workers : int
        Processes drawing phantoms (the result does not depend on it).
    progress : callable, optional
        Called as ``progress(done, count)`` after each image.

    Returns
    -------
    Path
        The annotation file.
    """
    bad = [c for c in classes if c not in PHANTOM_CLASSES]
    if bad:
        raise ValueError(f"phantoms cannot draw {bad}; choose from {', '.join(PHANTOM_CLASSES)}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    # Findings are picked here, in order, so that the set does not depend on the number of workers.
    pick = np.random.default_rng([seed, 7])
    jobs = [
        (
            out / "images",
            f"{seed:03d}{i:05d}.png",
            seed * 100003 + i,
            _pick_findings(pick, classes, negative_fraction),
            phantom_size,
            image_size or phantom_size,
            tuple(classes),
        )
        for i in range(count)
    ]
    records: list[dict[str, Any]] = []
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers) as pool:
            for record in pool.map(_draw_one, jobs, chunksize=4):
                records.append(record)
                if progress is not None:
                    progress(len(records), count)
    else:
        for job in jobs:
            records.append(_draw_one(job))
            if progress is not None:
                progress(len(records), count)
    path = out / name
    path.write_text(json.dumps(records), encoding="utf-8")
    return path
