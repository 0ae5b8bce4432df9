"""CT phantoms: emboli where the truth says, L3 areas a threshold measures, series that load in order.

The abdomen's body-composition check uses only thresholds and hole filling (the method
documented in ``abdomen_phantom``), so a lumbar pipeline measuring the same way must land
within 5 % of the truth; the series tests go through ``plan_series``/``iter_hu_batches``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from models.preprocess.ct_series import iter_hu_batches, plan_series
from tests.helpers import OrthancServer, dciodvfy
from training.phantoms.ct import LEVELS, PE_EXAM_LABELS, TISSUES, CtPhantom, abdomen_phantom, ctpa_phantom
from training.phantoms.ct_datasets import (
    LUMBAR_PNG_WINDOW,
    RSNA_PE_COLUMNS,
    window_to_uint8,
    write_lumbar_folders,
    write_rsna_pe,
)

RSNA_HEADER = (
    "StudyInstanceUID,SeriesInstanceUID,SOPInstanceUID,pe_present_on_image,negative_exam_for_pe,qa_motion,"
    "qa_contrast,flow_artifact,rv_lv_ratio_gte_1,rv_lv_ratio_lt_1,leftsided_pe,chronic_pe,"
    "true_filling_defect_not_pe,rightsided_pe,acute_and_chronic_pe,central_pe,indeterminate"
)


# ----------------------------------------------------------------------------- helpers


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` plus every background region not 4-connected to the image border."""
    background = ~mask
    outside = np.zeros_like(mask)
    outside[0, :], outside[-1, :], outside[:, 0], outside[:, -1] = (
        background[0, :],
        background[-1, :],
        background[:, 0],
        background[:, -1],
    )
    while True:
        grown = outside.copy()
        grown[1:, :] |= outside[:-1, :]
        grown[:-1, :] |= outside[1:, :]
        grown[:, 1:] |= outside[:, :-1]
        grown[:, :-1] |= outside[:, 1:]
        grown &= background
        if np.array_equal(grown, outside):
            return ~outside
        outside = grown


def _threshold_composition(hu: np.ndarray) -> dict[str, np.ndarray]:
    """Muscle -29..150 HU, fat -190..-30 HU, split into visceral/subcutaneous by the muscle ring."""
    bone = _fill_holes(hu >= 150)
    muscle = (hu >= -29) & (hu <= 150) & ~bone
    fat = (hu >= -190) & (hu <= -30)
    inner = _fill_holes(muscle | bone)
    return {"muscle": muscle, "subcutaneous_fat": fat & ~inner, "visceral_fat": fat & inner}


def _load(paths: list[Path]) -> tuple[list[pydicom.Dataset], dict[str, Path]]:
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    return headers, {str(h.SOPInstanceUID): p for h, p in zip(headers, paths, strict=False)}


@pytest.fixture(scope="module")
def abdomen512() -> CtPhantom:
    return abdomen_phantom(7, slices=100, size=512, spacing_z=3.0, patient_size_m=1.68)


# ----------------------------------------------------------------------------- CTPA


def test_ctpa_same_seed_same_volume_and_the_clot_is_the_only_difference() -> None:
    a, b = ctpa_phantom(3, slices=30, size=128), ctpa_phantom(3, slices=30, size=128)
    np.testing.assert_array_equal(a.volume_hu, b.volume_hu)
    assert a.volume_hu.dtype == np.int16 and a.volume_hu.shape == (30, 128, 128)
    normal = ctpa_phantom(3, slices=30, size=128, embolus=None)
    changed = a.volume_hu != normal.volume_hu
    assert np.array_equal(changed, a.mask("embolus", "chronic_embolus")) and changed.any()
    other = ctpa_phantom(4, slices=30, size=128)
    assert np.mean(np.abs(other.volume_hu.astype(np.int32) - a.volume_hu)) > 20


