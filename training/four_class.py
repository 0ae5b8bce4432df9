"""Train and evaluate the four-class design's chest radiograph classifier (COVID-19 / normal / pneumonia / TB).

Input: class folders as in the Kaggle set "Chest X-Ray (Pneumonia, Covid-19,
Tuberculosis)" — ``DATA/train/<CLASS>/``, ``DATA/val/<CLASS>/``, ``DATA/test/<CLASS>/``
with ``COVID19``, ``NORMAL``, ``PNEUMONIA``, ``TUBERCULOSIS`` (any case; ``COVID-19`` and
``TB`` accepted), PNG or JPEG. A missing or tiny ``val/`` (the Kaggle release has 38
images there) is topped up with a class-stratified 10 % of ``train/``. Images are
preprocessed as at serving time (:func:`models.preprocess.radiograph.grey_png_to_input`).

Design (the source design): ResNet-18 (``--arch resnet18``) or the 5-layer CNN (``--arch cnn``),
softmax over covid19, normal, pneumonia, tuberculosis (``FOUR_CLASSES`` order), 256×256
input by default. Categorical cross-entropy with class weights inverse to class
frequency (the Kaggle set has 7× more pneumonia than COVID-19), Adam, augmentation
rotation ±10°, shifts and zoom ±10 % (the source design also flips horizontally; we do not, a
radiograph's sides are not interchangeable), learning rate halved on a validation
plateau, early stopping on validation macro F1 with the best weights kept.

Usage::

    python -m training.four_class --data DATA --out weights/cxr-four-class [--arch resnet18|cnn]
    python -m training.four_class --data DATA --out weights/cxr-four-class --evaluate

``--evaluate`` prints the source design's figures on ``test/``: confusion matrix, accuracy, macro
precision, recall and F1.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.manifest import manifest_from_mapping, sha256_file
from training.architectures import FOUR_CLASSES
from training.demo import Progress, demo_recipe
from training.finding_classifier import (
    Indices,
    batches_callback,
    configure_tensorflow,
    epoch_monitor,
    follow_batch_statistics,
    load_images,
    make_augmenter,
    make_dataset,
    onnx_predict,
    write_card,
    write_split_file,
)

__all__ = [
    "FOLDER_ALIASES",
    "build_demo",
    "build_demo_cnn",
    "classification_metrics",
    "confusion_matrix",
    "format_metrics",
    "list_four_class",
    "main",
    "run",
]

FOLDER_ALIASES = {
    "covid19": "covid19",
    "covid-19": "covid19",
    "covid": "covid19",
    "normal": "normal",
    "pneumonia": "pneumonia",
    "tuberculosis": "tuberculosis",
    "tb": "tuberculosis",
}
"""Class folder name (lower case) → class key."""

DISPLAY = {"covid19": "COVID-19", "normal": "Normal", "pneumonia": "Pneumonia", "tuberculosis": "Tuberculosis"}
_SUFFIXES = (".png", ".jpg", ".jpeg")
MIN_VAL_PER_CLASS = 5


def list_four_class(data_dir: Path) -> dict[str, list[tuple[str, int]]]:
    """``{split: [(path relative to data_dir, class index), ...]}`` for train, val and test.

    Raises
    ------
    FileNotFoundError
        No ``train/`` folder with class folders.
    ValueError
        A class folder name that is not one of the four classes.
    """
    data_dir = Path(data_dir)
    found: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], "test": []}
    for split in found:
        folder = data_dir / split
        if not folder.is_dir():
            continue
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            key = FOLDER_ALIASES.get(class_dir.name.lower())
            if key is None:
                raise ValueError(f"{class_dir}: unknown class folder; expected {', '.join(sorted(FOLDER_ALIASES))}")
            label = FOUR_CLASSES.index(key)
            found[split] += [
                (f"{split}/{class_dir.name}/{f.name}", label)
                for f in sorted(class_dir.iterdir())
                if f.suffix.lower() in _SUFFIXES
            ]
    if not found["train"]:
        raise FileNotFoundError(
            f"no images in {data_dir / 'train'}/<class>/: expected the train/val/test class folders"
        )
    return found


def confusion_matrix(y_true: Indices, y_pred: Indices, classes: int) -> np.ndarray:
    """``classes × classes`` counts; rows = true class, columns = predicted class."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return matrix


