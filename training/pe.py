"""The RSNA-PE Xception design's pulmonary-embolism model: Xception with nine sigmoid heads, trained on RSNA-PE data.

Architecture (:func:`build_model`, the source design): ``keras.applications.Xception`` (``weights=None``:
ImageNet weights are never downloaded) on an H×W×3 input (512 by default) → global average
pooling → dropout → Dense 1024 → Dense 256 → Dense 64 (ReLU) → nine 1-unit sigmoid heads named
as :data:`core.findings.PE_HEADS`. 23,239,089 parameters; 2,377,609 trainable with the
backbone frozen (the source design's figures: the Xception body has 20,861,480, of which 54,528 batch-norm
statistics; the head 2,098,176 + 262,400 + 16,448 + 9 × 65). The input is the three CT windows of
``models.pe`` as channels, each 0..1; Xception's own ``[-1, 1]`` scaling is not applied (the model
is trained on 0..1 from the start, so the scaling is not needed, and leaving it out keeps one
graph input).

ONNX (:func:`export_pe_onnx`): input ``image`` (N, H, W, 3) NHWC float32; ONE output ``scores``
(N, 9), the nine heads concatenated in :data:`PE_HEADS` order. Weights are stored as float16
initializers each followed by a ``Cast`` to float32 (:func:`store_weights_fp16`): the file is
half the size and ONNX Runtime folds the casts at session start, so it computes in float32.

Training (:func:`main`, extra ``[train]``): RSNA-PE layout ``DATA/train.csv`` +
``DATA/train/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``; studies split 80/20
(``--validation``); each slice is a sample whose targets are its ``pe_present_on_image`` and its
exam's eight other head labels (as the source design); binary cross-entropy per head, Adam, backbone frozen
by default (``--no-freeze-backbone`` trains it too). Evaluation on the validation studies runs the
ONNX model through :class:`models.pe.PeModel` (the serving code) and prints the challenge's
weighted log loss (:func:`rsna_weighted_log_loss`) and per-label AUC and accuracy.

TensorFlow/Keras are imported inside functions only.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import ArrayLike

from core.findings import PE_EXAM_LABELS, PE_HEADS
from models.manifest import manifest_from_mapping, sha256_file
from training.demo import demo_recipe

__all__ = [
    "DEFAULT_WINDOWS",
    "EXAM_WEIGHTS",
    "IMAGE_WEIGHT",
    "EXPECTED_PARAMETERS",
    "EXPECTED_TRAINABLE_FROZEN",
    "MODEL_NAME",
    "build_model",
    "export_pe_onnx",
    "store_weights_fp16",
    "rsna_weighted_log_loss",
    "roc_auc",
    "read_rsna_labels",
    "write_manifest",
    "main",
    "build_demo",
]

MODEL_NAME = "ct-pe"
EXPECTED_PARAMETERS = 23_239_089
EXPECTED_TRAINABLE_FROZEN = 2_377_609
DEFAULT_WINDOWS: tuple[tuple[float, float], ...] = ((100.0, 700.0), (40.0, 400.0), (-600.0, 1500.0))
"""(centre, width) in HU of the three channels: PE-specific, mediastinal, lung (see ``models.pe``)."""

#: Weights of the RSNA STR PE challenge's metric (Kaggle evaluation page; the same numbers are in the
#: winners' published validation code): exam labels, and the image label (times the exam's positive fraction).
EXAM_WEIGHTS: dict[str, float] = {
    "negative_exam_for_pe": 0.0736196319,
    "indeterminate": 0.09202453988,
    "chronic_pe": 0.1042944785,
    "acute_and_chronic_pe": 0.1042944785,
    "central_pe": 0.1877300613,
    "leftsided_pe": 0.06257668712,
    "rightsided_pe": 0.06257668712,
    "rv_lv_ratio_gte_1": 0.2346625767,
    "rv_lv_ratio_lt_1": 0.0782208589,
}
IMAGE_WEIGHT = 0.07361963
_EPS = 1e-15  # probabilities are clipped to [eps, 1 - eps] before the logarithm, as sklearn's log_loss


def build_model(input_size: int = 512, *, dropout: float = 0.3, freeze_backbone: bool = True) -> Any:
    """The source design's Keras model (see the module docstring).

    Parameters
    ----------
    input_size : int
        Height and width of the square 3-channel input (the source design: 512); at least 71 (Xception).
    dropout : float
        Dropout rate after global average pooling (the source design does not give it; ours).
    freeze_backbone : bool
        Make the Xception body non-trainable (the source design trains the head only on an ImageNet body).

    Returns
    -------
    keras.Model
        Input ``image`` (N, input_size, input_size, 3) in 0..1, nine outputs (N, 1) named as
        :data:`PE_HEADS`, in that order.
    """
    import keras
    from keras import layers

    if input_size < 71:
        raise ValueError(f"input_size must be at least 71 (Xception's smallest input), got {input_size}")
    image = keras.Input(shape=(input_size, input_size, 3), name="image")
    base = keras.applications.Xception(include_top=False, weights=None, input_shape=(input_size, input_size, 3))
    base.trainable = not freeze_backbone
    x = base(image)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Dense(1024, activation="relu", name="dense_1024")(x)
    x = layers.Dense(256, activation="relu", name="dense_256")(x)
    x = layers.Dense(64, activation="relu", name="dense_64")(x)
    heads = [layers.Dense(1, activation="sigmoid", name=name)(x) for name in PE_HEADS]
    return keras.Model(image, heads, name="pe_xception")


def _batch_norm_layers(layer: Any) -> list[Any]:
    from keras import layers

    found = [layer] if isinstance(layer, layers.BatchNormalization) else []
    for sub in getattr(layer, "layers", []):
        found += _batch_norm_layers(sub)
    return found


def recalibrate_batch_norm(model: Any, images: np.ndarray, batch_size: int, batches: int = 40, seed: int = 0) -> int:
    """Re-estimate the moving mean/variance of trainable batch-norm layers on training images.

    A backbone trained from scratch for a few hundred steps leaves Keras' moving statistics
    (momentum 0.99) far from the batch statistics it was trained with, and the exported model
    (inference mode) then gives the same output for every input. Forward passes in training mode
    with momentum 0.9 and no optimizer step fix the statistics without touching the weights.
    Returns the number of layers recalibrated (0 for a frozen backbone).
    """
    norms = [layer for layer in _batch_norm_layers(model) if layer.trainable]
    if not norms:
        return 0
    saved = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.9
    rng = np.random.default_rng(seed)
    for _ in range(batches):
        pick = rng.choice(len(images), size=min(batch_size, len(images)), replace=False)
        model(images[pick].astype(np.float32), training=True)
    for layer, momentum in zip(norms, saved, strict=False):
        layer.momentum = momentum
    return len(norms)


def count_parameters(model: Any) -> tuple[int, int]:
    """(total, trainable) parameter counts of a Keras model."""
    trainable = int(sum(int(np.prod(w.shape)) for w in model.trainable_weights))
    return int(model.count_params()), trainable


def store_weights_fp16(path: str | Path, *, min_elements: int = 1024) -> tuple[int, int]:
    """Rewrite an ONNX file so that its large float32 initializers are stored as float16.

    Each such initializer ``W`` becomes ``W__fp16`` (float16) and a ``Cast(to=FLOAT)`` node,
    placed first in the graph, produces ``W`` again: the graph computes in float32 as before, and
    ONNX Runtime's constant folding turns the casts back into float32 constants at session start.
    Only the stored precision changes (about 3 significant digits per weight).

    Returns
    -------
    tuple of int
        File size in bytes before and after.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    path = Path(path)
    before = path.stat().st_size
    model = onnx.load(str(path))
    graph = model.graph
    kept, casts = [], []
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and int(np.prod(init.dims)) >= min_elements:
            values = numpy_helper.to_array(init).astype(np.float16)
            kept.append(numpy_helper.from_array(values, name=f"{init.name}__fp16"))
            casts.append(
                helper.make_node(
                    "Cast", [f"{init.name}__fp16"], [init.name], to=TensorProto.FLOAT, name=f"{init.name}__cast"
                )
            )
        else:
            kept.append(init)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return before, path.stat().st_size


