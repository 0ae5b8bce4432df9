"""Anatomical plausibility of CT results: is a decoded level map, or a CTPA's coverage, possible at all?

A model can give a confident answer that no patient can have: the lumbar-level classifier
(:mod:`models.lumbar`) on a real abdominal CT called 107 slices of 3 mm (over 300 mm) "S" and
the five above them "L1", with no L2..L5 in between. Such a result must reach the radiologist as
"not determined" with the reason, never as a finding. The checks here are pure
functions of the result and the slice geometry; each returns the reasons (in words, for the SR,
the job summary and the log) why the result is implausible, an empty list when it is not.

Lumbar level maps (:func:`check_level_map`)
-------------------------------------------

Slices are put in head → feet order by their coordinate along the patient's superior axis
(patient z in LPS, PS3.3 C.7.6.2.1.1: +z is the head), independently of how the model's
decoder ordered them, and the map is checked for:

1. **Order**: T, L1, L2, L3, L4, L5, S from head to feet, each level one run of consecutive
   slices.
2. **No level skipped**: the levels seen form one unbroken stretch of that sequence (a
   vertebra cannot be missing between two others; at 1–10 mm slices every level of
   15 mm or more holds a slice).
3. **L3 with L2 above it and L4 below it**: L3 is what the pipeline measures at; an L3 cut
   by an end of the series has no reliable centre.
4. **Heights**: each run's craniocaudal extent (slice positions in mm; a slice stands for
   half the distance to each neighbour) against :data:`LEVEL_HEIGHT_MM`, and L1 to L5
   together against :data:`LUMBAR_TOTAL_MM`. A run at an end of the series may be cut by
   it, so only the upper bound applies there. When the model ran on some slices only
   (``evaluated``), a boundary between two levels lies somewhere between the evaluated
   slices on either side; a run is called too short only if even its largest possible
   extent is, and too long only if even its smallest is.

The limits, and their sources. A lumbar vertebral body is about 24–30 mm high and a lumbar
disc about 8–12 mm in adults (Zhou et al. 2000, "Geometrical dimensions of the lower lumbar
vertebrae – analysis of data from digitised CT images", Eur Spine J 9:242–248; Gilad & Nissan
1986, "A study of vertebra and disc geometric relations of the human cervical and lumbar
spine", Spine 11:154–157; disc heights also Frobin et al. 1997, Clin Biomech 12 Suppl 1), so
one level's run (body plus half of each neighbouring disc) is about 32–42 mm, and L1 to L5
about 160–200 mm. The limits are deliberately generous — 15–60 mm per level, 90–280 mm for
L1–L5 — to admit small adults and older children, spines with collapsed or tall vertebrae,
oblique slices and the decoder's boundary uncertainty: they catch maps that are impossible,
not ones that are unusual. "S" is the sacrum (about 100–110 mm from the S1 endplate to its
tip, tilted so that its craniocaudal extent is less; coccyx about 30 mm, Gray's Anatomy, 41st
ed.); the model also calls slices below it "S" when a pelvic scan continues to the hips, so
an S run may be up to 250 mm. "T" stands for every level above L1 and is not limited.

CT pulmonary angiography coverage (:func:`check_pe_coverage`)
-------------------------------------------------------------

The pulmonary arteries run from the heart through the hila into the lungs; a CTPA covers the
lungs from apex to base (about 200–270 mm in adults; Gray's Anatomy, 41st ed.). The lungs are
found on each slice the PE model reads anyway (:func:`lung_area_cm2`: air-density pixels
enclosed by the body). The series is implausible for a PE reading when:

1. no slice shows lung: not a chest;
2. the lungs are seen over less than :data:`MIN_LUNG_EXTENT_MM` (100 mm): the series shows a
   lung base or apex only, not the hila and lobar arteries;
3. a slice flagged for embolism lies outside the lungs (farther than
   :data:`OUTSIDE_LUNG_TOLERANCE_MM` from them): an embolus in a pulmonary artery cannot be
   there.

"The lungs" are the longest stretch of consecutive examined slices with at least
:data:`LUNG_SEED_CM2` of lung each (its length is what criterion 2 measures); for criterion 3
the stretch is extended while neighbours have at least :data:`LUNG_EDGE_CM2` (the apex and
the costophrenic recesses hold little lung). Air enclosed by the body is counted as lung, so
bowel or stomach gas next to the lung bases can make the stretch look longer than it is: the
check errs towards reading a series, not towards refusing one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from core.findings import LUMBAR_LEVELS
from models.body_composition import fill_holes, label_components

__all__ = [
    "LEVEL_HEIGHT_MM",
    "LUMBAR_TOTAL_MM",
    "LUNG_EDGE_CM2",
    "LUNG_SEED_CM2",
    "MIN_LUNG_EXTENT_MM",
    "OUTSIDE_LUNG_TOLERANCE_MM",
    "check_level_map",
    "check_pe_coverage",
    "lung_area_cm2",
    "superior_mm",
]

LEVEL_HEIGHT_MM: Mapping[str, tuple[float | None, float | None]] = {
    "T": (None, None),
    "L1": (15.0, 60.0),
    "L2": (15.0, 60.0),
    "L3": (15.0, 60.0),
    "L4": (15.0, 60.0),
    "L5": (15.0, 60.0),
    "S": (None, 250.0),
}
"""Plausible craniocaudal extent (min, max) in mm of each level's run; None: no limit (see the module docstring)."""
LUMBAR_TOTAL_MM = (90.0, 280.0)
"""Plausible extent in mm of L1 to L5 together, checked when neither end is cut by the series."""

