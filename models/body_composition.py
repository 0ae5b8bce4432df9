"""Body composition on one axial CT slice: muscle and fat areas by HU ranges.

This is the step the lumbar-level design (see :mod:`models`) names next: segment the L3 slice
it finds into subcutaneous fat, visceral fat and muscle, and measure them.

Input: a slice in Hounsfield units (``iter_hu_batches``, PS3.3 C.11.1.1.2), its PixelSpacing
(row, column spacing in mm, PS3.3 10.7.1.3) and the patient's height (PatientSize
(0010,1020), in m) when present.

Method (classical, no model; every step a mask operation on the rows × columns grid):

1. **Body**: pixels above −500 HU, opened by ``opening_mm`` so that thin contacts to the
   table/bed break, the largest 8-connected component kept (the table, clothes and air
   are other components or below the threshold) and its holes filled (bowel gas and lung
   bases are inside the body).
2. **Skin**: the outer ``skin_mm`` band of the body. Skin has soft-tissue HU, so without
   this band it would count as muscle and close the "muscle ring" at the body outline.
3. **Tissues by HU** inside the body: skeletal muscle −29..150 HU, adipose tissue
   −190..−30 HU (the lumbar-level design's ranges, bounds inclusive).
4. **Abdominal wall**: the soft-tissue (muscle HU) pixels outside the skin band, opened by
   ``wall_opening_mm`` (removes fascia strands and partial-volume rims); its components
   of at least ``min_component_cm2``. Their **convex hull** is the boundary between the
   subcutaneous and the visceral compartment: the wall muscles (rectus, obliques,
   transversus), the paraspinal muscles and quadratus lumborum encircle the cavity, and
   the hull bridges the gaps between them (linea alba, lateral fascia) where a filled
   ring would leak.
5. **Subcutaneous fat** = adipose pixels of the body outside the hull; **visceral fat** =
   adipose pixels inside it.
6. **Skeletal muscle** = muscle-HU pixels outside the skin band and not enclosed by bone
   (the spinal canal, ≈ 10 HU, lies inside the vertebral ring) that belong to a
   soft-tissue component reaching outside the hull's inner part (the wall and back
   muscles) or touching bone (> 150 HU: psoas and paraspinal muscles lie on the
   vertebra). Soft-tissue components lying free in the visceral cavity (bowel, kidney,
   liver have muscle-range HU) are not muscle. Separating an organ that touches a
   muscle needs a learned segmentation; this method does not try.

Areas are pixel counts × row spacing × column spacing / 100 (cm²). The skeletal muscle
index (SMI) is muscle area / height² (cm²/m²). The masks returned are boolean rows ×
columns arrays, for the DICOM Segmentation (PS3.3 A.51).

Connected components, hole filling and the hull are implemented here in NumPy (run-length
labelling), so the node needs no image-processing library.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from core.findings import BodyComposition

__all__ = [
    "MUSCLE_HU",
    "FAT_HU",
    "BODY_HU",
    "BONE_HU",
    "measure",
    "label_components",
    "fill_holes",
    "convex_hull_mask",
]

MUSCLE_HU = (-29.0, 150.0)
"""Skeletal muscle range (inclusive), as the lumbar-level design and the sarcopenia literature use."""
FAT_HU = (-190.0, -30.0)
"""Adipose tissue range (inclusive)."""
BODY_HU = -500.0
"""Pixels above this are tissue (the body, the table); below, air."""
BONE_HU = 150.0
"""Above the muscle range: bone (and contrast); used to keep muscles lying on the spine."""

Radius = tuple[int, int]
"""Half-sizes (rows, columns) in pixels of a rectangular structuring element."""


def measure(
    hu: np.ndarray,
    pixel_spacing_mm: tuple[float, float],
    patient_size_m: float | None,
    sop_uid: str,
    *,
    skin_mm: float = 3.0,
    opening_mm: float = 3.0,
    wall_opening_mm: float = 1.5,
    min_component_cm2: float = 1.0,
) -> tuple[BodyComposition, dict[str, np.ndarray]]:
    """Measure skeletal muscle, subcutaneous and visceral fat on one axial slice.

    Parameters
    ----------
    hu : numpy.ndarray
        The slice in Hounsfield units, shape (rows, columns).
    pixel_spacing_mm : tuple of float
        PixelSpacing (0028,0030): row spacing, column spacing in mm (PS3.3 10.7.1.3).
    patient_size_m : float or None
        PatientSize (0010,1020) in metres; the skeletal muscle index needs it.
    sop_uid : str
        SOP Instance UID of the slice, recorded in the result.
    skin_mm, opening_mm, wall_opening_mm, min_component_cm2 : float
        Method parameters (see the module docstring).

    Returns
    -------
    tuple of (BodyComposition, dict)
        The areas in cm² (and the SMI in cm²/m² when the height is known), and the boolean
        masks ``"muscle"``, ``"subcutaneous_fat"``, ``"visceral_fat"`` (rows × columns).

    Raises
    ------
    ValueError
        If the slice is not 2-D, a spacing is not positive, or no body is found.
    """
    if hu.ndim != 2:
        raise ValueError(f"expected one slice of shape (rows, columns), got {hu.shape}")
    row_mm, col_mm = (float(v) for v in pixel_spacing_mm)
    if row_mm <= 0 or col_mm <= 0:
        raise ValueError(f"PixelSpacing must be positive, got {pixel_spacing_mm}")
    if patient_size_m is not None and not 0.3 <= patient_size_m <= 3.0:
        patient_size_m = None  # PatientSize out of human range: a typo (cm for m) rather than a height
    spacing = (row_mm, col_mm)
    hu = np.asarray(hu, dtype=np.float32)

    body = _body_mask(hu, _pixels(opening_mm / 2.0, spacing))
    if not body.any():
        raise ValueError(f"slice {sop_uid}: no body found (no pixel above {BODY_HU:g} HU)")
    inner = _erode(body, _pixels(skin_mm, spacing))
    # Bone with what it encloses: the spinal canal (≈ 10 HU) is not muscle.
    bone = fill_holes(body & (hu > BONE_HU))
    muscle_hu = inner & ~bone & (hu >= MUSCLE_HU[0]) & (hu <= MUSCLE_HU[1])
    fat = body & (hu >= FAT_HU[0]) & (hu <= FAT_HU[1])

    min_pixels = max(1, int(round(min_component_cm2 * 100.0 / (row_mm * col_mm))))
    wall = _opening(muscle_hu, _pixels(wall_opening_mm / 2.0, spacing))
    wall = _large_components(wall, min_pixels)
    hull = convex_hull_mask(wall) if wall.any() else np.zeros_like(body)

    muscle = _skeletal_muscle(muscle_hu, hull, bone)
    subcutaneous = fat & ~hull
    visceral = fat & hull

    area = row_mm * col_mm / 100.0
    muscle_cm2 = float(muscle.sum()) * area
    smi = muscle_cm2 / patient_size_m**2 if patient_size_m else None
    composition = BodyComposition(
        sop_instance_uid=sop_uid,
        muscle_cm2=round(muscle_cm2, 3),
        subcutaneous_fat_cm2=round(float(subcutaneous.sum()) * area, 3),
        visceral_fat_cm2=round(float(visceral.sum()) * area, 3),
        patient_size_m=patient_size_m,
        skeletal_muscle_index=round(smi, 3) if smi is not None else None,
    )
    return composition, {"muscle": muscle, "subcutaneous_fat": subcutaneous, "visceral_fat": visceral}


def _body_mask(hu: np.ndarray, opening: Radius) -> np.ndarray:
    tissue = hu > BODY_HU
    opened = _opening(tissue, opening)
    labels, count = label_components(opened, connectivity=8)
    if count == 0:
        return opened
    sizes = np.bincount(labels.ravel())[1:]
    largest = labels == (int(np.argmax(sizes)) + 1)
    # The opening rounded the outline; take back the original tissue pixels next to the body.
    body = largest | (_dilate(largest, opening) & tissue)
    return fill_holes(body)


def _skeletal_muscle(muscle_hu: np.ndarray, hull: np.ndarray, bone: np.ndarray) -> np.ndarray:
    labels, count = label_components(muscle_hu, connectivity=8)
    if count == 0:
        return muscle_hu
    # The hull's inner part: a component lying wholly inside it is free in the cavity.
    core = _erode(hull, (2, 2))
    outside = np.bincount(labels[~core].ravel(), minlength=count + 1) > 0
    on_bone = np.bincount(labels[_dilate(bone, (1, 1))].ravel(), minlength=count + 1) > 0
    keep = outside | on_bone
    keep[0] = False
    return keep[labels]


def _large_components(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    labels, count = label_components(mask, connectivity=8)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_pixels
    keep[0] = False
    return keep[labels]


def _pixels(mm: float, spacing: tuple[float, float]) -> Radius:
    return (max(0, int(round(mm / spacing[0]))), max(0, int(round(mm / spacing[1]))))


def _morph(mask: np.ndarray, radius: Radius, erode: bool) -> np.ndarray:
    """Dilation or erosion by a (2·rows+1) × (2·columns+1) rectangle, as separable 3-pixel steps."""
    out = mask.copy()
    for axis, steps in enumerate(radius):
        for _ in range(steps):
            # An erosion treats outside the image as set: a body cut by the field of view has no skin there.
            padded = np.pad(
                out, [(1, 1) if a == axis else (0, 0) for a in (0, 1)], mode="edge" if erode else "constant"
            )
            before, after = (padded[:-2], padded[2:]) if axis == 0 else (padded[:, :-2], padded[:, 2:])
            out = (out & before & after) if erode else (out | before | after)
    return out


def _dilate(mask: np.ndarray, radius: Radius) -> np.ndarray:
    return _morph(mask, radius, erode=False)


def _erode(mask: np.ndarray, radius: Radius) -> np.ndarray:
    return _morph(mask, radius, erode=True)


def _opening(mask: np.ndarray, radius: Radius) -> np.ndarray:
    return _dilate(_erode(mask, radius), radius) & mask if any(radius) else mask


def label_components(mask: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, int]:
    """Label the connected components of a 2-D boolean mask.

    Runs of set pixels are found per row, runs of successive rows that touch are
    joined (union–find over runs, so the Python loop is over runs, not pixels).

    Parameters
    ----------
    mask : numpy.ndarray
        2-D boolean array.
    connectivity : {4, 8}
        Pixel neighbourhood.

    Returns
    -------
    tuple of (numpy.ndarray, int)
        int32 labels (0 = background, 1..count in raster order of first pixel) and count.
    """
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    mask = np.asarray(mask, dtype=bool)
    rows, cols = mask.shape
    padded = np.zeros((rows, cols + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    start_r, start_c = np.nonzero(edges == 1)
    _, end_c = np.nonzero(edges == -1)  # same raster order as the starts: one end per start
    n = start_r.size
    labels = np.zeros((rows, cols), dtype=np.int32)
    if n == 0:
        return labels, 0
    width = cols + 2
    reach = 1 if connectivity == 8 else 0
    start_key = start_r.astype(np.int64) * width + start_c
    end_key = start_r.astype(np.int64) * width + end_c
    # Runs of the next row touching run i: end > start_i - reach and start < end_i + reach.
    next_row = (start_r.astype(np.int64) + 1) * width
    lo = np.searchsorted(end_key, next_row + start_c - reach, side="right")
    hi = np.searchsorted(start_key, next_row + end_c + reach, side="left")
    counts = np.maximum(hi - lo, 0)
    a = np.repeat(np.arange(n), counts)
    b = np.repeat(lo, counts) + np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)

    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    for i, j in zip(a.tolist(), b.tolist(), strict=False):
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    roots = np.array([find(i) for i in range(n)])
    unique_roots, run_labels = np.unique(roots, return_inverse=True)
    lengths = end_c - start_c
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    pixels = np.repeat(start_r * cols + start_c, lengths) + offsets
    labels.ravel()[pixels] = np.repeat(run_labels + 1, lengths)
    return labels, int(unique_roots.size)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """The mask with every background region not connected to the image border set."""
    background, count = label_components(~mask, connectivity=4)
    if count == 0:
        return mask.copy()
    border = np.unique(np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]]))
    outside = np.zeros(count + 1, dtype=bool)
    outside[border] = True
    outside[0] = False
    return ~outside[background]


def convex_hull_mask(mask: np.ndarray) -> np.ndarray:
    """The filled convex hull of a 2-D mask's pixels (pixel centres, boundary included)."""
    rows = np.nonzero(mask.any(axis=1))[0]
    if rows.size == 0:
        return np.zeros_like(mask, dtype=bool)
    # The leftmost and rightmost pixel of each row are the only hull candidates.
    left = mask[rows].argmax(axis=1)
    right = mask.shape[1] - 1 - mask[rows, ::-1].argmax(axis=1)
    points = sorted(
        set(zip(left.tolist(), rows.tolist(), strict=False)) | set(zip(right.tolist(), rows.tolist(), strict=False))
    )
    hull = _monotone_chain(points)
    image = Image.new("1", (mask.shape[1], mask.shape[0]), 0)
    if len(hull) == 1:
        image.putpixel(hull[0], 1)
    else:
        ImageDraw.Draw(image).polygon(hull, fill=1, outline=1)
    return np.asarray(image, dtype=bool) | mask


def _monotone_chain(points: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Andrew's monotone chain: hull vertices of sorted (x, y) points, counter-clockwise."""
    if len(points) <= 2:
        return points

    def cross(o: tuple[int, int], a: tuple[int, int], b: tuple[int, int]) -> int:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple[int, int]] = []
    for p in points:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list[tuple[int, int]] = []
    for p in reversed(points):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return lower[:-1] + upper[:-1]