def export_pe_onnx(model: Any, path: str | Path, *, fp16_weights: bool = True) -> None:
    """Export :func:`build_model`'s model to ONNX with one output ``scores`` (N, 9) in PE_HEADS order."""
    import keras
    from keras import layers

    from training.architectures import export_onnx

    if len(model.outputs) != len(PE_HEADS):
        raise ValueError(f"expected {len(PE_HEADS)} heads, the model has {len(model.outputs)}")
    joined = keras.Model(model.inputs, layers.Concatenate(name="scores")(list(model.outputs)), name="pe_export")
    export_onnx(joined, path, input_name="image", output_name="scores")
    if fp16_weights:
        store_weights_fp16(path)


# --------------------------------------------------------------------------- metric


def _bce(y: ArrayLike, p: ArrayLike) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)
    y = np.asarray(y, dtype=np.float64)
    return -(y * np.log(p) + (1.0 - y) * np.log(1.0 - p))


def rsna_weighted_log_loss(
    image_true: Sequence[ArrayLike],
    image_pred: Sequence[ArrayLike],
    exam_true: Sequence[Mapping[str, float]],
    exam_pred: Sequence[Mapping[str, float]],
) -> float:
    """The RSNA STR PE challenge's weighted log loss over a set of exams.

    For exam *i* with *n_i* images of which a fraction *q_i* is positive, every image *j* adds
    ``w_img · q_i · BCE(y_ij, p_ij)`` with weight ``w_img · q_i``, and every exam label *l* adds
    ``w_l · BCE(y_il, p_il)`` with weight ``w_l`` (:data:`IMAGE_WEIGHT`, :data:`EXAM_WEIGHTS`);
    the score is the sum of the losses over the sum of the weights. Probabilities are clipped to
    [1e-15, 1 − 1e-15]. Lists are per exam, in the same order.
    """
    if not (len(image_true) == len(image_pred) == len(exam_true) == len(exam_pred)):
        raise ValueError("image and exam truths and predictions must list the same exams")
    if not image_true:
        raise ValueError("no exam to score")
    total_loss = 0.0
    total_weight = 0.0
    for y_img, p_img, y_exam, p_exam in zip(image_true, image_pred, exam_true, exam_pred, strict=False):
        y = np.asarray(y_img, dtype=np.float64)
        if y.shape != np.asarray(p_img).shape or y.size == 0:
            raise ValueError(f"an exam has {y.size} image labels and {np.asarray(p_img).size} predictions")
        q = float(y.mean())
        total_loss += IMAGE_WEIGHT * q * float(_bce(y, p_img).sum())
        total_weight += IMAGE_WEIGHT * q * y.size
        for label, weight in EXAM_WEIGHTS.items():
            total_loss += weight * float(_bce(np.array([y_exam[label]]), np.array([p_exam[label]]))[0])
            total_weight += weight
    return total_loss / total_weight


def roc_auc(y_true: ArrayLike, scores: ArrayLike) -> float | None:
    """Area under the ROC curve (Mann–Whitney U, ties counted half); None without both classes."""
    y = np.asarray(y_true, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    start = 0
    while start < len(s):  # average ranks over ties
        stop = start
        while stop + 1 < len(s) and sorted_s[stop + 1] == sorted_s[start]:
            stop += 1
        ranks[order[start : stop + 1]] = (start + stop) / 2.0 + 1.0
        start = stop + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


# --------------------------------------------------------------------------- data


@dataclass
class Study:
    """One study of an RSNA-PE data set: its series' slices (SOPInstanceUID → label) and exam labels."""

    study_uid: str
    series: dict[str, dict[str, int]] = field(default_factory=dict)  # series UID → {SOP UID: pe_present_on_image}
    exam: dict[str, int] = field(default_factory=dict)


def read_rsna_labels(csv_path: Path) -> dict[str, Study]:
    """Read an RSNA-PE ``train.csv`` (one row per image, exam labels repeated on every row).

    Raises
    ------
    ValueError
        A required column is missing, a value is not 0/1, or an exam's labels differ between rows.
    """
    required = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "pe_present_on_image", *PE_EXAM_LABELS)
    studies: dict[str, Study] = {}
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        absent = [c for c in required if c not in (reader.fieldnames or [])]
        if absent:
            raise ValueError(f"{csv_path}: missing column(s) {', '.join(absent)}")
        for line, row in enumerate(reader, start=2):
            try:
                values = {c: int(float(row[c])) for c in required[3:]}
            except ValueError as exc:
                raise ValueError(f"{csv_path} line {line}: labels must be 0 or 1 ({exc})") from exc
            if any(v not in (0, 1) for v in values.values()):
                raise ValueError(f"{csv_path} line {line}: labels must be 0 or 1")
            study = studies.setdefault(row["StudyInstanceUID"], Study(row["StudyInstanceUID"]))
            exam = {c: values[c] for c in PE_EXAM_LABELS}
            if study.exam and study.exam != exam:
                raise ValueError(
                    f"{csv_path} line {line}: exam labels of study {study.study_uid} differ from its earlier rows"
                )
            study.exam = exam
            study.series.setdefault(row["SeriesInstanceUID"], {})[row["SOPInstanceUID"]] = values["pe_present_on_image"]
    if not studies:
        raise ValueError(f"{csv_path}: no rows")
    return studies


def split_studies(studies: Mapping[str, Study], validation: float, seed: int) -> tuple[list[str], list[str]]:
    """Study-wise split: (training, validation) study UIDs, no study on both sides.

    PE-negative and PE-positive studies are drawn separately (about ``validation`` of each), so
    both sides get some of each; deterministic for a given seed.
    """
    if not 0.0 <= validation < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {validation}")
    rng = np.random.default_rng(seed)
    held: set[str] = set()
    for negative in (0, 1):
        group = sorted(
            u for u, s in studies.items() if int(s.exam["negative_exam_for_pe"] or s.exam["indeterminate"]) == negative
        )
        held.update(str(u) for u in rng.permutation(group)[: round(validation * len(group))])
    uids = sorted(studies)
    return [u for u in uids if u not in held], [u for u in uids if u in held]


def _plan_series_folder(folder: Path) -> tuple[Any, dict[str, Path]]:
    import pydicom

    from models.preprocess.ct_series import plan_series

    files = sorted(folder.glob("*.dcm"))
    if not files:
        raise FileNotFoundError(f"no .dcm files in {folder}")
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    plan = plan_series(headers)
    return plan, {str(h.SOPInstanceUID): f for h, f in zip(headers, files, strict=False)}


