"""Pulmonary embolism on CT pulmonary angiography (the RSNA-PE Xception design), with the RSNA label-consistency rules.

Input: one axial CT series (CT Image Storage, PS3.3 A.3) planned by
:func:`models.preprocess.ct_series.plan_series` and read in Hounsfield units a few slices at a
time by :func:`~models.preprocess.ct_series.iter_hu_batches`, so memory is bounded by one batch
whatever the series length. Each slice becomes three channels, one per CT window of the
manifest's ``input.preprocessing`` (``{"kind": "ct_windows", "windows": [[centre, width], ...]}``,
PS3.3 C.11.2.1.2 linear window), each clipped to 0..1 and area-resized to the manifest's size;
with ``"crop": "body"`` each slice is first cut to the square around the patient
(:func:`crop_to_body`; default ``"none"``, the whole slice, as in the source design).
The defaults follow the common RSNA-PE practice:

- ``[100, 700]`` "PE window" (−250..450 HU): contrast-filled pulmonary arteries (250–500 HU)
  bright but not clipped, an embolus (about 20–90 HU) mid-grey, so the filling defect keeps
  contrast against the vessel around it;
- ``[40, 400]`` mediastinal (−160..240 HU): heart chambers, vessel walls, clot against blood
  at the contrast of a mediastinal reading (useful for the RV/LV ratio);
- ``[-600, 1500]`` lung (−1350..150 HU): lung parenchyma and vessels' course into the lobes
  (which side, infarcts).

Model (the source design: Xception trained on the RSNA Pulmonary Embolism Detection
Challenge 2020 data; ``training.pe``): Xception → GAP → dropout → Dense 1024 → 256 → 64 → nine
sigmoid heads; its ONNX graph has one output (N, 9), the heads in :data:`PE_HEADS` order.

Aggregation over the *n* slices of the exam (``p_i`` = ``pe_present_on_image`` of slice *i*):

- exam PE probability ``p_pe`` = mean of the ``top_k`` largest ``p_i`` (manifest
  ``postprocessing.top_k``, default 3): one stray slice among 300 does not make an exam
  positive, an embolus seen on a few slices does;
- ``indeterminate`` = plain mean of its head over all slices (a property of the whole exam:
  contrast, motion);
- the type, location and RV/LV heads = their mean weighted by ``p_i`` (these heads are
  trained on every slice with the exam's labels, but only slices that show clot carry
  evidence of which side or how old); a plain mean when all ``p_i`` are 0;
- ``negative_exam_for_pe`` = (1 − ``p_pe``) × (1 − ``indeterminate``): negative, indeterminate
  and positive are mutually exclusive outcomes of an RSNA exam.

Decisions: each label's probability against its manifest threshold, then the RSNA rules
(:func:`apply_consistency`). The exam is positive when ``p_pe`` reaches the threshold of
``pe_present_on_image`` (then at least one slice does, since the maximum is ≥ the top-k mean).
A positive exam: not negative, not indeterminate; exactly one of ``rv_lv_ratio_gte_1`` /
``rv_lv_ratio_lt_1``; at least one of left/right/central; at most one of ``chronic_pe`` /
``acute_and_chronic_pe`` (neither = acute). A negative exam: exactly one of
``negative_exam_for_pe`` / ``indeterminate``; no positive slice; no type, location or RV/LV
label. Where a rule forces a choice, the label with the higher probability wins; each change is
recorded in :attr:`PeExamResult.corrections`.

Side by mirror probes (manifest ``postprocessing.location``: ``"heads"``, the default, or
``"mirror"``): the source design reads left and right from its location heads, which see the slice only
through global average pooling. With ``"mirror"`` the side comes from the slice head instead,
on the exam's key slices: each is scored again twice, once with the patient's right half
replaced by the mirror image of the left half about the body's midline, once the other way
round. A clot on the right vanishes from the first probe and stays in the second, so
``rightsided_pe`` = the fall of ``p_i`` when the right half is replaced, as a fraction of
``p_i`` (0..1), averaged over the key slices weighted by ``p_i``; ``leftsided_pe`` likewise
(occlusion sensitivity, Zeiler & Fergus 2014, with a mirrored half as the occluder so the
probe still looks like a chest). Slices reach the model in the usual display orientation
whatever their storage (:func:`to_canonical`), so the low columns are the patient's right;
``central_pe`` stays with its head. Two extra forward passes per key
slice, at most ten per exam.

Speed: with ``postprocessing.slice_stride`` *s* > 1 the network runs on every *s*-th slice only
and the others are interpolated (see :meth:`PeModel.score_slices`); the default is 1.

Output: :class:`core.findings.PeExamResult` with ``key_slices``: up to five positive slices of
highest probability, at least ``max(2, n // 40)`` slices apart so they show different parts of
the clot burden.

Coverage (:meth:`PeModel.analyse` only): the lung area of every slice read is measured on the
pixels already in memory, and a series that does not show the lungs over at least 100 mm, or
whose flagged slices lie outside them, is indeterminate with the reasons
(:func:`models.plausibility.check_pe_coverage`, :func:`not_assessable`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from os import PathLike
from typing import Any

import numpy as np

from core.findings import PE_EXAM_LABELS, PE_HEADS, AlgorithmInfo, PeExamResult
from models.backends.onnx_backend import OnnxModel
from models.errors import ModelError
from models.manifest import Manifest
from models.plausibility import check_pe_coverage, lung_area_cm2, superior_mm
from models.preprocess.ct_series import SeriesPlan, iter_hu_batches

__all__ = [
    "DEFAULT_THRESHOLD",
    "DEFAULT_TOP_K",
    "MAX_KEY_SLICES",
    "PeModel",
    "aggregate_exam",
    "apply_consistency",
    "body_box",
    "crop_to_body",
    "exam_pe_probability",
    "mirror_halves",
    "not_assessable",
    "select_key_slices",
    "side_evidence",
    "to_canonical",
    "window_slices",
]

DEFAULT_THRESHOLD = 0.5
DEFAULT_TOP_K = 3
MAX_KEY_SLICES = 5
_IMAGE = "pe_present_on_image"
_RV_LV = ("rv_lv_ratio_gte_1", "rv_lv_ratio_lt_1")
_SIDES = ("leftsided_pe", "rightsided_pe", "central_pe")
_CHRONIC = ("chronic_pe", "acute_and_chronic_pe")
_PE_ONLY = _RV_LV + _SIDES + _CHRONIC  # labels a negative exam cannot have


BODY_HU = -500.0
"""Pixels above this (HU) are the patient (soft tissue, bone, contrast; lung parenchyma is below)."""


def _erode(mask: np.ndarray, k: int) -> np.ndarray:
    """Binary erosion by a (2k+1)² square, from an integral image (no SciPy needed)."""
    side = 2 * k + 1
    padded = np.pad(mask.astype(np.int32), k)
    integral = np.zeros((padded.shape[0] + 1, padded.shape[1] + 1), dtype=np.int64)
    integral[1:, 1:] = padded.cumsum(axis=0).cumsum(axis=1)
    rows, cols = mask.shape
    window = (
        integral[side : side + rows, side : side + cols]
        - integral[:rows, side : side + cols]
        - integral[side : side + rows, :cols]
        + integral[:rows, :cols]
    )
    return window == side * side


def body_box(hu: np.ndarray, *, threshold: float = BODY_HU, margin: float = 0.04) -> tuple[int, int, int]:
    """The square around the patient on one axial slice: ``(row, column, side)`` of its top-left corner.

    The body is every pixel above ``threshold`` HU that survives an erosion by a square of about
    2 % of the image (grown back afterwards), so a thin table top, a cable or a speck of noise does
    not stretch the box. The square is the larger side of the body's bounding box plus ``margin``
    on each side, centred on it; it may reach beyond the image (padded with air when cropped). A
    slice with no body gives the whole image, squared.
    """
    if hu.ndim != 2:
        raise ValueError(f"expected one slice of shape (rows, columns), got {hu.shape}")
    rows, cols = hu.shape
    k = max(1, round(min(rows, cols) / 100))
    body = _erode(hu > threshold, k)
    in_rows, in_cols = np.flatnonzero(body.any(axis=1)), np.flatnonzero(body.any(axis=0))
    if in_rows.size == 0:
        side = max(rows, cols)
        return (rows - side) // 2, (cols - side) // 2, side
    r0, r1 = max(0, int(in_rows[0]) - k), min(rows, int(in_rows[-1]) + 1 + k)
    c0, c1 = max(0, int(in_cols[0]) - k), min(cols, int(in_cols[-1]) + 1 + k)
    extent = max(r1 - r0, c1 - c0)
    side = max(8, int(round(extent * (1.0 + 2.0 * margin))))
    return (r0 + r1 - side) // 2, (c0 + c1 - side) // 2, side


def crop_to_body(hu: np.ndarray, air: float = -1000.0) -> np.ndarray:
    """One slice cut to its :func:`body_box`, padded with ``air`` HU where the square leaves the image."""
    row, col, side = body_box(hu)
    out = np.full((side, side), air, dtype=np.float32)
    r0, c0 = max(row, 0), max(col, 0)
    r1, c1 = min(row + side, hu.shape[0]), min(col + side, hu.shape[1])
    out[r0 - row : r1 - row, c0 - col : c1 - col] = hu[r0:r1, c0:c1]
    return out


def window_slices(
    hu: np.ndarray, windows: Sequence[Sequence[float]], height: int, width: int, crop_body: bool = False
) -> np.ndarray:
    """CT slices in HU → model input (N, height, width, len(windows)), each window mapped to 0..1.

    A window (centre *c*, width *w*) maps ``c − w/2`` → 0 and ``c + w/2`` → 1 linearly, values
    outside clipped (PS3.3 C.11.2.1.2, without the DICOM −0.5 offsets: the model's own convention).
    Resizing is area-average (box) when shrinking, bilinear when enlarging, per channel.
    With ``crop_body`` each slice is first cut to the square around the patient
    (:func:`crop_to_body`), so the patient fills the input whatever the field of view: a
    slim patient reconstructed at 400 mm no longer spends half the input's pixels on air.
    """
    if hu.ndim != 3:
        raise ValueError(f"expected slices of shape (N, rows, columns), got {hu.shape}")
    for _centre, span in windows:
        if span <= 0:
            raise ValueError(f"window width must be positive, got {span}")
    if not crop_body:
        return _window_resized(hu, windows, height, width)
    out = np.empty((hu.shape[0], height, width, len(windows)), dtype=np.float32)
    for n in range(hu.shape[0]):
        out[n] = _window_resized(crop_to_body(np.asarray(hu[n], dtype=np.float32))[None], windows, height, width)[0]
    return out


def _window_resized(hu: np.ndarray, windows: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    from PIL import Image

    out = np.empty((hu.shape[0], height, width, len(windows)), dtype=np.float32)
    same = hu.shape[1:] == (height, width)
    shrinking = hu.shape[1] >= height and hu.shape[2] >= width
    resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    for c, (centre, span) in enumerate(windows):
        unit = np.clip((hu - (float(centre) - float(span) / 2.0)) / float(span), 0.0, 1.0).astype(np.float32)
        for n in range(hu.shape[0]):
            if same:
                out[n, :, :, c] = unit[n]
            else:
                img = Image.fromarray(unit[n], mode="F").resize((width, height), resample=resample)
                out[n, :, :, c] = np.asarray(img, dtype=np.float32)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def exam_pe_probability(slice_probabilities: Sequence[float] | np.ndarray, top_k: int = DEFAULT_TOP_K) -> float:
    """The exam's PE probability: the mean of the ``top_k`` largest slice probabilities (all when fewer)."""
    probs = np.asarray(slice_probabilities, dtype=np.float64).ravel()
    if probs.size == 0:
        raise ValueError("an exam needs at least one slice")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    return float(np.mean(np.sort(probs)[-min(top_k, probs.size) :]))


def aggregate_exam(scores: np.ndarray, top_k: int = DEFAULT_TOP_K) -> tuple[np.ndarray, dict[str, float]]:
    """Per-slice PE probabilities and exam-level probabilities from the (n, 9) head outputs.

    See the module docstring for the rules. Returns ``(slice_probabilities, exam_probabilities)``
    with the exam probabilities keyed by :data:`PE_EXAM_LABELS`.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] != len(PE_HEADS) or scores.shape[0] == 0:
        raise ValueError(f"expected scores of shape (n ≥ 1, {len(PE_HEADS)}), got {scores.shape}")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    column = {name: scores[:, i] for i, name in enumerate(PE_HEADS)}
    slices = column[_IMAGE]
    p_pe = exam_pe_probability(slices, top_k)
    weights = slices if float(slices.sum()) > 1e-9 else np.ones_like(slices)
    exam: dict[str, float] = {}
    indeterminate = float(np.mean(column["indeterminate"]))
    for label in PE_EXAM_LABELS:
        if label == "negative_exam_for_pe":
            exam[label] = (1.0 - p_pe) * (1.0 - indeterminate)
        elif label == "indeterminate":
            exam[label] = indeterminate
        else:
            exam[label] = float(np.average(column[label], weights=weights))
    return slices.astype(np.float64), exam


def _pick(labels: dict[str, bool], probs: Mapping[str, float], names: Sequence[str]) -> str:
    """The name among ``names`` with the highest probability (first in ``names`` on a tie)."""
    return max(names, key=lambda name: (probs[name], -names.index(name)))


def apply_consistency(
    slice_probabilities: Sequence[float],
    exam_probabilities: Mapping[str, float],
    thresholds: Mapping[str, float],
    top_k: int = DEFAULT_TOP_K,
) -> tuple[dict[str, bool], list[int], list[str]]:
    """Decide every label by its threshold, then enforce the RSNA label-consistency rules.

    Parameters
    ----------
    slice_probabilities : sequence of float
        ``pe_present_on_image`` per slice, plan order.
    exam_probabilities : mapping
        Probability of each of :data:`PE_EXAM_LABELS`.
    thresholds : mapping
        Threshold per label (:data:`PE_EXAM_LABELS` and ``pe_present_on_image``); absent → 0.5.
    top_k : int
        Slices averaged for the exam's PE probability (see the module docstring).

    Returns
    -------
    tuple
        ``(exam_labels, positive_slices, corrections)``: decisions for every exam label, the
        positive slice indices (ascending) and, in words, each change the rules made.
    """

    def threshold(name: str) -> float:
        value = thresholds.get(name)
        return DEFAULT_THRESHOLD if value is None else float(value)

    probs = np.asarray(slice_probabilities, dtype=np.float64)
    if probs.size == 0:
        raise ValueError("an exam needs at least one slice")
    missing = [label for label in PE_EXAM_LABELS if label not in exam_probabilities]
    if missing:
        raise ValueError(f"exam probabilities lack {', '.join(missing)}")
    p = {label: float(exam_probabilities[label]) for label in PE_EXAM_LABELS}
    labels = {label: p[label] >= threshold(label) for label in PE_EXAM_LABELS}
    positive = [int(i) for i in np.flatnonzero(probs >= threshold(_IMAGE))]
    corrections: list[str] = []

    def set_label(name: str, value: bool, why: str) -> None:
        if labels[name] != value:
            labels[name] = value
            corrections.append(f"{name} set {'present' if value else 'absent'} (p={p[name]:.3f}): {why}")

    k = min(max(1, top_k), probs.size)
    p_pe = exam_pe_probability(probs, k)
    if p_pe >= threshold(_IMAGE):
        why = f"the exam is positive (PE probability {p_pe:.3f} over its {k} most likely slices)"
        set_label("negative_exam_for_pe", False, why)
        set_label("indeterminate", False, why)
        if labels[_RV_LV[0]] == labels[_RV_LV[1]]:
            keep = _pick(labels, p, _RV_LV)
            for name in _RV_LV:
                set_label(name, name == keep, "a positive exam has exactly one RV/LV ratio label, the more likely kept")
        if not any(labels[name] for name in _SIDES):
            set_label(
                _pick(labels, p, _SIDES), True, "a positive exam has at least one location, the most likely taken"
            )
        if all(labels[name] for name in _CHRONIC):
            drop = _CHRONIC[1] if _pick(labels, p, _CHRONIC) == _CHRONIC[0] else _CHRONIC[0]
            set_label(drop, False, "chronic and acute-and-chronic exclude each other, the more likely kept")
    else:
        why = f"the exam is negative (PE probability {p_pe:.3f} over its {k} most likely slices)"
        if positive:
            corrections.append(f"{len(positive)} slice(s) at or above the slice threshold cleared: {why}")
            positive = []
        for name in _PE_ONLY:
            set_label(name, False, why)
        outcome = ("negative_exam_for_pe", "indeterminate")
        if labels[outcome[0]] == labels[outcome[1]]:
            keep = _pick(labels, p, outcome)
            for name in outcome:
                set_label(
                    name,
                    name == keep,
                    "a negative exam is either negative for PE or indeterminate, the more likely kept",
                )
    return labels, positive, corrections


def not_assessable(result: PeExamResult, reasons: Sequence[str]) -> PeExamResult:
    """The exam as indeterminate because the series cannot be read for PE (``reasons``, in words).

    The probabilities stay as the model gave them; the decisions become: indeterminate, not
    negative, no type, side or RV/LV label, no positive or key slice (nothing a radiologist could
    read as a finding).
    """
    labels = {label: label == "indeterminate" for label in result.exam_labels}
    return dataclasses.replace(
        result, exam_labels=labels, positive_slices=[], key_slices=[], indeterminate_reasons=list(reasons)
    )


def to_canonical(hu: np.ndarray, orientation: Sequence[float]) -> np.ndarray:
    """Axial slices (n, rows, columns) turned to the usual display: the patient's right at column 0, anterior at row 0.

    ImageOrientationPatient's first three values point along increasing column index, the last
    three along increasing row index, in LPS patient coordinates (+x the patient's left, +y
    posterior). A supine scan stored as usual, (1, 0, 0, 0, 1, 0), is returned as it is; a prone
    one, (−1, 0, 0, 0, −1, 0), is turned 180°; a scanner storing columns from left to right is
    mirrored back; rows running left–right are transposed first. Models learnt the usual view, and
    the mirror probes' "right half" is then always the low columns.
    """
    if hu.ndim != 3:
        raise ValueError(f"expected slices of shape (N, rows, columns), got {hu.shape}")
    row, col = [float(v) for v in orientation[:3]], [float(v) for v in orientation[3:6]]
    if abs(row[0]) < abs(row[1]):  # columns run front to back: swap the axes, and the roles of the cosines
        hu, row, col = np.swapaxes(hu, 1, 2), col, row
    if row[0] < 0:
        hu = hu[:, :, ::-1]
    if col[1] < 0:
        hu = hu[:, ::-1, :]
    return hu


def mirror_halves(hu: np.ndarray, air: float = -1000.0) -> tuple[np.ndarray, np.ndarray]:
    """One slice twice: its low-column half replaced by the mirror image of its high-column half, and vice versa.

    The mirror axis is the body's midline (the centre column of :func:`body_box`), so each probe is
    a plausible, symmetric chest; columns whose mirror falls outside the image become ``air``.
    Returns ``(low_replaced, high_replaced)``.
    """
    if hu.ndim != 2:
        raise ValueError(f"expected one slice of shape (rows, columns), got {hu.shape}")
    _, col, side = body_box(hu)
    mid = col + side / 2.0
    columns = np.arange(hu.shape[1])
    source = np.rint(2.0 * mid - 1.0 - columns).astype(np.int64)
    inside = (source >= 0) & (source < hu.shape[1])
    mirrored = np.where(inside[None, :], hu[:, np.clip(source, 0, hu.shape[1] - 1)], np.float32(air)).astype(hu.dtype)
    low = columns[None, :] < mid
    return np.where(low, mirrored, hu), np.where(low, hu, mirrored)


def side_evidence(
    p: Sequence[float] | np.ndarray,
    p_without_right: Sequence[float] | np.ndarray,
    p_without_left: Sequence[float] | np.ndarray,
) -> tuple[float, float]:
    """``(rightsided, leftsided)`` from mirror probes of the key slices (see the module docstring).

    Per slice, the fall of its PE probability when that side's half is replaced, as a fraction
    of the probability (clipped to 0..1); over the slices, the mean weighted by the probability.
    """
    p0 = np.asarray(p, dtype=np.float64)
    if p0.size == 0 or p0.shape != np.shape(p_without_right) or p0.shape != np.shape(p_without_left):
        raise ValueError("side_evidence needs one probability of each kind per key slice")
    safe = np.maximum(p0, 1e-6)
    right = np.clip(1.0 - np.asarray(p_without_right, dtype=np.float64) / safe, 0.0, 1.0)
    left = np.clip(1.0 - np.asarray(p_without_left, dtype=np.float64) / safe, 0.0, 1.0)
    weights = p0 if float(p0.sum()) > 1e-9 else np.ones_like(p0)
    return float(np.average(right, weights=weights)), float(np.average(left, weights=weights))


def select_key_slices(
    slice_probabilities: Sequence[float], positive: Sequence[int], max_count: int = MAX_KEY_SLICES
) -> list[int]:
    """Up to ``max_count`` positive slices of highest probability, spread along the series.

    Slices are taken in decreasing probability, skipping any closer than ``max(2, n // 40)``
    slices to one already taken (*n* = series length). Returned in plan order.
    """
    probs = np.asarray(slice_probabilities, dtype=np.float64)
    gap = max(2, probs.size // 40)
    chosen: list[int] = []
    for index in sorted(positive, key=lambda i: (-probs[i], i)):
        if len(chosen) >= max_count:
            break
        if all(abs(index - c) >= gap for c in chosen):
            chosen.append(int(index))
    return sorted(chosen)


class PeModel:
    """The RSNA-PE Xception design's PE model over an ONNX session (see the module docstring)."""

    def __init__(self, model: Any) -> None:
        manifest: Manifest = model.manifest
        spec = manifest.input
        if spec.layout != "NHWC":
            raise ModelError(f"model {manifest.name!r}: the PE model takes NHWC input, the manifest says {spec.layout}")
        prep = spec.preprocessing
        if prep.get("kind") != "ct_windows":
            raise ModelError(
                f"model {manifest.name!r}: input.preprocessing.kind must be 'ct_windows', got {prep.get('kind')!r}"
            )
        windows = prep.get("windows")
        if (
            not isinstance(windows, list)
            or len(windows) != spec.channels
            or not all(isinstance(w, list) and len(w) == 2 and float(w[1]) > 0 for w in windows)
        ):
            raise ModelError(
                f"model {manifest.name!r}: input.preprocessing.windows must list {spec.channels} [centre, width] "
                f"pairs with positive widths, got {windows!r}"
            )
        keys = [label.key for label in manifest.labels]
        if keys != list(PE_HEADS):
            raise ModelError(
                f"model {manifest.name!r}: labels must be the nine PE heads in order {list(PE_HEADS)}, got {keys}"
            )
        crop = prep.get("crop", "none")
        if crop not in ("none", "body"):
            raise ModelError(
                f"model {manifest.name!r}: input.preprocessing.crop must be 'none' or 'body', got {crop!r}"
            )
        self._model = model
        self.manifest = manifest
        self.windows: list[tuple[float, float]] = [(float(c), float(w)) for c, w in windows]
        self.crop_body = crop == "body"
        self.top_k = int(manifest.postprocessing.get("top_k", DEFAULT_TOP_K))
        self.slice_stride = int(manifest.postprocessing.get("slice_stride", 1))
        if self.slice_stride < 1:
            raise ModelError(
                f"model {manifest.name!r}: postprocessing.slice_stride must be at least 1, got {self.slice_stride}"
            )
        self.location = str(manifest.postprocessing.get("location", "heads"))
        if self.location not in ("heads", "mirror"):
            raise ModelError(
                f"model {manifest.name!r}: postprocessing.location must be 'heads' or 'mirror', got {self.location!r}"
            )
        self.thresholds: dict[str, float] = {
            label.key: DEFAULT_THRESHOLD if label.threshold is None else float(label.threshold)
            for label in manifest.labels
        }
        # negative_exam_for_pe is derived, not a head: its threshold comes from postprocessing.
        self.thresholds["negative_exam_for_pe"] = float(
            manifest.postprocessing.get("negative_threshold", DEFAULT_THRESHOLD)
        )

    @classmethod
    def from_manifest(cls, manifest: Manifest, threads: int = 1) -> PeModel:
        """Create the model from a verified manifest (``ModelRegistry.require``)."""
        return cls(OnnxModel(manifest, threads=threads))

    @property
    def algorithm(self) -> AlgorithmInfo:
        """Identification of the model for result objects."""
        m = self.manifest
        return AlgorithmInfo(
            name=m.name, version=m.version, manufacturer=m.manufacturer, weights_sha256=m.sha256, demo=m.demo
        )

    def score_slices(
        self, plan: SeriesPlan, paths_by_uid: Mapping[str, str | PathLike[str]], batch_size: int = 8
    ) -> np.ndarray:
        """The nine head outputs of every slice, (n, 9) in plan order, read ``batch_size`` slices at a time.

        With ``postprocessing.slice_stride`` *s* > 1 the model runs on every *s*-th slice (and the
        last) only, and the slices between get scores interpolated linearly along the series: an
        embolus spans several thin slices, and the forward pass is the cost of a 300-slice CTPA.
        """
        return self.score_slices_and_lungs(plan, paths_by_uid, batch_size)[0]

    def score_slices_and_lungs(
        self, plan: SeriesPlan, paths_by_uid: Mapping[str, str | PathLike[str]], batch_size: int = 8
    ) -> tuple[np.ndarray, dict[int, float]]:
        """:meth:`score_slices`, and the lung area in cm² (:func:`models.plausibility.lung_area_cm2`) of each
        slice read, by plan index: measured on the pixels already in memory, for the coverage check."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        spec = self.manifest.input
        n = len(plan)
        run = sorted(set(range(0, n, self.slice_stride)) | {n - 1})
        sub = (
            plan
            if len(run) == n
            else dataclasses.replace(
                plan,
                sop_instance_uids=tuple(plan.sop_instance_uids[i] for i in run),
                positions=tuple(plan.positions[i] for i in run),
            )
        )
        scored = np.empty((len(run), len(PE_HEADS)), dtype=np.float32)
        lungs: dict[int, float] = {}
        for indices, hu in iter_hu_batches(sub, paths_by_uid, batch_size=batch_size):
            for index, image in zip(indices, hu, strict=False):
                lungs[run[index]] = lung_area_cm2(image, plan.pixel_spacing)
            batch = window_slices(
                to_canonical(hu, plan.orientation), self.windows, spec.height, spec.width, self.crop_body
            )
            del hu
            out = self._model.run(batch).reshape(len(indices), -1)
            if out.shape[1] != len(PE_HEADS):
                raise ModelError(
                    f"model {self.manifest.name!r} returned {out.shape[1]} scores per slice, expected {len(PE_HEADS)}"
                )
            scored[indices[0] : indices[-1] + 1] = out
        if len(run) == n:
            return scored, lungs
        interpolated = np.stack([np.interp(np.arange(n), run, scored[:, h]) for h in range(len(PE_HEADS))], axis=1)
        return interpolated.astype(np.float32), lungs

    def score_volume(self, hu: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """The nine head outputs, (n, 9), of a volume already in memory: ``hu`` (n, rows, columns) in HU.

        For phantoms and evaluation; a stored series goes through :meth:`score_slices`, which
        reads it a batch at a time and honours ``slice_stride``.
        """
        hu = np.asarray(hu)
        if hu.ndim != 3 or hu.shape[0] == 0:
            raise ValueError(f"expected a volume of shape (n ≥ 1, rows, columns), got {hu.shape}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        spec = self.manifest.input
        out = [
            self._model.run(
                window_slices(hu[i : i + batch_size], self.windows, spec.height, spec.width, self.crop_body)
            ).reshape(-1, len(PE_HEADS))
            for i in range(0, hu.shape[0], batch_size)
        ]
        return np.concatenate(out).astype(np.float32, copy=False)

    def result_from_volume(
        self, hu: np.ndarray, slice_uids: list[str] | None = None, scores: np.ndarray | None = None
    ) -> PeExamResult:
        """:meth:`analyse` for a volume already in memory (phantoms, evaluation), in the usual display orientation;
        ``scores``: its :meth:`score_volume` output when the caller has it already."""
        hu = np.asarray(hu)
        scores = self.score_volume(hu) if scores is None else scores
        probes = self.probe_slices(scores)
        sides = self.mirror_sides(hu[probes], scores[probes, PE_HEADS.index(_IMAGE)]) if probes else None
        return self.result_from_scores(slice_uids or [str(i) for i in range(len(hu))], scores, sides)

    def analyse(
        self,
        plan: SeriesPlan,
        paths_by_uid: Mapping[str, str | PathLike[str]],
        batch_size: int = 8,
        *,
        check_coverage: bool = True,
    ) -> PeExamResult:
        """Score every slice, aggregate over the exam and apply the RSNA consistency rules.

        Parameters
        ----------
        plan : SeriesPlan
            The series' slices in order along the patient axis.
        paths_by_uid : mapping of SOPInstanceUID to path
            Where each planned slice is stored.
        batch_size : int
            Slices decoded and run together (memory ≈ batch × rows × columns × 4 bytes × 4).
        check_coverage : bool
            Check that the series shows the lungs (see Returns); False only to score synthetic
            volumes that are no chest (tests of the model's mechanics).

        Returns
        -------
        PeExamResult
            With ``indeterminate_reasons`` (and the exam indeterminate, no positive or key
            slices) when the series cannot be read for PE: it does not cover the lungs, or the
            model flags slices outside them (:func:`models.plausibility.check_pe_coverage`).

        Raises
        ------
        SeriesError
            A slice cannot be read or does not match the plan.
        """
        scores, lungs = self.score_slices_and_lungs(plan, paths_by_uid, batch_size)
        probes = self.probe_slices(scores)
        sides = None
        if probes:
            sub = dataclasses.replace(
                plan,
                sop_instance_uids=tuple(plan.sop_instance_uids[i] for i in probes),
                positions=tuple(plan.positions[i] for i in probes),
            )
            hu = np.concatenate([batch for _, batch in iter_hu_batches(sub, paths_by_uid, batch_size=len(probes))])
            sides = self.mirror_sides(to_canonical(hu, plan.orientation), scores[probes, PE_HEADS.index(_IMAGE)])
        result = self.result_from_scores(list(plan.sop_instance_uids), scores, sides)
        if not check_coverage:
            return result
        reasons = check_pe_coverage(superior_mm(plan.positions, plan.normal), lungs, result.positive_slices)
        return not_assessable(result, reasons) if reasons else result

    def probe_slices(self, scores: np.ndarray) -> list[int]:
        """The slices to probe for the side (``location`` ``"mirror"``).

        The key slices of a positive exam, else none.
        """
        if self.location != "mirror":
            return []
        probs = np.asarray(scores, dtype=np.float64)[:, PE_HEADS.index(_IMAGE)]
        if exam_pe_probability(probs, self.top_k) < self.thresholds[_IMAGE]:
            return []
        positive = [int(i) for i in np.flatnonzero(probs >= self.thresholds[_IMAGE])]
        return select_key_slices(probs.tolist(), positive)

    def mirror_sides(self, hu: np.ndarray, p: Sequence[float] | np.ndarray) -> tuple[float, float]:
        """``(rightsided, leftsided)`` probabilities from mirror probes of ``hu`` (k, rows, columns), slices in
        the usual display orientation (:func:`to_canonical`) whose PE probabilities are ``p``."""
        spec = self.manifest.input
        low, high = zip(*(mirror_halves(np.asarray(h, dtype=np.float32)) for h in hu), strict=False)
        probes = np.concatenate([np.stack(low), np.stack(high)])
        out = self._model.run(window_slices(probes, self.windows, spec.height, spec.width, self.crop_body))
        image = out.reshape(len(probes), -1)[:, PE_HEADS.index(_IMAGE)]
        return side_evidence(p, image[: len(hu)], image[len(hu) :])  # low columns: the patient's right

    def result_from_scores(
        self, slice_uids: list[str], scores: np.ndarray, sides: tuple[float, float] | None = None
    ) -> PeExamResult:
        """The exam result from per-slice head outputs (aggregation, rules, key slices).

        ``sides``: ``(rightsided, leftsided)`` from :meth:`mirror_sides`, in place of those heads.
        """
        slices, exam = aggregate_exam(scores, self.top_k)
        if sides is not None:
            exam["rightsided_pe"], exam["leftsided_pe"] = float(sides[0]), float(sides[1])
        probabilities = [float(v) for v in slices]
        labels, positive, corrections = apply_consistency(probabilities, exam, self.thresholds, self.top_k)
        return PeExamResult(
            slice_uids=slice_uids,
            slice_probabilities=probabilities,
            exam_probabilities=exam,
            exam_labels=labels,
            positive_slices=positive,
            key_slices=select_key_slices(probabilities, positive),
            corrections=corrections,
        )
