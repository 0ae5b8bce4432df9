"""CT series planning and HU reading on series written here as DICOM files.

Every series has InstanceNumbers that disagree with the slice positions, so a loader
ordering by InstanceNumber fails these tests.
"""

from __future__ import annotations

import gc
import math
import random
import tracemalloc
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from models.errors import PreprocessError, SeriesError
from models.preprocess.ct_series import SeriesPlan, iter_hu_batches, plan_series

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def ct_slice(
    stored: np.ndarray,
    position: Sequence[float],
    *,
    orientation: Sequence[float] = AXIAL,
    instance_number: int = 1,
    pixel_spacing: tuple[float, float] = (0.7, 0.7),
    slope: float = 1.0,
    intercept: float = -1024.0,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    series_uid: str = "1.2.3.4",
) -> Dataset:
    """One CT Image Storage slice (PS3.3 A.3) holding ``stored`` as signed 16-bit values."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.ImageType = list(image_type)
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = series_uid
    ds.InstanceNumber = instance_number
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.PixelSpacing = [f"{v:g}" for v in pixel_spacing]
    ds.SliceThickness = "1.0"
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = f"{intercept:g}"
    ds.RescaleType = "HU"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.PixelData = stored.astype("<i2").tobytes()
    return ds


def write_series(
    folder: Path,
    stored: np.ndarray,
    *,
    origin: Sequence[float] = (-100.0, -100.0, 0.0),
    step: Sequence[float] = (0.0, 0.0, 2.5),
    orientation: Sequence[float] = AXIAL,
    instance_numbers: Sequence[int] | None = None,
    **slice_kwargs: Any,
) -> list[Path]:
    """Write ``stored[k]`` at ``origin + k * step`` for each k; returns paths in volume order.

    Instance numbers default to the reverse of the volume order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    n = stored.shape[0]
    numbers = list(instance_numbers) if instance_numbers is not None else list(range(n, 0, -1))
    paths = []
    for k in range(n):
        position = [o + k * s for o, s in zip(origin, step, strict=False)]
        ds = ct_slice(stored[k], position, orientation=orientation, instance_number=numbers[k], **slice_kwargs)
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def headers(paths: Sequence[Path], shuffle_seed: int | None = 7) -> list[Dataset]:
    """Header-only reads, in a shuffled order so that file order cannot help either."""
    paths = list(paths)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(paths)
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]


def uids(paths: Sequence[Path]) -> list[str]:
    return [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths]


def ramp_volume(n: int, size: int = 64) -> np.ndarray:
    """Stored values whose slice k is unmistakably slice k (its mean is 10·k)."""
    base = np.arange(size * size, dtype=np.int32).reshape(size, size) % 7
    return np.stack([base + 10 * k for k in range(n)]).astype(np.int16)


def test_head_first_series_is_ordered_by_position_not_instance_number(tmp_path: Path) -> None:
    # Positions ascend with k, InstanceNumbers descend: a head-first scan numbered from the top.
    paths = write_series(tmp_path, ramp_volume(12))
    plan = plan_series(headers(paths))
    assert list(plan.sop_instance_uids) == uids(paths)
    assert plan.positions == pytest.approx([2.5 * k for k in range(12)])
    assert plan.normal == pytest.approx((0.0, 0.0, 1.0))
    assert (plan.rows, plan.columns, plan.pixel_spacing) == (64, 64, (0.7, 0.7))
    assert plan.spacing.median == pytest.approx(2.5) and not plan.spacing.uneven
    assert plan.tilt_degrees == pytest.approx(0.0, abs=1e-6)
    assert plan.dropped == () and plan.warnings == ()


def test_feet_first_series_with_random_instance_numbers_is_ordered_inferior_to_superior(tmp_path: Path) -> None:
    # Acquired from the head down (z decreasing); numbered at random.
    numbers = list(range(1, 11))
    random.Random(3).shuffle(numbers)
    paths = write_series(tmp_path, ramp_volume(10), origin=(0, 0, 300.0), step=(0, 0, -3.0), instance_numbers=numbers)
    plan = plan_series(headers(paths))
    assert list(plan.sop_instance_uids) == uids(paths)[::-1]
    assert plan.positions == pytest.approx([273.0 + 3.0 * k for k in range(10)])
    hu = np.concatenate(
        [batch for _, batch in iter_hu_batches(plan, dict(zip(uids(paths), paths, strict=False)), batch_size=4)]
    )
    # Slice k of the volume was written at z = 300 - 3k, so the plan reads it backwards.
    assert [float(s.mean()) + 1024 for s in hu] == pytest.approx(
        [float(ramp_volume(10)[k].mean()) for k in range(9, -1, -1)]
    )