def classification_metrics(matrix: np.ndarray) -> dict[str, Any]:
    """Accuracy, per-class and macro precision, recall, F1 from a confusion matrix.

    A class never predicted has precision 0 (and F1 0), as scikit-learn's
    ``zero_division=0``; macro figures average over the classes with true examples.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(matrix)
    predicted, actual = matrix.sum(axis=0), matrix.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=(precision + recall) > 0)
    present = actual > 0
    return {
        "accuracy": float(tp.sum() / matrix.sum()) if matrix.sum() else float("nan"),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "macro_precision": float(precision[present].mean()) if present.any() else float("nan"),
        "macro_recall": float(recall[present].mean()) if present.any() else float("nan"),
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
    }


def format_metrics(matrix: np.ndarray, title: str) -> str:
    """The source design's report: confusion matrix, accuracy, macro precision, recall and F1."""
    m = classification_metrics(matrix)
    width = max(len(DISPLAY[c]) for c in FOUR_CLASSES) + 2
    lines = [
        title,
        "confusion matrix (rows = true, columns = predicted):",
        " " * width + "".join(f"{DISPLAY[c]:>{width}}" for c in FOUR_CLASSES),
    ]
    for c, row in zip(FOUR_CLASSES, matrix, strict=False):
        lines.append(f"{DISPLAY[c]:<{width}}" + "".join(f"{int(v):>{width}}" for v in row))
    lines.append(f"{'class':<{width}}{'precision':>10}{'recall':>10}{'F1':>10}")
    for i, c in enumerate(FOUR_CLASSES):
        lines.append(f"{DISPLAY[c]:<{width}}{m['precision'][i]:>10.4f}{m['recall'][i]:>10.4f}{m['f1'][i]:>10.4f}")
    lines += [
        f"accuracy        {m['accuracy']:.4f}",
        f"macro precision {m['macro_precision']:.4f}",
        f"macro recall    {m['macro_recall']:.4f}",
        f"macro F1        {m['macro_f1']:.4f}",
    ]
    return "\n".join(lines)