BODY_HU = -500.0
"""Above: tissue (the body); at or below: air density (lung, gas, the air around the patient)."""
LUNG_SEED_CM2 = 25.0
"""A slice with at least this much lung starts "the lungs" (both lungs at the hila: 150 cm² or more)."""
LUNG_EDGE_CM2 = 2.0
"""Neighbouring slices with at least this much lung extend "the lungs" (apex, costophrenic recesses)."""
MIN_LUNG_EXTENT_MM = 100.0
"""Fewest mm of lung a series must show to cover the pulmonary arteries (adult lungs: about 200–270 mm)."""
OUTSIDE_LUNG_TOLERANCE_MM = 10.0
"""A flagged slice farther than this from the lungs is outside them."""
_MAX_GRID = 128  # lung area is measured on the slice subsampled to at most this many rows and columns


def superior_mm(positions: Sequence[float], normal: Sequence[float]) -> list[float]:
    """Each slice's coordinate along the patient's superior axis, in mm, from a series plan.

    ``positions`` are mm along the slice normal (``SeriesPlan.positions``: the normal's dot
    product with ImagePositionPatient); for an axial series the patient z (LPS: +z is the
    head) of slice *i* is ``positions[i] × normal_z`` up to a constant, so larger is more
    cranial, whichever way the series is stored.
    """
    nz = float(normal[2])
    if abs(nz) < 0.5:
        raise ValueError(f"slice normal {tuple(normal)} is not axial: no head-feet order along it")
    return [float(p) * nz for p in positions]


# --- lumbar level maps ------------------------------------------------------------------------