def test_localizers_are_dropped_with_a_reason(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "axial", ramp_volume(8))
    tagged = write_series(
        tmp_path / "scout",
        ramp_volume(1),
        orientation=(0, 1, 0, 0, 0, -1),
        origin=(0, -200, 100),
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
    )
    untagged = write_series(tmp_path / "scout2", ramp_volume(1), orientation=(1, 0, 0, 0, 0, -1), origin=(-200, 0, 100))
    plan = plan_series(headers(paths + tagged + untagged))
    assert list(plan.sop_instance_uids) == uids(paths)
    reasons = {d.sop_instance_uid: d.reason for d in plan.dropped}
    assert set(reasons) == set(uids(tagged) + uids(untagged))
    assert "LOCALIZER" in reasons[uids(tagged)[0]]
    assert "only slice with its orientation" in reasons[uids(untagged)[0]]


def test_sagittal_reformat_is_refused(tmp_path: Path) -> None:
    paths = write_series(tmp_path, ramp_volume(6), orientation=(0, 1, 0, 0, 0, -1), step=(1.0, 0, 0))
    with pytest.raises(SeriesError, match=r"not an axial series.*90\.0°"):
        plan_series(headers(paths))


def test_mixed_geometry_is_refused_naming_the_groups(tmp_path: Path) -> None:
    thin = write_series(tmp_path / "a", ramp_volume(5))
    coarse = write_series(tmp_path / "b", ramp_volume(5, size=32), origin=(-100, -100, 1.0), pixel_spacing=(1.4, 1.4))
    coarse = coarse[:3]
    messages = set()
    for seed in (1, 2):
        with pytest.raises(SeriesError, match="mixed geometry") as caught:
            plan_series(headers(thin + coarse, shuffle_seed=seed))
        messages.add(str(caught.value))
    (message,) = messages  # the same for any file order
    assert "5 slice(s) of 64×64, PixelSpacing 0.7/0.7 mm" in message
    assert message.index("64×64") < message.index("3 slice(s) of 32×32, PixelSpacing 1.4/1.4 mm")
    assert issubclass(SeriesError, PreprocessError) and issubclass(SeriesError, ValueError)


@pytest.mark.parametrize("tilt_deg", [12.0, -20.0])
def test_gantry_tilt_is_ordered_along_the_normal_and_reported(tmp_path: Path, tilt_deg: float) -> None:
    # The image plane turns about the patient x axis; the table still moves along z.
    t = math.radians(tilt_deg)
    orientation = (1.0, 0.0, 0.0, 0.0, math.cos(t), -math.sin(t))
    paths = write_series(tmp_path, ramp_volume(15), orientation=orientation, step=(0, 0, 2.0))
    plan = plan_series(headers(paths))
    assert plan.tilt_degrees == pytest.approx(abs(tilt_deg), abs=0.05)
    assert any("gantry tilt" in w for w in plan.warnings)
    # The normal is tilted too; along it the gap shrinks by cos(tilt).
    assert plan.spacing.median == pytest.approx(2.0 * math.cos(t), abs=1e-3)
    assert list(plan.sop_instance_uids) == uids(paths)