def patient_batches(patients: Sequence[str], batch_size: int, steps: int, seed: int) -> np.ndarray:
    """Indices (steps, batch_size) of training slices, each row drawn from one patient's slices.

    A patient is picked at random for every batch and ``batch_size`` of its slices are drawn
    (without replacement while it has enough, with replacement otherwise).
    """
    if not patients:
        raise ValueError("no slices to draw batches from")
    rng = np.random.default_rng(seed)
    by_patient: dict[str, list[int]] = {}
    for index, patient in enumerate(patients):
        by_patient.setdefault(patient, []).append(index)
    groups = [np.array(v) for _, v in sorted(by_patient.items())]
    out = np.empty((steps, batch_size), dtype=np.int64)
    for step in range(steps):
        group = groups[int(rng.integers(len(groups)))]
        out[step] = rng.choice(group, size=batch_size, replace=len(group) < batch_size)
    return out


LOCATION_HEADS = ("leftsided_pe", "rightsided_pe", "central_pe", "chronic_pe", "acute_and_chronic_pe")
"""Heads that say where a clot is and how old: only a slice that shows the clot can tell."""
_MASKED = -1.0


def mask_location_targets(y: np.ndarray) -> np.ndarray:
    """A copy of the (N, 9) targets with :data:`LOCATION_HEADS` set to -1 (no loss) on slices without a clot."""
    y = np.array(y, dtype=np.float32, copy=True)
    clear = y[:, PE_HEADS.index("pe_present_on_image")] < 0.5
    for name in LOCATION_HEADS:
        y[clear, PE_HEADS.index(name)] = _MASKED
    return y


def masked_binary_crossentropy(y_true: Any, y_pred: Any) -> Any:
    """Binary cross-entropy per sample, zero where the target is -1 (:func:`mask_location_targets`)."""
    from keras import ops

    keep = ops.cast(ops.greater_equal(y_true, 0.0), y_pred.dtype)
    target = ops.clip(y_true, 0.0, 1.0)
    p = ops.clip(y_pred, 1e-7, 1.0 - 1e-7)
    loss = -(target * ops.log(p) + (1.0 - target) * ops.log(1.0 - p)) * keep
    return ops.mean(loss, axis=-1)