def check_level_map(
    levels: Sequence[str],
    superior: Sequence[float],
    evaluated: Sequence[int] | None = None,
) -> list[str]:
    """Why a decoded vertebral level map is anatomically impossible; empty when it is plausible.

    Parameters
    ----------
    levels : sequence of str
        One of :data:`~core.findings.LUMBAR_LEVELS` per slice, in any slice order.
    superior : sequence of float
        Each slice's coordinate along the patient's superior axis in mm (:func:`superior_mm`).
    evaluated : sequence of int, optional
        Indices (into ``levels``) of the slices the model ran on; the others took a level
        from their neighbours. None: every slice was evaluated.

    Returns
    -------
    list of str
        The reasons, each a sentence naming the levels, slices (1-based, in the order given)
        and millimetres concerned; ASCII only, as they go into SR TEXT items written in the
        default character repertoire.

    Raises
    ------
    ValueError
        Lengths differ, a level is unknown, or two slices share one position.
    """
    n = len(levels)
    if len(superior) != n:
        raise ValueError(f"{n} levels for {len(superior)} slice positions")
    unknown = sorted({lv for lv in levels if lv not in LUMBAR_LEVELS})
    if unknown:
        raise ValueError(f"unknown level(s) {unknown}; levels are {list(LUMBAR_LEVELS)}")
    if n == 0:
        return ["no slices"]
    order = sorted(range(n), key=lambda i: -float(superior[i]))  # head → feet
    u = np.array([-float(superior[i]) for i in order])  # mm, increasing feet-wards
    if n > 1 and np.any(np.diff(u) <= 0):
        raise ValueError("two slices share one position along the patient axis")
    hf_levels = [levels[i] for i in order]
    plan_of = order  # hf index → index as given
    checked = set(range(n)) if evaluated is None else {order.index(i) for i in evaluated}
    if not checked:
        raise ValueError("no slice was evaluated")
    extent = _Extents(u)

    runs = _runs(hf_levels)

    def slices(a: int, b: int) -> str:
        """1-based numbers (order given) of hf slices a..b."""
        numbers = sorted(plan_of[i] + 1 for i in range(a, b + 1))
        return f"slice {numbers[0]}" if len(numbers) == 1 else f"slices {numbers[0]}-{numbers[-1]}"

    # 1. Order.
    rank = [LUMBAR_LEVELS.index(level) for level, _, _ in runs]
    for (la, a0, a1), (lb, b0, b1), ra, rb in zip(runs, runs[1:], rank, rank[1:], strict=False):
        if rb < ra:
            return [
                f"levels out of anatomical order: {lb} ({slices(b0, b1)}) lies below {la} ({slices(a0, a1)}); "
                f"from head to feet the spine runs {', '.join(LUMBAR_LEVELS)}"
            ]
    reasons: list[str] = []
    by_level = {level: (a, b) for level, a, b in runs}

    # 2. No level skipped.
    lo, hi = rank[0], rank[-1]
    missing = [LUMBAR_LEVELS[k] for k in range(lo, hi + 1) if LUMBAR_LEVELS[k] not in by_level]
    if missing:
        reasons.append(
            f"{', '.join(missing)} missing between {LUMBAR_LEVELS[lo]} and {LUMBAR_LEVELS[hi]}: "
            f"the spine cannot skip a level"
        )

    # 3. L3 with L2 above and L4 below.
    if "L3" not in by_level:
        seen = ", ".join(level for level, _, _ in runs)
        reasons.append(f"no L3 in the series (levels found: {seen})")
    else:
        a, b = by_level["L3"]
        if a == 0:
            reasons.append(f"L3 ({slices(a, b)}) is cut by the cranial end of the series: no L2 above it")
        if b == n - 1:
            reasons.append(f"L3 ({slices(a, b)}) is cut by the caudal end of the series: no L4 below it")

    # 4. Heights: per run, then L1..L5 together.
    for level, a, b in runs:
        low, high = LEVEL_HEIGHT_MM[level]
        cut = a == 0 or b == n - 1
        least, most = extent.bounds(a, b, checked)
        decoded = extent.of(a, b)
        if high is not None and least > high:
            reasons.append(
                f"{level} spans {decoded:.0f} mm ({slices(a, b)}), more than the {high:.0f} mm {_WHAT[level]} can"
            )
        elif low is not None and not cut and most < low:
            reasons.append(
                f"{level} spans only {decoded:.0f} mm ({slices(a, b)}), less than the {low:.0f} mm {_WHAT[level]} needs"
            )
    if "L1" in by_level and "L5" in by_level and by_level["L1"][0] > 0 and by_level["L5"][1] < n - 1:
        a, b = by_level["L1"][0], by_level["L5"][1]
        least, most = extent.bounds(a, b, checked)
        decoded = extent.of(a, b)
        low, high = LUMBAR_TOTAL_MM
        if least > high or most < low:
            reasons.append(
                f"L1 to L5 span {decoded:.0f} mm ({slices(a, b)}); a lumbar spine spans {low:.0f}-{high:.0f} mm"
            )
    return reasons