def test_uneven_spacing_and_a_missing_slice_are_reported(tmp_path: Path) -> None:
    paths = write_series(tmp_path, ramp_volume(12), step=(0, 0, 1.25))
    kept = paths[:4] + paths[5:]  # slice 4 lost in transfer: one gap of 2.5 mm
    plan = plan_series(headers(kept))
    assert plan.spacing.missing_slices == 1 and plan.spacing.uneven
    assert (plan.spacing.minimum, plan.spacing.median, plan.spacing.maximum) == pytest.approx((1.25, 1.25, 2.5))
    assert any("1 slice(s) missing" in w for w in plan.warnings)

    # A gap that is not a whole number of steps is uneven without missing slices.
    odd = write_series(tmp_path / "odd", ramp_volume(6), step=(0, 0, 1.0))
    moved = headers(odd)
    for ds in moved:
        if float(ds.ImagePositionPatient[2]) == 5.0:
            ds.ImagePositionPatient = [-100, -100, 5.6]
    plan = plan_series(moved)
    assert plan.spacing.uneven and plan.spacing.missing_slices == 0
    assert plan.spacing.maximum == pytest.approx(1.6)


def test_duplicate_positions_are_dropped_deterministically(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "a", ramp_volume(6))
    again = write_series(tmp_path / "b", ramp_volume(2), origin=(-100, -100, 5.0))  # at slices 2 and 3
    plans = [plan_series(headers(paths + again, shuffle_seed=seed)) for seed in (1, 2, 3)]
    assert plans[0] == plans[1] == plans[2]
    plan = plans[0]
    assert len(plan) == 6 and plan.positions == pytest.approx([2.5 * k for k in range(6)])
    assert sum("duplicate position" in d.reason for d in plan.dropped) == 2
    for position_index, (first, second) in enumerate(zip(uids(paths)[2:4], uids(again), strict=False)):
        assert plan.sop_instance_uids[2 + position_index] == min(first, second)
    assert any("2 slice(s) at an already occupied position" in w for w in plan.warnings)


def test_256_series_is_accepted_and_read_at_its_size(tmp_path: Path) -> None:
    paths = write_series(tmp_path, ramp_volume(3, size=256), pixel_spacing=(0.9, 0.8))
    plan = plan_series(headers(paths))
    assert (plan.rows, plan.columns, plan.pixel_spacing) == (256, 256, (0.9, 0.8))
    ((indices, batch),) = list(iter_hu_batches(plan, dict(zip(uids(paths), paths, strict=False))))
    assert indices == [0, 1, 2] and batch.shape == (3, 256, 256) and batch.dtype == np.float32


@pytest.mark.parametrize("slope", [1.0, 2.0])
def test_hu_equal_the_planted_volume(tmp_path: Path, slope: float) -> None:
    rng = np.random.default_rng(5)
    hu = rng.integers(-1000, 2000, size=(9, 64, 64)) * int(slope)  # representable: (hu + 1024) / slope
    stored = ((hu + 1024) / slope).astype(np.int16)
    paths = write_series(tmp_path, stored, slope=slope, intercept=-1024.0)
    plan = plan_series(headers(paths))
    out = list(iter_hu_batches(plan, dict(zip(uids(paths), paths, strict=False)), batch_size=4))
    assert [indices for indices, _ in out] == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]
    volume = np.concatenate([batch for _, batch in out])
    assert volume.dtype == np.float32 and volume.shape == (9, 64, 64)
    np.testing.assert_array_equal(volume, hu.astype(np.float32))


def test_batches_keep_memory_bounded_on_a_200_slice_series(tmp_path: Path) -> None:
    size, n, batch_size = 128, 200, 8
    paths = write_series(tmp_path, ramp_volume(n, size=size), step=(0, 0, 1.0))
    plan = plan_series(headers(paths, shuffle_seed=None))
    by_uid = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in paths}
    batch_bytes = batch_size * size * size * 4
    refs: list[weakref.ref[np.ndarray]] = []
    seen = 0
    gc.collect()
    tracemalloc.start()
    try:
        for indices, batch in iter_hu_batches(plan, by_uid, batch_size=batch_size):
            assert indices == list(range(seen, seen + len(indices)))
            seen += len(indices)
            refs.append(weakref.ref(batch))
            # Batches older than the previous one are gone: the iterator keeps none of them.
            assert all(r() is None for r in refs[:-2])
            del batch
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == n
    whole_volume = n * size * size * 4
    print(f"tracemalloc peak {peak} B, batch {batch_bytes} B, volume {whole_volume} B")
    assert peak < 2 * batch_bytes, f"peak {peak} B for batches of {batch_bytes} B (volume {whole_volume} B)"