def load_slices(
    data_dir: Path,
    studies: Mapping[str, Study],
    uids: Sequence[str],
    size: int,
    windows: Sequence[Sequence[float]],
    max_slices: int | None = None,
    patients: list[str] | None = None,
    crop_body: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Windowed slices (N, size, size, 3) float16 and their nine targets (N, 9) in PE_HEADS order.

    Slices are read as in serving (plan, HU batches, :func:`models.pe.window_slices`); a slice's
    targets are its own ``pe_present_on_image`` and its exam's labels; slices are turned to the usual
    display orientation first (:func:`models.pe.to_canonical`), as the served model does. ``max_slices`` keeps at most
    that many evenly spaced slices per series (all positive slices of a positive series are kept
    first), which bounds memory on large data sets. When a list is given as ``patients``, the
    PatientID of every slice returned is appended to it. ``crop_body``: each slice cut to the
    square around the patient first, as the served model does when its manifest says so.
    """
    import pydicom

    from models.pe import to_canonical, window_slices
    from models.preprocess.ct_series import iter_hu_batches

    images: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    for uid in uids:
        study = studies[uid]
        for series_uid, labels in sorted(study.series.items()):
            plan, paths = _plan_series_folder(Path(data_dir) / "train" / uid / series_uid)
            order = list(plan.sop_instance_uids)
            patient = (
                str(
                    pydicom.dcmread(paths[order[0]], stop_before_pixels=True, specific_tags=["PatientID"]).get(
                        "PatientID", uid
                    )
                )
                if patients is not None
                else ""
            )
            unknown = [s for s in order if s not in labels]
            if unknown:
                raise ValueError(
                    f"study {uid} series {series_uid}: {len(unknown)} slice(s) not in train.csv, e.g. {unknown[0]}"
                )
            keep = set(range(len(order)))
            if max_slices is not None and len(order) > max_slices:
                pos = [i for i, s in enumerate(order) if labels[s]]
                neg = [i for i, s in enumerate(order) if not labels[s]]
                room = max(0, max_slices - len(pos))
                picked_neg = [neg[int(j)] for j in np.linspace(0, len(neg) - 1, room)] if room and neg else []
                keep = set(pos[:max_slices]) | set(picked_neg)
            for indices, hu in iter_hu_batches(plan, paths, batch_size=8):
                chosen = [r for r, i in enumerate(indices) if i in keep]
                if not chosen:
                    continue
                images.append(
                    window_slices(to_canonical(hu[chosen], plan.orientation), windows, size, size, crop_body).astype(
                        np.float16
                    )
                )
                for r in chosen:
                    sop = order[indices[r]]
                    row = [
                        float(labels[sop]) if head == "pe_present_on_image" else float(study.exam[head])
                        for head in PE_HEADS
                    ]
                    targets.append(np.array(row, dtype=np.float32))
                    if patients is not None:
                        patients.append(patient)
    if not images:
        raise ValueError("no slices loaded")
    return np.concatenate(images), np.stack(targets)


# --------------------------------------------------------------------------- manifest, evaluation, card

_DISPLAY = {
    "acute_and_chronic_pe": "Acute and chronic pulmonary embolism",
    "central_pe": "Central pulmonary embolism",
    "chronic_pe": "Chronic pulmonary embolism",
    "indeterminate": "Indeterminate for pulmonary embolism",
    "leftsided_pe": "Left-sided pulmonary embolism",
    "pe_present_on_image": "Pulmonary embolism present on image",
    "rightsided_pe": "Right-sided pulmonary embolism",
    "rv_lv_ratio_gte_1": "RV/LV ratio at least 1",
    "rv_lv_ratio_lt_1": "RV/LV ratio below 1",
}


def write_manifest(
    out: Path,
    onnx_path: Path,
    *,
    size: int,
    windows: Sequence[Sequence[float]],
    version: str,
    demo: bool,
    description: str,
    postprocessing: Mapping[str, Any] | None = None,
    thresholds: Mapping[str, float] | None = None,
    crop: str = "none",
) -> dict[str, Any]:
    """Write ``out/model.json`` for an exported PE model (validated first) and return it."""
    manifest: dict[str, Any] = {
        "name": MODEL_NAME,
        "version": version,
        "task": "slice-classification",
        "backend": "onnx",
        "weights": onnx_path.name,
        "sha256": sha256_file(onnx_path),
        "labels": [
            {"key": h, "display": _DISPLAY[h], "threshold": float((thresholds or {}).get(h, 0.5))} for h in PE_HEADS
        ],
        "input": {
            "height": size,
            "width": size,
            "channels": 3,
            "layout": "NHWC",
            "dtype": "float32",
            "preprocessing": {
                "kind": "ct_windows",
                "windows": [[float(c), float(w)] for c, w in windows],
                "crop": crop,
            },
        },
        "manufacturer": "ainode",
        "demo": demo,
        "description": description,
        "licence": "Apache-2.0 (code); weights: as the training data's licence (RSNA-PE: non-commercial).",
        "card": "MODEL_CARD.md",
        "postprocessing": {
            "top_k": 3,
            "negative_threshold": 0.5,
            "output": "scores (N, 9) in label order",
            **dict(postprocessing or {}),
        },
        "train_command": "ainode-train ct-pe --data DATA --out MODELS_DIR/ct-pe",
    }
    manifest_from_mapping(manifest, out, "generated manifest")
    (out / "model.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


@dataclass
class Evaluation:
    """Figures of a model on held-out studies (per-label AUC/accuracy: None when undefined)."""

    studies: int
    slices: int
    weighted_log_loss: float
    auc: dict[str, float | None]
    accuracy: dict[str, float]

    def lines(self) -> list[str]:
        out = [
            f"{self.studies} validation studies, {self.slices} slices; RSNA weighted log loss "
            f"{self.weighted_log_loss:.4f}",
            "| label | AUC | accuracy |",
            "| --- | ---: | ---: |",
        ]
        for label in ("pe_present_on_image", *PE_EXAM_LABELS):
            auc = self.auc.get(label)
            out.append(f"| {label} | {'n/a' if auc is None else f'{auc:.3f}'} | {self.accuracy[label]:.3f} |")
        return out


def evaluate(
    manifest_path: Path, data_dir: Path, studies: Mapping[str, Study], uids: Sequence[str], threads: int = 2
) -> Evaluation:
    """Run the exported model through :class:`models.pe.PeModel` (serving code) on the given studies.

    Exam probabilities are scored before the consistency rules (the metric wants probabilities);
    accuracies use the decisions after them (``exam_labels`` and ``positive_slices``).
    """
    from models.manifest import load_manifest
    from models.pe import PeModel

    model = PeModel.from_manifest(load_manifest(manifest_path), threads=threads)
    img_true: list[np.ndarray] = []
    img_pred: list[np.ndarray] = []
    img_decision: list[np.ndarray] = []
    ex_true: list[dict[str, float]] = []
    ex_pred: list[dict[str, float]] = []
    ex_decision: list[dict[str, bool]] = []
    for uid in uids:
        study = studies[uid]
        for series_uid, labels in sorted(study.series.items()):
            plan, paths = _plan_series_folder(Path(data_dir) / "train" / uid / series_uid)
            result = model.analyse(plan, paths)
            img_true.append(np.array([labels[s] for s in result.slice_uids], dtype=np.float64))
            img_pred.append(np.array(result.slice_probabilities))
            decision = np.zeros(len(result.slice_uids))
            decision[result.positive_slices] = 1
            img_decision.append(decision)
            ex_true.append({k: float(v) for k, v in study.exam.items()})
            ex_pred.append(dict(result.exam_probabilities))
            ex_decision.append(dict(result.exam_labels))
    if not img_true:
        raise ValueError("no validation study to evaluate")
    auc: dict[str, float | None] = {"pe_present_on_image": roc_auc(np.concatenate(img_true), np.concatenate(img_pred))}
    accuracy = {"pe_present_on_image": float(np.mean(np.concatenate(img_true) == np.concatenate(img_decision)))}
    for label in PE_EXAM_LABELS:
        auc[label] = roc_auc([t[label] for t in ex_true], [p[label] for p in ex_pred])
        accuracy[label] = float(
            np.mean([t[label] == float(d[label]) for t, d in zip(ex_true, ex_decision, strict=False)])
        )
    return Evaluation(
        len(ex_true),
        int(sum(len(t) for t in img_true)),
        rsna_weighted_log_loss(img_true, img_pred, ex_true, ex_pred),
        auc,
        accuracy,
    )


def write_model_card(
    path: Path,
    manifest: Mapping[str, Any],
    args: argparse.Namespace,
    run: Mapping[str, Any],
    evaluation: Evaluation | None,
    calibration: Calibration | None = None,
) -> None:
    """``MODEL_CARD.md``: design, data, training, held-out figures, limits, how to reproduce."""
    figures = "\n".join(evaluation.lines()) if evaluation else "No validation studies (validation fraction 0)."
    if calibration is not None:
        figures = "\n".join(
            [
                "### Exam threshold, chosen on fresh whole-series phantoms (exam PE probability = mean of the 3 most "
                "likely slices)",
                *calibration.lines(),
                "",
                "### Validation studies (at that threshold)",
                figures,
            ]
        )
    demo_note = (
        "**Demo weights**: trained on synthetic CTPA phantoms (bright pulmonary arteries with planted filling "
        "defects), from scratch (no ImageNet weights here), with the backbone trained too and at a small input size. "
        "They show the pipeline end to end; they are not a diagnostic model and know nothing of real anatomy.\n\n"
        if manifest.get("demo")
        else ""
    )
    text = f"""# {manifest["name"]} {manifest["version"]} — pulmonary embolism on CTPA (the RSNA-PE Xception design)

{demo_note}Weights `{manifest["weights"]}`, SHA-256 `{manifest["sha256"]}`.

## Design
Xception (Keras, `weights=None`) on {args.size}×{args.size}×3 → global average pooling → dropout {args.dropout}
→ Dense 1024 → Dense 256 → Dense 64 (ReLU) → nine 1-unit sigmoid heads ({", ".join(PE_HEADS)}).
{EXPECTED_PARAMETERS:,} parameters ({
        EXPECTED_TRAINABLE_FROZEN:,} trainable with the backbone frozen, as the source design).
Channels: CT windows (centre, width) {manifest["input"]["preprocessing"]["windows"]} HU, each clipped to 0..1{
        "; each slice first cut to the square around the patient (crop: body)"
        if manifest["input"]["preprocessing"].get("crop") == "body"
        else ""
    }.
ONNX: input `image` (N, {args.size}, {args.size}, 3) NHWC float32; output `scores` (N, 9) in the order above;
weights stored as float16 and cast to float32 in the graph (ONNX Runtime computes in float32).

## Data and training
RSNA-PE layout (`train.csv` + `train/<study>/<series>/<sop>.dcm`) in a folder `{Path(args.data).name}`: {
        run["train_studies"]
    } training
studies ({run["train_slices"]} slices), {run["val_studies"]} validation studies (study-wise split {args.validation}).
Targets per slice: its `pe_present_on_image` and its exam's labels{
        " (location and type heads: on slices with a clot only)" if args.locate_on_clot_slices else ""
    }. Binary cross-entropy per head
(`pe_present_on_image` weighted {args.image_loss_weight:g}), Adam
(learning rate {args.lr}{", cosine decay to 5 %" if args.lr_schedule == "cosine" else ""}), batch {args.batch_size}, {
        run["steps"]
    } steps ({run["seconds"]:.0f} s), backbone
{"frozen" if args.freeze_backbone else "trained"}, random seed {args.seed}.

## Validation (serving code: `models.pe.PeModel`, RSNA consistency rules applied to the decisions)
{figures}

Weighted log loss: the challenge's metric (image loss weighted by the exam's positive fraction, exam labels by
the official weights); the source design reports a total validation loss of 2.88 on RSNA-PE (a different sum of losses).

## Intended use and limits
Flag CTPA series that may show pulmonary embolism so that reading is prioritised. Not a diagnostic device;
not validated clinically. Exam aggregation and rules: see `models/pe.py`.

