"""Synthetic CT series with ground truth: a chest CT angiogram with pulmonary emboli, an abdomen with levels.

Both phantoms are drawn as a **tissue label map** (one ``uint8`` code per voxel, see
:data:`TISSUES`), then turned into Hounsfield units by a per-tissue table plus Gaussian
noise clipped at ±3σ. There is no blur, so every voxel holds exactly one tissue and a
tissue whose HU lies well inside a range is measured by that range without partial-volume
error: the truth areas are pixel counts of the label map times PixelSpacing².

Conventions (shared with the pipelines and the training code)
-------------------------------------------------------------
- ``volume_hu[k]`` is slice ``k`` with **slice 0 the most cranial** (how a radiologist
  scrolls a head-first scan). Slice ``k`` is at patient z ``z_top_mm - k * spacing_z``
  (LPS: +z is superior), so :func:`models.preprocess.ct_series.plan_series`, which sorts
  by ascending position, returns the slices **reversed**: plan index ``n - 1 - k``
  (:meth:`CtPhantom.plan_index`, :meth:`CtPhantom.plan_truth`). Every truth index
  below is a volume index; after
  :meth:`CtPhantom.write_series` the truth also holds the SOP Instance UIDs, which need
  no convention.
- Rows run anterior → posterior, columns patient right → left (ImageOrientationPatient
  ``1\\0\\0\\0\\1\\0``): the patient's right lung is on the image's left.
- Everything is drawn in millimetres and rasterised at ``pixel_mm``, so a 128² phantom
  is the 512² one seen at a quarter of the resolution (same anatomy for the same seed).
- Random generators are seeded by ``(seed, part)``: the same seed gives the same
  anatomy and noise whatever the planted finding, so a phantom with an embolus differs
  from the normal one of the same seed only inside the embolus.

Sections below: drawing helpers, the CTPA phantom, the abdomen phantom, DICOM writing
(CT Image Storage, PS3.3 A.3).
"""

from __future__ import annotations

import datetime
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from core.findings import LUMBAR_LEVELS, PE_EXAM_LABELS

__all__ = [
    "GENERATOR_VERSION",
    "TISSUES",
    "PE_EXAM_LABELS",
    "CtPhantom",
    "ctpa_phantom",
    "abdomen_phantom",
    "write_ct_series",
    "LEVELS",
    "NOISE_SD_HU",
]

GENERATOR_VERSION = 1
"""Version of what this module writes (the CT phantoms (label maps, HU, noise, truth) and their DICOM series):
bump it when a change alters the output for the same arguments, so that the demo recipes built on it are
rebuilt (``training.demo.recipe_hash``)."""

TISSUES: tuple[str, ...] = (
    "air",
    "subcutaneous_fat",
    "visceral_fat",
    "muscle",
    "soft_tissue",
    "lung",
    "cortical_bone",
    "trabecular_bone",
    "canal",
    "disc",
    "pulmonary_artery",
    "embolus",
    "aorta",
    "vein",
    "right_ventricle",
    "left_ventricle",
    "myocardium",
    "airway",
    "liver",
    "spleen",
    "kidney",
    "bowel",
    "gas",
    "table",
    "bladder",
    "atrium",
    "chronic_embolus",
)
"""Tissue names; the label map holds ``TISSUES.index(name)``."""
_T = {name: code for code, name in enumerate(TISSUES)}

LEVELS: tuple[str, ...] = LUMBAR_LEVELS
"""The lumbar-level design's classes, cranial → caudal."""

NOISE_SD_HU = 12.0
"""Standard deviation of the Gaussian noise; it is clipped at ±3σ (36 HU)."""

# ----------------------------------------------------------------------------- helpers


def _rng(seed: int, part: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, part])


@dataclass(frozen=True)
class _Grid:
    """Pixel centres in mm: column j at x = (j - (n-1)/2) * mm, row i at y likewise."""

    n: int
    mm: float

    def span(self, lo: float, hi: float) -> tuple[int, int]:
        c = (self.n - 1) / 2.0
        return max(0, int(math.floor(lo / self.mm + c))), min(self.n, int(math.ceil(hi / self.mm + c)) + 1)

    def window(self, x0: float, x1: float, y0: float, y1: float) -> tuple[slice, slice, np.ndarray, np.ndarray] | None:
        j0, j1 = self.span(x0, x1)
        i0, i1 = self.span(y0, y1)
        if j0 >= j1 or i0 >= i1:
            return None
        c = (self.n - 1) / 2.0
        xs = (np.arange(j0, j1, dtype=np.float64) - c) * self.mm
        ys = (np.arange(i0, i1, dtype=np.float64) - c) * self.mm
        return slice(i0, i1), slice(j0, j1), xs[None, :], ys[:, None]

    def full(self) -> tuple[np.ndarray, np.ndarray]:
        c = (self.n - 1) / 2.0
        v = (np.arange(self.n, dtype=np.float64) - c) * self.mm
        return v[None, :], v[:, None]


