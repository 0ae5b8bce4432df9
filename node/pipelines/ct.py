"""What the CT pipelines share: reading a series' headers, planning its slices, result series numbers,
and how a pipeline is built (:class:`CtPipeline`).

A CT series is planned from headers only (``models.preprocess.ct_series.plan_series``:
slices ordered along the ImageOrientationPatient normal, localizers dropped, non-axial and
mixed-geometry series refused); pixels are then read by the model in bounded batches.
Files that cannot be read are left out with a warning when enough slices remain, so one
damaged file does not cost the radiologist the whole study.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Self

from pydicom import Dataset

from models.errors import PreprocessError, SeriesError
from models.preprocess.ct_series import SeriesPlan, plan_series
from node.dicomheader import read_file
from node.errors import InputError

if TYPE_CHECKING:
    from models.registry import ModelRegistry
    from node.settings import Settings

#: SOP classes the CT pipelines analyse: CT Image Storage and Enhanced CT is not (multi-frame).
CT_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.2"}


class CtPipeline(ABC):
    """What a CT pipeline holds besides its model: where its result objects go, and how the node builds it.

    One instance per worker; a subclass names itself (``name``) and loads its model once in
    :meth:`_load_model`.

    Parameters
    ----------
    registry : ModelRegistry
        Where the model's verified manifest comes from.
    uid_root : str
        Organisation UID root of the result objects.
    threads : int
        Threads of the model's backend.
    series_number : int
        Series Number of the report; the other result objects take the next numbers.
    institution_name : str, optional
        Institution Name (0008,0080) written into the result objects.
    """

    name: str

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        uid_root: str,
        threads: int = 1,
        series_number: int = 990,
        institution_name: str | None = None,
    ) -> None:
        self._load_model(registry, threads)
        self.uid_root = uid_root
        self.series_number = series_number
        self.institution_name = institution_name

    @abstractmethod
    def _load_model(self, registry: ModelRegistry, threads: int) -> None:
        """Load the subclass's model from ``registry`` (verified manifest) with ``threads`` backend threads."""

    @classmethod
    def from_settings(cls, registry: ModelRegistry, settings: Settings) -> Self:
        """The pipeline as the node's settings configure it."""
        return cls(
            registry,
            uid_root=settings.uid_root,
            threads=settings.threads_per_model,
            series_number=settings.result_series_number,
            institution_name=settings.institution_name,
        )


@dataclass
class PlannedSeries:
    """A planned CT series: the plan, the header of every planned slice, and the files."""

    plan: SeriesPlan
    headers: dict[str, Dataset]
    paths: dict[str, Path]
    warnings: list[str] = field(default_factory=list)

    def sources(self) -> list[Dataset]:
        """Headers of the planned slices in plan order (what the writers reference)."""
        return [self.headers[uid] for uid in self.plan.sop_instance_uids]


def plan_ct_series(paths: Sequence[Path], *, min_slices: int, pipeline: str) -> PlannedSeries:
    """Read the headers of a CT series and order its slices.

    Parameters
    ----------
    paths : sequence of Path
        The series' stored instances.
    min_slices : int
        Fewest axial slices the pipeline analyses.
    pipeline : str
        Name used in messages.

    Raises
    ------
    InputError
        No readable CT image, fewer than ``min_slices`` slices after planning, or a series
        that :func:`~models.preprocess.ct_series.plan_series` refuses (non-axial, mixed
        geometry, no position), with its reason.
    """
    headers: dict[str, Dataset] = {}
    files: dict[str, Path] = {}
    warnings: list[str] = []
    for path in paths:
        try:
            # Large values (the pixels) are deferred, not read: the header and whether pixels exist.
            ds = read_file(path, defer_size=4096)
        except Exception as exc:  # InvalidDicomError, OSError, struct errors on truncated files
            warnings.append(f"{Path(path).name}: unreadable ({exc})")
            continue
        uid = str(ds.get("SOPInstanceUID") or "")
        if not uid:
            warnings.append(f"{Path(path).name}: no SOP Instance UID")
            continue
        sop_class = str(ds.get("SOPClassUID") or "")
        if sop_class not in CT_SOP_CLASSES:
            warnings.append(f"{uid}: not a CT image (SOP class {sop_class or 'missing'}); left out")
            continue
        if "PixelData" not in ds:
            warnings.append(f"{uid}: no pixel data; left out")
            continue
        short = _short_pixel_data(ds, Path(path))
        if short:
            warnings.append(f"{uid}: {short}; left out")
            continue
        del ds.PixelData  # headers only from here on; the model reads pixels in batches
        headers[uid] = ds
        files[uid] = Path(path)
    if not headers:
        raise InputError(
            f"{pipeline}: no readable CT image in the series" + (": " + "; ".join(warnings[:5]) if warnings else "")
        )
    try:
        plan = plan_series(list(headers.values()))
    except SeriesError as exc:
        raise InputError(f"{pipeline}: {exc}") from exc
    if len(plan) < min_slices:
        raise InputError(
            f"{pipeline}: the series has {len(plan)} axial slice(s) after planning; at least {min_slices} "
            "are needed (a scout, a single-slice series or a thin slab is not analysed)"
        )
    warnings.extend(plan.warnings)
    warnings.extend(f"{d.sop_instance_uid}: {d.reason}" for d in plan.dropped)
    kept = set(plan.sop_instance_uids)
    return PlannedSeries(
        plan=plan,
        headers={u: h for u, h in headers.items() if u in kept},
        paths={u: p for u, p in files.items() if u in kept},
        warnings=warnings,
    )


def _short_pixel_data(ds: Dataset, path: Path) -> str | None:
    """Why a slice's native Pixel Data (7FE0,0010) cannot hold its image, or None when it can.

    Checked from the header alone (the value stays deferred): the element's length against
    Rows × Columns × Samples per Pixel × Bits Allocated / 8 (PS3.5 8.1.1), and the file's size
    against where the value should end (a file cut short in transfer or on disk).
    Encapsulated pixel data is left to the decoder.
    """
    raw = ds.get_item("PixelData", keep_deferred=True)
    length = getattr(raw, "length", None)
    start = getattr(raw, "value_tell", None)
    if length is None or length == 0xFFFFFFFF:
        return None  # already read, or encapsulated (undefined length)
    try:
        needed = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1) * int(ds.BitsAllocated) // 8
    except (AttributeError, TypeError, ValueError):
        return None  # the planner names missing Rows/Columns itself
    if length < needed:
        return f"pixel data of {length} bytes, {ds.Rows}×{ds.Columns} pixels need {needed}"
    if start is not None and os.path.getsize(path) < start + length:
        return f"file truncated: {os.path.getsize(path)} bytes, its pixel data ends at byte {start + length}"
    return None


@contextmanager
def model_input_errors(pipeline: str) -> Iterator[None]:
    """Map a model's :class:`~models.errors.PreprocessError` (a slice unreadable or unlike its plan) to
    :class:`~node.errors.InputError`, so the job records why and the worker goes on."""
    try:
        yield
    except PreprocessError as exc:
        raise InputError(f"{pipeline}: {exc}") from exc


def patient_size_m(header: Dataset) -> float | None:
    """PatientSize (0010,1020) in metres when it is a plausible adult or child height, else None."""
    try:
        value = float(header.get("PatientSize") or 0)
    except (TypeError, ValueError):
        return None
    return value if 0.4 <= value <= 2.5 else None