## How to reproduce
`python -m training.pe --data DATA --out OUT --size {args.size} --steps {run["steps"]} --batch-size {
        args.batch_size
    } --lr {args.lr:g} --lr-schedule {args.lr_schedule} --image-loss-weight {args.image_loss_weight:g} --crop {
        args.crop
    }{" --locate-on-clot-slices" if args.locate_on_clot_slices else ""}{
        " --patient-batches" if args.patient_batches else ""
    }{"" if args.location == "heads" else " --location " + args.location} --seed {args.seed}{
        "" if args.freeze_backbone else " --no-freeze-backbone"
    }`
"""
    path.write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------- exam threshold


def separating_threshold(positive: Sequence[float], negative: Sequence[float], *, balanced: bool = True) -> float:
    """The exam-probability threshold that best separates exams with PE from exams without.

    Candidates are the midpoints between neighbouring scores, and halfway to 0 below the lowest
    and to 1 above the highest; the one with the highest balanced accuracy (``balanced=False``:
    plain accuracy, for a rare class whose few examples should not buy many false calls) wins
    (an exam is positive at or above the threshold), ties going to the widest gap to the nearest score.
    """
    pos = np.asarray(positive, dtype=np.float64)
    neg = np.asarray(negative, dtype=np.float64)
    if pos.size == 0 or neg.size == 0:
        raise ValueError("need scores of exams both with and without PE")
    every = np.concatenate([pos, neg])
    scores = np.unique(every)
    candidates = np.concatenate([[scores[0] / 2], (scores[:-1] + scores[1:]) / 2, [(scores[-1] + 1) / 2]])
    best: tuple[float, float, float] | None = None
    for t in candidates:
        if balanced:
            accuracy = (float(np.mean(pos >= t)) + float(np.mean(neg < t))) / 2
        else:
            accuracy = (float(np.sum(pos >= t)) + float(np.sum(neg < t))) / every.size
        gap = float(np.min(np.abs(every - t)))
        if best is None or (accuracy, gap) > best[:2]:
            best = (accuracy, gap, float(t))
    assert best is not None
    return best[2]


@dataclass
class Calibration:
    """Exam PE probabilities of fresh phantoms (with and without a clot) and the threshold chosen on them."""

    threshold: float
    positive: list[tuple[int, str, float]]  # (phantom seed, side, exam PE probability)
    negative: list[tuple[int, float]]
    central_threshold: float | None = None
    central: list[tuple[int, str, float]] = field(default_factory=list)  # (seed, side, exam central_pe probability)
    sides: list[tuple[int, str, tuple[str, ...]]] = field(default_factory=list)  # (seed, truth, sides called)

    def lines(self) -> list[str]:
        pos = ", ".join(f"{p:.2f}" for _, _, p in sorted(self.positive, key=lambda r: r[2]))
        neg = ", ".join(f"{p:.2f}" for _, p in sorted(self.negative, key=lambda r: r[1]))
        right = sum(p >= self.threshold for _, _, p in self.positive) + sum(
            p < self.threshold for _, p in self.negative
        )
        out = [
            f"Exam threshold {self.threshold:.3f} (`pe_present_on_image`), chosen on {len(self.positive)} + "
            f"{len(self.negative)} fresh phantoms, {right}/{len(self.positive) + len(self.negative)} called right.",
            f"- with a clot: {pos}",
            f"- without: {neg}",
        ]
        if self.central_threshold is not None:
            hit = sum((p >= self.central_threshold) == (side == "central") for _, side, p in self.central)
            out.append(
                f"- `central_pe` threshold {self.central_threshold:.3f}, chosen on the same phantoms with a clot "
                f"(central against the others): {hit}/{len(self.central)} right"
            )
        if self.sides:
            called = sum(1 for _, _, sides in self.sides if sides)
            exact = sum(1 for _, truth, sides in self.sides if sides == (truth,))
            calls = ", ".join(f"{truth} → {'+'.join(sides)}" for _, truth, sides in self.sides if sides)
            out.append(
                f"- sides called on the {called} of them called positive: {exact} exactly the planted side ({calls})"
            )
        return out


def calibrate_on_phantoms(
    manifest_path: Path,
    params: Mapping[str, Any],
    progress: Callable[[int, int, str], None] | None = None,
    threads: int = 2,
) -> Calibration:
    """Score ``params["calibration_pairs"]`` fresh phantom pairs, whole series, and choose the exam threshold.

    Each pair is one seed drawn with a clot (sides, chronic and RV/LV ratio in the training
    data's rotation) and without; the seeds (``seed × 1000 + 500 + pair``) are not the training
    ones. Unlike the training negatives, whose series are cut to the slab around their twin's
    clot, these are scored from apex to base, as the node sees a CTPA: the model's false
    positives come from levels it has seen few negatives of, and the threshold has to cover them.
    """
    from models.manifest import load_manifest
    from models.pe import PeModel, aggregate_exam, exam_pe_probability
    from training.phantoms.ct import ctpa_phantom

    model = PeModel.from_manifest(load_manifest(manifest_path), threads=threads)
    pairs = int(params["calibration_pairs"])
    positive: list[tuple[int, str, float]] = []
    negative: list[tuple[int, float]] = []
    central: list[tuple[int, str, float]] = []
    volumes: list[tuple[int, str, Any, Any]] = []  # kept to call the sides once the thresholds are known
    for pair in range(pairs):
        seed = int(params["seed"]) * 1000 + 500 + pair
        side = _DEMO_SIDES[pair % len(_DEMO_SIDES)]
        for embolus in (side, None):
            phantom = ctpa_phantom(
                seed,
                slices=int(params["slices"]),
                size=int(params["phantom_size"]),
                embolus=embolus,  # type: ignore[arg-type]
                chronic=embolus is not None and pair % 3 == 2,
                rv_lv_ratio=1.2 if pair % 4 == 3 else 0.8,
            )
            scores = model.score_volume(phantom.volume_hu)
            p_pe = exam_pe_probability(scores[:, PE_HEADS.index("pe_present_on_image")], model.top_k)
            if embolus is None:
                negative.append((seed, p_pe))
            else:
                positive.append((seed, side, p_pe))
                central.append((seed, side, aggregate_exam(scores, model.top_k)[1]["central_pe"]))
                volumes.append((seed, side, phantom.volume_hu, scores))
        if progress is not None:
            progress(pair + 1, pairs, f"calibration phantom pair {pair + 1}/{pairs}")
    threshold = separating_threshold([p for _, _, p in positive], [p for _, p in negative])
    central_threshold = None
    if any(side == "central" for _, side, _ in central) and any(side != "central" for _, side, _ in central):
        central_threshold = separating_threshold(
            [p for _, side, p in central if side == "central"],
            [p for _, side, p in central if side != "central"],
            balanced=False,
        )
    # The sides then called with both thresholds, as the node would (location heads or mirror probes).
    model.thresholds["pe_present_on_image"] = threshold
    if central_threshold is not None:
        model.thresholds["central_pe"] = central_threshold
    sides: list[tuple[int, str, tuple[str, ...]]] = []
    for seed, side, volume, scores in volumes:
        labels = model.result_from_volume(volume, scores=scores).exam_labels
        sides.append(
            (
                seed,
                side,
                tuple(
                    name
                    for name, head in (("right", "rightsided_pe"), ("left", "leftsided_pe"), ("central", "central_pe"))
                    if labels[head]
                ),
            )
        )
    return Calibration(threshold, positive, negative, central_threshold, central, sides)


# --------------------------------------------------------------------------- training


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.pe", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, required=True, help="RSNA-PE folder: train.csv and train/<study>/<series>/*.dcm"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for model.onnx, model.json, MODEL_CARD.md")
    parser.add_argument("--size", type=int, default=512, help="input height and width (the source design: 512)")
    parser.add_argument("--epochs", type=int, default=3, help="passes over the training slices (the source design: 3)")
    parser.add_argument("--steps", type=int, default=0, help="optimizer steps; overrides --epochs when > 0")
    parser.add_argument("--batch-size", type=int, default=16, help="slices per step (the source design: 1000 on a GPU)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument(
        "--lr-schedule",
        choices=("constant", "cosine"),
        default="constant",
        help="'cosine': decay the learning rate along a half cosine to 5 %% of --lr at the last step",
    )
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument(
        "--patient-batches",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="draw each batch from one patient's slices (PatientID). Beware batch norm: a backbone "
        "trained so normalises every batch by one patient's statistics (contrast level, anatomy) "
        "and then meets population statistics when served. ct-pe demo-3, trained so, called "
        "clot-free phantoms of low contrast (300-340 HU) positive, its own training ones included",
    )
    parser.add_argument(
        "--image-loss-weight",
        type=float,
        default=1.0,
        help="weight of the pe_present_on_image loss against each exam head's (1: all equal)",
    )
    parser.add_argument(
        "--validation", type=float, default=0.2, help="fraction of studies held out (the source design: 0.2)"
    )
    parser.add_argument(
        "--freeze-backbone",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train the head only (as the source design, with ImageNet weights); --no-freeze-backbone trains all",
    )
    parser.add_argument(
        "--max-slices-per-series",
        type=int,
        default=None,
        help="keep at most this many slices per series in memory (positives first)",
    )
    parser.add_argument(
        "--windows",
        type=str,
        default=";".join(f"{c:g},{w:g}" for c, w in DEFAULT_WINDOWS),
        help="three 'centre,width' HU windows separated by ';'",
    )
    parser.add_argument(
        "--locate-on-clot-slices",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="train the location and type heads (left, right, central, chronic, acute and chronic) "
        "on slices that show a clot only: the others carry no sign of where or how old it is",
    )
    parser.add_argument(
        "--crop",
        choices=("none", "body"),
        default="none",
        help="'body': cut each slice to the square around the patient before resizing (more pixels on "
        "the patient when the field of view is wide or the input small); the manifest records it",
    )
    parser.add_argument(
        "--location",
        choices=("heads", "mirror"),
        default="heads",
        help="how the served model tells left from right (manifest postprocessing.location): 'heads', "
        "its location heads (the source design); 'mirror', the fall of the slice head when each half of the "
        "chest is replaced by the other's mirror image (models.pe)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="TensorFlow intra-op threads (0 = default)")
    parser.add_argument("--version", default="1.0.0")
    parser.add_argument("--demo", action="store_true", help="mark the manifest as demo weights (synthetic data)")
    parser.add_argument(
        "--eager",
        action="store_true",
        help="run the training step eagerly: no graph tracing (~40 s), slower steps; for tiny runs",
    )
    return parser.parse_args(list(argv) if argv is not None else None)


def _windows(text: str) -> list[tuple[float, float]]:
    try:
        pairs = [tuple(float(v) for v in part.split(",")) for part in text.split(";")]
    except ValueError as exc:
        raise ValueError(f"--windows must be 'c,w;c,w;c,w', got {text!r}") from exc
    if len(pairs) != 3 or any(len(p) != 2 or p[1] <= 0 for p in pairs):
        raise ValueError(f"--windows must give three 'centre,width' pairs with positive widths, got {text!r}")
    return [(p[0], p[1]) for p in pairs]


def train(args: argparse.Namespace, progress: Any = None) -> tuple[dict[str, Any], Evaluation | None]:
    """Train, export and evaluate (see the module docstring); returns (manifest, evaluation)."""
    import keras
    import tensorflow as tf

    if args.threads:
        with contextlib.suppress(RuntimeError):  # TensorFlow already initialised in this process
            tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    keras.utils.set_random_seed(args.seed)
    windows = _windows(args.windows)
    studies = read_rsna_labels(Path(args.data) / "train.csv")
    train_uids, val_uids = split_studies(studies, args.validation, args.seed)
    if not train_uids:
        raise ValueError("no training study left after the validation split")
    patients: list[str] = []
    x, y = load_slices(
        args.data,
        studies,
        train_uids,
        args.size,
        windows,
        args.max_slices_per_series,
        patients,
        crop_body=args.crop == "body",
    )
    print(
        f"{len(studies)} studies: training on {len(train_uids)} ({len(x)} slices, "
        f"{int(y[:, PE_HEADS.index('pe_present_on_image')].sum())} "
        f"with PE), validating on {len(val_uids)}",
        flush=True,
    )
    steps = args.steps or max(1, args.epochs * math.ceil(len(x) / args.batch_size))
    if args.locate_on_clot_slices:
        y = mask_location_targets(y)
    if args.patient_batches:
        order = patient_batches(patients, args.batch_size, steps, args.seed)
        # Gathered by TensorFlow from tensors: a Python generator feeding the same batches made every
        # step twice as slow on 2 cores (2.6 s against 1.3 s at 128 px, batch 8).
        x_all, y_all = tf.constant(x), tf.constant(y)

        def pick(idx: Any) -> Any:
            rows = tf.gather(y_all, idx)
            return tf.cast(tf.gather(x_all, idx), tf.float32), {h: rows[:, i : i + 1] for i, h in enumerate(PE_HEADS)}

        dataset = tf.data.Dataset.from_tensor_slices(order).map(pick).repeat().prefetch(2)
    else:
        dataset = (
            tf.data.Dataset.from_tensor_slices((x, {h: y[:, i : i + 1] for i, h in enumerate(PE_HEADS)}))
            .shuffle(len(x), seed=args.seed, reshuffle_each_iteration=True)
            .repeat()
            .batch(args.batch_size)
            .map(lambda a, b: (tf.cast(a, tf.float32), b))
            .prefetch(2)
        )
    model = build_model(args.size, dropout=args.dropout, freeze_backbone=args.freeze_backbone)
    if not args.freeze_backbone:  # faster-moving statistics for a backbone trained from scratch
        for layer in _batch_norm_layers(model):
            layer.momentum = 0.9
    # No XLA: compiling the training step of a 23 M-parameter graph costs over a minute on CPU.
    # The exam heads learn from every slice of an exam the same labels, slices with and without clot alike;
    # only pe_present_on_image says which slice shows it. A larger weight keeps that signal from drowning.
    chunk = min(steps, 10)
    loss_weights = {h: float(args.image_loss_weight) if h == "pe_present_on_image" else 1.0 for h in PE_HEADS}
    losses = {
        h: masked_binary_crossentropy if args.locate_on_clot_slices and h in LOCATION_HEADS else "binary_crossentropy"
        for h in PE_HEADS
    }
    rate: Any = args.lr
    if args.lr_schedule == "cosine":  # down to 5 % of --lr at the last step: the small steps at the end settle the fit
        rate = keras.optimizers.schedules.CosineDecay(
            args.lr, decay_steps=max(1, math.ceil(steps / chunk) * chunk), alpha=0.05
        )
    model.compile(
        optimizer=keras.optimizers.Adam(rate),
        loss=losses,
        loss_weights=loss_weights,
        jit_compile=False,
        run_eagerly=args.eager,
    )
    started = time.monotonic()
    done = 0

    class _Report(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            nonlocal done
            done = min(steps, (epoch + 1) * chunk)
            if progress is not None:
                progress(done, steps, f"training {done}/{steps} steps, loss {float((logs or {}).get('loss', 0)):.3f}")

    model.fit(dataset, steps_per_epoch=chunk, epochs=math.ceil(steps / chunk), verbose=2, callbacks=[_Report()])
    if not args.freeze_backbone:
        recalibrate_batch_norm(model, x, max(args.batch_size, 16), seed=args.seed)
    seconds = time.monotonic() - started
    del x, dataset
    if args.patient_batches:
        del x_all, y_all

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    export_pe_onnx(model, out / "model.onnx")
    run = {
        "train_studies": len(train_uids),
        "train_slices": len(y),
        "val_studies": len(val_uids),
        "steps": math.ceil(steps / chunk) * chunk,
        "seconds": seconds,
    }
    return finish(args, run, progress)


def finish(
    args: argparse.Namespace, run: Mapping[str, Any], progress: Any = None
) -> tuple[dict[str, Any], Evaluation | None]:
    """Manifest, exam threshold (demo recipe), validation figures and model card of ``args.out/model.onnx``.

    The part of :func:`train` after the export: it needs the model and the data set only, so a
    change here (how the manifest tells the node to decide) can be applied to weights already
    trained. ``run`` gives the training figures for the card.
    """
    windows = _windows(args.windows)
    studies = read_rsna_labels(Path(args.data) / "train.csv")
    _, val_uids = split_studies(studies, args.validation, args.seed)
    out = Path(args.out)
    onnx_path = out / "model.onnx"
    description = (
        "Pulmonary embolism on CT pulmonary angiography (the RSNA-PE Xception design: Xception, nine heads, three CT "
        "windows)" + ("; DEMO weights trained on synthetic CTPA phantoms, not for clinical use" if args.demo else "")
    )
    postprocessing = {**dict(getattr(args, "postprocessing", None) or {}), "location": args.location}
    manifest = write_manifest(
        out,
        onnx_path,
        size=args.size,
        windows=windows,
        version=args.version,
        demo=args.demo,
        description=description,
        postprocessing=postprocessing,
        crop=args.crop,
    )
    calibration = None
    phantoms = getattr(args, "calibration", None)  # demo recipe only: the exam threshold chosen on fresh phantoms
    if phantoms:
        calibration = calibrate_on_phantoms(out / "model.json", phantoms, progress=progress)
        thresholds = {"pe_present_on_image": calibration.threshold}
        if calibration.central_threshold is not None:
            thresholds["central_pe"] = calibration.central_threshold
        manifest = write_manifest(
            out,
            onnx_path,
            size=args.size,
            windows=windows,
            version=args.version,
            demo=args.demo,
            description=description,
            postprocessing=postprocessing,
            thresholds=thresholds,
            crop=args.crop,
        )
    evaluation = evaluate(out / "model.json", args.data, studies, val_uids) if val_uids else None
    write_model_card(out / "MODEL_CARD.md", manifest, args, run, evaluation, calibration)
    return manifest, evaluation


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    args = _parse(argv)
    try:
        _, evaluation = train(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in evaluation.lines() if evaluation else ["no validation studies"]:
        print(line)
    return 0


# --------------------------------------------------------------------------- demo recipe

#: Parameters of the demo weights (``ainode-train build-demo``); part of the recipe hash.
#: demo-3 against demo-2 (600 steps, whole slice, constant rate, location heads on every slice), on 16 + 16
#: fresh phantom pairs (phantom seeds 2500-2515): 23/32 exams right (15/16 with a clot, 8/16 without) against 18/32
#: (6/16, 12/16). The body crop gives the clot about 1.2x more pixels at 128 px; the cosine decay settles the
#: fit over 2400 steps; location heads taught on clot slices only call the side from the clot.
#: demo-5 = demo-3 with batches drawn across patients (patient_batches False). demo-3's batches each held one
#: patient's slices, so batch norm trained on per-patient statistics and the served model (population
#: statistics) read a low contrast level as a clot: every clot-free phantom of contrast 300-340 HU, fresh
#: or from its own training set, was called positive (0.99), none above 340 HU. On 32 + 32 fresh pairs
#: (phantom seeds 2500-2531) demo-5 calls 32/32 clot-free exams negative (demo-3: 19/32) and 26/32 with a clot
#: positive (demo-3: 29/32); exam AUC 0.95 (demo-3: 0.79).
DEMO_PARAMS: dict[str, Any] = {
    "studies": 160,
    "slices": 60,
    "phantom_size": 256,
    "size": 128,
    "crop": "body",
    "steps": 2400,
    "batch_size": 8,
    "lr": 5e-4,
    "lr_schedule": "cosine",
    "locate_on_clot_slices": True,
    "max_slices_per_series": 12,
    "validation": 0.1,
    "seed": 1,
    "version": "demo-5",
    "negative_margin": 3,
    "negative_stride": 6,
    "image_loss_weight": 5.0,
    "patient_batches": False,
    "calibration_pairs": 12,
    "location": "mirror",
}
QUICK_PARAMS: dict[str, Any] = {
    **DEMO_PARAMS,
    "studies": 3,
    "slices": 12,
    "phantom_size": 96,
    "size": 71,
    "steps": 1,
    "batch_size": 2,
    "max_slices_per_series": 4,
    "validation": 0.34,
    "calibration_pairs": 1,
}
_DEMO_SIDES: tuple[str, ...] = ("right", "left", "right", "central")
DEMO_GENERATORS = ("training.phantoms.ct",)
"""Phantom generators whose ``GENERATOR_VERSION`` is part of the recipe hash (``training.demo``)."""


def demo_parameters(quick: bool) -> dict[str, Any]:
    """Everything the demo run depends on (:data:`DEMO_PARAMS` or :data:`QUICK_PARAMS` and the fixed choices of
    :func:`build_demo`): the recipe's parameters, hashed by ``training.demo``."""
    return {
        **(QUICK_PARAMS if quick else DEMO_PARAMS),
        "name": MODEL_NAME,
        "sides": list(_DEMO_SIDES),
        "freeze_backbone": False,
        "threads": 2,
        "eager": bool(quick),
    }


class _Progress(Protocol):
    def step(self, done: int, total: int, message: str) -> None: ...


def write_phantom_dataset(folder: Path, params: Mapping[str, Any], progress: _Progress | None = None) -> Path:
    """CTPA phantoms (``training.phantoms.ct.ctpa_phantom``) written in the RSNA-PE layout; returns ``folder``.

    Studies come in pairs drawn from the same seed, one with an embolus (right, left, right, central
    in turn) and one without: the two differ only inside the clot (``ctpa_phantom``'s guarantee), so
    the model cannot tell them apart by anatomy, contrast or noise and has to learn the filling
    defect itself. Every third positive one is chronic, every fourth has an RV/LV ratio of 1.2.

    With ``params["negative_margin"]`` = *m* > 0 the partner without a clot is written only from *m*
    slices above to *m* below its twin's clot, plus every ``params["negative_stride"]``-th slice
    elsewhere (when > 0). Otherwise the trainer's per-series sampling (all positive slices, evenly
    spaced negatives) shows the model positive slices at the level of the pulmonary arteries and
    negatives mostly elsewhere, and it learns the level instead of the clot.

    Measured (160 studies, 600 steps, 128 px; exam PE probability on 12 + 12 fresh whole-series
    phantoms, :func:`calibrate_on_phantoms`):

    - margin 3, 10 slices per series: validation slice AUC 0.93, but with a clot 0.37–0.84 and
      without 0.35–0.83 (16/24 right at the best threshold); a clot-free phantom had its whole
      pulmonary-artery level (12 slices) flagged, levels the training negatives barely covered;
    - margin 3 and every 4th slice, 24 slices per series (17 % positive slices): collapsed to one
      score (0.48) on every pulmonary-artery slice, with a clot or not; margin 12 with 16 slices
      per series collapsed the same way;
    - margin 3 and every 6th slice, 12 per series (the recipe): validation slice AUC 0.90, exam
      17/24 right (with a clot 0.59–0.77, without 0.58–0.73); flagged slices now lie on the clot
      (truth 30–37, flagged 32–38) and three clot-free test phantoms got one, none and none, but the
      exam scores still overlap: the model does not yet tell a clot-free CTPA reliably.

    With ``params["twin_levels"]`` the positive is cut to the same levels as its partner, so every
    clot slice has its clot-free twin in the data (else half of them lack it, and can be told apart by
    anatomy and noise alone). Tried as demo-4 (320 studies, 28 slices per series, 2400 steps, 18 % of
    slices positive): it collapsed as above, every exam scored 0.27–0.41; on 16 + 16 fresh pairs 20/32
    right (15/16 with a clot, 5/16 without; exam AUC 0.62, demo-3: 0.77), so the recipe keeps it off.
    """
    import shutil

    from training.phantoms.ct import ctpa_phantom

    if (folder / "train").exists():  # new SOP UIDs on every write: stale files would be unlabelled slices
        shutil.rmtree(folder / "train")
    folder.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    total = int(params["studies"])
    margin = int(params.get("negative_margin", 0))
    stride = int(params.get("negative_stride", 0))
    twins = bool(params.get("twin_levels", False))
    clot_levels: list[int] = []
    for i in range(total):
        pair = i // 2
        side = _DEMO_SIDES[pair % len(_DEMO_SIDES)] if i % 2 == 0 else None
        phantom = ctpa_phantom(
            int(params["seed"]) * 1000 + pair,
            slices=int(params["slices"]),
            size=int(params["phantom_size"]),
            embolus=side,  # type: ignore[arg-type]
            chronic=side is not None and pair % 3 == 2,
            rv_lv_ratio=1.2 if pair % 4 == 3 else 0.8,
        )
        study_uid = f"2.25.{int(hashlib.sha256(f'pe-demo-{i}'.encode()).hexdigest()[:30], 16)}"
        series_uid = f"{study_uid}.1"
        series_dir = folder / "train" / study_uid / series_uid
        phantom.write_series(series_dir, study_uid=study_uid, series_uid=series_uid, file_names="sop_uid")
        keep = set(range(phantom.slices))
        if side is not None:
            clot_levels = list(phantom.truth["pe_slices"])
        if margin and clot_levels and (side is None or twins):
            # The partner without a clot keeps the slab around its twin's clot: hard negatives,
            # pulmonary-artery levels identical to the positive slices except for the filling defect;
            # and every stride-th slice elsewhere, so that every other level is seen without a clot too.
            # With twin_levels the positive keeps the same levels: every slice has its clot-free twin.
            slab = range(max(0, min(clot_levels) - margin), min(phantom.slices, max(clot_levels) + margin + 1))
            keep = set(slab) | (set(range(0, phantom.slices, stride)) if stride else set())
            for k, sop in enumerate(phantom.truth["sop_uids"]):
                if k not in keep:
                    (series_dir / f"{sop}.dcm").unlink()
        exam = phantom.truth["exam_labels"]
        for k, sop in enumerate(phantom.truth["sop_uids"]):
            if k not in keep:
                continue
            rows.append(
                {
                    "StudyInstanceUID": study_uid,
                    "SeriesInstanceUID": series_uid,
                    "SOPInstanceUID": sop,
                    "pe_present_on_image": int(phantom.truth["pe_present_on_image"][k]),
                    **exam,
                }
            )
        if progress is not None:
            progress.step(i + 1, total, f"CTPA phantom {i + 1}/{total} ({side or 'no'} embolus)")
    columns = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "pe_present_on_image", *PE_EXAM_LABELS]
    with open(folder / "train.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return folder


@demo_recipe(MODEL_NAME, parameters=demo_parameters, generators=DEMO_GENERATORS)
def build_demo(out_dir: Path, work_dir: Path, progress: _Progress, quick: bool) -> None:
    """Demo recipe ``ct-pe``: phantoms in RSNA-PE layout → :func:`train` → ``out_dir/ct-pe``.

    The same training code as real data, at a small input size (128; the manifest records it)
    and with the backbone trained too: the source design freezes an ImageNet-trained Xception, and no
    ImageNet weights are available here, so a frozen random backbone would learn nothing.
    The exam threshold (that of ``pe_present_on_image``) is then chosen on fresh whole-series
    phantoms (:func:`calibrate_on_phantoms`) and written into the manifest and the model card.
    ``training.demo`` caches the result by recipe hash (:func:`demo_parameters`, :data:`DEMO_GENERATORS`).
    """
    params = demo_parameters(quick)
    target = Path(out_dir) / MODEL_NAME
    data = write_phantom_dataset(Path(work_dir) / "ct-pe-rsna", params, progress)
    args = _parse(
        [
            "--data",
            str(data),
            "--out",
            str(target),
            "--size",
            str(params["size"]),
            "--steps",
            str(params["steps"]),
            "--batch-size",
            str(params["batch_size"]),
            "--lr",
            str(params["lr"]),
            "--validation",
            str(params["validation"]),
            "--image-loss-weight",
            str(params.get("image_loss_weight", 1.0)),
            *(["--patient-batches"] if params.get("patient_batches") else []),
            "--max-slices-per-series",
            str(params["max_slices_per_series"]),
            "--seed",
            str(params["seed"]),
            "--version",
            str(params["version"]),
            "--freeze-backbone" if params["freeze_backbone"] else "--no-freeze-backbone",
            "--demo",
            "--threads",
            str(params["threads"]),
            "--crop",
            str(params.get("crop", "none")),
            "--lr-schedule",
            str(params.get("lr_schedule", "constant")),
            *(["--locate-on-clot-slices"] if params.get("locate_on_clot_slices") else []),
            "--location",
            str(params.get("location", "heads")),
            *(["--eager"] if params["eager"] else []),
        ]
    )
    args.calibration = params
    train(args, progress=lambda done, total, message: progress.step(done, total, message))
