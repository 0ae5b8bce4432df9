"""Synthetic frontal (PA) chest radiographs with planted findings and their ground truth.

A phantom is a grey image in 0..1, dense white (MONOCHROME2): air outside the body,
soft tissue of the body outline, two lungs darker than soft tissue with faint vessel
markings, the mediastinum and heart shadow, ribs as faint arcs, clavicles, the
diaphragm domes and quantum-like noise. Findings are drawn on top of it:

========================  ==========================================================
NIH ChestX-ray14 label    What is drawn
========================  ==========================================================
Nodule                    a dense round opacity 15–30 mm across inside a lung (a
                          solitary nodule is up to 3 cm; larger is a mass)
Mass                      a dense lobulated opacity 35–60 mm across inside a lung
Effusion                  a basal opacity filling the costophrenic angle, its upper
                          edge a meniscus rising laterally
Cardiomegaly              a heart shadow wider than half the thoracic width
                          (cardiothoracic ratio 0.56–0.64; normal 0.40–0.47)
Pneumothorax              a lucent rim without lung markings at an apex or the
                          lateral side of a lung, bounded by a thin pleural line
Consolidation             patchy dense opacity confined to a lower lobe
Infiltration              fainter, patchier opacity in a lung zone
Atelectasis               a plate-like band opacity in a lower zone
========================  ==========================================================

Each localisable finding has a box in pixel coordinates ``(x_min, y_min, x_max,
y_max)`` (inclusive-exclusive, columns then rows) around what was drawn. The four-class design's
four classes are drawn as **caricatures meant only to give demo weights something
to learn, not as medicine**: ``pneumonia`` = lobar consolidation (labels Pneumonia,
Consolidation), ``covid19`` = bilateral peripheral ground-glass patches (label
Infiltration), ``tuberculosis`` = upper-lobe opacities with lucent cavities (labels
Infiltration, Nodule), ``normal`` = nothing added.

Everything is drawn from random generators seeded by ``(seed, part)``, one per
part, so the same seed gives the same anatomy and noise whatever the findings: a
phantom with a finding differs from the normal one of the same seed only where the
finding was drawn. The image spans a 43 cm detector (pixel spacing 430 mm / size).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "GENERATOR_VERSION",
    "FINDINGS",
    "FOUR_CLASSES",
    "NIH_LABELS",
    "ChestPhantom",
    "FindingBox",
    "chest_phantom",
]

GENERATOR_VERSION = 1
"""Version of what this module writes (the chest phantoms (anatomy, findings, noise, boxes)): bump it when a
change alters the output for the same arguments, so that the demo recipes built on it are rebuilt
(``training.demo.recipe_hash``)."""

NIH_LABELS = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
)
"""The 14 NIH ChestX-ray14 labels as spelled in ``Data_Entry_2017.csv``."""

FINDINGS = (
    "Nodule",
    "Mass",
    "Effusion",
    "Cardiomegaly",
    "Pneumothorax",
    "Consolidation",
    "Infiltration",
    "Atelectasis",
)
"""The findings :func:`chest_phantom` can plant (a subset of :data:`NIH_LABELS`)."""

FOUR_CLASSES = ("covid19", "normal", "pneumonia", "tuberculosis")
"""The four-class design's classes (see the module docstring: caricatures for demo weights)."""

DETECTOR_MM = 430.0
_AIR, _SOFT, _LUNG, _HEART, _ABDOMEN = 0.05, 0.50, 0.24, 0.64, 0.56
# Part numbers of the per-part random generators (fixed: changing one changes every phantom).
_ANATOMY, _NOISE, _MARKINGS = 0, 1, 2
_FINDING_PART = {name: 10 + i for i, name in enumerate(FINDINGS)}
_CLASS_PART = {name: 30 + i for i, name in enumerate(FOUR_CLASSES)}


@dataclass(frozen=True)
class FindingBox:
    """A planted finding's label and box in pixel coordinates (columns x, rows y)."""

    label: str
    x_min: int
    y_min: int
    x_max: int
    y_max: int

    def as_tuple(self) -> tuple[int, int, int, int]:
        """``(x_min, y_min, x_max, y_max)``."""
        return (self.x_min, self.y_min, self.x_max, self.y_max)