@pytest.mark.parametrize(
    ("side", "chronic", "acute_and_chronic"),
    [
        ("right", False, False),
        ("left", False, False),
        ("central", False, False),
        ("right", True, False),
        ("left", False, True),
    ],
)
@pytest.mark.parametrize("seed", [0, 11])
def test_pe_slices_hold_a_defect_inside_the_artery(
    side: str, chronic: bool, acute_and_chronic: bool, seed: int
) -> None:
    sick = ctpa_phantom(
        seed,
        slices=60,
        size=256,
        embolus=side,
        chronic=chronic,  # type: ignore[arg-type]
        acute_and_chronic=acute_and_chronic,
    )
    normal = ctpa_phantom(seed, slices=60, size=256, embolus=None)
    truth = sick.truth
    assert truth["pe_slices"] and truth["pe_slices"] == sorted(truth["pe_slices"])
    assert truth["pe_present_on_image"] == [int(k in truth["pe_slices"]) for k in range(60)]
    # Consecutive slices: one clot (or two of one side) spans a run, at least a few mm long.
    assert len(truth["pe_slices"]) >= 2
    artery = normal.mask("pulmonary_artery")
    defect = sick.mask("embolus", "chronic_embolus")
    assert not (defect & ~artery).any(), "the clot lies inside the contrast-filled arteries"
    for k in range(60):
        area = defect[k].sum() * sick.pixel_mm**2
        assert (k in truth["pe_slices"]) == (area >= 10.0), (k, area)
    for k in truth["pe_slices"]:
        inside = artery[k]
        drop = normal.volume_hu[k][inside].mean() - sick.volume_hu[k][inside].mean()
        assert drop > 0, (k, drop)
        clot_hu = sick.volume_hu[k][defect[k]].mean()
        assert 30 <= clot_hu <= 100, clot_hu  # acute ~50, chronic ~85 HU
        assert normal.volume_hu[k][defect[k]].mean() > 250  # what was contrast there
    # Side: columns run patient right → left, x = 0 at the image centre.
    cols = np.nonzero(defect)[2]
    x_mm = (cols.mean() - 127.5) * sick.pixel_mm
    if side == "right":
        assert x_mm < -15
    elif side == "left":
        assert x_mm > 15
    else:
        assert abs(x_mm) < 30
    labels = truth["exam_labels"]
    assert set(labels) == set(PE_EXAM_LABELS) and all(truth[k] == v for k, v in labels.items())
    assert labels["negative_exam_for_pe"] == 0 and labels["indeterminate"] == 0
    assert labels["rightsided_pe"] == (side == "right") and labels["leftsided_pe"] == (side == "left")
    assert labels["central_pe"] == (side == "central") == truth["central"]
    assert labels["rv_lv_ratio_gte_1"] + labels["rv_lv_ratio_lt_1"] == 1
    assert labels["chronic_pe"] == int(chronic) and labels["acute_and_chronic_pe"] == int(acute_and_chronic)
    if acute_and_chronic:
        assert sick.mask("embolus").any() and sick.mask("chronic_embolus").any()


def test_negative_exam_labels_and_rv_lv_ratio_drawn() -> None:
    normal = ctpa_phantom(5, slices=40, size=128, embolus=None, rv_lv_ratio=1.3)
    assert normal.truth["pe_slices"] == [] and sum(normal.truth["pe_present_on_image"]) == 0
    assert normal.truth["exam_labels"] == {label: int(label == "negative_exam_for_pe") for label in PE_EXAM_LABELS}
    strained = ctpa_phantom(5, slices=40, size=128, rv_lv_ratio=1.3).truth["exam_labels"]
    assert strained["rv_lv_ratio_gte_1"] == 1 and strained["rv_lv_ratio_lt_1"] == 0
    # The drawn ventricles follow the ratio: widest cavities on the slice of largest RV+LV.
    for ratio in (0.7, 1.3):
        p = ctpa_phantom(5, slices=40, size=256, embolus=None, rv_lv_ratio=ratio)
        rv, lv = p.mask("right_ventricle").sum(axis=(1, 2)), p.mask("left_ventricle").sum(axis=(1, 2))
        k = int(np.argmax(rv + lv))
        assert rv[k] / lv[k] == pytest.approx(ratio * 28 / 30, rel=0.15)
    with pytest.raises(ValueError, match="exclusive"):
        ctpa_phantom(1, chronic=True, acute_and_chronic=True)
    with pytest.raises(ValueError, match="embolus must be"):
        ctpa_phantom(1, embolus="middle")  # type: ignore[arg-type]


