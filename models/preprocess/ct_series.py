"""CT series → slices ordered along the patient axis, then Hounsfield units in batches.

Planning (:func:`plan_series`) uses headers only (``core.dicomfile.read_dataset(path, header_only=True)``):

1. **Localizers** are dropped: ImageType (0008,0008) containing ``LOCALIZER``
   (PS3.3 C.8.2.1.1.1), or a single slice whose orientation differs from all others
   (a scout saved without the LOCALIZER value).
2. **Geometry** of the Image Plane module (PS3.3 C.7.6.2): the slice normal is the cross
   product of the row and column direction cosines of ImageOrientationPatient (IOP), and a
   slice's position is ``dot(ImagePositionPatient, normal)`` in mm. Slices are sorted by
   that position **ascending** (for a standard axial IOP, inferior → superior), never by
   InstanceNumber, which scanners number head-first or feet-first at will.
3. **Non-axial** series (normal more than :data:`MAX_AXIAL_ANGLE_DEG` from the patient z
   axis: sagittal or coronal reformats) are refused: the CT models take axial slices.
4. **Mixed geometry** among the remaining slices (more than one IOP, Rows/Columns or
   PixelSpacing) is **refused**, not split: within one series it usually means two
   reconstructions or a scanner fault, and silently analysing one part could report on the
   wrong anatomy; the error names the groups so an operator can split the series upstream.
5. **Gantry tilt**: the table moves along z while the image plane is tilted, so the offset
   between successive positions is not parallel to the normal. Ordering along the normal
   stays correct; the tilt is reported as the angle between the first→last offset and the
   normal.
6. **Spacing**: gaps between sorted positions give min/median/max; a gap of about *k*
   medians (*k* ≥ 2) is reported as *k* − 1 missing slices, any gap deviating from the median
   by more than :data:`UNEVEN_TOLERANCE` is a warning. Slices at the same position
   (within :data:`DUPLICATE_TOLERANCE_MM`) are duplicates: the one with the smallest
   SOPInstanceUID (string order) is kept, so the result does not depend on file order.

Reading (:func:`iter_hu_batches`) decodes pixels in plan order ``batch_size`` slices at a
time and applies RescaleSlope/RescaleIntercept (PS3.3 C.11.1.1.2; for CT the output unit
is HU, PS3.3 C.8.2.1.1), so memory is bounded by one batch however long the series.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from core.dicomfile import read_dataset
from core.errors import UnreadableDicom
from models.errors import SeriesError

__all__ = [
    "MAX_AXIAL_ANGLE_DEG",
    "DUPLICATE_TOLERANCE_MM",
    "UNEVEN_TOLERANCE",
    "DroppedSlice",
    "SpacingStats",
    "SeriesPlan",
    "plan_series",
    "iter_hu_batches",
]

MAX_AXIAL_ANGLE_DEG = 30.0
"""Largest angle between the slice normal and the patient z axis still called axial."""
DUPLICATE_TOLERANCE_MM = 0.01
"""Positions closer than this along the normal are the same slice."""
UNEVEN_TOLERANCE = 0.1
"""A gap more than this fraction away from the median gap makes the spacing uneven."""
_ORIENTATION_TOLERANCE = 1e-3  # direction cosines equal within this (rounding in DS strings)
_SPACING_TOLERANCE = 1e-3  # PixelSpacing equal within this (mm)


@dataclass(frozen=True)
class DroppedSlice:
    """A slice left out of the plan and why."""

    sop_instance_uid: str
    reason: str


@dataclass(frozen=True)
class SpacingStats:
    """Gaps between successive slice positions along the normal, in mm.

    All gaps are 0 and ``median`` is 0 for a single-slice series.
    """

    minimum: float
    median: float
    maximum: float
    missing_slices: int
    uneven: bool


@dataclass(frozen=True)
class SeriesPlan:
    """The ordered slices of one axial CT series and its geometry.

    ``sop_instance_uids[i]`` is at ``positions[i]`` mm along ``normal``; positions ascend.
    ``pixel_spacing`` is (row spacing, column spacing) in mm, as PixelSpacing (PS3.3 10.7.1.3).
    """

    sop_instance_uids: tuple[str, ...]
    positions: tuple[float, ...]
    normal: tuple[float, float, float]
    orientation: tuple[float, float, float, float, float, float]
    rows: int
    columns: int
    pixel_spacing: tuple[float, float]
    spacing: SpacingStats
    tilt_degrees: float
    warnings: tuple[str, ...]
    dropped: tuple[DroppedSlice, ...]

    def __len__(self) -> int:
        return len(self.sop_instance_uids)


@dataclass(frozen=True)
class _Slice:
    uid: str
    orientation: np.ndarray  # (6,)
    position: np.ndarray  # (3,)
    rows: int
    columns: int
    pixel_spacing: tuple[float, float]


def _floats(ds: Any, keyword: str, count: int, uid: str) -> np.ndarray:
    value = ds.get(keyword)
    if value is None or value == "":
        raise SeriesError(f"slice {uid} lacks {keyword} (PS3.3 C.7.6.2): cannot place it in the volume")
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise SeriesError(f"slice {uid} has an unreadable {keyword} {value!r}") from exc
    if arr.shape != (count,) or not np.all(np.isfinite(arr)):
        raise SeriesError(f"slice {uid}: {keyword} must hold {count} finite numbers, got {list(value)!r}")
    return arr


def _normal(orientation: np.ndarray, uid: str) -> np.ndarray:
    """Unit normal of an IOP; raises for non-unit or non-orthogonal direction cosines."""
    row, col = orientation[:3], orientation[3:]
    row_norm, col_norm = float(np.linalg.norm(row)), float(np.linalg.norm(col))
    if abs(row_norm - 1.0) > 0.01 or abs(col_norm - 1.0) > 0.01:
        raise SeriesError(
            f"slice {uid}: ImageOrientationPatient direction cosines are not unit vectors "
            f"(lengths {row_norm:.3f}, {col_norm:.3f}): degenerate orientation"
        )
    if abs(float(np.dot(row, col))) > 0.01:
        raise SeriesError(
            f"slice {uid}: ImageOrientationPatient row and column directions are not orthogonal "
            f"(dot product {float(np.dot(row, col)):.3f}): degenerate orientation"
        )
    normal = np.cross(row, col)
    return normal / float(np.linalg.norm(normal))


def _is_localizer(ds: Any) -> bool:
    image_type = ds.get("ImageType") or []
    if isinstance(image_type, str):
        image_type = [image_type]
    return any(str(v).strip().upper() == "LOCALIZER" for v in image_type)


def _read_slice(ds: Any) -> _Slice:
    uid = str(ds.get("SOPInstanceUID") or "")
    if not uid:
        raise SeriesError("a slice lacks SOPInstanceUID (0008,0018): cannot refer to it")
    orientation = _floats(ds, "ImageOrientationPatient", 6, uid)
    position = _floats(ds, "ImagePositionPatient", 3, uid)
    _normal(orientation, uid)
    rows, columns = ds.get("Rows"), ds.get("Columns")
    if not rows or not columns:
        raise SeriesError(f"slice {uid} lacks Rows/Columns (PS3.3 C.7.6.3)")
    spacing = _floats(ds, "PixelSpacing", 2, uid)
    if np.any(spacing <= 0):
        raise SeriesError(f"slice {uid}: PixelSpacing {spacing.tolist()} must be positive")
    return _Slice(uid, orientation, position, int(rows), int(columns), (float(spacing[0]), float(spacing[1])))


def _same_orientation(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.max(np.abs(a - b)) <= _ORIENTATION_TOLERANCE)


def _same_geometry(a: _Slice, b: _Slice) -> bool:
    return (
        _same_orientation(a.orientation, b.orientation)
        and (a.rows, a.columns) == (b.rows, b.columns)
        and max(abs(x - y) for x, y in zip(a.pixel_spacing, b.pixel_spacing, strict=False)) <= _SPACING_TOLERANCE
    )


def _describe(s: _Slice, count: int) -> str:
    iop = ",".join(f"{v:.3g}" for v in s.orientation)
    return (
        f"{count} slice(s) of {s.rows}×{s.columns}, PixelSpacing {s.pixel_spacing[0]:g}/{s.pixel_spacing[1]:g} mm, "
        f"IOP [{iop}]"
    )


def _spacing_stats(positions: np.ndarray, warnings: list[str]) -> SpacingStats:
    if positions.size < 2:
        return SpacingStats(0.0, 0.0, 0.0, 0, False)
    gaps = np.diff(positions)
    median = float(np.median(gaps))
    missing = 0
    uneven = False
    for index, gap in enumerate(gaps):
        ratio = float(gap) / median
        if abs(ratio - 1.0) <= UNEVEN_TOLERANCE:
            continue
        uneven = True
        steps = round(ratio)
        if steps >= 2 and abs(ratio - steps) <= UNEVEN_TOLERANCE * steps:
            missing += steps - 1
            warnings.append(
                f"gap of {gap:.3f} mm between slices {index} and {index + 1} is {steps}× the median "
                f"{median:.3f} mm: {steps - 1} slice(s) missing"
            )
        else:
            warnings.append(
                f"gap of {gap:.3f} mm between slices {index} and {index + 1} differs from the median {median:.3f} mm"
            )
    return SpacingStats(float(gaps.min()), median, float(gaps.max()), missing, uneven)


def plan_series(headers: Sequence[Any]) -> SeriesPlan:
    """Order the slices of one CT series along its normal and describe its geometry.

    Parameters
    ----------
    headers : sequence of pydicom.Dataset
        One dataset per slice, pixels not needed (read with ``stop_before_pixels=True``).
        Uses SOPInstanceUID, ImageType, ImageOrientationPatient, ImagePositionPatient
        (Image Plane module, PS3.3 C.7.6.2), Rows, Columns and PixelSpacing.

    Returns
    -------
    SeriesPlan
        Slices in ascending position along the normal, with spacing statistics, gantry
        tilt, warnings and the dropped slices (localizers, duplicates) with reasons.

    Raises
    ------
    SeriesError
        No slice left, a slice without position/orientation or with a degenerate
        orientation, a non-axial series, or mixed geometry (see the module docstring).
    """
    dropped: list[DroppedSlice] = []
    warnings: list[str] = []
    slices: list[_Slice] = []
    for ds in headers:
        if _is_localizer(ds):
            uid = str(ds.get("SOPInstanceUID") or "?")
            dropped.append(DroppedSlice(uid, "localizer: ImageType contains LOCALIZER"))
            continue
        slices.append(_read_slice(ds))
    if not slices:
        raise SeriesError(f"no slice left to analyse: {len(headers)} header(s), {len(dropped)} localizer(s) dropped")

    # A lone slice whose orientation matches no other is an untagged scout.
    if len(slices) > 2:
        lone = [s for s in slices if sum(_same_orientation(s.orientation, t.orientation) for t in slices) == 1]
        if len(lone) == 1:
            slices = [s for s in slices if s is not lone[0]]
            dropped.append(DroppedSlice(lone[0].uid, "localizer: the only slice with its orientation"))

    groups: list[list[_Slice]] = []
    for s in slices:
        for group in groups:
            if _same_geometry(group[0], s):
                group.append(s)
                break
        else:
            groups.append([s])
    if len(groups) > 1:
        # Largest group first, then by description: the message does not depend on file order.
        described = "; ".join(sorted((_describe(g[0], len(g)) for g in groups), key=lambda d: (-int(d.split()[0]), d)))
        raise SeriesError(
            f"mixed geometry in one series ({described}): refused rather than guessing which part to "
            "analyse; split the reconstructions into separate series"
        )

    first = slices[0]
    normal = _normal(first.orientation, first.uid)
    axial_angle = math.degrees(math.acos(min(1.0, abs(float(normal[2])))))
    if axial_angle > MAX_AXIAL_ANGLE_DEG:
        raise SeriesError(
            f"not an axial series: the slice normal is {axial_angle:.1f}° from the patient z axis "
            f"(limit {MAX_AXIAL_ANGLE_DEG:g}°), a sagittal or coronal reformat"
        )

    # Sort by position, then UID so that duplicates resolve the same way for any input order.
    keyed = sorted(((float(np.dot(s.position, normal)), s.uid, s) for s in slices), key=lambda t: (t[0], t[1]))
    kept: list[tuple[float, _Slice]] = []
    for position, uid, s in keyed:
        if kept and position - kept[-1][0] < DUPLICATE_TOLERANCE_MM:
            dropped.append(DroppedSlice(uid, f"duplicate position {position:.3f} mm of slice {kept[-1][1].uid}"))
            continue
        kept.append((position, s))
    duplicates = sum(1 for d in dropped if d.reason.startswith("duplicate"))
    if duplicates:
        warnings.append(f"{duplicates} slice(s) at an already occupied position dropped (smallest SOPInstanceUID kept)")

    positions = np.array([p for p, _ in kept], dtype=np.float64)
    tilt = 0.0
    if len(kept) >= 2:
        offset = kept[-1][1].position - kept[0][1].position
        cosine = float(np.dot(offset, normal)) / float(np.linalg.norm(offset))
        tilt = math.degrees(math.acos(min(1.0, abs(cosine))))
        if tilt > 0.5:
            warnings.append(f"gantry tilt of {tilt:.1f}°: slice positions are offset obliquely to the normal")
    spacing = _spacing_stats(positions, warnings)

    o = [float(v) for v in first.orientation]
    return SeriesPlan(
        sop_instance_uids=tuple(s.uid for _, s in kept),
        positions=tuple(float(p) for p in positions),
        normal=(float(normal[0]), float(normal[1]), float(normal[2])),
        orientation=(o[0], o[1], o[2], o[3], o[4], o[5]),
        rows=first.rows,
        columns=first.columns,
        pixel_spacing=first.pixel_spacing,
        spacing=spacing,
        tilt_degrees=tilt,
        warnings=tuple(warnings),
        dropped=tuple(dropped),
    )


def iter_hu_batches(
    plan: SeriesPlan,
    paths_by_uid: Mapping[str, str | PathLike[str]],
    batch_size: int = 16,
) -> Iterator[tuple[list[int], np.ndarray]]:
    """Yield the plan's slices in Hounsfield units, ``batch_size`` at a time.

    Parameters
    ----------
    plan : SeriesPlan
        From :func:`plan_series`.
    paths_by_uid : mapping of SOPInstanceUID to file path
        Where each planned slice is stored.
    batch_size : int
        Slices per batch; memory held is about one batch of float32 arrays plus one
        decoded slice, since nothing is kept between batches.

    Yields
    ------
    tuple of (list of int, numpy.ndarray)
        The plan indices of the batch and a float32 array of shape
        ``(len(indices), plan.rows, plan.columns)``: stored values × RescaleSlope +
        RescaleIntercept (PS3.3 C.11.1.1.2; HU for CT, PS3.3 C.8.2.1.1), slope 1 and
        intercept 0 when absent.

    Raises
    ------
    SeriesError
        A planned slice has no path, its file cannot be read as DICOM, holds another SOP
        instance, or its pixels are not of the planned size or cannot be decoded.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    missing = [uid for uid in plan.sop_instance_uids if uid not in paths_by_uid]
    if missing:
        raise SeriesError(f"{len(missing)} planned slice(s) have no file, e.g. {missing[0]}")
    total = len(plan.sop_instance_uids)
    for start in range(0, total, batch_size):
        indices = list(range(start, min(start + batch_size, total)))
        batch = np.empty((len(indices), plan.rows, plan.columns), dtype=np.float32)
        for row, index in enumerate(indices):
            uid = plan.sop_instance_uids[index]
            batch[row] = _read_hu(paths_by_uid[uid], uid, plan.rows, plan.columns)
        yield indices, batch
        del batch  # the consumer holds the only reference from here on


def _read_hu(path: str | PathLike[str], uid: str, rows: int, columns: int) -> np.ndarray:
    try:
        ds = read_dataset(Path(path))
    except UnreadableDicom as exc:
        raise SeriesError(f"cannot read slice {uid} from {path}: {exc}") from exc
    if str(ds.get("SOPInstanceUID") or "") != uid:
        raise SeriesError(f"{path} holds SOP instance {ds.get('SOPInstanceUID')}, not the planned {uid}")
    try:
        stored = ds.pixel_array
    except Exception as exc:  # pydicom raises ValueError/NotImplementedError/RuntimeError
        raise SeriesError(f"cannot decode the pixels of slice {uid}: {exc}") from exc
    if stored.shape != (rows, columns):
        raise SeriesError(f"slice {uid} has pixels of shape {stored.shape}, the plan says {(rows, columns)}")
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)