@dataclass
class ChestPhantom:
    """A synthetic PA chest radiograph and its ground truth.

    Attributes
    ----------
    image : numpy.ndarray
        float32 (size, size) in 0..1, dense white (MONOCHROME2).
    labels : tuple of str
        NIH ChestX-ray14 labels present, sorted; empty for a normal phantom.
    boxes : list of FindingBox
        One or more boxes per localisable finding.
    four_class : str
        The four-class design's class: ``normal``, ``pneumonia``, ``covid19`` or ``tuberculosis``.
    cardiothoracic_ratio : float
        Widest heart shadow / widest inner thoracic width.
    thorax : tuple of int
        ``(x_left, x_right)``: the inner thoracic width's columns.
    heart : tuple of int
        ``(x_left, x_right)``: the heart shadow's widest columns.
    pixel_spacing_mm : float
        Spacing of rows and columns in mm at the detector.
    seed : int
        The random seed it was drawn from.
    """

    image: np.ndarray
    labels: tuple[str, ...]
    boxes: list[FindingBox]
    four_class: str
    cardiothoracic_ratio: float
    thorax: tuple[int, int]
    heart: tuple[int, int]
    pixel_spacing_mm: float
    seed: int
    lung_mask: np.ndarray = field(repr=False)

    @property
    def label_string(self) -> str:
        """The labels as in ``Data_Entry_2017.csv`` (``A|B``, or ``No Finding``)."""
        return "|".join(self.labels) if self.labels else "No Finding"

    def boxes_of(self, label: str) -> list[FindingBox]:
        """The boxes of one label."""
        return [b for b in self.boxes if b.label == label]


def _rng(seed: int, part: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, part])


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur by FFT (wrap-around edges; used on textures and soft masks only)."""
    rows, cols = image.shape
    fy = np.fft.fftfreq(rows)[:, None]
    fx = np.fft.rfftfreq(cols)[None, :]
    kernel = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fx**2 + fy**2))
    return np.fft.irfft2(np.fft.rfft2(image) * kernel, s=image.shape)


def _smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur truncated at 3 sigma (separable, edges repeated): a change stays local."""
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    padded = np.pad(image, radius, mode="edge")
    rows = sum(w * padded[:, k : k + image.shape[1]] for k, w in enumerate(taps))
    return sum(w * rows[k : k + image.shape[0], :] for k, w in enumerate(taps))