@dataclass
class TrainResult:
    """Figures of a four-class training run."""

    counts: dict[str, list[int]]  # split -> images per class
    test_matrix: np.ndarray
    test_report: str
    epochs_run: int
    best_epoch: int
    seconds: float
    onnx_max_abs_diff: float


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ainode-train four-class", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with train/ val/ test/ class folders")
    parser.add_argument("--out", type=Path, required=True, help="model folder (written; read with --evaluate)")
    parser.add_argument(
        "--evaluate", action="store_true", help="print the source design's figures of the model in --out"
    )
    parser.add_argument("--arch", choices=["resnet18", "cnn"], default="resnet18")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--steps-per-epoch", type=int, default=0, help="0 = one pass over train/")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--patience", type=int, default=4)
    parser.add_argument("--lr-patience", type=int, default=2)
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--max-minutes", type=float, default=0.0, help="stop after the epoch that passes this")
    parser.add_argument("--cache-mb", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--name", default=None, help="model name (cxr-four-class or cxr-four-class-cnn by --arch)")
    parser.add_argument("--version", default="1.0.0")
    parser.add_argument("--demo", action="store_true", help="mark the manifest as demo weights (phantom data)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--bn-momentum", type=float, default=0.9, help="batch-norm moving-average momentum")
    parser.add_argument(
        "--fp16-weights",
        action="store_true",
        help="store the ONNX weights as float16 (half the file; ONNX Runtime computes in float32)",
    )
    parser.add_argument("--eager", action="store_true", help="run eagerly (no graph tracing; tiny runs)")
    args = parser.parse_args(argv)
    args.name = args.name or ("cxr-four-class" if args.arch == "resnet18" else "cxr-four-class-cnn")
    return args


def _top_up_validation(found: dict[str, list[tuple[str, int]]], seed: int) -> None:
    """Move a class-stratified 10 % of train into val when val has fewer than 5 images of a class."""
    have = np.bincount([y for _, y in found["val"]], minlength=len(FOUR_CLASSES))
    if have.min() >= MIN_VAL_PER_CLASS:
        return
    rng = np.random.default_rng(seed)
    moved = set()
    for c in range(len(FOUR_CLASSES)):
        members = [i for i, (_, y) in enumerate(found["train"]) if y == c]
        take = max(MIN_VAL_PER_CLASS - int(have[c]), math.ceil(0.1 * len(members))) if members else 0
        moved |= set(rng.permutation(members)[: min(take, max(len(members) - 1, 0))].tolist())
    found["val"] += [found["train"][i] for i in sorted(moved)]
    found["train"] = [item for i, item in enumerate(found["train"]) if i not in moved]


def run(args: argparse.Namespace, progress: Progress | None = None) -> TrainResult:
    """Train as described by parsed arguments; write the model folder."""
    import keras

    from training.architectures import export_onnx, four_class_cnn, four_class_resnet18

    configure_tensorflow(args.threads, args.seed)
    found = list_four_class(args.data)
    _top_up_validation(found, args.seed)
    order = [item for split in ("train", "val", "test") for item in found[split]]
    split_index = {}
    start = 0
    for split in ("train", "val", "test"):
        split_index[split] = np.arange(start, start + len(found[split]))
        start += len(found[split])
    started = time.monotonic()
    images = load_images([args.data / rel for rel, _ in order], args.size, cache_mb=args.cache_mb)
    labels = np.array([y for _, y in order], dtype=np.int64)
    onehot = np.eye(len(FOUR_CLASSES), dtype=np.float32)[labels]
    train_idx, val_idx, test_idx = split_index["train"], split_index["val"], split_index["test"]
    counts = np.bincount(labels[train_idx], minlength=len(FOUR_CLASSES))
    if counts.min() == 0:
        raise ValueError(f"train/ has no images of {[FOUR_CLASSES[c] for c in np.flatnonzero(counts == 0)]}")
    class_weights = (len(train_idx) / (len(FOUR_CLASSES) * counts)).astype(np.float32)
    model = four_class_resnet18(args.size) if args.arch == "resnet18" else four_class_cnn(args.size)
    follow_batch_statistics(model, args.bn_momentum)
    weights_tensor = keras.ops.convert_to_tensor(class_weights)

    def weighted_cce(y_true: Any, y_pred: Any) -> Any:
        per_sample = keras.ops.sum(y_true * weights_tensor, axis=-1)
        return per_sample * keras.losses.categorical_crossentropy(y_true, y_pred)

    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate), loss=weighted_cce, run_eagerly=args.eager)
    augment = (
        None if args.no_augment else make_augmenter(args.seed, rotation_deg=10, shift=0.1, zoom=0.1, brightness=0.1)
    )
    steps = args.steps_per_epoch or math.ceil(len(train_idx) / args.batch_size)
    dataset = make_dataset(images, onehot, train_idx, args.batch_size, augment, args.seed)

    def macro_f1(p: np.ndarray) -> float:
        matrix = confusion_matrix(labels[val_idx], p.argmax(axis=1), len(FOUR_CLASSES))
        return float(classification_metrics(matrix)["macro_f1"])

    monitor = epoch_monitor(
        images,
        val_idx,
        macro_f1,
        args.patience,
        args.lr_patience,
        args.max_minutes,
        progress,
        args.epochs,
        "val macro F1",
    )
    print(
        f"{args.arch} at {args.size} px: train {len(train_idx)}, val {len(val_idx)}, test {len(test_idx)} images; "
        f"class weights {np.round(class_weights, 2).tolist()}",
        flush=True,
    )
    callbacks = [monitor] + ([batches_callback(progress, steps * args.epochs)] if progress else [])
    model.fit(dataset, steps_per_epoch=steps, epochs=args.epochs, verbose=0 if progress else 2, callbacks=callbacks)
    seconds = time.monotonic() - started

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "model.onnx"
    export_onnx(model, onnx_path, output_name="classes")
    if args.fp16_weights:
        from training.lumbar import store_fp16_weights  # one implementation for every trainer

        store_fp16_weights(onnx_path)
    check = val_idx[:32]
    diff = float(np.max(np.abs(model.predict(images[check], verbose=0) - onnx_predict(onnx_path, images, check))))
    test_p = onnx_predict(onnx_path, images, test_idx)
    matrix = confusion_matrix(labels[test_idx], test_p.argmax(axis=1), len(FOUR_CLASSES))
    report = format_metrics(matrix, f"{args.name} on test/ ({len(test_idx)} images):") if len(test_idx) else "no test/"
    print(report, flush=True)
    write_split_file(out / "split.csv", [(rel, split) for split in ("train", "val", "test") for rel, _ in found[split]])
    result = TrainResult(
        counts={s: np.bincount(labels[split_index[s]], minlength=len(FOUR_CLASSES)).tolist() for s in split_index},
        test_matrix=matrix,
        test_report=report,
        epochs_run=monitor.epochs_run,
        best_epoch=monitor.best_epoch,
        seconds=seconds,
        onnx_max_abs_diff=diff,
    )
    _write_manifest_and_card(args, result, onnx_path)
    return result