def test_ctpa_anatomy_hu() -> None:
    p = ctpa_phantom(2, slices=40, size=128)
    hu = p.volume_hu
    assert hu[p.mask("lung")].mean() == pytest.approx(-860, abs=5)
    contrast = hu[p.mask("pulmonary_artery")].mean()
    assert 290 <= contrast <= 430 and contrast == pytest.approx(p.truth["contrast_hu"], abs=5)
    assert hu[p.mask("muscle")].mean() == pytest.approx(45, abs=5)
    assert hu[p.mask("subcutaneous_fat")].mean() == pytest.approx(-100, abs=5)
    assert hu[p.mask("cortical_bone")].mean() > 600
    # Apex at the top, upper abdomen (liver) at the bottom: slice 0 is cranial.
    liver = p.mask("liver").sum(axis=(1, 2))
    assert liver[:10].sum() == 0 and liver[-5:].min() > 0


# ----------------------------------------------------------------------------- series on disk


@pytest.mark.parametrize("representation", ["uint16", "int16"])
def test_series_load_in_position_order_despite_shuffled_names_and_numbers(tmp_path: Path, representation: str) -> None:
    phantom = ctpa_phantom(6, slices=24, size=64)
    paths = phantom.write_series(tmp_path, instance_numbers="shuffled", pixel_representation=representation)
    headers, by_uid = _load(paths)
    z = [float(h.ImagePositionPatient[2]) for h in headers]
    numbers = [int(h.InstanceNumber) for h in headers]
    assert z == sorted(z, reverse=True)  # returned in volume order: cranial first
    assert numbers != sorted(numbers) and numbers != sorted(numbers, reverse=True)
    on_disk = sorted(tmp_path.iterdir())
    assert [p.name for p in on_disk] != [p.name for p in paths]  # names not in slice order
    plan = plan_series([pydicom.dcmread(p, stop_before_pixels=True) for p in on_disk])
    assert list(plan.sop_instance_uids) == phantom.truth["sop_uids"][::-1]
    assert [plan.sop_instance_uids[phantom.plan_index(k)] for k in range(24)] == phantom.truth["sop_uids"]
    assert plan.spacing.median == pytest.approx(phantom.spacing_z) and not plan.warnings
    in_plan = phantom.plan_truth()
    assert in_plan["sop_uids"] == list(plan.sop_instance_uids)
    assert [plan.sop_instance_uids[k] for k in in_plan["pe_slices"]] == sorted(
        phantom.truth["pe_sop_uids"], key=list(plan.sop_instance_uids).index
    )
    volume = np.concatenate([batch for _, batch in iter_hu_batches(plan, by_uid, batch_size=7)])
    np.testing.assert_array_equal(volume[::-1], phantom.volume_hu)  # HU round trip, exact
    assert phantom.truth["pe_sop_uids"] == [phantom.truth["sop_uids"][k] for k in phantom.truth["pe_slices"]]
    ds = pydicom.dcmread(paths[0])
    assert ds.PixelRepresentation == (1 if representation == "int16" else 0)
    assert ds.pixel_array.dtype == (np.int16 if representation == "int16" else np.uint16)