def planned_headers(tmp_path: Path, n: int = 4) -> list[Dataset]:
    return headers(write_series(tmp_path, ramp_volume(n)))


def test_error_when_no_slice_is_left(tmp_path: Path) -> None:
    scouts = write_series(tmp_path, ramp_volume(2), image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    with pytest.raises(SeriesError, match="no slice left.*2 localizer"):
        plan_series(headers(scouts))
    with pytest.raises(SeriesError, match="no slice left"):
        plan_series([])


@pytest.mark.parametrize("keyword", ["ImagePositionPatient", "ImageOrientationPatient"])
def test_error_when_position_or_orientation_is_missing(tmp_path: Path, keyword: str) -> None:
    hs = planned_headers(tmp_path)
    del hs[2][keyword]
    with pytest.raises(SeriesError, match=f"slice {hs[2].SOPInstanceUID} lacks {keyword}"):
        plan_series(hs)


@pytest.mark.parametrize(
    ("orientation", "message"),
    [
        ((1, 0, 0, 1, 0, 0), "not orthogonal"),
        ((0, 0, 0, 0, 1, 0), "not unit vectors"),
    ],
)
def test_error_when_orientation_is_degenerate(tmp_path: Path, orientation: tuple[float, ...], message: str) -> None:
    hs = planned_headers(tmp_path)
    for ds in hs:
        ds.ImageOrientationPatient = list(orientation)
    with pytest.raises(SeriesError, match=f"{message}.*degenerate orientation"):
        plan_series(hs)


def test_reading_refuses_a_file_that_is_not_the_planned_slice(tmp_path: Path) -> None:
    paths = write_series(tmp_path, ramp_volume(3))
    plan: SeriesPlan = plan_series(headers(paths))
    swapped = dict(zip(uids(paths), [paths[1], paths[0], paths[2]], strict=False))
    with pytest.raises(SeriesError, match="not the planned"):
        list(iter_hu_batches(plan, swapped))
    with pytest.raises(SeriesError, match="have no file"):
        list(iter_hu_batches(plan, {}))


def test_reading_a_slice_file_that_is_not_dicom_is_a_series_error(tmp_path: Path) -> None:
    paths = write_series(tmp_path, ramp_volume(3))
    plan = plan_series(headers(paths))
    by_uid = dict(zip(uids(paths), paths, strict=False))
    [broken] = uids(paths[1:2])
    paths[1].write_bytes(b"not a DICOM file at all" * 40)
    with pytest.raises(SeriesError, match=f"cannot read slice {broken} from .*: not a DICOM file"):
        list(iter_hu_batches(plan, by_uid))
    paths[1].unlink()
    with pytest.raises(SeriesError, match=f"cannot read slice {broken} from .*: cannot read: No such file"):
        list(iter_hu_batches(plan, by_uid))


def test_a_slice_file_without_its_preamble_reads_as_the_whole_file(tmp_path: Path) -> None:
    """A file that starts with ``DICM`` (its 128-byte preamble left out) is read like any other."""
    paths = write_series(tmp_path, ramp_volume(3))
    plan = plan_series(headers(paths))
    by_uid = dict(zip(uids(paths), paths, strict=False))
    expected = np.concatenate([batch for _, batch in iter_hu_batches(plan, by_uid)])
    for path in paths:
        path.write_bytes(path.read_bytes()[128:])
    got = np.concatenate([batch for _, batch in iter_hu_batches(plan, by_uid)])
    np.testing.assert_array_equal(got, expected)


def test_a_scanner_written_ct_slice_reads_as_pydicom_modality_lut_says() -> None:
    path = get_testdata_file("CT_small.dcm", download=False)
    assert path is not None, "CT_small.dcm is missing: install pydicom-data (test extra)"
    plan = plan_series([pydicom.dcmread(path, stop_before_pixels=True)])
    assert len(plan) == 1 and plan.spacing.median == 0.0 and plan.tilt_degrees == 0.0
    ((indices, batch),) = list(iter_hu_batches(plan, {plan.sop_instance_uids[0]: path}))
    ds = pydicom.dcmread(path)
    np.testing.assert_allclose(batch[0], apply_modality_lut(ds.pixel_array, ds).astype(np.float32))