def _box_of(mask: np.ndarray, label: str) -> FindingBox:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise AssertionError(f"{label}: nothing was drawn")
    return FindingBox(label, int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


@dataclass
class _Anatomy:
    size: int
    yy: np.ndarray
    xx: np.ndarray
    lungs: list[np.ndarray]  # image-left (patient's right) lung, image-right lung
    lung_centres: list[tuple[float, float]]
    lung_radii: list[tuple[float, float]]
    dome: np.ndarray  # row of the diaphragm per column
    thorax: tuple[int, int]


def _anatomy(seed: int, size: int, ctr: float) -> tuple[np.ndarray, _Anatomy, tuple[int, int], np.ndarray]:
    """Draw the normal chest; return image, geometry, heart columns and the heart mask."""
    r = _rng(seed, _ANATOMY)
    s = float(size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    image = np.full((size, size), _AIR)

    # Body: an ellipse for the trunk, widened at the shoulders, plus the neck.
    cx = s * (0.5 + r.uniform(-0.01, 0.01))
    body = ((xx - cx) / (s * 0.47)) ** 2 + ((yy - s * 0.62) / (s * 0.56)) ** 2 <= 1.0
    shoulders = (np.abs(xx - cx) <= s * 0.47) & (yy >= s * 0.12) & (yy <= s * 0.35)
    neck = (np.abs(xx - cx) <= s * 0.09) & (yy < s * 0.15)
    image[body | shoulders | neck] = _SOFT

    # Lungs: ellipses cut below by the diaphragm domes (the right dome a little higher).
    half_gap = s * r.uniform(0.055, 0.065)
    lung_rx = s * r.uniform(0.155, 0.165)
    lung_ry = s * r.uniform(0.27, 0.29)
    lung_cy = s * 0.48
    centres = [(cx - half_gap - lung_rx, lung_cy), (cx + half_gap + lung_rx, lung_cy)]
    dome_top = [s * r.uniform(0.66, 0.68), s * r.uniform(0.68, 0.70)]
    dome = np.empty(size)
    lungs = []
    for side, (lx, ly) in enumerate(centres):
        # Dome: highest near the lung's middle, falling towards the costophrenic angle.
        columns = np.arange(size, dtype=np.float64)
        dome_side = dome_top[side] + s * 0.10 * ((columns - lx) / lung_rx) ** 2
        in_side = (columns < cx) if side == 0 else (columns >= cx)
        dome[in_side] = dome_side[in_side]
        ellipse = ((xx - lx) / lung_rx) ** 2 + ((yy - ly) / lung_ry) ** 2 <= 1.0
        lungs.append(ellipse & (yy < dome_side[None, :]))
    lung_any = lungs[0] | lungs[1]
    image[lung_any] = _LUNG

    # Abdomen below the domes, inside the body.
    abdomen = (yy >= dome[None, :]) & body
    image[abdomen] = _ABDOMEN

    # Mediastinum (with the spine behind it) and the heart shadow.
    mediastinum = (np.abs(xx - cx) <= s * 0.055) & (yy < s * 0.62) & (yy > s * 0.08)
    thorax = (int(round(centres[0][0] - lung_rx)), int(round(centres[1][0] + lung_rx)))
    thoracic_width = thorax[1] - thorax[0]
    heart_width = ctr * thoracic_width
    # The heart lies two thirds to the patient's left (image right) of the midline.
    heart_left, heart_right = cx - heart_width / 3.0, cx + 2.0 * heart_width / 3.0
    hx, hy = (heart_left + heart_right) / 2.0, s * 0.58
    heart = (((xx - hx) / (heart_width / 2.0)) ** 2 + ((yy - hy) / (s * 0.11)) ** 2 <= 1.0) & (yy < dome[None, :] + 4)
    image[mediastinum | heart] = _HEART

    # Lung markings: vessels fanning out from the hila, fading towards the periphery.
    m = _rng(seed, _MARKINGS)
    texture = _blur(m.normal(size=(size, size)), size / 256.0)
    texture /= texture.std() + 1e-9
    hilar = np.minimum.reduce([np.hypot(xx - x0, yy - y0) for x0, y0 in centres]) / (s * 0.3)
    image += lung_any * 0.035 * np.clip(texture, -2.5, 2.5) * np.clip(1.2 - hilar, 0.2, 1.0)

    # Ribs: faint arcs, posterior ribs sloping down laterally, over the rib cage.
    cage = ((xx - cx) / (s * 0.37)) ** 2 + ((yy - s * 0.48) / (s * 0.33)) ** 2 <= 1.0
    thickness = s * 0.012
    for k in range(10):
        y0 = s * (0.16 + 0.053 * k + r.uniform(-0.004, 0.004))
        for sign in (-1.0, 1.0):
            lateral = np.clip(sign * (xx - cx) / (s * 0.35), 0.0, None)
            arc = y0 + s * 0.06 * lateral**1.5
            rib = (np.abs(yy - arc) <= thickness) & (sign * (xx - cx) > s * 0.03) & cage
            image[rib] += 0.05
    # Clavicles: two bright bars near the top.
    for sign in (-1.0, 1.0):
        clav_y = s * 0.14 + s * 0.05 * np.clip(sign * (xx - cx) / (s * 0.3), 0, 1)
        clavicle = (np.abs(yy - clav_y) <= s * 0.008) & (np.abs(xx - cx) > s * 0.04) & (np.abs(xx - cx) < s * 0.32)
        image[clavicle] += 0.10

    heart_cols = (int(round(heart_left)), int(round(heart_right)))
    anatomy = _Anatomy(size, yy, xx, lungs, centres, [(lung_rx, lung_ry)] * 2, dome, thorax)
    return image, anatomy, heart_cols, heart


def _point_in_lung(
    r: np.random.Generator, a: _Anatomy, side: int, radius: float, zone: str = "any"
) -> tuple[float, float]:
    """A random centre whose disc of ``radius`` lies inside lung ``side`` (and in the zone, if given)."""
    (lx, ly), (rx, ry) = a.lung_centres[side], a.lung_radii[side]
    lung = a.lungs[side]
    for _ in range(500):
        x, y = lx + r.uniform(-0.8, 0.8) * rx, ly + r.uniform(-0.85, 0.85) * ry
        if zone == "upper" and y > ly - 0.25 * ry or zone == "lower" and y < ly + 0.15 * ry:
            continue
        disc = (a.xx - x) ** 2 + (a.yy - y) ** 2 <= (radius + 2) ** 2
        if np.all(lung[disc]):
            return x, y
    raise ValueError(f"no room for a lesion of radius {radius:.1f} px in the lung at this image size")


def _round_opacity(
    image: np.ndarray,
    a: _Anatomy,
    x: float,
    y: float,
    radius: float,
    amplitude: float,
    lobulation: float,
    r: np.random.Generator,
) -> np.ndarray:
    """Add a soft-edged (optionally lobulated) round opacity; return its mask."""
    angle = np.arctan2(a.yy - y, a.xx - x)
    phases = r.uniform(0, 2 * np.pi, 3)
    edge = radius * (1 + lobulation * sum(np.sin((k + 2) * angle + p) / (k + 1) for k, p in enumerate(phases)))
    dist = np.hypot(a.xx - x, a.yy - y)
    profile = np.clip((edge - dist) / max(1.0, 0.15 * radius) + 0.5, 0.0, 1.0)
    image += amplitude * profile
    return profile > 0


def _patches(
    image: np.ndarray,
    a: _Anatomy,
    region: np.ndarray,
    r: np.random.Generator,
    count: int,
    amplitude: float,
    sigma: float,
) -> np.ndarray:
    """Add blurred random blobs confined to ``region``; return where they add visibly."""
    seeds = np.zeros_like(image)
    ys, xs = np.nonzero(region)
    picks = r.choice(len(xs), size=count, replace=False)
    seeds[ys[picks], xs[picks]] = 1.0
    blobs = _blur(seeds, sigma)
    blobs = np.clip(blobs / blobs.max() * 1.6, 0.0, 1.0) * region
    mask = blobs > 0.15
    image += amplitude * blobs * mask
    return mask


def _plant(name: str, image: np.ndarray, a: _Anatomy, r: np.random.Generator, mm: float) -> list[FindingBox]:
    side = int(r.integers(2))
    if name in ("Nodule", "Mass"):
        diameter = r.uniform(15.0, 30.0) if name == "Nodule" else r.uniform(35.0, 60.0)
        radius = diameter / mm / 2.0
        x, y = _point_in_lung(r, a, side, radius)
        mask = _round_opacity(
            image, a, x, y, radius, 0.38 if name == "Nodule" else 0.33, 0.0 if name == "Nodule" else 0.08, r
        )
        return [_box_of(mask, name)]
    lung = a.lungs[side]
    (lx, ly), (rx, ry) = a.lung_centres[side], a.lung_radii[side]
    lateral = -1.0 if side == 0 else 1.0  # the lung's outer side in image columns
    if name == "Effusion":
        # Fluid fills the base; its upper edge (meniscus) climbs towards the lateral chest wall.
        level = ly + ry * r.uniform(0.35, 0.55)
        outward = np.clip(lateral * (a.xx - lx) / rx, -1.0, 1.0)
        meniscus = level - ry * 0.35 * np.clip(outward + 0.3, 0.0, None) ** 2
        fluid = lung & (a.yy >= meniscus)
        image[fluid] = _SOFT + 0.04 + 0.02 * (a.yy[fluid] - level) / ry
        return [_box_of(fluid, name)]
    if name == "Pneumothorax":
        # The collapsed lung edge retreats from the apex or lateral wall; the rim is air without markings.
        apex = bool(r.integers(2))
        shift = (0.0, ry * r.uniform(0.22, 0.32)) if apex else (-lateral * rx * r.uniform(0.25, 0.35), 0.0)
        shrink = 0.88 if apex else 0.8
        inner = (((a.xx - lx - shift[0]) / (rx * shrink)) ** 2 + ((a.yy - ly - shift[1]) / (ry * 0.95)) ** 2) <= 1.0
        rim = lung & ~inner
        rim &= (a.yy < ly - 0.2 * ry) if apex else (lateral * (a.xx - lx) > 0.2 * rx)
        pleura = inner & ~np.pad(
            inner[1:-1, 1:-1] & inner[:-2, 1:-1] & inner[2:, 1:-1] & inner[1:-1, :-2] & inner[1:-1, 2:], 1
        )
        pleura &= lung & (np.roll(rim, 1, 0) | np.roll(rim, -1, 0) | np.roll(rim, 1, 1) | np.roll(rim, -1, 1))
        image[rim] = _LUNG - 0.10
        image[pleura] = _LUNG + 0.10
        return [_box_of(rim | pleura, name)]
    if name in ("Consolidation", "Infiltration"):
        zone = (
            (a.yy > ly + 0.05 * ry)
            if name == "Consolidation"
            else (np.abs(a.yy - ly - r.uniform(-0.4, 0.4) * ry) < 0.35 * ry)
        )
        region = lung & zone
        if name == "Consolidation":
            mask = _patches(image, a, region, r, count=int(r.integers(5, 9)), amplitude=0.26, sigma=a.size / 40.0)
        else:
            mask = _patches(image, a, region, r, count=int(r.integers(8, 14)), amplitude=0.14, sigma=a.size / 70.0)
        return [_box_of(mask, name)]
    if name == "Atelectasis":
        # Plate-like band: a thin slightly oblique strip across the lower zone.
        y0 = ly + ry * r.uniform(0.2, 0.45)
        slope = r.uniform(-0.25, 0.25)
        band = lung & (np.abs(a.yy - (y0 + slope * (a.xx - lx))) <= a.size * r.uniform(0.012, 0.02))
        band &= np.abs(a.xx - lx) <= 0.75 * rx
        image[band] += 0.24
        return [_box_of(band, name)]
    raise ValueError(f"unknown finding {name!r}; choose from {', '.join(FINDINGS)}")


def _plant_class(
    name: str, image: np.ndarray, a: _Anatomy, r: np.random.Generator, mm: float
) -> tuple[list[FindingBox], set[str]]:
    if name == "pneumonia":
        # Lobar consolidation: one lower lobe largely and homogeneously opacified.
        side = int(r.integers(2))
        (lx, ly), (rx, ry) = a.lung_centres[side], a.lung_radii[side]
        lobe = a.lungs[side] & (a.yy > ly + r.uniform(-0.05, 0.15) * ry)
        mask = _patches(image, a, lobe, r, count=14, amplitude=0.28, sigma=a.size / 30.0)
        return [_box_of(mask, "Pneumonia"), _box_of(mask, "Consolidation")], {"Pneumonia", "Consolidation"}
    if name == "covid19":
        # Bilateral, peripheral, lower-zone ground-glass patches (faint).
        boxes = []
        for side in (0, 1):
            (lx, ly), (rx, ry) = a.lung_centres[side], a.lung_radii[side]
            lateral = -1.0 if side == 0 else 1.0
            periphery = a.lungs[side] & (lateral * (a.xx - lx) > 0.3 * rx) & (a.yy > ly - 0.2 * ry)
            boxes.append(
                _box_of(_patches(image, a, periphery, r, count=8, amplitude=0.12, sigma=a.size / 45.0), "Infiltration")
            )
        return boxes, {"Infiltration"}
    if name == "tuberculosis":
        # Upper-lobe opacities, some with a lucent cavity (a thick-walled ring).
        boxes = []
        for side in sorted({int(r.integers(2)), int(r.integers(2))}):
            (lx, ly), (rx, ry) = a.lung_centres[side], a.lung_radii[side]
            upper = a.lungs[side] & (a.yy < ly - 0.3 * ry)
            boxes.append(
                _box_of(_patches(image, a, upper, r, count=6, amplitude=0.2, sigma=a.size / 50.0), "Infiltration")
            )
            radius = r.uniform(10.0, 18.0) / mm
            x, y = _point_in_lung(r, a, side, radius, zone="upper")
            wall = _round_opacity(image, a, x, y, radius, 0.28, 0.05, r)
            cavity = np.hypot(a.xx - x, a.yy - y) <= 0.55 * radius
            image[cavity] -= 0.32
            boxes.append(_box_of(wall, "Nodule"))
        return boxes, {"Infiltration", "Nodule"}
    if name == "normal":
        return [], set()
    raise ValueError(f"unknown four-class class {name!r}; choose from {', '.join(FOUR_CLASSES)}")


def chest_phantom(
    seed: int, findings: Iterable[str] = (), *, four_class: str = "normal", size: int = 512
) -> ChestPhantom:
    """Draw a synthetic PA chest radiograph with planted findings.

    Parameters
    ----------
    seed : int
        Seeds anatomy, noise and each finding's placement (same seed, same image).
    findings : iterable of str
        Any of :data:`FINDINGS` (NIH ChestX-ray14 spelling, case-insensitive);
        ``"normal"`` or nothing for none.
    four_class : str
        The four-class design's class to draw (a caricature, see the module docstring).
    size : int
        Rows and columns (at least 128); the image spans 43 cm.

    Returns
    -------
    ChestPhantom
        The image and its ground truth.

    Raises
    ------
    ValueError
        Unknown finding or class, or a size too small.
    """
    if size < 128:
        raise ValueError(f"size must be at least 128 pixels, got {size}")
    canonical = {f.lower(): f for f in FINDINGS}
    wanted: list[str] = []
    for name in findings:
        key = str(name).strip().lower()
        if key in ("normal", "no finding"):
            continue
        if key not in canonical:
            raise ValueError(f"unknown finding {name!r}; choose from {', '.join(FINDINGS)} or 'normal'")
        if canonical[key] not in wanted:
            wanted.append(canonical[key])
    if four_class not in FOUR_CLASSES:
        raise ValueError(f"unknown four-class class {four_class!r}; choose from {', '.join(FOUR_CLASSES)}")

    mm = DETECTOR_MM / size
    ctr_rng = _rng(seed, _FINDING_PART["Cardiomegaly"])
    ctr = ctr_rng.uniform(0.56, 0.64) if "Cardiomegaly" in wanted else ctr_rng.uniform(0.40, 0.47)
    image, anatomy, heart_cols, heart = _anatomy(seed, size, ctr)
    boxes: list[FindingBox] = []
    labels: set[str] = set()
    # Class patterns first, then findings, in a fixed order so that results do not depend on argument order.
    class_boxes, class_labels = _plant_class(four_class, image, anatomy, _rng(seed, _CLASS_PART[four_class]), mm)
    boxes += class_boxes
    labels |= class_labels
    for name in FINDINGS:
        if name not in wanted:
            continue
        labels.add(name)
        if name == "Cardiomegaly":
            boxes.append(_box_of(heart, name))
        else:
            boxes += _plant(name, image, anatomy, _rng(seed, _FINDING_PART[name]), mm)

    noise = _rng(seed, _NOISE).normal(0.0, 0.012, size=(size, size))
    image = np.clip(_smooth(image, 0.6 * size / 512) + noise, 0.0, 1.0).astype(np.float32)
    thoracic = anatomy.thorax[1] - anatomy.thorax[0]
    return ChestPhantom(
        image=image,
        labels=tuple(sorted(labels)),
        boxes=boxes,
        four_class=four_class,
        cardiothoracic_ratio=(heart_cols[1] - heart_cols[0]) / thoracic,
        thorax=anatomy.thorax,
        heart=heart_cols,
        pixel_spacing_mm=mm,
        seed=int(seed),
        lung_mask=anatomy.lungs[0] | anatomy.lungs[1],
    )