class _Canvas:
    """One slice's label map and the primitives that paint tissues on it (mm coordinates)."""

    def __init__(self, grid: _Grid, depth: float) -> None:
        self.g = grid
        self.d = depth
        self.lab = np.zeros((grid.n, grid.n), dtype=np.uint8)

    def _paint(
        self, rs: slice, cs: slice, m: np.ndarray, tissue: str, clip: np.ndarray | None, only: Sequence[str] | None
    ) -> None:
        view = self.lab[rs, cs]
        if clip is not None:
            m = m & clip[rs, cs]
        if only is not None:
            m = m & np.isin(view, [_T[t] for t in only])
        view[m] = _T[tissue]

    def ellipse(
        self,
        cx: float,
        cy: float,
        rx: float,
        ry: float,
        tissue: str,
        *,
        angle: float = 0.0,
        clip: np.ndarray | None = None,
        only: Sequence[str] | None = None,
        power: float = 2.0,
    ) -> None:
        """Paint an ellipse (``power`` > 2: a superellipse, squarer)."""
        if rx <= 0 or ry <= 0:
            return
        r = max(rx, ry)
        w = self.g.window(cx - r, cx + r, cy - r, cy + r)
        if w is None:
            return
        rs, cs, xs, ys = w
        dx, dy = xs - cx, ys - cy
        if angle:
            ca, sa = math.cos(angle), math.sin(angle)
            dx, dy = dx * ca + dy * sa, -dx * sa + dy * ca
        if power == 2.0:
            inside = (dx / rx) ** 2 + (dy / ry) ** 2 <= 1.0
        else:
            inside = np.abs(dx / rx) ** power + np.abs(dy / ry) ** power <= 1.0
        self._paint(rs, cs, inside, tissue, clip, only)

    def region(self, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        """A full-slice boolean mask of an axis-aligned ellipse (for clipping)."""
        mask = np.zeros_like(self.lab, dtype=bool)
        r = max(rx, ry)
        w = self.g.window(cx - r, cx + r, cy - r, cy + r)
        if w is not None and rx > 0 and ry > 0:
            rs, cs, xs, ys = w
            mask[rs, cs] = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0
        return mask

    def rect(
        self,
        x0: float,
        x1: float,
        y0: float,
        y1: float,
        tissue: str,
        *,
        clip: np.ndarray | None = None,
        only: Sequence[str] | None = None,
    ) -> None:
        w = self.g.window(x0, x1, y0, y1)
        if w is None:
            return
        rs, cs, xs, ys = w
        self._paint(rs, cs, (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1), tissue, clip, only)

    def capsule_mask(
        self, a: Sequence[float], b: Sequence[float], ra: float, rb: float
    ) -> tuple[slice, slice, np.ndarray] | None:
        """Where this slice cuts a tapered capsule from ``a`` to ``b`` (x, y, depth in mm)."""
        ax, ay, ad = a
        bx, by, bd = b
        r = max(ra, rb)
        if self.d < min(ad, bd) - r or self.d > max(ad, bd) + r:
            return None
        # Only the part of the segment within r of this depth can reach the slice.
        if abs(bd - ad) > 1e-6:
            t0, t1 = sorted(((self.d - r - ad) / (bd - ad), (self.d + r - ad) / (bd - ad)))
            t0, t1 = max(0.0, t0), min(1.0, t1)
        else:
            t0, t1 = 0.0, 1.0
        xs_ = (ax + t0 * (bx - ax), ax + t1 * (bx - ax))
        ys_ = (ay + t0 * (by - ay), ay + t1 * (by - ay))
        w = self.g.window(min(xs_) - r, max(xs_) + r, min(ys_) - r, max(ys_) + r)
        if w is None:
            return None
        rs, cs, xs, ys = w
        vx, vy, vd = bx - ax, by - ay, bd - ad
        length2 = vx * vx + vy * vy + vd * vd
        px, py, pd = xs - ax, ys - ay, self.d - ad
        t = np.clip((px * vx + py * vy + pd * vd) / length2, 0.0, 1.0)
        dist2 = (px - t * vx) ** 2 + (py - t * vy) ** 2 + (pd - t * vd) ** 2
        rad = ra + t * (rb - ra)
        m = dist2 <= rad * rad
        if not m.any():
            return None
        return rs, cs, m

    def capsule(
        self,
        a: Sequence[float],
        b: Sequence[float],
        ra: float,
        rb: float,
        tissue: str,
        *,
        clip: np.ndarray | None = None,
        only: Sequence[str] | None = None,
    ) -> None:
        hit = self.capsule_mask(a, b, ra, rb)
        if hit is not None:
            self._paint(hit[0], hit[1], hit[2], tissue, clip, only)


def _to_hu(labels: np.ndarray, table: dict[str, float], seed: int, part: int) -> np.ndarray:
    """Label map → int16 HU: the tissue's value plus noise clipped at ±3σ (exact threshold ranges).

    The noise of each slice is one of 16 pre-drawn fields, rolled by a random offset: a
    long series costs little more than 16 slices of random numbers.
    """
    lut = np.array([np.clip(round(table.get(name, 0.0)), -1024, 3071) for name in TISSUES], dtype=np.int16)
    r = _rng(seed, part)
    slices, rows, cols = labels.shape
    bank = r.standard_normal((min(slices, 16), rows, cols), dtype=np.float32)
    np.clip(bank, -3.0, 3.0, out=bank)
    bank_hu = np.rint(bank * NOISE_SD_HU).astype(np.int16)
    shifts = r.integers(0, [rows, cols], size=(slices, 2))
    volume = lut[labels]
    for k in range(slices):
        volume[k] += np.roll(bank_hu[k % len(bank_hu)], tuple(int(v) for v in shifts[k]), axis=(0, 1))
    # Air at -1024 - noise must stay storable with intercept -1024 and 12 bits.
    np.clip(volume, -1024, 3071, out=volume)
    return volume


@dataclass
class CtPhantom:
    """A synthetic CT volume, its tissue labels and its ground truth.

    Attributes
    ----------
    kind : {"ctpa", "abdomen"}
        Which phantom; selects the DICOM descriptions written.
    volume_hu : numpy.ndarray
        int16 (slices, rows, columns) in HU, **slice 0 the most cranial**.
    labels : numpy.ndarray
        uint8 tissue codes of the same shape (``TISSUES[code]`` is the name).
    pixel_mm : float
        Row and column spacing in mm (PixelSpacing, PS3.3 10.7.1.3).
    spacing_z : float
        Distance between slice centres in mm (also the SliceThickness written).
    z_top_mm : float
        Patient z of slice 0; slice k is at ``z_top_mm - k * spacing_z``.
    seed : int
        The random seed it was drawn from.
    truth : dict
        Ground truth; keys per phantom in :func:`ctpa_phantom` and :func:`abdomen_phantom`.
        :meth:`write_series` adds ``sop_uids`` (volume order), ``study_uid``, ``series_uid``
        and the UIDs of the key slices.
    patient_size_m : float or None
        Patient's height written as PatientSize (0010,1020).
    """

    kind: Literal["ctpa", "abdomen"]
    volume_hu: np.ndarray
    labels: np.ndarray = field(repr=False)
    pixel_mm: float
    spacing_z: float
    z_top_mm: float
    seed: int
    truth: dict[str, Any]
    patient_size_m: float | None = None

    @property
    def slices(self) -> int:
        return int(self.volume_hu.shape[0])

    @property
    def z_positions_mm(self) -> list[float]:
        """Patient z of every slice, volume order (descending)."""
        return [self.z_top_mm - k * self.spacing_z for k in range(self.slices)]

    def plan_index(self, volume_index: int) -> int:
        """Index of volume slice ``volume_index`` in ``plan_series`` order (ascending z)."""
        if not 0 <= volume_index < self.slices:
            raise IndexError(f"slice {volume_index} outside 0..{self.slices - 1}")
        return self.slices - 1 - volume_index

    def plan_truth(self) -> dict[str, Any]:
        """The per-slice truth re-indexed in ``plan_series`` order (ascending z: caudal first).

        Keys present in ``truth`` among ``pe_slices``, ``pe_present_on_image``,
        ``defect_area_mm2``, ``sop_uids``, ``levels``, ``disc``, ``l3_index``,
        ``level_ranges`` and ``areas_cm2_per_slice``, converted; nothing else.
        """
        n, t = self.slices, self.truth
        out: dict[str, Any] = {}
        for key in ("pe_present_on_image", "defect_area_mm2", "sop_uids", "levels", "disc", "areas_cm2_per_slice"):
            if key in t:
                out[key] = list(t[key])[::-1]
        if "pe_slices" in t:
            out["pe_slices"] = sorted(n - 1 - k for k in t["pe_slices"])
        if "l3_index" in t:
            out["l3_index"] = n - 1 - t["l3_index"]
        if "level_ranges" in t:
            out["level_ranges"] = {lv: [n - 1 - last, n - 1 - first] for lv, (first, last) in t["level_ranges"].items()}
        return out

    def write_series(self, folder: Path | str, **options: Any) -> list[Path]:
        """Write the series as CT Image Storage files; options and returns of :func:`write_ct_series`."""
        return write_ct_series(self, folder, **options)

    def mask(self, *tissues: str) -> np.ndarray:
        """Boolean volume of the given tissues (names of :data:`TISSUES`)."""
        unknown = [t for t in tissues if t not in _T]
        if unknown:
            raise ValueError(f"unknown tissue(s) {unknown}; known: {', '.join(TISSUES)}")
        return np.isin(self.labels, [_T[t] for t in tissues])


# ----------------------------------------------------------------------------- chest CT angiography

_CTPA_COVERAGE_MM = 240.0  # lung apex to upper abdomen
_MIN_DEFECT_MM2 = 10.0  # a slice is "PE present" when the drawn defect covers at least this
_ARTERY_SIDES: dict[str, tuple[str, ...]] = {
    # Arteries of at least ~7 mm radius, so a clot spans a few pixels even at 128² (2.8 mm pixels).
    "right": ("rpa", "r_interlobar"),
    "left": ("lpa", "l_interlobar"),
    "central": ("trunk",),
}
# Parts of the per-part random generators (fixed: changing one changes every phantom).
_ANATOMY, _NOISE, _VESSELS, _EMBOLUS = 0, 1, 2, 3


@dataclass(frozen=True)
class _Tube:
    name: str
    a: tuple[float, float, float]  # x, y, depth (mm)
    b: tuple[float, float, float]
    ra: float
    rb: float

    def at(self, t: float) -> tuple[np.ndarray, float]:
        a, b = np.array(self.a), np.array(self.b)
        return a + t * (b - a), self.ra + t * (self.rb - self.ra)

    @property
    def length(self) -> float:
        return float(np.linalg.norm(np.subtract(self.b, self.a)))


def _pulmonary_arteries(r: np.random.Generator, sc: float, bif: float) -> list[_Tube]:
    """Main trunk, left/right pulmonary arteries and lobar branches, jittered per seed."""

    def p(x: float, y: float, d: float) -> tuple[float, float, float]:
        return (x * sc + r.normal(0, 2.0), y * sc + r.normal(0, 2.0), d + r.normal(0, 2.0))

    bifurcation, r_hilum, l_hilum = p(8, -14, bif), p(-52, -2, bif + 6), p(48, 8, bif - 6)
    r_split, l_split = p(-62, 12, bif + 45), p(60, 22, bif + 40)
    k = float(r.uniform(0.9, 1.1))  # calibre
    return [
        _Tube("trunk", p(14, -48, bif + 38), bifurcation, 14 * k, 13 * k),
        _Tube("rpa", bifurcation, r_hilum, 11 * k, 9.5 * k),
        _Tube("lpa", bifurcation, l_hilum, 10.5 * k, 9 * k),
        _Tube("r_upper", r_hilum, p(-62, -12, bif - 38), 6 * k, 4 * k),
        _Tube("r_interlobar", r_hilum, r_split, 8.5 * k, 7.5 * k),
        _Tube("r_lower", r_split, p(-74, 38, bif + 95), 7 * k, 4.5 * k),
        _Tube("r_middle", p(-58, 4, bif + 20), p(-62, -42, bif + 45), 5 * k, 3.5 * k),
        _Tube("l_upper", l_hilum, p(58, -8, bif - 45), 6 * k, 4 * k),
        _Tube("l_interlobar", l_hilum, l_split, 8 * k, 7 * k),
        _Tube("l_lower", l_split, p(72, 42, bif + 92), 6.5 * k, 4.5 * k),
        _Tube("lingula", p(54, 12, bif + 14), p(62, -38, bif + 42), 5 * k, 3.5 * k),
    ]


def _peripheral_vessels(
    r: np.random.Generator, lobar: list[_Tube], lungs: list[tuple[float, float]], bif: float
) -> list[_Tube]:
    """Smaller contrast-filled branches fanning from the lobar ends and hila into the lungs."""
    tubes: list[_Tube] = []
    for tube in lobar:
        if tube.name in ("trunk", "rpa", "lpa"):
            continue
        for _ in range(3):
            direction = r.normal(0, 1, 3)
            direction[2] *= 1.5
            direction /= np.linalg.norm(direction)
            tip = np.array(tube.b) + direction * r.uniform(25, 45)
            tubes.append(
                _Tube("peripheral", tube.b, (float(tip[0]), float(tip[1]), float(tip[2])), tube.rb * 0.55, 1.2)
            )
    for lx, ly in lungs:
        hilum = (lx * 0.8, ly, bif + 10)
        for _ in range(36):
            end = (lx + float(r.uniform(-50, 50)), ly + float(r.uniform(-75, 75)), bif + float(r.uniform(-85, 110)))
            tubes.append(_Tube("peripheral", hilum, end, float(r.uniform(1.6, 2.8)), 0.8))
    return tubes


def _emboli(
    r: np.random.Generator, arteries: list[_Tube], side: str, chronic: bool, acute_and_chronic: bool
) -> list[tuple[_Tube, str, str]]:
    """Clots (tube, tissue, artery name): along (acute: centred) or against the wall of (chronic) an artery."""
    by_name = {t.name: t for t in arteries}
    candidates = list(_ARTERY_SIDES[side])
    r.shuffle(candidates)
    kinds = ["embolus", "chronic_embolus"] if acute_and_chronic else ["chronic_embolus" if chronic else "embolus"]
    clots: list[tuple[_Tube, str, str]] = []
    for index, kind in enumerate(kinds):
        artery = by_name[candidates[index % len(candidates)]]
        length = float(r.uniform(24.0, 45.0))
        # Clear of the bifurcation, so a right or left clot is not read as central.
        t0 = float(r.uniform(0.3, 0.55)) if artery.name in ("rpa", "lpa") else float(r.uniform(0.15, 0.45))
        t1 = min(0.95, t0 + length / artery.length)
        (a, ra), (b, rb) = artery.at(t0), artery.at(t1)
        if kind == "embolus":  # a central filling defect with contrast around it ("polo mint")
            fa, fb = ra * r.uniform(0.75, 0.88), rb * r.uniform(0.75, 0.88)
            offset = np.zeros(3)
        else:  # a mural crescent against the wall
            fa, fb = ra * 0.5, rb * 0.5
            axis = (b - a) / np.linalg.norm(b - a)
            side_vec = np.cross(axis, r.normal(0, 1, 3))
            side_vec /= np.linalg.norm(side_vec)
            offset = side_vec * (min(ra, rb) * 0.5)
        a2, b2 = a + offset, b + offset
        clots.append(
            (
                _Tube(
                    kind,
                    (float(a2[0]), float(a2[1]), float(a2[2])),
                    (float(b2[0]), float(b2[1]), float(b2[2])),
                    float(fa),
                    float(fb),
                ),
                kind,
                artery.name,
            )
        )
    return clots


def _exam_labels(embolus: str | None, chronic: bool, acute_and_chronic: bool, ratio: float) -> dict[str, int]:
    """RSNA exam labels implied by what was planted (indeterminate is never set)."""
    labels = dict.fromkeys(PE_EXAM_LABELS, 0)
    if embolus is None:
        labels["negative_exam_for_pe"] = 1  # a negative exam carries no RV/LV label in RSNA-PE
        return labels
    labels["rightsided_pe"] = int(embolus == "right")
    labels["leftsided_pe"] = int(embolus == "left")
    labels["central_pe"] = int(embolus == "central")
    labels["rv_lv_ratio_gte_1"] = int(ratio >= 1.0)
    labels["rv_lv_ratio_lt_1"] = int(ratio < 1.0)
    labels["acute_and_chronic_pe"] = int(acute_and_chronic)
    labels["chronic_pe"] = int(chronic and not acute_and_chronic)
    return labels


def ctpa_phantom(
    seed: int,
    *,
    slices: int = 80,
    size: int = 512,
    embolus: Literal["right", "left", "central"] | None = "right",
    chronic: bool = False,
    rv_lv_ratio: float = 0.8,
    acute_and_chronic: bool = False,
    spacing_z: float | None = None,
    fov_mm: float = 360.0,
    patient_size_m: float | None = 1.75,
) -> CtPhantom:
    """A contrast-enhanced chest CT angiogram (CTPA) with an optional planted pulmonary embolus.

    Drawn: body with subcutaneous fat and chest-wall muscle, ribs and sternum, spine with
    discs, lungs (about -860 HU) with contrast-filled vessels, mediastinal fat, trachea and
    main bronchi, heart (myocardium, right and left ventricles, atria), aorta with arch and
    its branches, superior vena cava, liver/spleen/stomach under the diaphragm, a CT table,
    and the pulmonary arteries bright with contrast (seed-dependent 300–420 HU): main trunk,
    right and left pulmonary arteries, lobar branches and peripheral branches. The lungs
    span apex → bases over about 240 mm.

    Parameters
    ----------
    seed : int
        Anatomy, contrast level, clot placement and noise.
    slices, size : int
        Volume shape ``(slices, size, size)``.
    embolus : {"right", "left", "central"} or None
        Where the clot is: in the right (right pulmonary artery or right interlobar
        artery), left (likewise) or main pulmonary artery; None for a negative exam.
    chronic : bool
        A chronic clot (eccentric, wall-adherent, about 85 HU) instead of an acute one
        (central "polo mint" defect, about 50 HU).
    rv_lv_ratio : float
        Right/left ventricular cavity width as drawn (RSNA ``rv_lv_ratio_gte_1`` when ≥ 1).
    acute_and_chronic : bool
        Plant one acute and one chronic clot (RSNA ``acute_and_chronic_pe``).
    spacing_z : float, optional
        Slice spacing in mm; by default ``240 / slices`` rounded to 0.01 mm.
    fov_mm : float
        Reconstruction field of view; ``pixel_mm = fov_mm / size``.
    patient_size_m : float, optional
        Written as PatientSize (0010,1020).

    Returns
    -------
    CtPhantom
        ``truth`` keys: ``pe_slices`` (volume indices with a defect of at least
        10 mm²), ``pe_present_on_image`` (0/1 per slice), ``defect_area_mm2`` (per slice),
        ``side`` (the ``embolus`` argument), ``central``, ``chronic``, ``acute_and_chronic``,
        ``rv_lv_ratio``, ``artery`` (names of the arteries holding clots), ``exam_labels``
        (the nine RSNA exam labels as 0/1), the same nine labels as top-level keys, and
        ``contrast_hu``.
    """
    if embolus not in ("right", "left", "central", None):
        raise ValueError(f"embolus must be 'right', 'left', 'central' or None, got {embolus!r}")
    if embolus is None and (chronic or acute_and_chronic):
        raise ValueError("chronic/acute_and_chronic need an embolus")
    if chronic and acute_and_chronic:
        raise ValueError("chronic and acute_and_chronic are exclusive (RSNA-PE): pass one")
    if not 0.4 <= rv_lv_ratio <= 2.0:
        raise ValueError(f"rv_lv_ratio {rv_lv_ratio} outside the drawable 0.4..2.0")
    if slices < 2 or size < 32:
        raise ValueError(f"need at least 2 slices of 32², got {slices} of {size}²")
    spacing = float(spacing_z) if spacing_z else round(_CTPA_COVERAGE_MM / slices, 2)
    grid = _Grid(size, fov_mm / size)

    r = _rng(seed, _ANATOMY)
    sc = float(r.uniform(0.92, 1.06))
    contrast = float(r.uniform(300.0, 420.0))
    shift = float(r.uniform(-8.0, 8.0))
    apex, arch, bif, heart_d = 8 + shift, 62 + shift, 100 + shift, 160 + shift
    dome_r, dome_l = 188 + shift + r.uniform(-4, 4), 198 + shift + r.uniform(-4, 4)
    sat = float(r.uniform(8.0, 20.0))
    body_rx, body_ry, body_cy = 150.0 * sc, 108.0 * sc, 8.0
    lungs_c = [(-66.0 * sc, 2.0), (66.0 * sc, 4.0)]
    spine_y = 48.0 * sc
    disc_phase = float(r.uniform(0, 26))
    arteries = _pulmonary_arteries(r, sc, bif)
    vessels = _peripheral_vessels(_rng(seed, _VESSELS), arteries, lungs_c, bif)
    clots = _emboli(_rng(seed, _EMBOLUS), arteries, embolus, chronic, acute_and_chronic) if embolus else []
    hx, hy = 24.0 * sc, -30.0 * sc
    u = np.array([0.7071, -0.7071])  # heart long axis in the axial plane: towards anterior-left
    v = np.array([0.7071, 0.7071])  # across it: +v towards the LV (posterior-left)
    heart_angle = math.atan2(u[1], u[0])
    a_lv, b_lv = 19.0 * sc, 30.0 * sc
    a_rv, b_rv = a_lv * rv_lv_ratio, 28.0 * sc
    lv_c = (hx + v[0] * (5 + a_lv), hy + v[1] * (5 + a_lv))
    rv_c = (hx - v[0] * (5 + a_rv), hy - v[1] * (5 + a_rv))
    aorta = [
        _Tube("aorta", (-14 * sc, -32 * sc, heart_d - 12), (-14 * sc, -30 * sc, arch + 8), 15, 15),
        _Tube("aorta", (-14 * sc, -30 * sc, arch + 8), (4 * sc, -8 * sc, arch - 4), 14, 13.5),
        _Tube("aorta", (4 * sc, -8 * sc, arch - 4), (24 * sc, 26 * sc, arch + 8), 13.5, 13),
        _Tube("aorta", (24 * sc, 26 * sc, arch + 8), (20 * sc, 32 * sc, 250), 13, 11.5),
        _Tube("aorta", (-4 * sc, -20 * sc, arch), (-8 * sc, -26 * sc, -10), 6.5, 6),
        _Tube("aorta", (8 * sc, -12 * sc, arch - 5), (14 * sc, -12 * sc, -10), 4.5, 4.5),
        _Tube("aorta", (16 * sc, -2 * sc, arch - 3), (26 * sc, -4 * sc, -10), 4.5, 4.5),
    ]
    veins = [
        _Tube("vein", (-34 * sc, -22 * sc, -10), (-32 * sc, -24 * sc, heart_d - 30), 9, 10),
        _Tube("vein", (34 * sc, -42 * sc, 10), (-32 * sc, -24 * sc, arch - 15), 6, 7),
    ]
    airways = [  # behind the pulmonary arteries, which are drawn over them
        _Tube("airway", (0, -6 * sc, -10), (0, 4 * sc, bif - 8), 9, 9),
        _Tube("airway", (0, 4 * sc, bif - 8), (-45 * sc, 14 * sc, bif + 14), 6.5, 5),
        _Tube("airway", (0, 4 * sc, bif - 8), (40 * sc, 22 * sc, bif + 10), 6, 4.5),
    ]
    esophagus = _Tube("soft_tissue", (2 * sc, 22 * sc, -10), (8 * sc, 20 * sc, dome_l + 10), 5.5, 5.5)

    xf, yf = grid.full()
    # Diaphragm height per pixel: lower laterally and posteriorly (the costophrenic recesses).
    dome = np.where(
        xf < 0,
        dome_r + 14.0 * ((xf - lungs_c[0][0]) / (56 * sc)) ** 2,
        dome_l + 14.0 * ((xf - lungs_c[1][0]) / (56 * sc)) ** 2,
    ) + 30.0 * np.clip(yf / (80 * sc), 0.0, 1.0)
    first_d = _CTPA_COVERAGE_MM / 2 - spacing * (slices - 1) / 2
    labels = np.empty((slices, size, size), dtype=np.uint8)
    for k in range(slices):
        d = first_d + k * spacing
        cv = _Canvas(grid, d)
        grow = 1.0 + 0.04 * (d - 120.0) / 120.0
        cv.ellipse(0, body_cy, body_rx * grow, body_ry, "subcutaneous_fat")
        cv.ellipse(0, body_cy, body_rx * grow - sat, body_ry - sat, "muscle")
        if d < 130:
            cv.ellipse(0, body_cy - body_ry + sat + 10, 95 * sc, 16, "muscle", only=("subcutaneous_fat",))
        cx_in, cy_in = body_rx * grow - sat - 10, body_ry - sat - 10
        cv.ellipse(0, body_cy, cx_in, cy_in, "visceral_fat")
        inside = cv.lab == _T["visceral_fat"]
        cv.rect(-300, 300, body_cy + body_ry + 8, body_cy + body_ry + 18, "table")
        cv.rect(-300, 300, body_cy + body_ry + 10, body_cy + body_ry + 16, "air")

        below = inside & (dome <= d)
        cv.ellipse(-20 * sc, 0, 110 * sc, 90 * sc, "liver", clip=below)
        cv.ellipse(70 * sc, 40 * sc, 40 * sc, 50 * sc, "spleen", clip=below)
        cv.ellipse(45 * sc, -30 * sc, 40 * sc, 30 * sc, "soft_tissue", clip=below)
        cv.ellipse(45 * sc, -45 * sc, 25 * sc, 12 * sc, "gas", clip=below)

        if d > apex:
            f = min(1.0, 0.3 + 0.7 * (d - apex) / 55.0) ** 0.5
            above = inside & (dome > d)
            for lx, ly in lungs_c:
                cv.ellipse(lx, ly, 56 * sc * f, 82 * sc * f, "lung", clip=above)
            lung = cv.lab == _T["lung"]
            for tube in vessels:
                cv.capsule(tube.a, tube.b, tube.ra, tube.rb, "pulmonary_artery", clip=lung)
        cv.ellipse(4 * sc, -18 * sc, 32 * sc, 52 * sc, "visceral_fat", clip=inside & (dome > d))

        hs = 1.0 - ((d - heart_d) / 42.0) ** 2
        if hs > 0:
            s = math.sqrt(hs)
            cv.ellipse(hx, hy, (b_lv + 22) * s, (a_lv + a_rv + 26) * s, "visceral_fat", angle=heart_angle, clip=inside)
            cv.ellipse(*lv_c, (b_lv + 9) * s, (a_lv + 9) * s, "myocardium", angle=heart_angle, clip=inside)
            cv.ellipse(*rv_c, (b_rv + 4) * s, (a_rv + 4) * s, "myocardium", angle=heart_angle, clip=inside)
            cv.ellipse(*rv_c, b_rv * s, a_rv * s, "right_ventricle", angle=heart_angle)
            cv.ellipse(*lv_c, b_lv * s, a_lv * s, "left_ventricle", angle=heart_angle)
        if heart_d - 52 < d < heart_d - 8:
            cv.ellipse(hx + 4 * sc, hy + 32 * sc, 24 * sc, 15 * sc, "atrium", clip=inside)
            cv.ellipse(hx - 48 * sc, hy + 8 * sc, 20 * sc, 18 * sc, "vein", clip=inside)

        for tube in aorta:
            cv.capsule(tube.a, tube.b, tube.ra, tube.rb, "aorta", clip=inside)
        for tube in veins:
            cv.capsule(tube.a, tube.b, tube.ra, tube.rb, "vein", clip=inside)
        for tube in airways:
            cv.capsule(tube.a, tube.b, tube.ra, tube.rb, "airway", clip=inside)
        cv.capsule(esophagus.a, esophagus.b, esophagus.ra, esophagus.rb, "soft_tissue", clip=inside)
        for tube in arteries:
            cv.capsule(tube.a, tube.b, tube.ra, tube.rb, "pulmonary_artery", clip=inside)
        for clot, kind, _ in clots:
            cv.capsule(clot.a, clot.b, clot.ra, clot.rb, kind, only=("pulmonary_artery",))

        _draw_thoracic_spine(cv, spine_y, sc, (d + disc_phase) % 26.0 < 5.0)
        if 30 + shift < d < 175 + shift:
            sternum_y = body_cy - body_ry + sat + 14
            cv.ellipse(0, sternum_y, 14 * sc, 7, "cortical_bone")
            cv.ellipse(0, sternum_y, 11 * sc, 4.5, "trabecular_bone")
        _draw_ribs(cv, 0.0, body_cy, cx_in + 2, cy_in + 2, first=15 + shift, last=dome_l + 35)
        labels[k] = cv.lab

    table = {
        "air": -1000,
        "subcutaneous_fat": -100,
        "visceral_fat": -95,
        "muscle": 45,
        "soft_tissue": 40,
        "lung": -860,
        "cortical_bone": 700,
        "trabecular_bone": 230,
        "canal": 15,
        "disc": 85,
        "pulmonary_artery": contrast,
        "embolus": 50,
        "chronic_embolus": 85,
        "aorta": 0.6 * contrast + 40,
        "vein": 1.3 * contrast,
        "right_ventricle": 0.95 * contrast,
        "left_ventricle": 0.6 * contrast + 30,
        "atrium": 0.6 * contrast + 30,
        "myocardium": 100,
        "airway": -980,
        "liver": 75,
        "spleen": 95,
        "gas": -980,
        "table": 300,
    }
    volume = _to_hu(labels, table, seed, _NOISE)
    defect = np.isin(labels, [_T["embolus"], _T["chronic_embolus"]]).sum(axis=(1, 2)) * grid.mm**2
    pe_slices = [k for k in range(slices) if defect[k] >= _MIN_DEFECT_MM2]
    exam = _exam_labels(embolus, chronic, acute_and_chronic, rv_lv_ratio)
    truth: dict[str, Any] = {
        "pe_slices": pe_slices,
        "pe_present_on_image": [int(k in pe_slices) for k in range(slices)],
        "defect_area_mm2": [float(a) for a in defect],
        "side": embolus,
        "central": embolus == "central",
        "chronic": bool(chronic),
        "acute_and_chronic": bool(acute_and_chronic),
        "rv_lv_ratio": float(rv_lv_ratio),
        "artery": [name for _, _, name in clots],
        "contrast_hu": contrast,
        "exam_labels": exam,
        **exam,
    }
    if embolus is not None and not pe_slices:
        raise ValueError(f"seed {seed}: the clot falls between slices {spacing} mm apart; use more slices")
    return CtPhantom("ctpa", volume, labels, grid.mm, spacing, 100.0, int(seed), truth, patient_size_m)


def _draw_thoracic_spine(cv: _Canvas, y: float, sc: float, disc: bool) -> None:
    """Vertebral body (or disc), a closed bony ring round the canal, spinous process, paraspinal muscles."""
    canal_y = y + 15 * sc + 9
    cv.ellipse(-24 * sc, canal_y + 14, 16 * sc, 18, "muscle")
    cv.ellipse(24 * sc, canal_y + 14, 16 * sc, 18, "muscle")
    if disc:
        cv.ellipse(0, y, 16 * sc, 15 * sc, "disc")
    else:
        cv.ellipse(0, y, 16 * sc, 15 * sc, "cortical_bone")
        cv.ellipse(0, y, 13.5 * sc, 12.5 * sc, "trabecular_bone")
    cv.ellipse(0, canal_y, 14, 13, "cortical_bone")
    cv.rect(-3.5, 3.5, canal_y + 8, canal_y + 30, "cortical_bone")
    cv.ellipse(0, canal_y, 8, 7, "canal")


def _draw_ribs(
    cv: _Canvas, cx: float, cy: float, rx: float, ry: float, *, first: float, last: float, posterior_only: bool = False
) -> None:
    """Rib cross-sections on the inner chest wall: hoops sloping down anteriorly, 24 mm apart.

    ``posterior_only`` keeps the posterolateral arcs (the floating 11th and 12th ribs).
    """
    if not first - 20 < cv.d < last:
        return
    for theta in np.linspace(-math.pi, math.pi, 90, endpoint=False):
        s = math.sin(theta)
        if abs(theta - math.pi / 2) < 0.3 or abs(theta + math.pi / 2) < 0.25:
            continue  # spine and sternum
        if posterior_only and not 0.35 < abs(theta - math.pi / 2) < 1.2:
            continue
        rib_d = (cv.d - 10.0 * (1.0 - s) - first) % 24.0
        if rib_d < 8.0:
            x, y = cx + rx * math.cos(theta), cy + ry * s
            cv.ellipse(x, y, 3.5, 6.0, "cortical_bone", angle=theta)


# ----------------------------------------------------------------------------- abdomen with lumbar levels

_ABDOMEN_HU: dict[str, float] = {
    # Muscle and fat sit mid-range of the body-composition windows (-29..150 and -190..-30 HU)
    # with the ±36 HU noise; at L3 every other tissue is outside both windows (bone, contrast-
    # enhanced vessels/kidneys/bowel ≥ 200 HU, gas) except the canal, which lies inside a closed
    # bony ring (see abdomen_phantom).
    "air": -1000,
    "subcutaneous_fat": -100,
    "visceral_fat": -100,
    "muscle": 50,
    "soft_tissue": 40,
    "lung": -850,
    "cortical_bone": 700,
    "trabecular_bone": 250,
    "canal": 10,
    "disc": 90,
    "aorta": 230,
    "vein": 200,
    "liver": 105,
    "spleen": 115,
    "kidney": 205,
    "bowel": 260,
    "gas": -900,
    "table": 300,
    "bladder": 10,
}
_BODY_HEIGHTS_MM = {
    "T10": 23.0,
    "T11": 24.0,
    "T12": 25.0,
    "L1": 27.0,
    "L2": 28.0,
    "L3": 28.5,
    "L4": 29.0,
    "L5": 29.0,
    "S1": 28.0,
}
_DISC_MM = {"T10": 7.0, "T11": 7.5, "T12": 8.0, "L1": 8.5, "L2": 9.0, "L3": 9.5, "L4": 10.0, "L5": 10.0}
_SACRUM_MM = 105.0  # S1 upper endplate to the sacral tip
_TP_MM = {"L1": 18.0, "L2": 24.0, "L3": 34.0, "L4": 27.0, "L5": 21.0}  # transverse process length; L3's longest


def _level_of(name: str) -> str:
    return "T" if name.startswith("T") else "S" if name.startswith("S") else name


@dataclass(frozen=True)
class _Vertebra:
    name: str
    top: float  # depth of the upper endplate, mm
    bottom: float

    @property
    def centre(self) -> float:
        return (self.top + self.bottom) / 2


def _column(r: np.random.Generator, t12_top: float) -> list[_Vertebra]:
    """Vertebral bodies T10..S1 at depths (mm from the first slice), heights jittered ±4 %."""
    names = list(_BODY_HEIGHTS_MM)
    k = float(r.uniform(0.96, 1.04))
    heights = {n: _BODY_HEIGHTS_MM[n] * k * float(r.uniform(0.98, 1.02)) for n in names}
    discs = {n: _DISC_MM[n] * float(r.uniform(0.95, 1.05)) for n in _DISC_MM}
    top = t12_top - discs["T11"] - heights["T11"] - discs["T10"] - heights["T10"]
    column = []
    for n in names:
        column.append(_Vertebra(n, top, top + heights[n]))
        top += heights[n] + discs.get(n, 0.0)
    return column


def _slice_level(column: list[_Vertebra], d: float) -> tuple[str, float]:
    """(class, lumbar coordinate) at depth d: a disc slice takes the nearer body's level.

    The lumbar coordinate is 0 at the T12 upper endplate, +1 per vertebra (body + the disc
    below it), so L3 spans 3..4; features that grow caudally are drawn from it.
    """
    nearest = min(column, key=lambda v: max(v.top - d, d - v.bottom, 0.0) + (1e-6 if d > v.bottom else 0.0))
    index = [v.name for v in column].index("T12")
    coord = 0.0
    for i, v in enumerate(column):
        nxt = column[i + 1].top if i + 1 < len(column) else v.bottom + 10.0
        if d < nxt or i + 1 == len(column):
            coord = (i - index) + (d - v.top) / (nxt - v.top)
            break
    if d < column[0].top:
        coord = -index - (column[0].top - d) / 30.0
    return _level_of(nearest.name), coord


def abdomen_phantom(
    seed: int,
    *,
    slices: int = 120,
    size: int = 512,
    spacing_z: float = 3.0,
    pixel_mm: float | None = None,
    patient_size_m: float | None = 1.75,
) -> CtPhantom:
    """A contrast-enhanced abdominal CT from above T12 to the sacrum, with levels and L3 body composition.

    Drawn (cranial → caudal): lower chest with ribs and lung bases, liver and spleen (T),
    floating ribs, transverse colon and kidney upper poles (L1), kidneys at their widest
    (L2), kidney lower poles ending above the middle of L3 and the longest transverse
    processes (L3), the aortic bifurcation and iliac crests (L4), iliac wings (L5), sacrum
    with alae, foramina and sacroiliac joints, then bladder and, past the sacral tip (a
    coverage longer than about 100 mm below S1, not anatomical further down), the femoral
    heads (S). Vertebral bodies grow
    wider and deeper caudally; psoas grows from L1 to L5. Around everything: subcutaneous
    fat, a closed ring of abdominal-wall and paraspinal muscle, and inside it the visceral
    compartment (visceral fat, bowel with positive oral contrast and gas, vessels,
    kidneys, psoas, spine), over a CT table.

    HU (see ``_ABDOMEN_HU``): muscle 50, fat -100 (both ±36 HU noise at most), bone
    ≥ 214, contrast-enhanced vessels, kidneys and bowel ≥ 164, gas -900, spinal canal 10.

    **Body composition as measured against the truth** (tests do exactly this):
    ``bone = fill_holes(HU >= 150)`` (fills the canal, enclosed by a closed bony ring,
    and bowel gas); ``muscle = (-29 <= HU <= 150) & ~bone``; ``fat = -190 <= HU <= -30``;
    ``inner = fill_holes(muscle | bone)`` (the wall-muscle ring is closed);
    ``visceral = fat & inner``, ``subcutaneous = fat & ~inner``. On the L3 slice these
    equal the truth masks (no partial volume, noise bounded), and the slices next to it
    differ by a few percent at most.

    Parameters
    ----------
    seed : int
        Habitus, fat thickness, vertebral heights, bowel loops, noise.
    slices : int
        Number of slices; ``slices * spacing_z`` must cover T12 to S1 (about 250 mm) plus
        10 mm.
    size : int
        Rows and columns.
    spacing_z : float
        Slice spacing and thickness in mm.
    pixel_mm : float, optional
        Pixel spacing; by default a 410 mm field of view (0.8 mm at 512).
    patient_size_m : float, optional
        Written as PatientSize (0010,1020); also gives ``skeletal_muscle_index``.

    Returns
    -------
    CtPhantom
        ``truth`` keys: ``levels`` (one of :data:`LEVELS` per slice, volume order: T first),
        ``level_ranges`` (level → [first, last] volume indices), ``disc`` (per slice: its
        centre lies in an intervertebral disc above S1; the lumbar-level design left such slices out of
        its data set), ``l3_index`` (the slice
        nearest the middle of the L3 body, which is also the middle of the L3 run since
        discs split halfway), ``areas_cm2`` (``muscle``, ``subcutaneous_fat``,
        ``visceral_fat`` on the L3 slice), ``masks_at_l3`` (the three boolean masks),
        ``areas_cm2_per_slice`` (the same areas on every slice), ``vertebrae`` (name →
        [top, bottom] depth in mm below slice 0), ``patient_size_m`` and
        ``skeletal_muscle_index`` (cm²/m², None without a height).
    """
    if slices < 2 or size < 32:
        raise ValueError(f"need at least 2 slices of 32², got {slices} of {size}²")
    mm = float(pixel_mm) if pixel_mm else 410.0 / size
    grid = _Grid(size, mm)
    r = _rng(seed, _ANATOMY)
    probe = _column(_rng(seed, _VESSELS), 0.0)
    by = {v.name: v for v in probe}
    span = by["S1"].bottom - by["T12"].top
    coverage = spacing_z * (slices - 1)
    if coverage < span + 10.0:
        raise ValueError(f"{slices} slices of {spacing_z} mm cover {coverage:.0f} mm; T12..S1 needs {span + 10:.0f} mm")
    column = _column(_rng(seed, _VESSELS), min(60.0, max(5.0, 0.28 * (coverage - span))))
    by = {v.name: v for v in column}
    if grid.n * mm < 300.0:
        raise ValueError(f"field of view {grid.n * mm:.0f} mm is smaller than the body; raise pixel_mm")

    hab = float(r.uniform(0.9, 1.12))
    sat_lat, sat_ant, sat_post = (float(r.uniform(16, 34)) * hab for _ in range(3))
    wall_lat, wall_ant, paraspinal = float(r.uniform(12, 16)), float(r.uniform(11, 14)), float(r.uniform(45, 55))
    kidney_d = (by["L1"].bottom + by["L2"].top) / 2 + 5.0
    kidney_h = min(52.0, by["L3"].centre - 12.0 - kidney_d)
    loops = _bowel_loops(_rng(seed, _EMBOLUS), hab)

    labels = np.empty((slices, size, size), dtype=np.uint8)
    levels: list[str] = []
    discs: list[bool] = []
    for k in range(slices):
        d = k * spacing_z
        level, u = _slice_level(column, d)
        levels.append(level)
        discs.append(d < by["S1"].top and not any(v.top <= d <= v.bottom for v in column))
        cv = _Canvas(grid, d)
        rx = 160.0 * hab * (1.0 + 0.06 * min(2.0, max(0.0, u - 5.0)))
        ry = 118.0 * hab
        cv.ellipse(0, 0, rx, ry, "subcutaneous_fat")
        r1x, r1y, c1 = rx - sat_lat, ry - (sat_ant + sat_post) / 2, (sat_ant - sat_post) / 2
        cv.ellipse(0, c1, r1x, r1y, "muscle")
        e1 = cv.lab == _T["muscle"]
        front, back = c1 - r1y + wall_ant, c1 + r1y - paraspinal
        r2x, r2y, c2 = r1x - wall_lat, (back - front) / 2, (back + front) / 2
        # A squarish cavity (room for the kidneys posterolaterally), kept inside the wall ring.
        wall = cv.region(0, c1, r1x - wall_lat, r1y - wall_ant)
        cv.ellipse(0, c2, r2x, r2y, "visceral_fat", power=2.8, clip=wall)
        cv.ellipse(0, back - 10, 24, 24, "muscle")  # the paraspinal muscles bulge round the spine
        cavity = cv.lab == _T["visceral_fat"]
        spine_y = back - 20.0
        cv.rect(-300, 300, ry + 8, ry + 18, "table")
        cv.rect(-300, 300, ry + 10, ry + 16, "air")
        _draw_abdominal_organs(cv, u, d, hab, spine_y, front, r2x, cavity, e1, kidney_d, kidney_h, loops)
        _draw_lumbar_spine(cv, column, d, u, hab, spine_y, r2x, e1)
        if u < 0.45:
            _draw_ribs(cv, 0.0, c1, r1x - 4, r1y - 4, first=-200, last=1e9)
        elif u < 1.3:
            _draw_ribs(cv, 0.0, c1, r1x - 4, r1y - 4, first=-200, last=1e9, posterior_only=True)
        labels[k] = cv.lab

    volume = _to_hu(labels, _ABDOMEN_HU, seed, _NOISE)
    pixel_cm2 = (mm / 10.0) ** 2
    tissues = ("muscle", "subcutaneous_fat", "visceral_fat")
    counts = {t: (labels == _T[t]).sum(axis=(1, 2)) for t in tissues}
    per_slice = [{t: float(counts[t][k] * pixel_cm2) for t in tissues} for k in range(slices)]
    l3 = by["L3"]
    l3_index = int(round(l3.centre / spacing_z))
    if not 0 <= l3_index < slices or levels[l3_index] != "L3":
        raise ValueError(f"seed {seed}: no slice within the L3 body at {spacing_z} mm spacing")
    ranges: dict[str, list[int]] = {}
    for k, level in enumerate(levels):
        ranges.setdefault(level, [k, k])[1] = k
    areas = per_slice[l3_index]
    truth: dict[str, Any] = {
        "levels": levels,
        "level_ranges": ranges,
        "disc": discs,
        "l3_index": l3_index,
        "areas_cm2": areas,
        "masks_at_l3": {t: labels[l3_index] == _T[t] for t in tissues},
        "areas_cm2_per_slice": per_slice,
        "vertebrae": {v.name: [v.top, v.bottom] for v in column},
        "patient_size_m": patient_size_m,
        "skeletal_muscle_index": areas["muscle"] / patient_size_m**2 if patient_size_m else None,
    }
    return CtPhantom("abdomen", volume, labels, mm, float(spacing_z), 150.0, int(seed), truth, patient_size_m)


@dataclass(frozen=True)
class _Loop:
    x: float
    y: float  # fraction from the front of the cavity (0) to the spine (1)
    radius: float
    u0: float
    u1: float
    gas: bool


def _bowel_loops(r: np.random.Generator, hab: float) -> list[_Loop]:
    """Vertical bowel loops: long ones spanning all of L3 (so areas near L3 change slowly), short ones elsewhere."""
    loops = [
        _Loop(
            float(r.uniform(-60, 60) * hab),
            float(r.uniform(0.12, 0.55)),
            float(r.uniform(10, 17)),
            float(r.uniform(0.8, 2.5)),
            float(r.uniform(4.3, 6.5)),
            bool(r.random() < 0.5),
        )
        for _ in range(7)
    ]
    for _ in range(6):
        u0 = float(r.choice([r.uniform(-0.5, 1.5), r.uniform(4.3, 6.0)]))
        loops.append(
            _Loop(
                float(r.uniform(-70, 70) * hab),
                float(r.uniform(0.1, 0.6)),
                float(r.uniform(9, 15)),
                u0,
                u0 + float(r.uniform(0.6, 1.2)),
                bool(r.random() < 0.5),
            )
        )
    return loops


def _draw_abdominal_organs(
    cv: _Canvas,
    u: float,
    d: float,
    hab: float,
    spine_y: float,
    front: float,
    r2x: float,
    cavity: np.ndarray,
    e1: np.ndarray,
    kidney_d: float,
    kidney_h: float,
    loops: list[_Loop],
) -> None:
    """Viscera by lumbar coordinate ``u`` (0 = T12 upper endplate, L3 = 3..4)."""
    if u < 0.5:  # lung bases in the posterior costophrenic recesses
        f = math.sqrt(min(1.0, (0.5 - u) / 1.0))
        for sx in (-1, 1):
            cv.ellipse(sx * 78 * hab, spine_y + 5, 42 * f, 28 * f, "lung", clip=e1)
    if u < 2.2:
        q = math.sqrt((2.2 - u) / 2.2) if u > 0 else 1.0
        cv.ellipse(-45 * hab, front + 80 * hab, 85 * hab * q, 75 * hab * q, "liver", clip=cavity)
    if u < 1.2:
        q = math.sqrt((1.2 - u) / 1.2) if u > 0 else 1.0
        cv.ellipse(78 * hab, spine_y - 10, 34 * q, 45 * q, "spleen", clip=cavity)
    for sx, dk in ((-1, kidney_d), (1, kidney_d - 8.0)):
        ks = 1.0 - ((d - dk) / kidney_h) ** 2
        if ks > 0:
            s = math.sqrt(ks)
            cv.ellipse(sx * 70 * hab, spine_y - 2, 27 * s, 20 * s, "kidney", angle=sx * 0.5, clip=cavity)
    if 1.2 < u < 1.8:  # transverse colon
        cv.ellipse(0, front + 22, 95 * hab, 13, "bowel", clip=cavity)
    depth = spine_y - 30 - front
    colons = ((-1, 20.0, 1.3, 6.6), (1, 16.0, 0.6, 6.3))
    for sx, rad, u0, u1 in colons:
        if u0 < u < u1:
            x = sx * (r2x - rad - 8)
            cv.ellipse(x, spine_y - 25, rad, rad, "bowel", clip=cavity)
            cv.ellipse(x, spine_y - 25 - 0.45 * rad, 0.5 * rad, 0.35 * rad, "gas", only=("bowel",))
    for loop in loops:
        if loop.u0 < u < loop.u1:
            y = front + 20 + loop.y * depth
            cv.ellipse(loop.x, y, loop.radius, loop.radius, "bowel", clip=cavity)
            if loop.gas:
                cv.ellipse(loop.x, y - 0.45 * loop.radius, 0.5 * loop.radius, 0.3 * loop.radius, "gas", only=("bowel",))
    w, h = _vertebral_size(u, hab)
    ventral = spine_y - h
    if u < 4.5:
        cv.ellipse(10, ventral - 14, 11, 11, "aorta", clip=cavity)
    elif u < 7.5:
        off = 6 + 22 * (u - 4.5)
        for sx in (-1, 1):
            cv.ellipse(sx * off, ventral - 12 - 5 * (u - 4.5), 6.5, 6.5, "aorta", clip=cavity)
    if u < 5.2:
        cv.ellipse(-22, ventral - 11, 13, 10, "vein", clip=cavity)
    elif u < 7.5:
        off = 4 + 20 * (u - 5.2)
        for sx in (-1, 1):
            cv.ellipse(sx * off, ventral - 5, 7.5, 7.5, "vein", clip=cavity)
    if u > 6.8:
        b = min(1.0, (u - 6.8) / 0.8)
        cv.ellipse(0, front + 45, 45 * b, 32 * b, "bladder", clip=cavity)


def _vertebral_size(u: float, hab: float) -> tuple[float, float]:
    """Half width and half depth (mm) of the vertebral body: bigger caudally (T12 ~40 mm wide, L5 ~52)."""
    c = min(6.0, max(0.0, u))
    return (20.0 + 1.1 * c) * (0.9 + 0.1 * hab), (14.0 + 0.5 * c) * (0.9 + 0.1 * hab)


def _draw_lumbar_spine(
    cv: _Canvas, column: list[_Vertebra], d: float, u: float, hab: float, spine_y: float, r2x: float, e1: np.ndarray
) -> None:
    """Psoas, vertebral body or disc with its closed posterior ring, transverse processes, pelvis."""
    w, h = _vertebral_size(u, hab)
    if u > 0.6:
        rp = min(24.0, 3.0 + 4.5 * (u - 0.6))
        shift = min(1.5, max(0.0, u - 6.0))
        for sx in (-1, 1):
            cv.ellipse(sx * (w + 0.85 * rp + 8 * shift), spine_y - 2 - 0.2 * rp - 15 * shift, 0.9 * rp, rp, "muscle")
    sacrum_top = next(v.top for v in column if v.name == "S1")
    if u >= 4.55:  # iliac crests then wings, joining the sacrum at the sacroiliac joints
        g = min(1.0, (u - 4.55) / 1.2)
        for sx in (-1, 1):
            cx, cy = sx * (r2x - 25 - 22 * (1 - g)), spine_y + 8 - 28 * g
            cv.ellipse(cx + sx * 6, cy + 6, (14 + 38 * g), 12, "muscle", angle=sx * -0.71, clip=e1)
            cv.ellipse(cx, cy, 15 + 40 * g, 7.5, "cortical_bone", angle=sx * -0.71, clip=e1)
            cv.ellipse(cx, cy, 12 + 40 * g, 4.5, "trabecular_bone", angle=sx * -0.71, clip=e1)
    if d >= sacrum_top + _SACRUM_MM:  # below the sacrum (long coverage): the femoral heads
        for sx in (-1, 1):
            cv.ellipse(sx * (r2x - 30), spine_y - 35, 24, 24, "cortical_bone", clip=e1)
            cv.ellipse(sx * (r2x - 30), spine_y - 35, 21, 21, "trabecular_bone", clip=e1)
        return
    if d >= sacrum_top:
        depth_in = d - sacrum_top
        shrink = max(0.35, 1.0 - depth_in / 120.0)
        y = spine_y + 0.25 * depth_in
        cv.ellipse(0, y, 62 * shrink + 8, 19, "cortical_bone")
        cv.ellipse(0, y, 62 * shrink + 5, 16, "trabecular_bone")
        cv.ellipse(0, y + 12, 11 * shrink + 3, 5, "canal")
        for sx in (-1, 1):
            cv.ellipse(sx * 24 * shrink, y + 2, 4, 4, "canal")
        return
    in_body = next((v for v in column if v.top <= d <= v.bottom), None)
    cv.ellipse(0, spine_y, w, h, "cortical_bone" if in_body else "disc")
    if in_body:
        cv.ellipse(0, spine_y, w - 2.5, h - 2.5, "trabecular_bone")
    canal_y = spine_y + h + 9
    cv.ellipse(0, canal_y, 18, 15, "cortical_bone")
    cv.rect(-4, 4, canal_y + 10, canal_y + 38, "cortical_bone")
    cv.ellipse(0, canal_y, 11, 8, "canal")
    if in_body and in_body.name in _TP_MM and abs(d - in_body.centre) < 0.32 * (in_body.bottom - in_body.top):
        half = 7.0 if in_body.name == "L5" else 4.5
        reach = w + _TP_MM[in_body.name]
        for sx in (-1, 1):
            x0, x1 = sorted((sx * 12.0, sx * reach))
            cv.rect(x0, x1, canal_y - 4 - half, canal_y - 4 + half, "cortical_bone")


# ----------------------------------------------------------------------------- DICOM: CT Image Storage

_DESCRIPTIONS: dict[str, dict[str, Any]] = {
    "ctpa": {
        "StudyDescription": "CTA CHEST PE PROTOCOL",
        "SeriesDescription": "CTA PE {thickness} mm",
        "ProtocolName": "CTA Chest PE",
        "BodyPartExamined": "CHEST",
        "ContrastBolusAgent": "Iohexol 350 mgI/ml",
        "ContrastBolusVolume": "60",
        "ConvolutionKernel": "B30f",
        "KVP": "100",
        # Mediastinal and lung windows, as a scanner offers them (PS3.3 C.11.2.1.2).
        "windows": [(40, 400), (-600, 1500)],
        "explanations": ["MEDIASTINUM", "LUNG"],
    },
    "abdomen": {
        "StudyDescription": "CT ABDOMEN PELVIS WITH CONTRAST",
        "SeriesDescription": "ABD PELVIS PORTAL VENOUS {thickness} mm",
        "ProtocolName": "CT Abdomen Pelvis Contrast",
        "BodyPartExamined": "ABDOMEN",
        "ContrastBolusAgent": "Iohexol 300 mgI/ml",
        "ContrastBolusVolume": "100",
        "ConvolutionKernel": "B31f",
        "KVP": "120",
        "windows": [(40, 400), (400, 1800)],
        "explanations": ["ABDOMEN", "BONE"],
    },
}


def _uid(entropy: str | None, *parts: object) -> str:
    """A new UID, or one derived from ``entropy`` and ``parts`` (same inputs, same UID)."""
    if entropy is None:
        return generate_uid()
    return generate_uid(entropy_srcs=[entropy, *map(str, parts)])


def _instance_numbers(order: str, n: int, rng: random.Random) -> list[int]:
    """InstanceNumber per volume slice: head first, feet first, or shuffled (not monotonic in z)."""
    if order == "head_first":
        return list(range(1, n + 1))
    if order == "feet_first":
        return list(range(n, 0, -1))
    if order == "shuffled":
        numbers = list(range(1, n + 1))
        while n > 2 and (numbers == sorted(numbers) or numbers == sorted(numbers, reverse=True)):
            rng.shuffle(numbers)
        return numbers
    raise ValueError(f"instance_numbers must be 'head_first', 'feet_first' or 'shuffled', got {order!r}")


def write_ct_series(
    phantom: CtPhantom,
    folder: Path | str,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_id: str | None = None,
    patient_name: str | None = None,
    accession_number: str = "",
    series_number: int = 2,
    instance_numbers: Literal["head_first", "feet_first", "shuffled"] = "head_first",
    file_names: Literal["shuffled", "ordered", "sop_uid"] = "shuffled",
    pixel_representation: Literal["uint16", "int16"] = "uint16",
    uid_entropy: str | None = None,
    descriptions: dict[str, str] | None = None,
    localizer: bool = False,
) -> list[Path]:
    """Write a phantom as CT Image Storage files (PS3.3 A.3), one per slice, into ``folder``.

    Modules: Patient, General Study, Patient Study (PatientSize), General Series, Frame of
    Reference, General Equipment, General Acquisition, General Image, Image Plane
    (PS3.3 C.7.6.2: axial IOP ``1\\0\\0\\0\\1\\0``, IPP of the first pixel, slice k at
    ``z_top_mm - k * spacing_z``), Image Pixel, Contrast/Bolus (PS3.3 C.7.6.4), CT Image
    (PS3.3 C.8.2.1), VOI LUT (two windows), SOP Common. Explicit VR Little Endian.

    Parameters
    ----------
    phantom : CtPhantom
        From :func:`ctpa_phantom` or :func:`abdomen_phantom`.
    folder : path
        Created if needed.
    study_uid, series_uid : str, optional
        New UIDs by default (derived from ``uid_entropy`` when that is given).
    patient_id, patient_name : str, optional
        ``PHANTOM-<kind>-<seed>`` and ``PHANTOM^<KIND>`` by default.
    series_number : int
        SeriesNumber (0020,0011).
    instance_numbers : {"head_first", "feet_first", "shuffled"}
        InstanceNumber (0020,0013) order; ``shuffled`` is a permutation monotonic in
        neither direction, for tests of ordering by position.
    file_names : {"shuffled", "ordered", "sop_uid"}
        ``IM#####.dcm`` numbered in a shuffled order (default) or in volume order, or
        ``<SOPInstanceUID>.dcm`` (the RSNA-PE layout).
    pixel_representation : {"uint16", "int16"}
        ``uint16``: 12 bits stored, HU + 1024, RescaleIntercept -1024 (most scanners);
        ``int16``: 16 bits signed, the HU themselves, intercept 0.
    uid_entropy : str, optional
        Makes every UID a deterministic function of this string (for data sets).
    descriptions : dict, optional
        Overrides of the scanner-like ``StudyDescription``, ``SeriesDescription``,
        ``ProtocolName``, ``BodyPartExamined`` or ``ContrastBolusAgent`` (an empty
        ContrastBolusAgent removes the Contrast/Bolus module), e.g. for routing tests.
    localizer : bool
        Also write a coronal scout (ImageType ``ORIGINAL\\PRIMARY\\LOCALIZER``, a
        projection of the volume) into the same series, as scanners often do; it is
        not in the returned list, its UID is ``truth["localizer_sop_uid"]``.

    Returns
    -------
    list of Path
        The files in volume order (slice 0, the most cranial, first). ``phantom.truth``
        gains ``study_uid``, ``series_uid``, ``sop_uids`` (volume order) and, for a CTPA,
        ``pe_sop_uids``; for an abdomen ``l3_sop_uid`` and ``levels_by_sop_uid``.
    """
    if pixel_representation not in ("uint16", "int16"):
        raise ValueError(f"pixel_representation must be 'uint16' or 'int16', got {pixel_representation!r}")
    if file_names not in ("shuffled", "ordered", "sop_uid"):
        raise ValueError(f"file_names must be 'shuffled', 'ordered' or 'sop_uid', got {file_names!r}")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    n = phantom.slices
    rng = random.Random(f"{phantom.kind}-{phantom.seed}-{uid_entropy}")
    numbers = _instance_numbers(instance_numbers, n, rng)
    order = list(range(n))
    while n > 2 and file_names == "shuffled" and order == sorted(order):
        rng.shuffle(order)
    study = study_uid or _uid(uid_entropy, "study")
    series = series_uid or _uid(uid_entropy, "series")
    frame = _uid(uid_entropy, "frame", series)
    sops = [_uid(uid_entropy, "sop", series, k) for k in range(n + int(localizer))]
    spec = dict(_DESCRIPTIONS[phantom.kind])
    unknown = set(descriptions or {}) - {
        "StudyDescription",
        "SeriesDescription",
        "ProtocolName",
        "BodyPartExamined",
        "ContrastBolusAgent",
    }
    if unknown:
        raise ValueError(f"descriptions cannot override {sorted(unknown)}")
    spec.update(descriptions or {})
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    thickness = f"{phantom.spacing_z:g}"
    half = (phantom.volume_hu.shape[1] - 1) / 2.0 * phantom.pixel_mm
    paths: list[Path] = []
    for k in range(n + int(localizer)):
        z = phantom.z_top_mm - k * phantom.spacing_z
        scout = k == n
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sops[k]
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
        ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = time
        ds.AccessionNumber = accession_number
        ds.Modality = "CT"
        ds.Manufacturer = "ainode synthetic phantom"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = spec["StudyDescription"]
        ds.SeriesDescription = spec["SeriesDescription"].format(thickness=thickness)
        ds.ManufacturerModelName = "CT PHANTOM"
        ds.PatientName = patient_name or f"PHANTOM^{phantom.kind.upper()}"
        ds.PatientID = patient_id or f"PHANTOM-{phantom.kind}-{phantom.seed}"
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        if phantom.patient_size_m:
            ds.PatientSize = f"{phantom.patient_size_m:.2f}"
        if spec["ContrastBolusAgent"]:
            ds.ContrastBolusAgent = spec["ContrastBolusAgent"]
            ds.ContrastBolusRoute = "IV"
            ds.ContrastBolusVolume = spec["ContrastBolusVolume"]
        ds.BodyPartExamined = spec["BodyPartExamined"]
        ds.SliceThickness = thickness
        ds.KVP = spec["KVP"]
        ds.DataCollectionDiameter = "500"
        ds.SoftwareVersions = "ainode-phantom-1"
        ds.ProtocolName = spec["ProtocolName"]
        ds.ReconstructionDiameter = f"{phantom.pixel_mm * phantom.volume_hu.shape[1]:.1f}"
        ds.GantryDetectorTilt = "0"
        ds.ConvolutionKernel = spec["ConvolutionKernel"]
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.StudyID = "1"
        ds.SeriesNumber = series_number
        ds.AcquisitionNumber = 1
        ds.FrameOfReferenceUID = frame
        ds.PositionReferenceIndicator = ""
        if scout:  # a coronal projection through the volume, rows along z (PS3.3 C.8.2.1.1.1)
            ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
            ds.InstanceNumber = n + 1
            ds.ImagePositionPatient = [f"{-half:.4f}", "0", f"{phantom.z_top_mm:.4f}"]
            ds.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
            ds.PixelSpacing = [f"{phantom.spacing_z:.6g}", f"{phantom.pixel_mm:.6g}"]
            hu = np.rint(phantom.volume_hu.mean(axis=1)).astype(np.int16)
        else:
            ds.InstanceNumber = numbers[k]
            ds.ImagePositionPatient = [f"{-half:.4f}", f"{-half:.4f}", f"{z:.4f}"]
            ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
            ds.SliceLocation = f"{z:.4f}"
            ds.PixelSpacing = [f"{phantom.pixel_mm:.6g}", f"{phantom.pixel_mm:.6g}"]
            hu = phantom.volume_hu[k]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = hu.shape
        ds.BitsAllocated = 16
        if pixel_representation == "uint16":
            ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
            ds.RescaleIntercept = "-1024"
            pixels = (hu.astype(np.int32) + 1024).astype(np.uint16)
        else:
            ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 1
            ds.RescaleIntercept = "0"
            pixels = hu.astype(np.int16)
        ds.WindowCenter = [str(c) for c, _ in spec["windows"]]
        ds.WindowWidth = [str(w) for _, w in spec["windows"]]
        ds.WindowCenterWidthExplanation = spec["explanations"]
        ds.RescaleSlope = "1"
        if not scout:  # dciodvfy: a localizer's rescaled values are not to be called HU
            ds.RescaleType = "HU"
        ds.PixelData = pixels.tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        if file_names == "sop_uid":
            name = f"{ds.SOPInstanceUID}.dcm"
        elif scout:
            name = "IM00000.dcm"
        elif file_names == "ordered":
            name = f"IM{k + 1:05d}.dcm"
        else:
            name = f"IM{order[k] + 1:05d}.dcm"
        path = out / name
        ds.save_as(path, enforce_file_format=True)
        if not scout:
            paths.append(path)

    phantom.truth.update(study_uid=study, series_uid=series, sop_uids=list(sops[:n]))
    if localizer:
        phantom.truth["localizer_sop_uid"] = sops[n]
    if phantom.kind == "ctpa":
        phantom.truth["pe_sop_uids"] = [sops[k] for k in phantom.truth["pe_slices"]]
    else:
        phantom.truth["l3_sop_uid"] = sops[phantom.truth["l3_index"]]
        phantom.truth["levels_by_sop_uid"] = dict(zip(sops, phantom.truth["levels"], strict=False))
    return paths