def test_headers_like_a_scanner_and_dciodvfy_clean(tmp_path: Path, abdomen512: CtPhantom) -> None:
    ctpa = ctpa_phantom(1, slices=12, size=64, patient_size_m=1.81)
    [first, *_] = ctpa.write_series(tmp_path / "pe", study_uid="1.2.826.0.1.3680043.8.498.1", series_number=5)
    ds = pydicom.dcmread(first)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and ds.Modality == "CT"
    assert ds.StudyInstanceUID == "1.2.826.0.1.3680043.8.498.1" and ds.SeriesNumber == 5
    assert "PE" in ds.StudyDescription and "CTA" in ds.StudyDescription and ds.BodyPartExamined == "CHEST"
    assert ds.ContrastBolusAgent and float(ds.PatientSize) == pytest.approx(1.81)
    assert float(ds.SliceThickness) == pytest.approx(ctpa.spacing_z)
    assert [float(v) for v in ds.PixelSpacing] == pytest.approx([ctpa.pixel_mm] * 2, rel=1e-5)
    assert list(ds.ImageOrientationPatient) == [1, 0, 0, 0, 1, 0] and ds.RescaleSlope == 1
    assert len(ds.WindowCenter) == len(ds.WindowWidth) == 2
    abdomen = abdomen512.write_series(tmp_path / "abd", file_names="ordered", pixel_representation="int16")
    ab = pydicom.dcmread(abdomen[abdomen512.truth["l3_index"]])
    assert "ABDOMEN" in ab.StudyDescription and ab.BodyPartExamined == "ABDOMEN" and ab.ContrastBolusAgent
    assert float(ab.PatientSize) == pytest.approx(1.68)
    assert abdomen512.truth["l3_sop_uid"] == ab.SOPInstanceUID
    for path in (first, abdomen[0], abdomen[-1]):
        report = dciodvfy(path)
        assert not report.errors and not report.warnings, report.output


def test_localizer_in_the_series_is_dropped_and_descriptions_can_change(tmp_path: Path) -> None:
    phantom = ctpa_phantom(8, slices=16, size=64)
    paths = phantom.write_series(
        tmp_path, localizer=True, descriptions={"StudyDescription": "CT CHEST", "ContrastBolusAgent": ""}
    )
    files = sorted(tmp_path.iterdir())
    assert len(paths) == 16 and len(files) == 17
    plan = plan_series([pydicom.dcmread(p, stop_before_pixels=True) for p in files])
    assert [d.sop_instance_uid for d in plan.dropped] == [phantom.truth["localizer_sop_uid"]]
    assert list(plan.sop_instance_uids) == phantom.truth["sop_uids"][::-1]
    scout = pydicom.dcmread(tmp_path / "IM00000.dcm")
    assert "LOCALIZER" in scout.ImageType and scout.pixel_array.shape == (16, 64)
    report = dciodvfy(tmp_path / "IM00000.dcm")
    assert not report.errors and not report.warnings, report.output
    axial = pydicom.dcmread(paths[0], stop_before_pixels=True)
    assert axial.StudyDescription == "CT CHEST" and "ContrastBolusAgent" not in axial
    with pytest.raises(ValueError, match="cannot override"):
        phantom.write_series(tmp_path / "x", descriptions={"Modality": "MR"})


def test_orthanc_stores_the_series_under_the_given_uids(tmp_path: Path, orthanc: OrthancServer) -> None:
    phantom = abdomen_phantom(9, slices=90, size=64, spacing_z=3.2)
    study, series = "1.2.826.0.1.3680043.8.498.4.1", "1.2.826.0.1.3680043.8.498.4.2"
    phantom.write_series(tmp_path, study_uid=study, series_uid=series, instance_numbers="shuffled")
    orthanc.store_with_storescu([tmp_path])
    stored = orthanc.wait_for_instances(study_uid=study, count=90)
    assert {i.sop_instance_uid for i in stored} == set(phantom.truth["sop_uids"])
    assert {(i.series_instance_uid, i.modality, i.sop_class_uid) for i in stored} == {
        (series, "CT", "1.2.840.10008.5.1.4.1.1.2")
    }
    assert all("ABD" in i.series_description for i in stored)


# ----------------------------------------------------------------------------- abdomen


