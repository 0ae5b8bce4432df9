"""Train and evaluate the lumbar-level design's classifier; export ONNX with its manifest; the demo recipe.

Data — the **lumbar folder format** (one folder per class, a train and a test split)::

    DATA/train/T/*.png  DATA/train/L1/*.png … DATA/train/S/*.png
    DATA/test/T/*.png   …                    DATA/test/S/*.png

Each PNG is one axial slice windowed to 0..255 with the window(s) of the manifest
(``models.lumbar.hu_to_unit``: one window → 8-bit grey PNG, 0 = ``center − width/2``;
three windows → RGB, one per channel), at any size (resized with area averaging, as in
serving). Disc slices are left out, as in the source design.

Architecture (the source design): EfficientNetV2 backbone from ``keras.applications`` — **M** by
default at **512×512** as in the source design, S or B0..B3 selectable — with ``weights=None``
(no download: trained from scratch) and ``include_preprocessing=False`` (the input is
already 0..1, and the graph keeps one input, see ``training.architectures``),
global average pooling, dropout, Dense(7, softmax) over T, L1..L5, S. Input channels =
number of windows (1 by default: the serving side windows HU exactly as the PNGs were).

Training as the source design: categorical cross-entropy, Adam (learning rate 1e-4), batch 16,
100 epochs; augmentation random rotation (±10°), zoom (±10 %), vertical and horizontal
flips. Evaluation on ``DATA/test`` through the exported ONNX model: 7×7 confusion
matrix, accuracy, per-class recall (printed, in ``evaluation.json`` and the card).

Usage::

    python -m training.lumbar --data DATA --out weights/ct-lumbar            # V2-M, 512
    python -m training.lumbar --data DATA --out OUT --variant V2S --input-size 384
    python -m training.lumbar --data DATA --evaluate weights/ct-lumbar        # evaluation only

Needs the ``[train]`` extra (TensorFlow, Keras 3, tf2onnx, onnx); TensorFlow is imported
inside functions only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.findings import LUMBAR_LEVELS
from models.lumbar import DEFAULT_WINDOWS
from models.manifest import manifest_from_mapping, sha256_file
from models.preprocess.radiograph import resize_image
from training.demo import demo_recipe

__all__ = [
    "DEMO",
    "DEMO_GENERATORS",
    "MODEL_NAME",
    "QUICK",
    "DemoParams",
    "VARIANTS",
    "Evaluation",
    "build_demo",
    "build_model",
    "check_on_phantoms",
    "evaluate_onnx",
    "list_split",
    "store_fp16_weights",
    "load_images",
    "main",
    "train",
]

MODEL_NAME = "ct-lumbar"
VARIANTS = ("V2B0", "V2B1", "V2B2", "V2B3", "V2S", "V2M", "V2L")
"""EfficientNetV2 backbones accepted (the source design: V2M)."""
LEVEL_DISPLAY = {
    "T": "Thoracic vertebra",
    "L1": "First lumbar vertebra",
    "L2": "Second lumbar vertebra",
    "L3": "Third lumbar vertebra",
    "L4": "Fourth lumbar vertebra",
    "L5": "Fifth lumbar vertebra",
    "S": "Sacrum",
}


def build_model(variant: str = "V2M", input_size: int = 512, *, channels: int = 1, dropout: float = 0.2) -> Any:
    """The source design's classifier: EfficientNetV2 backbone → GAP → dropout → Dense(7, softmax).

    Parameters
    ----------
    variant : str
        One of :data:`VARIANTS` (``"V2M"`` as the source design, ``"V2S"``, ``"V2B0"`` …).
    input_size : int
        Height and width of the square input (seed: 512).
    channels : int
        Input channels, one per CT window.
    dropout : float
        Dropout rate before the output layer.

    Returns
    -------
    keras.Model
        Input ``image`` (N, input_size, input_size, channels) in 0..1, output ``levels``
        (N, 7) softmax in the order of :data:`core.findings.LUMBAR_LEVELS`.
    """
    import keras
    from keras import layers

    key = variant.strip().upper().replace("-", "")
    if key not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if input_size < 32:
        raise ValueError(f"input_size must be at least 32 (five stride-2 stages), got {input_size}")
    constructor = getattr(keras.applications, f"EfficientNetV2{key[2:]}")
    shape = (input_size, input_size, channels)
    base = constructor(include_top=False, weights=None, input_shape=shape, include_preprocessing=False)
    image = keras.Input(shape=shape, name="image")
    x = layers.GlobalAveragePooling2D(name="gap")(base(image))
    x = layers.Dropout(dropout, name="dropout")(x)
    out = layers.Dense(len(LUMBAR_LEVELS), activation="softmax", name="levels")(x)
    return keras.Model(image, out, name=f"lumbar_{key}")


def _augmenter(seed: int) -> Any:
    import keras
    from keras import layers

    return keras.Sequential(
        [
            layers.RandomRotation(10 / 360, fill_mode="constant", seed=seed),
            layers.RandomZoom(0.1, fill_mode="constant", seed=seed + 1),
            layers.RandomFlip("horizontal_and_vertical", seed=seed + 2),
        ],
        name="augment",
    )


def list_split(data_dir: Path, split: str) -> list[tuple[Path, int]]:
    """(PNG path, level index) of ``DATA/split/<level>/*.png``, sorted; absent level folders are allowed.

    Raises
    ------
    FileNotFoundError
        If the split holds no PNG at all.
    """
    samples: list[tuple[Path, int]] = []
    for label, level in enumerate(LUMBAR_LEVELS):
        folder = Path(data_dir) / split / level
        if folder.is_dir():
            samples.extend((p, label) for p in sorted(folder.glob("*.png")))
    if not samples:
        raise FileNotFoundError(
            f"no PNG in {Path(data_dir) / split}: expected {split}/<level>/*.png with levels {', '.join(LUMBAR_LEVELS)}"
        )
    return samples


def load_images(paths: list[Path], size: int, channels: int) -> np.ndarray:
    """PNGs as (N, size, size, channels) float32 in 0..1 (k/255 resized like serving)."""
    from PIL import Image

    out = np.empty((len(paths), size, size, channels), dtype=np.float32)
    for i, path in enumerate(paths):
        with Image.open(path) as png:
            pixels = np.asarray(png.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0
        planes = pixels[:, :, None] if pixels.ndim == 2 else pixels
        if planes.shape[2] != channels:
            raise ValueError(f"{path}: {planes.shape[2]} channel(s), the model takes {channels}")
        for c in range(channels):
            out[i, :, :, c] = resize_image(planes[:, :, c], size, size)
    return out


@dataclass
class Evaluation:
    """Figures on the test split: rows of ``confusion`` are true levels, columns predicted."""

    confusion: list[list[int]]
    accuracy: float
    recall: dict[str, float | None]
    images: int

    def lines(self) -> list[str]:
        """The confusion matrix, accuracy and per-class recall as printable lines."""
        head = "true\\pred " + " ".join(f"{lv:>5}" for lv in LUMBAR_LEVELS) + "  recall"
        rows = [head]
        for level, row in zip(LUMBAR_LEVELS, self.confusion, strict=False):
            recall = self.recall[level]
            rows.append(
                f"{level:>9} "
                + " ".join(f"{v:>5}" for v in row)
                + (f"  {recall:.3f}" if recall is not None else "     -")
            )
        rows.append(f"accuracy {self.accuracy:.4f} on {self.images} test images")
        return rows


def evaluate_onnx(onnx_path: Path, data_dir: Path, size: int, channels: int, batch_size: int = 16) -> Evaluation:
    """Run the exported model on ``DATA/test`` and count (true, predicted) levels."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    samples = list_split(data_dir, "test")
    confusion = np.zeros((len(LUMBAR_LEVELS), len(LUMBAR_LEVELS)), dtype=int)
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        images = load_images([p for p, _ in chunk], size, channels)
        predicted = np.argmax(session.run(None, {name: images})[0], axis=1)
        for (_, truth), guess in zip(chunk, predicted, strict=False):
            confusion[truth, int(guess)] += 1
    totals = confusion.sum(axis=1)
    recall = {lv: (float(confusion[i, i] / totals[i]) if totals[i] else None) for i, lv in enumerate(LUMBAR_LEVELS)}
    return Evaluation(confusion.tolist(), float(np.trace(confusion) / confusion.sum()), recall, int(confusion.sum()))


def store_fp16_weights(path: Path, min_elements: int = 1024) -> dict[str, float]:
    """Store the large float32 initializers of an ONNX file as float16, each behind a Cast to float32.

    ONNX Runtime folds the Casts at session creation (constant folding of nodes whose inputs
    are all initializers), so inference runs in float32 as before; only the file halves.
    Tensors with values beyond float16's range are left as they are.

    Returns
    -------
    dict
        ``bytes_before``, ``bytes_after`` and ``converted`` (number of tensors).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    before = Path(path).stat().st_size
    model = onnx.load(str(path))
    graph = model.graph
    casts = []
    kept = []
    for init in graph.initializer:
        array = numpy_helper.to_array(init) if init.data_type == TensorProto.FLOAT else None
        if array is None or array.size < min_elements or float(np.max(np.abs(array))) > 6.0e4:
            kept.append(init)
            continue
        half = numpy_helper.from_array(array.astype(np.float16), f"{init.name}__fp16")
        kept.append(half)
        casts.append(
            helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT, name=f"{init.name}__cast")
        )
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)  # the Casts first: the graph stays topologically sorted
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return {
        "bytes_before": float(before),
        "bytes_after": float(Path(path).stat().st_size),
        "converted": float(len(casts)),
    }


def _batches(samples: list[tuple[Path, int]], size: int, channels: int, batch_size: int, seed: int) -> Any:
    """A Keras dataset of shuffled (images, one-hot levels) batches read from disk (memory: one batch)."""
    import keras

    class Batches(keras.utils.PyDataset):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(samples))

        def __len__(self) -> int:
            return max(1, -(-len(samples) // batch_size))

        def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
            picked = [samples[i] for i in self.order[index * batch_size : (index + 1) * batch_size]]
            x = load_images([p for p, _ in picked], size, channels)
            y = np.eye(len(LUMBAR_LEVELS), dtype=np.float32)[[label for _, label in picked]]
            return x, y

        def on_epoch_end(self) -> None:
            self.order = self.rng.permutation(len(samples))

    return Batches()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ainode-train ct-lumbar", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with train/<level>/ and test/<level>/ PNGs")
    parser.add_argument("--out", type=Path, help="folder to write model.onnx, model.json, MODEL_CARD.md")
    parser.add_argument("--evaluate", type=Path, metavar="MODEL_DIR", help="only evaluate the model in MODEL_DIR")
    parser.add_argument("--variant", default="V2M", help=f"backbone, one of {', '.join(VARIANTS)} (seed: V2M)")
    parser.add_argument("--input-size", type=int, default=512)
    parser.add_argument(
        "--window",
        type=float,
        nargs=2,
        action="append",
        metavar=("CENTER", "WIDTH"),
        help="CT window of a channel, in the PNGs' order (default: 40 400, abdominal)",
    )
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--version", default="1.0.0")
    parser.add_argument("--demo", action="store_true", help="mark the manifest as demo weights (synthetic data)")
    parser.add_argument("--threads", type=int, default=0, help="TensorFlow threads (0 = all cores)")
    parser.add_argument(
        "--fp16-weights",
        action="store_true",
        help="store the ONNX weights as float16 (half the file; ONNX Runtime computes in float32)",
    )
    parser.add_argument(
        "--eager",
        action="store_true",
        help="train without compiling the step (faster for a handful of steps, e.g. smoke tests)",
    )
    args = parser.parse_args(argv)
    if (args.out is None) == (args.evaluate is None):
        parser.error("give either --out (train) or --evaluate MODEL_DIR")
    args.windows = [tuple(w) for w in (args.window or DEFAULT_WINDOWS)]
    return args


def train(args: argparse.Namespace, progress: Any = None) -> Evaluation:
    """Train, export, evaluate and write the model folder as the parsed command line says.

    ``progress``, when given, is called as ``progress(epoch, epochs, message)`` after each epoch.
    """
    import keras
    import tensorflow as tf

    if args.threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(args.threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # TensorFlow already initialised in this process
            pass
    keras.utils.set_random_seed(args.seed)
    channels = len(args.windows)
    samples = list_split(args.data, "train")
    counts = np.bincount([label for _, label in samples], minlength=len(LUMBAR_LEVELS))
    print(
        "training images per level: " + ", ".join(f"{lv} {n}" for lv, n in zip(LUMBAR_LEVELS, counts, strict=False)),
        flush=True,
    )

    classifier = build_model(args.variant, args.input_size, channels=channels)
    shape = (args.input_size, args.input_size, channels)
    trainer = keras.Sequential([keras.Input(shape=shape), _augmenter(args.seed), classifier], name="trainer")
    trainer.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
        run_eagerly=bool(args.eager),
    )
    callbacks = []
    if progress is not None:
        callbacks.append(
            keras.callbacks.LambdaCallback(
                on_epoch_end=lambda epoch, logs: progress(
                    epoch + 1, args.epochs, f"epoch {epoch + 1}: loss {(logs or {}).get('loss', float('nan')):.3f}"
                )
            )
        )
    started = time.monotonic()
    batches = _batches(samples, args.input_size, channels, args.batch_size, args.seed)
    history = trainer.fit(batches, epochs=args.epochs, verbose=2, callbacks=callbacks)
    seconds = time.monotonic() - started

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "model.onnx"
    from training.architectures import export_onnx

    export_onnx(classifier, onnx_path, input_name="image", output_name="levels")
    if args.fp16_weights:
        sizes = store_fp16_weights(onnx_path)
        print(
            f"ONNX weights stored as float16: {sizes['bytes_before'] / 1e6:.1f} → {sizes['bytes_after'] / 1e6:.1f} MB",
            flush=True,
        )
    evaluation = evaluate_onnx(onnx_path, args.data, args.input_size, channels, args.batch_size)
    for line in evaluation.lines():
        print(line, flush=True)
    final_loss = float(history.history["loss"][-1])
    _write_outputs(args, evaluation, onnx_path, classifier.count_params(), counts.tolist(), seconds, final_loss)
    return evaluation


def _manifest(args: argparse.Namespace, onnx_path: Path, extra_post: dict[str, Any] | None = None) -> dict[str, Any]:
    demo = bool(args.demo)
    what = "trained on synthetic abdomen phantoms; not for clinical use" if demo else "trained by training/lumbar.py"
    return {
        "name": MODEL_NAME,
        "version": args.version,
        "task": "slice-classification",
        "backend": "onnx",
        "weights": onnx_path.name,
        "sha256": sha256_file(onnx_path),
        "labels": [{"key": lv, "display": LEVEL_DISPLAY[lv]} for lv in LUMBAR_LEVELS],
        "input": {
            "height": args.input_size,
            "width": args.input_size,
            "channels": len(args.windows),
            "layout": "NHWC",
            "dtype": "float32",
            "preprocessing": {"kind": "ct_windows", "windows": [list(w) for w in args.windows]},
        },
        "manufacturer": "ainode",
        "demo": demo,
        "description": f"Vertebral level per axial CT slice (the lumbar-level design, EfficientNet{args.variant}, "
        f"{args.input_size} px), {what}.",
        "licence": "Weights trained on synthetic data generated by this repository." if demo else "",
        "card": "MODEL_CARD.md",
        "postprocessing": {
            "coarse_step_mm": 20.0,
            "max_coarse_samples": 16,
            "refine_levels": ["L3"],
            **(extra_post or {}),
        },
        "train_command": "ainode-train ct-lumbar --data DATA --out MODELS_DIR/ct-lumbar",
    }


def _write_outputs(
    args: argparse.Namespace,
    evaluation: Evaluation,
    onnx_path: Path,
    parameters: int,
    counts: list[int],
    seconds: float,
    final_loss: float,
) -> None:
    out: Path = args.out
    manifest = _manifest(args, onnx_path, getattr(args, "extra_postprocessing", None))
    manifest_from_mapping(manifest, out, "generated manifest")  # validate before writing
    (out / "model.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    (out / "evaluation.json").write_text(json.dumps(asdict(evaluation), indent=2) + "\n", encoding="utf-8")
    table = "\n".join(
        [f"| true \\ predicted | {' | '.join(LUMBAR_LEVELS)} | recall |", "|---" * (len(LUMBAR_LEVELS) + 2) + "|"]
        + [
            f"| {lv} | {' | '.join(str(v) for v in row)} | "
            + (f"{evaluation.recall[lv]:.3f}" if evaluation.recall[lv] is not None else "–")
            + " |"
            for lv, row in zip(LUMBAR_LEVELS, evaluation.confusion, strict=False)
        ]
    )
    windows = ", ".join(f"{c:g}/{w:g}" for c, w in args.windows)
    window_options = " ".join(f"--window {c:g} {w:g}" for c, w in args.windows)
    reproduce = (
        f"python -m training.lumbar --data DATA --out OUT --variant {args.variant} --input-size {args.input_size} "
        f"--epochs {args.epochs} --batch-size {args.batch_size} --learning-rate {args.learning_rate:g} "
        f"{window_options} "
        f"--seed {args.seed}{' --fp16-weights' if args.fp16_weights else ''}{' --demo' if args.demo else ''}"
    )
    card = f"""# {MODEL_NAME} {args.version} — vertebral level of axial abdominal CT slices (the lumbar-level design)

{manifest["description"]}
Weights `{onnx_path.name}`, SHA-256 `{manifest["sha256"]}`.

## Design
EfficientNet{args.variant} backbone (Keras, trained from scratch, {parameters:,} parameters), global
average pooling, dropout 0.2, Dense(7, softmax) over {", ".join(LUMBAR_LEVELS)}. Input
{args.input_size}×{args.input_size}×{len(args.windows)} (NHWC, 0..1): HU windowed (center/width {windows}),
quantised to 8 bits, area-resized. The node decodes the slices' probabilities as a sequence that is
monotonic along the patient axis and runs the model on a coarse sample plus a bisection of the L3
boundaries (`models/lumbar.py`).

## Training
Data: `{args.data.name}` in the lumbar folder format; training images per level:
{", ".join(f"{lv} {n}" for lv, n in zip(LUMBAR_LEVELS, counts, strict=False))}. Categorical cross-entropy, Adam
(learning rate {args.learning_rate:g}), batch {args.batch_size}, {args.epochs} epoch(s), {seconds:.0f} s on CPU;
final training loss {final_loss:.4f}. Augmentation: rotation ±10°, zoom ±10 %, horizontal and vertical flips.

## Test split ({evaluation.images} images): accuracy {evaluation.accuracy:.4f}

{table}

The source design reports accuracy 0.9757 (validation loss 0.1222) on real CT with errors only between
neighbouring levels.

## Intended use and limits
Finds the L3 slice for body-composition measurement. Not a diagnostic device.
{"These are DEMO weights: trained on synthetic phantoms only, they say nothing about real CT." if args.demo else ""}

## How to reproduce
`{reproduce}`
{"(the demo: `ainode-train build-demo`, recipe `training.lumbar:build_demo`)" if args.demo else ""}
"""
    (out / "MODEL_CARD.md").write_text(card, encoding="utf-8")
    print(f"wrote {onnx_path}, model.json, evaluation.json, MODEL_CARD.md", flush=True)


# ----------------------------------------------------------------------------- demo recipe

DEMO_GENERATORS = ("training.phantoms.ct", "training.phantoms.ct_datasets")
"""Phantom generators whose ``GENERATOR_VERSION`` is part of the recipe hash (``training.demo``)."""


@dataclass(frozen=True)
class DemoParams:
    """Parameters of a demo run (the recipe's parameters, hashed by ``training.demo``)."""

    variant: str
    input_size: int
    data: tuple[tuple[int, int, int, int, float], ...]
    """Phantom sets written into one lumbar folder: (seed, series, size, slices, spacing_z)."""
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    check: tuple[tuple[int, int, int, float], ...]
    """Fresh phantoms the served model is run on: (seed, size, slices, spacing_z)."""
    version: str = "demo-1"
    test_fraction: float = 0.2
    fp16_weights: bool = True


DEMO = DemoParams(
    "V2B0",
    128,
    data=((3, 20, 512, 95, 3.0), (4, 8, 256, 60, 5.0)),
    epochs=13,
    batch_size=16,
    learning_rate=1e-3,
    seed=3,
    check=((9001, 512, 95, 3.0), (9002, 512, 120, 2.5), (9003, 256, 60, 5.0)),
)
"""The demo run: EfficientNetV2-B0 (the smallest V2; V2-S trains ~3× slower on 2 cores) at 128 px,
learning rate 1e-3 (the source design's 1e-4 fine-tunes ImageNet weights; from scratch it needs far more
epochs). Many phantoms (habitus varies by seed) at 512 and 256 px, area-resized like served
series; the last fifth of each set is the test split."""
QUICK = DemoParams(
    "V2B0",
    32,
    data=((3, 2, 128, 95, 3.0),),
    epochs=1,
    batch_size=16,
    learning_rate=1e-3,
    seed=3,
    check=((9001, 128, 60, 5.0),),
)


def check_on_phantoms(
    model_dir: Path, work_dir: Path, cases: Sequence[tuple[int, int, int, float]]
) -> list[dict[str, Any]]:
    """Run the served model (search, decoding, body composition) on fresh abdomen phantoms.

    Parameters
    ----------
    model_dir : Path
        Folder with ``model.json``.
    work_dir : Path
        Where the phantom series are written.
    cases : sequence of (seed, size, slices, spacing_z)
        The phantoms (:func:`training.phantoms.ct.abdomen_phantom`).

    Returns
    -------
    list of dict
        Per phantom: the L3 slice found and the truth's (volume indices, 0 = cranial), the
        forward passes, and the relative area errors.
    """
    import pydicom

    from models.lumbar import LumbarModel
    from models.manifest import load_manifest
    from models.preprocess.ct_series import plan_series
    from training.phantoms.ct import abdomen_phantom

    model = LumbarModel.from_manifest(load_manifest(model_dir / "model.json"))
    rows = []
    for seed, size, slices, spacing in cases:
        phantom = abdomen_phantom(seed, slices=slices, size=size, spacing_z=spacing)
        paths = phantom.write_series(work_dir / f"check-{seed}")
        headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
        plan = plan_series(headers)
        paths_by_uid = {str(h.SOPInstanceUID): p for h, p in zip(headers, paths, strict=False)}
        result, _ = model.analyse(plan, paths_by_uid)
        found = None if result.l3_index is None else phantom.plan_index(result.l3_index)  # plan → volume index
        row: dict[str, Any] = {
            "seed": seed,
            "size": size,
            "spacing_mm": spacing,
            "slices": len(plan),
            "l3_found": found,
            "l3_truth": phantom.truth["l3_index"],
            "forward_passes": len(result.evaluated),
        }
        if result.composition is not None:
            truth = phantom.truth["areas_cm2"]
            c = result.composition
            row["area_errors"] = {
                k: round(v / truth[k] - 1.0, 4)
                for k, v in (
                    ("muscle", c.muscle_cm2),
                    ("subcutaneous_fat", c.subcutaneous_fat_cm2),
                    ("visceral_fat", c.visceral_fat_cm2),
                )
            }
        rows.append(row)
    return rows


def demo_parameters(quick: bool) -> dict[str, Any]:
    """Everything the demo run depends on (:data:`DEMO` or :data:`QUICK`, the PNG window, eager mode): the
    recipe's parameters, hashed by ``training.demo``."""
    from training.phantoms.ct_datasets import LUMBAR_PNG_WINDOW

    return {**asdict(QUICK if quick else DEMO), "name": MODEL_NAME, "window": list(LUMBAR_PNG_WINDOW), "eager": quick}


@demo_recipe(MODEL_NAME, parameters=demo_parameters, generators=DEMO_GENERATORS)
def build_demo(out_dir: Path, work_dir: Path, progress: Any, quick: bool) -> None:
    """Demo recipe (``training.demo``): abdomen phantoms → lumbar folders → :func:`train` → check.

    Writes ``out_dir/ct-lumbar/`` (demo manifest, ONNX, card, evaluation) from
    :data:`DEMO` (:data:`QUICK` when ``quick``), then runs the served model on fresh
    phantom series and appends the L3 distances to the card and ``evaluation.json``.
    """
    from training.phantoms.ct_datasets import write_lumbar_folders

    p = QUICK if quick else DEMO
    window = demo_parameters(quick)["window"]
    data = Path(work_dir) / "lumbar-folders"
    for done, (seed, series, size, slices, spacing) in enumerate(p.data):
        progress.step(done, len(p.data), "phantoms → lumbar folders")
        write_lumbar_folders(
            data, series=series, size=size, seed=seed, slices=slices, spacing_z=spacing, test_fraction=p.test_fraction
        )
    progress.step(len(p.data), len(p.data), "phantoms → lumbar folders")
    out = Path(out_dir) / MODEL_NAME
    args = _parse(
        [
            "--data",
            str(data),
            "--out",
            str(out),
            "--variant",
            p.variant,
            "--input-size",
            str(p.input_size),
            "--epochs",
            str(p.epochs),
            "--batch-size",
            str(p.batch_size),
            "--learning-rate",
            str(p.learning_rate),
            "--seed",
            str(p.seed),
            "--window",
            str(window[0]),
            str(window[1]),
            "--demo",
            "--version",
            p.version,
            *(["--fp16-weights"] if p.fp16_weights else []),
            *(["--eager"] if quick else []),
        ]
    )
    train(args, progress=lambda done, total, message: progress.step(done, total, f"training, {message}"))
    progress.step(0, 1, "check on fresh phantom series")
    rows = check_on_phantoms(out, Path(work_dir), p.check)
    progress.step(1, 1, "check on fresh phantom series")
    evaluation = json.loads((out / "evaluation.json").read_text(encoding="utf-8"))
    evaluation["phantom_series"] = rows
    (out / "evaluation.json").write_text(json.dumps(evaluation, indent=2) + "\n", encoding="utf-8")
    lines = [
        f"| {r['seed']} | {r['size']}² × {r['slices']}, {r['spacing_mm']:g} mm | {r['forward_passes']} | "
        f"{r['l3_found']} | {r['l3_truth']} | "
        + (", ".join(f"{k} {v:+.1%}" for k, v in r.get("area_errors", {}).items()) or "–")
        + " |"
        for r in rows
    ]
    with open(out / "MODEL_CARD.md", "a", encoding="utf-8") as card:
        card.write(
            "\n## End to end on fresh abdomen phantoms (served model: search, decoding, L3, areas)\n\n"
            "| phantom seed | series | forward passes | L3 slice found | L3 truth | area errors |\n"
            "|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n"
        )
    for r in rows:
        progress.note(
            f"phantom {r['seed']}: L3 slice {r['l3_found']} (truth {r['l3_truth']}), "
            f"{r['forward_passes']} forward passes"
        )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    args = _parse(argv)
    try:
        if args.evaluate is not None:
            from models.manifest import load_manifest

            manifest = load_manifest(args.evaluate / "model.json")
            spec = manifest.input
            evaluation = evaluate_onnx(manifest.weights_path, args.data, spec.height, spec.channels, args.batch_size)
            for line in evaluation.lines():
                print(line)
        else:
            train(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
