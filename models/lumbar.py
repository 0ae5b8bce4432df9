"""Vertebral level of each axial slice of an abdominal CT, the L3 slice and body composition.

The source design is *the lumbar-level design* (see :mod:`models`): a published slice
classifier that finds the L3 slice of an abdominal CT, where muscle is measured for sarcopenia.

Input: one axial CT series as a :class:`models.preprocess.ct_series.SeriesPlan` (slices
ordered along the ImageOrientationPatient normal, PS3.3 C.7.6.2) and the files of its
slices. Pixels are read as Hounsfield units (``iter_hu_batches``, PS3.3 C.11.1.1.2), each
window of the manifest's ``input.preprocessing`` (``{"kind": "ct_windows", "windows":
[[center, width], ...]}``) maps HU linearly to 0..1 (:func:`hu_to_unit`; one window per
channel), quantised to 8 bits exactly as the training PNGs are, and resized (area
average) to the manifest's input size.

Model (the lumbar-level design): EfficientNetV2 backbone (M at 512×512 in the source design;
S selectable; ``training.lumbar``), softmax over the seven classes of
:data:`core.findings.LUMBAR_LEVELS` — T, L1, L2, L3, L4, L5, S — per slice. Its authors
report 97.6 % slice accuracy, with errors only between neighbouring levels.

Decoding: the levels of a series are one **monotonic sequence** along the patient axis
(T, L1 … L5, S from head to feet), not independent labels. :func:`decode_monotonic` is a
Viterbi decoder over the slices' log-probabilities whose transitions may only stay or
move feet-wards (any level may be skipped, so a short series that starts in L2 or ends
in L4 is fine); an isolated L3 between two L4 slices cannot come out of it. The plan's
ascending positions run towards the head when the normal points to +z (LPS, PS3.3
C.7.6.2.1.1), so series stored either way round decode alike.

Search (:func:`search_levels`): the model does not run on every slice. A coarse pass
takes every *k*-th slice (*k* from the slice spacing: ``coarse_step_mm``, 20 mm by default,
about half a lumbar vertebra with its disc; and at most ``max_coarse_samples``, 16) plus the
last one, and decodes them. Then each gap between neighbouring samples whose decoded levels
differ and that holds a boundary of a refined level (by default L3: the L2|L3 and L3|L4
boundaries, or an L3 hidden between L2 and L4) is bisected, and so is every gap across which
a level is skipped (coarse samples L1 then L3: where is L2?): its middle slice is evaluated,
all samples are decoded again, until such gaps are one slice wide. A level missing from the
column is then the model's answer, not a gap in the sampling, and :mod:`models.plausibility`
may call it impossible. Slices never evaluated take the level of the nearer evaluated slice
(the decoded interval). For 300 slices of 0.93 mm: 16 coarse + 2 × 4–5 bisection passes
≈ 25 forward passes (12 mm steps: 32), and the L3 run is the one an exhaustive decode would
give whenever the model's levels are monotonic. A hidden L3 (coarse samples L2 then L4) is
found because that gap holds L3's boundaries too. ``evaluated`` records the slices the model
ran on.

Plausibility: the decoded map is checked against anatomy (:func:`models.plausibility.check_level_map`:
order along the patient axis, no level skipped, L3 between L2 and L4, each run's height in mm).
An impossible map is returned with its reasons in ``not_determined`` and without an L3 slice
or body composition: the levels could not be determined, and nothing is measured on a guess.

Output: :class:`core.findings.LumbarResult` — the level of every slice, the runs, the
L3 slice (centre of the L3 run) — and :mod:`models.body_composition` on the L3 slice with
its tissue masks (muscle, subcutaneous fat, visceral fat; rows × columns booleans).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from core.dicomfile import read_dataset
from core.errors import UnreadableDicom
from core.findings import LUMBAR_LEVELS, AlgorithmInfo, LevelRun, LumbarResult
from models.backends.onnx_backend import OnnxModel
from models.body_composition import measure
from models.errors import ModelError
from models.manifest import Manifest
from models.plausibility import check_level_map, superior_mm
from models.preprocess.ct_series import SeriesPlan, iter_hu_batches
from models.preprocess.radiograph import resize_image

__all__ = [
    "DEFAULT_WINDOWS",
    "LumbarModel",
    "decode_monotonic",
    "hu_to_unit",
    "level_runs",
    "search_levels",
]

log = logging.getLogger(__name__)

DEFAULT_WINDOWS: tuple[tuple[float, float], ...] = ((40.0, 400.0),)
"""The abdominal soft-tissue window (−160..240 HU), that of the lumbar PNG data sets
(``training.phantoms.ct_datasets.LUMBAR_PNG_WINDOW``): organs, muscle and fat apart, bone white."""
DEFAULT_COARSE_STEP_MM = 20.0
DEFAULT_MAX_COARSE = 16
DEFAULT_REFINE: tuple[str, ...] = ("L3",)
_FLOOR = 1e-7  # probabilities below this count as this, so log() stays finite

Evaluate = Callable[[list[int]], np.ndarray]
"""Model probabilities (len(indices), 7) for slice indices in plan order."""


def hu_to_unit(hu: np.ndarray, windows: Sequence[Sequence[float]]) -> np.ndarray:
    """Window HU to 0..1 per window, quantised to 8 bits like the training PNGs.

    Parameters
    ----------
    hu : numpy.ndarray
        Hounsfield units, any shape.
    windows : sequence of (center, width)
        Each maps ``center − width/2`` to 0 and ``center + width/2`` to 1, clipped.

    Returns
    -------
    numpy.ndarray
        float32 of shape ``hu.shape + (len(windows),)``, values k/255.
    """
    out = np.empty(hu.shape + (len(windows),), dtype=np.float32)
    for channel, (center, width) in enumerate(windows):
        if width <= 0:
            raise ValueError(f"window width must be positive, got {width}")
        unit = (hu.astype(np.float32) - np.float32(center - width / 2.0)) / np.float32(width)
        out[..., channel] = np.round(np.clip(unit, 0.0, 1.0) * 255.0) / 255.0
    return out


def decode_monotonic(probabilities: np.ndarray) -> np.ndarray:
    """Most probable level sequence that never moves headwards (Viterbi).

    Parameters
    ----------
    probabilities : numpy.ndarray
        (slices, levels) model probabilities, slices in **head → feet** order.

    Returns
    -------
    numpy.ndarray
        int level indices, non-decreasing, maximising the sum of log-probabilities.
    """
    log_p = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), _FLOOR, 1.0))
    slices, levels = log_p.shape
    if slices == 0:
        return np.zeros(0, dtype=int)
    back = np.zeros((slices, levels), dtype=int)
    score = log_p[0].copy()
    for t in range(1, slices):
        # best predecessor of level s is the best of levels 0..s (staying wins ties)
        best_prev = np.zeros(levels, dtype=int)
        running = 0
        for s in range(1, levels):
            if score[s] >= score[running]:
                running = s
            best_prev[s] = running
        back[t] = best_prev
        score = score[best_prev] + log_p[t]
    path = np.zeros(slices, dtype=int)
    path[-1] = int(np.argmax(score))
    for t in range(slices - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


def search_levels(
    count: int,
    evaluate: Evaluate,
    *,
    head_first: bool,
    step: int,
    refine: Collection[int] = (LUMBAR_LEVELS.index("L3"),),
) -> tuple[list[int], list[int]]:
    """Levels of all slices from few model evaluations (coarse pass, then bisection).

    Parameters
    ----------
    count : int
        Slices in the series.
    evaluate : callable
        Takes plan indices, returns their (n, 7) level probabilities.
    head_first : bool
        True when plan index 0 is the most cranial slice.
    step : int
        Coarse sampling interval in slices (1 = exhaustive).
    refine : collection of int
        Level indices whose boundaries are found to the slice; pass all levels for every
        boundary.

    Returns
    -------
    tuple of (list of int, list of int)
        The level index of every slice in plan order, and the evaluated plan indices (sorted).
    """
    if count == 0:
        return [], []
    step = max(1, int(step))
    to_plan = (lambda i: i) if head_first else (lambda i: count - 1 - i)
    probs: dict[int, np.ndarray] = {}

    def run(hf_indices: list[int]) -> None:
        fresh = [i for i in hf_indices if i not in probs]
        if fresh:
            for i, p in zip(fresh, np.asarray(evaluate([to_plan(i) for i in fresh])), strict=False):
                probs[i] = p

    run(sorted(set(range(0, count, step)) | {count - 1}))
    while True:
        samples = sorted(probs)
        labels = decode_monotonic(np.stack([probs[i] for i in samples]))
        middles = [
            (a + b) // 2
            for (a, la), (b, lb) in zip(
                zip(samples, labels, strict=False), zip(samples[1:], labels[1:], strict=False), strict=False
            )
            if b - a > 1 and la != lb and (lb - la > 1 or any(la <= r <= lb for r in refine))
        ]
        if not middles:
            break
        run(middles)

    # Slices never evaluated take the level of the nearer evaluated slice (the first and the
    # last slice are always evaluated, so every slice has a sample on each side).
    positions = np.array(samples)
    slices = np.arange(count)
    right = np.searchsorted(positions, slices, side="left")
    left = np.maximum(right - 1, 0)
    exact = positions[right] == slices
    take_left = ~exact & (slices - positions[left] <= positions[right] - slices)
    levels_hf = np.where(take_left, labels[left], labels[right])
    levels_plan = levels_hf if head_first else levels_hf[::-1]
    return [int(v) for v in levels_plan], sorted(to_plan(i) for i in samples)


def level_runs(levels: Sequence[str]) -> list[LevelRun]:
    """Consecutive equal levels as runs (plan order, inclusive bounds)."""
    runs: list[LevelRun] = []
    for index, level in enumerate(levels):
        if runs and runs[-1].level == level:
            runs[-1].last = index
        else:
            runs.append(LevelRun(level, index, index))
    return runs


class LumbarModel:
    """The lumbar-level classifier with monotonic decoding, search and L3 body composition."""

    def __init__(self, model: OnnxModel) -> None:
        manifest = model.manifest
        if manifest.task != "slice-classification":
            raise ModelError(f"model {manifest.name!r} has task {manifest.task!r}, not 'slice-classification'")
        keys = tuple(label.key for label in manifest.labels)
        if keys != LUMBAR_LEVELS:
            raise ModelError(f"model {manifest.name!r}: labels {keys} must be the levels {LUMBAR_LEVELS} in order")
        pre = manifest.input.preprocessing
        if pre.get("kind") != "ct_windows":
            raise ModelError(
                f"model {manifest.name!r}: input.preprocessing.kind must be 'ct_windows', got {pre.get('kind')!r}"
            )
        self.windows = [(float(c), float(w)) for c, w in pre.get("windows", DEFAULT_WINDOWS)]
        if len(self.windows) != manifest.input.channels:
            raise ModelError(
                f"model {manifest.name!r}: {len(self.windows)} window(s) for {manifest.input.channels} input channel(s)"
            )
        post = manifest.postprocessing
        self.coarse_step_mm = float(post.get("coarse_step_mm", DEFAULT_COARSE_STEP_MM))
        self.max_coarse = int(post.get("max_coarse_samples", DEFAULT_MAX_COARSE))
        refine = post.get("refine_levels", DEFAULT_REFINE)
        unknown = [r for r in refine if r not in LUMBAR_LEVELS]
        if unknown:
            raise ModelError(f"model {manifest.name!r}: postprocessing.refine_levels has unknown levels {unknown}")
        self.refine = [LUMBAR_LEVELS.index(r) for r in refine]
        self._model = model
        self.manifest = manifest

    @classmethod
    def from_manifest(cls, manifest: Manifest, threads: int = 1) -> LumbarModel:
        """Create the model from a verified manifest (``ModelRegistry.require``)."""
        return cls(OnnxModel(manifest, threads=threads))

    @property
    def algorithm(self) -> AlgorithmInfo:
        """Identification of the model for result objects."""
        m = self.manifest
        return AlgorithmInfo(
            name=m.name, version=m.version, manufacturer=m.manufacturer, weights_sha256=m.sha256, demo=m.demo
        )

    def level_probabilities(self, hu: np.ndarray) -> np.ndarray:
        """Softmax over :data:`LUMBAR_LEVELS` for slices in HU, shape (N, rows, columns) → (N, 7)."""
        spec = self.manifest.input
        units = hu_to_unit(hu, self.windows)
        batch = np.empty((len(hu), spec.height, spec.width, len(self.windows)), dtype=np.float32)
        for i in range(len(hu)):
            for c in range(len(self.windows)):
                batch[i, :, :, c] = resize_image(units[i, :, :, c], spec.height, spec.width)
        if spec.layout == "NCHW":
            batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
        return self._model.run(batch).reshape(len(hu), len(LUMBAR_LEVELS))

    def coarse_step(self, plan: SeriesPlan) -> int:
        """Slices between coarse samples: ``coarse_step_mm`` apart, at most ``max_coarse_samples`` samples."""
        spacing = plan.spacing.median or self.coarse_step_mm
        by_mm = max(1, round(self.coarse_step_mm / spacing))
        by_count = math.ceil((len(plan) - 1) / max(1, self.max_coarse - 1)) if len(plan) > 1 else 1
        return max(by_mm, by_count)

    def analyse(
        self,
        plan: SeriesPlan,
        paths_by_uid: Mapping[str, str | PathLike[str]],
        *,
        patient_size_m: float | None = None,
        batch_size: int = 8,
        exhaustive: bool = False,
    ) -> tuple[LumbarResult, dict[str, np.ndarray] | None]:
        """Levels of every slice, the L3 slice and its body composition.

        Parameters
        ----------
        plan : SeriesPlan
            The ordered axial series (``plan_series``).
        paths_by_uid : mapping
            File of each planned SOP Instance UID.
        patient_size_m : float, optional
            Height for the skeletal muscle index; read from PatientSize (0010,1020) of
            the L3 slice when not given.
        batch_size : int
            Slices per forward pass.
        exhaustive : bool
            Evaluate every slice (for validation; the search gives the same L3 run).

        Returns
        -------
        tuple of (LumbarResult, dict or None)
            The result, and the L3 slice's boolean masks ``muscle``, ``subcutaneous_fat``,
            ``visceral_fat`` (None when no L3 was found or no body was on it). A level map
            that is anatomically impossible comes back with ``not_determined`` set and
            neither L3 nor masks.
        """

        def evaluate(indices: list[int]) -> np.ndarray:
            out = np.empty((len(indices), len(LUMBAR_LEVELS)), dtype=np.float32)
            done = 0
            for _, hu in iter_hu_batches(_subplan(plan, indices), paths_by_uid, batch_size):
                out[done : done + len(hu)] = self.level_probabilities(hu)
                done += len(hu)
            return out

        head_first = plan.normal[2] < 0  # positions ascend feet-wards only when the normal points to −z
        step = 1 if exhaustive else self.coarse_step(plan)
        indices, evaluated = search_levels(len(plan), evaluate, head_first=head_first, step=step, refine=self.refine)
        levels = [LUMBAR_LEVELS[i] for i in indices]
        runs = level_runs(levels)
        result = LumbarResult(list(plan.sop_instance_uids), levels, evaluated, runs)
        result.not_determined = check_level_map(levels, superior_mm(plan.positions, plan.normal), evaluated)
        if result.not_determined:
            log.warning("vertebral levels not determined: %s", "; ".join(result.not_determined))
            return result, None
        l3 = next((r for r in runs if r.level == "L3"), None)
        if l3 is None:
            return result, None
        result.l3_index = (l3.first + l3.last) // 2
        uid = plan.sop_instance_uids[result.l3_index]
        if patient_size_m is None:
            patient_size_m = _patient_size(paths_by_uid[uid])
        _, hu = next(iter_hu_batches(_subplan(plan, [result.l3_index]), paths_by_uid, 1))
        try:
            result.composition, masks = measure(hu[0], plan.pixel_spacing, patient_size_m, uid)
        except ValueError as exc:
            log.warning("no body composition on the L3 slice %s: %s", uid, exc)
            return result, None
        return result, masks


def _subplan(plan: SeriesPlan, indices: Sequence[int]) -> SeriesPlan:
    """The plan restricted to some slices (to read only those)."""
    return dataclasses.replace(
        plan,
        sop_instance_uids=tuple(plan.sop_instance_uids[i] for i in indices),
        positions=tuple(plan.positions[i] for i in indices),
    )


def _patient_size(path: str | PathLike[str]) -> float | None:
    """PatientSize (0010,1020) in metres from a slice's header, or None."""
    try:
        ds: Any = read_dataset(Path(path), header_only=True, tags=["PatientSize"])
        value = ds.get("PatientSize")
        return float(value) if value not in (None, "") else None
    except (UnreadableDicom, OSError, ValueError, TypeError):
        return None