def test_levels_run_head_to_feet_with_vertebral_heights(abdomen512: CtPhantom) -> None:
    truth = abdomen512.truth
    levels = truth["levels"]
    order = [LEVELS.index(level) for level in levels]
    assert order == sorted(order) and set(levels) == set(LEVELS)  # T first, S last, nothing skipped
    counts = {level: levels.count(level) for level in LEVELS}
    for name in ("L1", "L2", "L3", "L4", "L5"):  # body 27–30 mm + a 8–10 mm disc, at 3 mm
        assert 10 <= counts[name] <= 14, counts
    assert counts["T"] >= 3 and counts["S"] >= 3
    top, bottom = truth["vertebrae"]["T12"]
    assert 23 <= bottom - top <= 27
    first, last = truth["level_ranges"]["L3"]
    assert abs(truth["l3_index"] - (first + last) / 2) <= 1
    in_plan = abdomen512.plan_truth()  # caudal first: S .. T
    assert in_plan["levels"][0] == "S" and in_plan["levels"][-1] == "T"
    assert in_plan["levels"][in_plan["l3_index"]] == "L3"
    assert in_plan["level_ranges"]["L3"] == [len(levels) - 1 - last, len(levels) - 1 - first]
    assert not truth["disc"][truth["l3_index"]] and any(truth["disc"])


def test_level_features_change_down_the_spine(abdomen512: CtPhantom) -> None:
    """What a CNN can use: kidneys at L1–L2, iliac bone from L4 down, psoas growing, ribs only at T/L1."""
    truth, p = abdomen512.truth, abdomen512

    def mid(level: str) -> int:
        first, last = truth["level_ranges"][level]
        return (first + last) // 2

    kidney = p.mask("kidney").sum(axis=(1, 2))
    assert kidney[mid("L1")] > 0 and kidney[mid("L2")] > 0 and kidney[truth["l3_index"]] == 0
    assert kidney[mid("L4")] == 0
    psoas_side = p.mask("muscle")[:, :, :]  # muscle grows caudally overall with the psoas
    assert psoas_side[mid("L5")].sum() > psoas_side[mid("L1")].sum()
    liver = p.mask("liver").sum(axis=(1, 2))
    assert liver[mid("T")] > liver[mid("L1")] and liver[truth["l3_index"]] == 0
    assert truth["levels"][int(np.nonzero(p.mask("bladder").sum(axis=(1, 2)))[0][0])] == "S"


@pytest.mark.parametrize("offset", [0, -1, 1])
def test_l3_areas_by_thresholds_match_the_truth(abdomen512: CtPhantom, offset: int) -> None:
    truth = abdomen512.truth
    k = truth["l3_index"] + offset
    measured = _threshold_composition(abdomen512.volume_hu[k].astype(np.float32))
    cm2 = (abdomen512.pixel_mm / 10) ** 2
    for tissue, expected in truth["areas_cm2"].items():
        area = float(measured[tissue].sum()) * cm2
        assert area == pytest.approx(expected, rel=0.05), (tissue, offset, area, expected)
        if offset == 0:
            np.testing.assert_array_equal(measured[tissue], truth["masks_at_l3"][tissue])
            assert truth["areas_cm2_per_slice"][k][tissue] == expected
    assert 80 < truth["areas_cm2"]["muscle"] < 250 and truth["areas_cm2"]["subcutaneous_fat"] > 50
    assert truth["areas_cm2"]["visceral_fat"] > 30
    assert truth["skeletal_muscle_index"] == pytest.approx(truth["areas_cm2"]["muscle"] / 1.68**2)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_l3_areas_other_seeds_at_256(seed: int) -> None:
    p = abdomen_phantom(seed, slices=90, size=256, spacing_z=3.5, patient_size_m=None)
    assert p.truth["skeletal_muscle_index"] is None
    k = p.truth["l3_index"]
    measured = _threshold_composition(p.volume_hu[k].astype(np.float32))
    for tissue, expected in p.truth["areas_cm2"].items():
        assert float(measured[tissue].sum()) * (p.pixel_mm / 10) ** 2 == pytest.approx(expected, rel=0.05), tissue