_WHAT = {
    "T": "the thoracic spine",
    "L1": "a lumbar level with its disc",
    "L2": "a lumbar level with its disc",
    "L3": "a lumbar level with its disc",
    "L4": "a lumbar level with its disc",
    "L5": "a lumbar level with its disc",
    "S": "the sacrum and the pelvis below it",
}


def _runs(levels: Sequence[str]) -> list[tuple[str, int, int]]:
    """Consecutive equal levels as (level, first, last), inclusive."""
    runs: list[tuple[str, int, int]] = []
    for i, level in enumerate(levels):
        if runs and runs[-1][0] == level:
            runs[-1] = (level, runs[-1][1], i)
        else:
            runs.append((level, i, i))
    return runs


class _Extents:
    """Craniocaudal extents of runs of slices at coordinates ``u`` (mm, ascending): a slice stands for
    the half-gaps to its neighbours (at the series' ends, the half-gap on its one side)."""

    def __init__(self, u: np.ndarray) -> None:
        gaps = np.diff(u)
        first = float(gaps[0]) / 2 if gaps.size else 0.0
        last = float(gaps[-1]) / 2 if gaps.size else 0.0
        mids = (u[:-1] + u[1:]) / 2
        self.top = np.concatenate([[u[0] - first], mids])
        self.bottom = np.concatenate([mids, [u[-1] + last]])
        self.n = len(u)

    def of(self, a: int, b: int) -> float:
        return float(self.bottom[b] - self.top[a])

    def bounds(self, a: int, b: int, checked: set[int]) -> tuple[float, float]:
        """(least, most) extent of a run decoded over a..b given which slices the model ran on.

        The true run holds at least its own evaluated slices and at most the slices short of the
        evaluated slices of other levels on either side.
        """
        inside = [i for i in range(a, b + 1) if i in checked]
        before = [i for i in range(0, a) if i in checked]
        after = [i for i in range(b + 1, self.n) if i in checked]
        lo = before[-1] + 1 if before else 0
        hi = after[0] - 1 if after else self.n - 1
        least = self.of(inside[0], inside[-1]) if inside else 0.0
        return least, self.of(lo, hi)


# --- CT pulmonary angiography coverage --------------------------------------------------------


def lung_area_cm2(hu: np.ndarray, pixel_spacing: Sequence[float]) -> float:
    """Area in cm² of air-density pixels enclosed by the body on one axial slice (lung; also bowel gas, trachea).

    The body is the largest 8-connected component of pixels above :data:`BODY_HU`; its holes at
    or below it are counted. The slice is subsampled to at most 128 × 128 first: the area is
    what matters, not the outline, and 300 slices cost well under a second.

    Parameters
    ----------
    hu : numpy.ndarray
        (rows, columns) Hounsfield units.
    pixel_spacing : sequence of float
        (row, column) spacing in mm (PixelSpacing, PS3.3 10.7.1.3).
    """
    hu = np.asarray(hu)
    if hu.ndim != 2 or hu.size == 0:
        raise ValueError(f"expected one slice (rows, columns), got shape {hu.shape}")
    step = max(1, math.ceil(max(hu.shape) / _MAX_GRID))
    tissue = hu[::step, ::step] > BODY_HU
    labels, count = label_components(tissue, connectivity=8)
    if count == 0:
        return 0.0
    sizes = np.bincount(labels.ravel())[1:]
    body = labels == int(np.argmax(sizes)) + 1
    inside = fill_holes(body) & ~tissue
    return float(inside.sum()) * step * float(pixel_spacing[0]) * step * float(pixel_spacing[1]) / 100.0