def _write_manifest_and_card(args: argparse.Namespace, result: TrainResult, onnx_path: Path) -> None:
    arch = "ResNet-18" if args.arch == "resnet18" else "5-layer CNN"
    metrics = classification_metrics(result.test_matrix) if result.test_matrix.sum() else {}
    manifest = {
        "name": args.name,
        "version": args.version,
        "task": "classification",
        "backend": "onnx",
        "weights": onnx_path.name,
        "sha256": sha256_file(onnx_path),
        "labels": [{"key": c, "display": DISPLAY[c]} for c in FOUR_CLASSES],
        "input": {
            "height": args.size,
            "width": args.size,
            "channels": 1,
            "layout": "NHWC",
            "dtype": "float32",
            "preprocessing": {"kind": "radiograph", "range": [0.0, 1.0], "resize": "area, stretched"},
        },
        "manufacturer": "ainode",
        "demo": bool(args.demo),
        "description": (
            f"{arch} four-class chest radiograph classifier (COVID-19, normal, pneumonia, tuberculosis; "
            f"the four-class design), {args.size} px input"
            + ("; demo weights trained on synthetic chest phantoms, not for clinical use" if args.demo else "")
        ),
        "licence": (
            "Demo weights trained on synthetic phantoms (no patient data)."
            if args.demo
            else "Weights inherit the terms of their training images."
        ),
        "card": "MODEL_CARD.md",
        "postprocessing": {
            "activation": "softmax",
            "decision": "argmax",
            "architecture": args.arch,
            "test_accuracy": round(metrics["accuracy"], 4) if metrics else None,
            "test_macro_f1": round(metrics["macro_f1"], 4) if metrics else None,
        },
        "train_command": f"ainode-train four-class --data DATA --out MODELS_DIR/{args.name} --arch {args.arch}",
    }
    manifest_from_mapping(manifest, args.out, "generated manifest")
    (args.out / "model.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    counts = "\n".join(f"| {s} | " + " | ".join(str(v) for v in result.counts[s]) + " |" for s in result.counts)
    source = "synthetic phantoms (four-class design caricatures)" if args.demo else "DATA"
    augmentation = (
        "no augmentation" if args.no_augment else "rotation ±10°, shift ±10 %, zoom ±10 %, brightness ±10 %, no flip"
    )
    write_card(
        args.out / "MODEL_CARD.md",
        manifest,
        [
            (
                "Design (the four-class design)",
                f"{arch} from scratch, softmax over {', '.join(FOUR_CLASSES)}. Input {args.size}×{args.size}×1 grey "
                "in 0..1 "
                f"(bone white), area-resized, aspect stretched. ONNX input `image` (N, {args.size}, {args.size}, 1) "
                "NHWC "
                f"float32, output `classes` (N, 4); the decision is the argmax.",
            ),
            (
                "Data",
                f"Class folders train/val/test of `{source}`.\n\n"
                "| split | " + " | ".join(FOUR_CLASSES) + " |\n| --- |" + " ---: |" * len(FOUR_CLASSES) + "\n" + counts,
            ),
            (
                "Training",
                f"Class-weighted categorical cross-entropy (n / (4 n_class)), Adam {args.learning_rate:g}, batch "
                f"{args.batch_size}; {augmentation}; "
                f"learning rate halved after {args.lr_patience} epochs without a better validation macro F1, early "
                f"stopping after {args.patience}. {result.epochs_run} epochs run, best {result.best_epoch}, "
                f"{result.seconds:.0f} s on CPU. Largest |ONNX − Keras| difference: {result.onnx_max_abs_diff:.1e}.",
            ),
            ("Test results", "```\n" + result.test_report + "\n```"),
            (
                "Intended use and limits",
                (
                    "Demo weights: the phantoms' four classes are caricatures drawn to give the model something to "
                    "learn "
                    "(see training/phantoms/chest.py), not medicine; every result object made with them says DEMO."
                    if args.demo
                    else "Not a diagnostic device; not validated clinically."
                ),
            ),
            (
                "How to reproduce",
                f"```\nainode-train four-class --data DATA --out OUT --arch {args.arch} --size {args.size} --epochs "
                f"{args.epochs} --seed {args.seed}\nainode-train four-class --data DATA --out OUT --evaluate\n```",
            ),
        ],
    )


def evaluate(args: argparse.Namespace) -> str:
    """The source design's figures of the model in ``args.out`` on ``args.data``'s ``test/``."""
    from models.manifest import load_manifest

    manifest = load_manifest(args.out / "model.json")
    keys = [spec.key for spec in manifest.labels]
    if keys != list(FOUR_CLASSES):
        raise ValueError(f"{manifest.source}: labels {keys} are not {list(FOUR_CLASSES)}")
    test = list_four_class(args.data)["test"]
    if not test:
        raise FileNotFoundError(f"no images in {args.data / 'test'}/<class>/")
    images = load_images([args.data / rel for rel, _ in test], manifest.input.height, cache_mb=args.cache_mb)
    p = onnx_predict(manifest.weights_path, images, np.arange(len(test)))
    matrix = confusion_matrix([y for _, y in test], p.argmax(axis=1), len(FOUR_CLASSES))
    return format_metrics(matrix, f"{manifest.name} {manifest.version} on test/ ({len(test)} images):")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring); returns the exit status."""
    args = _parse(argv)
    try:
        if args.evaluate:
            print(evaluate(args))
        else:
            run(args)
            print(f"wrote {args.out / 'model.onnx'}, model.json, MODEL_CARD.md, split.csv", flush=True)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


# --- demo recipes (ainode-train build-demo) ------------------------------------------------------------------

# Short from-scratch runs need many small steps more than resolution: the classes' patterns are lobe-sized,
# so 64 px suffices; no augmentation (phantoms vary enough, and it slows a run of a few hundred steps).
DEMO: dict[str, Any] = {
    "per_class": 100,
    "phantom_size": 128,
    "input_size": 64,
    "epochs": 25,
    "batch_size": 16,
    "learning_rate": 1e-3,
    "patience": 6,
    "max_minutes": {"resnet18": 3.0, "cnn": 1.5},
    "regularise": False,
}
QUICK: dict[str, Any] = {
    "per_class": 6,
    "phantom_size": 128,
    "input_size": 32,
    "epochs": 1,
    "batch_size": 8,
    "learning_rate": 1e-3,
    "patience": 1,
    "max_minutes": {"resnet18": 0.0, "cnn": 0.0},
    "eager": True,
}
DEMO_VERSION = "demo-1"
DEMO_SEED = 4
"""Seeds the phantom data set and the training run (4: the number of this design in the project's list of
source designs, the four-class classifier)."""
DEMO_GENERATORS = ("training.phantoms.chest", "training.phantoms.cxr_datasets")
"""Phantom generators whose ``GENERATOR_VERSION`` is part of the recipe hash (``training.demo``)."""


def demo_parameters(arch: str, quick: bool) -> dict[str, Any]:
    """Everything a four-class demo run depends on (``arch`` ``resnet18`` or ``cnn``): the recipe's parameters."""
    params = dict(QUICK if quick else DEMO)
    return {
        **params,
        "name": "cxr-four-class" if arch == "resnet18" else "cxr-four-class-cnn",
        "arch": arch,
        "max_minutes": params["max_minutes"][arch],
        "version": DEMO_VERSION,
        "seed": DEMO_SEED,
        "eager": bool(params.get("eager", False)),
        "regularise": bool(params.get("regularise", True)),
        "fp16_weights": True,  # ResNet-18's 11 M parameters: 45 MB as float32
    }