def test_abdomen_rejects_short_coverage() -> None:
    with pytest.raises(ValueError, match="T12..S1 needs"):
        abdomen_phantom(0, slices=40, spacing_z=3.0)
    assert "kidney" in TISSUES


# ----------------------------------------------------------------------------- data sets


@pytest.mark.parametrize("module", ["training.phantoms.ct", "training.phantoms.ct_datasets"])
def test_public_names_exist(module: str) -> None:
    imported = __import__(module, fromlist=["__all__"])
    assert imported.__all__ and all(hasattr(imported, name) for name in imported.__all__)


def test_rsna_pe_layout_and_columns(tmp_path: Path) -> None:
    root = write_rsna_pe(tmp_path / "a", studies=4, slices=16, size=64, seed=2)
    text = (root / "train.csv").read_text(encoding="ascii")
    assert text.splitlines()[0] == RSNA_HEADER == ",".join(RSNA_PE_COLUMNS)
    rows = list(csv.DictReader(text.splitlines()))
    assert len(rows) == 4 * 16
    exams: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        exams.setdefault(row["StudyInstanceUID"], []).append(row)
        path = root / "train" / row["StudyInstanceUID"] / row["SeriesInstanceUID"] / f"{row['SOPInstanceUID']}.dcm"
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.SOPInstanceUID == row["SOPInstanceUID"] and ds.StudyInstanceUID == row["StudyInstanceUID"]
        assert all(row[c] in ("0", "1") for c in RSNA_PE_COLUMNS[3:])
    assert len(exams) == 4
    negatives = 0
    for exam_rows in exams.values():
        exam = {c: {r[c] for r in exam_rows} for c in RSNA_PE_COLUMNS[4:]}
        assert all(len(v) == 1 for v in exam.values())  # exam labels repeated on every row
        positive_images = sum(int(r["pe_present_on_image"]) for r in exam_rows)
        if exam["negative_exam_for_pe"] == {"1"}:
            negatives += 1
            assert positive_images == 0 and exam["rv_lv_ratio_gte_1"] == exam["rv_lv_ratio_lt_1"] == {"0"}
        else:
            assert positive_images > 0
            assert int(exam["rv_lv_ratio_gte_1"].pop()) + int(exam["rv_lv_ratio_lt_1"].pop()) == 1
    assert negatives == 1
    again = write_rsna_pe(tmp_path / "b", studies=4, slices=16, size=64, seed=2)
    assert (again / "train.csv").read_text(encoding="ascii") == text  # deterministic, UIDs included


def test_lumbar_folders(tmp_path: Path) -> None:
    root = write_lumbar_folders(tmp_path, series=2, size=64, seed=1, slices=90)
    for split in ("train", "test"):
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(LEVELS)
        for level in LEVELS:
            assert any((root / split / level).iterdir()), (split, level)
    train = {p.name.split("-")[1] for p in (root / "train").rglob("*.png")}
    test = {p.name.split("-")[1] for p in (root / "test").rglob("*.png")}
    assert train and test and not train & test  # a series lies in one split only
    image = Image.open(next((root / "test" / "L3").iterdir()))
    assert image.mode == "L" and image.size == (64, 64)
    phantom = abdomen_phantom(1000, slices=90, size=64)
    kept = [k for k in range(90) if not phantom.truth["disc"][k]]
    assert sum(1 for _ in (root / "train").rglob("*.png")) == len(kept)
    k = phantom.truth["l3_index"]
    np.testing.assert_array_equal(
        np.asarray(Image.open(root / "train" / "L3" / f"s1-000-{k:03d}.png")), window_to_uint8(phantom.volume_hu[k])
    )
    center, width = LUMBAR_PNG_WINDOW
    assert window_to_uint8(np.array([center - width / 2, center, center + width / 2])).tolist() == [0, 128, 255]