def check_pe_coverage(
    superior: Sequence[float],
    lung_cm2: Mapping[int, float],
    flagged: Sequence[int] = (),
) -> list[str]:
    """Why a series cannot be read for pulmonary embolism; empty when it covers the lungs.

    Parameters
    ----------
    superior : sequence of float
        Every slice's coordinate along the patient's superior axis in mm (:func:`superior_mm`).
    lung_cm2 : mapping of int to float
        Lung area (:func:`lung_area_cm2`) of the slices measured (all, or those the model read).
    flagged : sequence of int
        Slices the model flagged for embolism (indices into ``superior``).

    Returns
    -------
    list of str
        The reasons; slices are named 1-based in the order given.
    """
    n = len(superior)
    bad = [i for i in (*lung_cm2, *flagged) if not 0 <= i < n]
    if bad:
        raise ValueError(f"slice indices {bad[:5]} outside the {n} slices")
    measured = sorted(lung_cm2, key=lambda i: -float(superior[i]))  # head → feet
    areas = [float(lung_cm2[i]) for i in measured]
    core = _lung_stretch(areas)
    reasons: list[str] = []
    top: float | None = None
    bottom: float | None = None
    if core is None:
        reasons.append(
            f"no lung on any of the {len(measured)} slices examined: the series does not show the chest, "
            "where the pulmonary arteries run"
        )
    else:
        first, last = measured[core[0]], measured[core[1]]
        length = float(superior[first]) - float(superior[last])
        if length < MIN_LUNG_EXTENT_MM:
            where = f"slice {first + 1}" if first == last else f"slices {min(first, last) + 1}-{max(first, last) + 1}"
            reasons.append(
                f"lung seen over only {length:.0f} mm ({where}); "
                f"a CT pulmonary angiogram covers the lungs, where the pulmonary arteries run, over at least "
                f"{MIN_LUNG_EXTENT_MM:.0f} mm"
            )
        a, b = core  # the apex and the costophrenic recesses: neighbours with a little lung
        while a > 0 and areas[a - 1] >= LUNG_EDGE_CM2:
            a -= 1
        while b + 1 < len(areas) and areas[b + 1] >= LUNG_EDGE_CM2:
            b += 1
        top, bottom = float(superior[measured[a]]), float(superior[measured[b]])
    outside = sorted(
        i
        for i in set(flagged)
        if top is None
        or bottom is None
        or not bottom - OUTSIDE_LUNG_TOLERANCE_MM <= float(superior[i]) <= top + OUTSIDE_LUNG_TOLERANCE_MM
    )
    if outside:
        shown = ", ".join(str(i + 1) for i in outside[:8]) + (", ..." if len(outside) > 8 else "")
        reasons.append(
            f"{len(outside)} slice(s) flagged for embolism lie outside the lungs (slices {shown}; "
            f"no lung within {OUTSIDE_LUNG_TOLERANCE_MM:.0f} mm): no pulmonary artery is there"
        )
    return reasons


def _lung_stretch(areas: Sequence[float]) -> tuple[int, int] | None:
    """(first, last) of the longest run of consecutive slices with at least :data:`LUNG_SEED_CM2` of lung, or None."""
    best: tuple[int, int] | None = None
    i, n = 0, len(areas)
    while i < n:
        if areas[i] < LUNG_SEED_CM2:
            i += 1
            continue
        j = i
        while j + 1 < n and areas[j + 1] >= LUNG_SEED_CM2:
            j += 1
        if best is None or j - i > best[1] - best[0]:
            best = (i, j)
        i = j + 1
    return best