def _build(arch: str, out_dir: Path, work_dir: Path, progress: Progress, quick: bool) -> None:
    from training.phantoms.cxr_datasets import write_four_class_dataset

    params = demo_parameters(arch, quick)
    data = Path(work_dir) / "four-class"
    write_four_class_dataset(
        data,
        per_class=int(params["per_class"]),
        size=int(params["phantom_size"]),
        seed=int(params["seed"]),
        workers=1 if quick else 2,
        progress=progress,
    )
    name = str(params["name"])
    argv = [
        "--data",
        str(data),
        "--out",
        str(Path(out_dir) / name),
        "--arch",
        arch,
        "--demo",
        "--version",
        str(params["version"]),
        "--size",
        str(params["input_size"]),
        "--epochs",
        str(params["epochs"]),
        "--batch-size",
        str(params["batch_size"]),
        "--learning-rate",
        str(params["learning_rate"]),
        "--patience",
        str(params["patience"]),
        "--max-minutes",
        str(params["max_minutes"]),
        "--seed",
        str(params["seed"]),
    ]
    argv += ["--eager"] if params["eager"] else []
    argv += [] if params["regularise"] else ["--no-augment"]
    argv += ["--fp16-weights"] if params["fp16_weights"] else []
    result = run(_parse(argv), progress)
    (Path(out_dir) / name / "split.csv").unlink()  # names images of a work folder that is deleted
    metrics = classification_metrics(result.test_matrix)
    progress.note(
        f"test accuracy {metrics['accuracy']:.3f}, macro F1 {metrics['macro_f1']:.3f}, "
        f"{result.epochs_run} epochs, {result.seconds:.0f} s"
    )


@demo_recipe("cxr-four-class", parameters=lambda quick: demo_parameters("resnet18", quick), generators=DEMO_GENERATORS)
def build_demo(out_dir: Path, work_dir: Path, progress: Progress, quick: bool) -> None:
    """Demo recipe ``cxr-four-class``: phantom class folders, then ResNet-18 training as on real data."""
    _build("resnet18", out_dir, work_dir, progress, quick)


@demo_recipe("cxr-four-class-cnn", parameters=lambda quick: demo_parameters("cnn", quick), generators=DEMO_GENERATORS)
def build_demo_cnn(out_dir: Path, work_dir: Path, progress: Progress, quick: bool) -> None:
    """Demo recipe ``cxr-four-class-cnn``: phantom class folders, then 5-layer CNN training."""
    _build("cnn", out_dir, work_dir, progress, quick)


if __name__ == "__main__":
    raise SystemExit(main())
