"""CT results (PE on CTPA, lumbar levels and body composition) as SR, KOS, SEG and GSPS.

Every object is built over a small synthetic CT series written here with
pydicom (CT Image Storage, 64x64, a few slices along z), saved, checked by
``dciodvfy`` and read back with pydicom and highdicom: what a PACS user
would open.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from core.findings import (
    LUMBAR_LEVELS,
    PE_EXAM_LABELS,
    AlgorithmInfo,
    BodyComposition,
    LevelRun,
    LumbarResult,
    PeExamResult,
    SeriesResult,
)
from sr_writer import (
    LABEL_LAYER,
    MANUFACTURER,
    build_key_object_selection,
    build_lumbar_report,
    build_pe_report,
    build_slice_labels,
    build_tissue_segmentation,
    code,
    pe_labels,
)
from sr_writer.codes import CONCEPTS, key_for
from sr_writer.uids import is_under_root
from tests.helpers import assert_dciodvfy_clean
from tests.sr_writer.scenarios import UID_ROOT, series, write
from tests.sr_writer.srtree import device_observers, group_algorithm, measurement_groups
from tests.sr_writer.test_sr_codes import _code_items

PE_MODEL = AlgorithmInfo(name="ct-pe", version="demo-1", weights_sha256="a7" * 32, demo=True)
LUMBAR_MODEL = AlgorithmInfo(name="ct-lumbar", version="1.0.0", weights_sha256="b8" * 32)


def ct_series(
    n: int, *, size: int = 64, spacing_z: float = 2.5, patient_size: float | None = 1.75, window: bool = True
) -> list[Dataset]:
    """``n`` axial CT slices of one series (slice 0 most cranial), 0.8 mm pixels, HU = stored - 1024."""
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    now = datetime.datetime(2026, 11, 22, 10, 30, 0)
    slices = []
    rng = np.random.default_rng(4)
    for i in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        uid = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "PHANTOM^CT", "CT-1", "19600101", "O"
        if patient_size is not None:
            ds.PatientSize = patient_size
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
        ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = "A1", "1", ""
        ds.Modality, ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "CT", "TEST", 3, i + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PositionReferenceIndicator = ""
        ds.PatientPosition = "FFS"
        ds.KVP, ds.SliceThickness = 120, spacing_z
        ds.ImagePositionPatient = [-25.6, -25.6, -spacing_z * i]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = -spacing_z * i
        ds.PixelSpacing = [0.8, 0.8]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        if window:
            ds.WindowCenter, ds.WindowWidth = 40 + i, 400  # one window per slice: each must be kept
        ds.AcquisitionNumber = 1
        ds.PixelData = rng.integers(0, 2000, (size, size), dtype=np.uint16).tobytes()
        slices.append(ds)
    return slices


def headers(slices: list[Dataset]) -> list[Dataset]:
    """The slices as the node passes them to writers: headers without pixels."""
    out = []
    for ds in slices:
        header = Dataset({tag: element for tag, element in ds.items() if element.keyword != "PixelData"})
        header.file_meta = ds.file_meta
        out.append(header)
    return out


def pe_result(slices: list[Dataset], *, positive: bool = True) -> SeriesResult:
    n = len(slices)
    uids = [str(s.SOPInstanceUID) for s in slices]
    probabilities = [0.02] * n
    positive_slices: list[int] = []
    if positive:
        positive_slices = [3, 4, 5]
        for i, p in zip(positive_slices, (0.71, 0.93, 0.88), strict=False):
            probabilities[i] = p
    labels = {label: False for label in PE_EXAM_LABELS}
    exam_p = {label: 0.05 for label in PE_EXAM_LABELS}
    if positive:
        labels.update(rightsided_pe=True, rv_lv_ratio_lt_1=True)
        exam_p.update(negative_exam_for_pe=0.08, rightsided_pe=0.91, rv_lv_ratio_lt_1=0.77, rv_lv_ratio_gte_1=0.23)
    else:
        labels.update(negative_exam_for_pe=True, rv_lv_ratio_lt_1=False)
        exam_p.update(negative_exam_for_pe=0.96)
    pe = PeExamResult(
        slice_uids=uids,
        slice_probabilities=probabilities,
        exam_probabilities=exam_p,
        exam_labels=labels,
        positive_slices=positive_slices,
        key_slices=[4] if positive else [],
        corrections=["leftsided_pe set to absent: probability 0.41 below the exam threshold"] if positive else [],
    )
    return SeriesResult(
        pipeline="ct_pe",
        study_instance_uid=str(slices[0].StudyInstanceUID),
        series_instance_uid=str(slices[0].SeriesInstanceUID),
        algorithms=[PE_MODEL],
        pe=pe,
    )


#: Levels of the 14-slice lumbar scenario, head to feet.
LEVELS = ["T", "T", "L1", "L1", "L2", "L2", "L3", "L3", "L3", "L4", "L4", "L5", "S", "S"]
AREAS = {"muscle": 152.3, "subcutaneous_fat": 201.7, "visceral_fat": 120.4}


def lumbar_result(slices: list[Dataset], *, with_l3: bool = True) -> SeriesResult:
    levels = LEVELS if with_l3 else [lv if lv != "L3" else "L2" for lv in LEVELS]
    runs, start = [], 0
    for i in range(1, len(levels) + 1):
        if i == len(levels) or levels[i] != levels[start]:
            runs.append(LevelRun(levels[start], start, i - 1))
            start = i
    composition = None
    l3 = 7 if with_l3 else None
    if l3 is not None:
        composition = BodyComposition(
            sop_instance_uid=str(slices[l3].SOPInstanceUID),
            muscle_cm2=AREAS["muscle"],
            subcutaneous_fat_cm2=AREAS["subcutaneous_fat"],
            visceral_fat_cm2=AREAS["visceral_fat"],
            patient_size_m=1.75,
            skeletal_muscle_index=AREAS["muscle"] / 1.75**2,
        )
    lumbar = LumbarResult(
        slice_uids=[str(s.SOPInstanceUID) for s in slices],
        levels=list(levels),
        evaluated=[0, 4, 7, 10, 13],
        runs=runs,
        l3_index=l3,
        composition=composition,
    )
    return SeriesResult(
        pipeline="ct_lumbar",
        study_instance_uid=str(slices[0].StudyInstanceUID),
        series_instance_uid=str(slices[0].SeriesInstanceUID),
        algorithms=[LUMBAR_MODEL],
        lumbar=lumbar,
    )


def _common(ds: Dataset, source: Dataset, model: str) -> None:
    """Same study and patient, new series under our root, the algorithm named (IHE AIR)."""
    assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == source.PatientID
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert is_under_root(ds.SeriesInstanceUID, UID_ROOT) and is_under_root(ds.SOPInstanceUID, UID_ROOT)
    assert ds.Manufacturer == MANUFACTURER
    (item,) = [
        i for i in ds.ContributingEquipmentSequence if i.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"
    ]
    assert item.ManufacturerModelName == model and item.Manufacturer == "ainode"


def _codes_from_table(ds: Dataset) -> None:
    seen = 0
    for path, item in _code_items(ds):
        seen += 1
        key = key_for(str(item.CodeValue), str(item.CodingSchemeDesignator))
        assert key is not None, f"code ({item.CodeValue}, {item.CodingSchemeDesignator}, {item.CodeMeaning}) at {path}"
        assert item.CodeMeaning == CONCEPTS[key].meaning, path
    assert seen >= 10


def _groups(path: Path) -> dict[str, hd.sr.MeasurementsAndQualitativeEvaluations]:
    report = hd.sr.srread(path)
    return {str(g.tracking_identifier): g for g in report.content.get_image_measurement_groups()}


def _texts(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> list[str]:
    return [str(i.TextValue) for i in group[0].ContentSequence if i.ValueType == "TEXT"]


def _evaluation(group: hd.sr.MeasurementsAndQualitativeEvaluations, key: str) -> str:
    (evaluation,) = group.get_qualitative_evaluations(name=code(key))
    return str(evaluation.value.meaning)


# --- PE SR ------------------------------------------------------------------------------


def test_pe_report_says_present_right_sided_with_the_positive_slices(tmp_path: Path) -> None:
    slices = ct_series(10)
    sources = headers(slices)
    sr = build_pe_report(pe_result(slices), sources, params=series(993))
    path = write(sr, tmp_path, "pe_sr")
    assert_dciodvfy_clean(path)
    ds = pydicom.dcmread(path)
    _common(ds, slices[0], "ct-pe (DEMO)")
    _codes_from_table(ds)
    assert "DEMO" in ds.SeriesDescription
    # The node is the report's device observer; the algorithm is each group's, named with "(DEMO)".
    (observer,) = device_observers(list(ds.ContentSequence))
    assert observer["121013"] == "ainode"
    for group in measurement_groups(ds):
        (observer,) = device_observers(list(group.ContentSequence))
        assert observer["121013"] == "ct-pe (DEMO)", group_algorithm(group)
    # Evidence: the series' slices.
    evidence = {
        str(i.ReferencedSOPInstanceUID)
        for s in ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for i in s.ReferencedSOPSequence
    }
    assert evidence == {str(s.SOPInstanceUID) for s in slices}

    groups = _groups(path)
    exam = groups["exam PE"]
    assert _evaluation(exam, "pulmonary_embolism") == "Present"
    assert exam.get_measurements(name=code("probability"))[0].value == pytest.approx(0.92)
    texts = _texts(exam)
    assert any("leftsided_pe set to absent" in t for t in texts), texts
    assert any(t.startswith("Pulmonary embolism present (acute; right") for t in texts), texts

    right = groups["exam right-sided PE"]
    assert _evaluation(right, "pulmonary_embolism") == "Present"
    (site,) = right.finding_sites
    assert site.value == code("pulmonary_artery") and site.laterality == code("right")
    assert right.get_measurements(name=code("probability"))[0].value == pytest.approx(0.91)
    assert _evaluation(groups["exam left-sided PE"], "pulmonary_embolism") == "Absent"
    assert groups["exam central PE"].finding_sites[0].topographical_modifier == code("central")
    assert _evaluation(groups["exam acute PE"], "acute_pulmonary_embolism") == "Present"
    # Chronic and acute-and-chronic PE: pulmonary embolism post-coordinated with its clinical course (CID 6130).
    for tracking, courses in (
        ("exam chronic PE", ["Chronic"]),
        ("exam acute and chronic PE", ["Acute onset", "Chronic"]),
    ):
        group = groups[tracking]
        assert group.finding_type == code("pulmonary_embolism")
        assert _evaluation(group, "pulmonary_embolism") == "Absent"
        modified = [i for i in group[0].ContentSequence if i.ValueType == "CODE" and "ContentSequence" in i]
        assert len(modified) == 2, tracking  # the Finding and its evaluation
        for item in modified:
            assert [
                (m.RelationshipType, m.ConceptNameCodeSequence[0].CodeValue, m.ConceptCodeSequence[0].CodeMeaning)
                for m in item.ContentSequence
            ] == [("HAS CONCEPT MOD", "112023", c) for c in courses], tracking
    assert _evaluation(groups["exam RV/LV < 1"], "rv_lv_ratio_lt_1") == "Present"
    assert _evaluation(groups["exam RV/LV >= 1"], "rv_lv_ratio_gte_1") == "Absent"

    # Positive slices: the group references exactly slices 3, 4, 5, each probability its own slice.
    evidence_group = groups["slices with PE"]
    referenced = [
        str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for i in evidence_group[0].ContentSequence
        if i.ValueType == "IMAGE"
    ]
    assert referenced == [str(slices[i].SOPInstanceUID) for i in (3, 4, 5)]
    per_slice = {}
    for m in evidence_group.get_measurements(name=code("probability")):
        (image,) = m.referenced_images
        per_slice[str(image.referenced_sop_instance_uid)] = m.value
    assert per_slice == pytest.approx(
        {str(slices[3].SOPInstanceUID): 0.71, str(slices[4].SOPInstanceUID): 0.93, str(slices[5].SOPInstanceUID): 0.88}
    )
    assert "Key slices (instance numbers): 5" in _texts(evidence_group)


def test_pe_report_of_a_negative_exam_says_absent_and_references_no_slice(tmp_path: Path) -> None:
    slices = ct_series(6)
    sr = build_pe_report(pe_result(slices, positive=False), headers(slices), params=series(993))
    path = write(sr, tmp_path, "pe_negative")
    assert_dciodvfy_clean(path)
    groups = _groups(path)
    assert _evaluation(groups["exam PE"], "pulmonary_embolism") == "Absent"
    assert "slices with PE" not in groups
    assert _evaluation(groups["exam right-sided PE"], "pulmonary_embolism") == "Absent"
    assert _evaluation(groups["exam acute PE"], "acute_pulmonary_embolism") == "Absent"
    assert "No pulmonary embolism" in _texts(groups["exam PE"])


def test_pe_report_indeterminate_and_supersession(tmp_path: Path) -> None:
    slices = ct_series(6)
    first = build_pe_report(pe_result(slices, positive=False), headers(slices), params=series(993))
    result = pe_result(slices, positive=False)
    assert result.pe is not None
    result.pe.exam_labels["indeterminate"] = True
    result.supersedes = [str(first.SOPInstanceUID)]
    sr = build_pe_report(result, headers(slices), params=series(993), predecessors=[first])
    path = write(sr, tmp_path, "pe_indeterminate")
    assert_dciodvfy_clean(path)
    assert _evaluation(_groups(path)["exam PE"], "pulmonary_embolism") == "Undetermined"
    ds = pydicom.dcmread(path)
    predecessor = ds.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert predecessor.ReferencedSOPInstanceUID == first.SOPInstanceUID


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("no_pe", "no PE exam result"),
        ("missing_label", "lacks exam labels"),
        ("index", "outside the"),
        ("foreign_slice", "not among the sources"),
    ],
)
def test_inconsistent_pe_results_are_refused(change: str, message: str) -> None:
    slices = ct_series(6)
    result = pe_result(slices)
    assert result.pe is not None
    sources = headers(slices)
    if change == "no_pe":
        result.pe = None
    elif change == "missing_label":
        del result.pe.exam_labels["central_pe"]
    elif change == "index":
        result.pe.positive_slices = [6]
    elif change == "foreign_slice":
        sources = sources[1:]
    with pytest.raises(ValueError, match=message):
        build_pe_report(result, sources, params=series(993))


# --- Lumbar SR --------------------------------------------------------------------------


def test_lumbar_report_has_level_runs_l3_slice_and_areas_in_cm2(tmp_path: Path) -> None:
    slices = ct_series(len(LEVELS))
    sr = build_lumbar_report(lumbar_result(slices), headers(slices), params=series(994))
    path = write(sr, tmp_path, "lumbar_sr")
    assert_dciodvfy_clean(path)
    ds = pydicom.dcmread(path)
    _common(ds, slices[0], "ct-lumbar")
    _codes_from_table(ds)
    assert "DEMO" not in ds.SeriesDescription
    groups = _groups(path)

    # One group per run, each referencing all its slices, with the vertebra as finding site.
    runs = {k: g for k, g in groups.items() if k.startswith("level ")}
    assert list(runs) == [
        "level T run 1",
        "level L1 run 2",
        "level L2 run 3",
        "level L3 run 4",
        "level L4 run 5",
        "level L5 run 6",
        "level S run 7",
    ]
    assert {g.finding_sites[0].value.meaning for g in runs.values()} == {
        "Thoracic spine",
        "L1 vertebra",
        "L2 vertebra",
        "L3 vertebra",
        "L4 vertebra",
        "L5 vertebra",
        "Sacrum",
    }
    l3_run = runs["level L3 run 4"]
    assert [str(s.referenced_sop_instance_uid) for s in l3_run.source_images] == [
        str(slices[i].SOPInstanceUID) for i in (6, 7, 8)
    ]
    assert "Level L3: slices 7 to 9 of 14 along the patient axis (instance numbers 7 to 9)" in _texts(l3_run)

    l3 = groups["L3 slice body composition"]
    assert [str(s.referenced_sop_instance_uid) for s in l3.source_images] == [str(slices[7].SOPInstanceUID)]
    areas = {}
    for m in l3.get_measurements(name=code("area")):
        assert m.unit == code("square_centimeter") and m.unit.value == "cm2"
        site = m.finding_sites[0]
        areas[(site.value.meaning, site.topographical_modifier.meaning if site.topographical_modifier else None)] = (
            m.value
        )
    assert areas == pytest.approx(
        {("Skeletal muscle", None): 152.3, ("Subcutaneous tissue", None): 201.7, ("Fat", "Internal"): 120.4}
    )
    (smi,) = l3.get_measurements(name=code("skeletal_muscle_index"))
    assert smi.unit.value == "cm2/m2" and smi.value == pytest.approx(152.3 / 1.75**2)
    assert any("-29 to 150 HU" in t and "-190 to -30 HU" in t for t in _texts(l3))


def test_lumbar_report_without_l3_says_so(tmp_path: Path) -> None:
    slices = ct_series(len(LEVELS))
    sr = build_lumbar_report(lumbar_result(slices, with_l3=False), headers(slices), params=series(994))
    path = write(sr, tmp_path, "lumbar_no_l3")
    assert_dciodvfy_clean(path)
    groups = _groups(path)
    assert "L3 slice body composition" not in groups
    texts = [
        str(i.TextValue)
        for c in pydicom.dcmread(path).ContentSequence
        if c.ValueType == "CONTAINER"
        for i in c.get("ContentSequence", [])
        if i.ValueType == "TEXT"
    ]
    assert any("No L3 vertebra was found" in t for t in texts)


def test_lumbar_runs_that_contradict_the_levels_are_refused() -> None:
    slices = ct_series(len(LEVELS))
    result = lumbar_result(slices)
    assert result.lumbar is not None
    result.lumbar.runs[3] = LevelRun("L3", 5, 8)  # slice 5 is L2
    with pytest.raises(ValueError, match="the levels disagree"):
        build_lumbar_report(result, headers(slices), params=series(994))
    assert set(LUMBAR_LEVELS) == set(LEVELS)


# --- KOS --------------------------------------------------------------------------------


def test_kos_references_exactly_the_key_slices(tmp_path: Path) -> None:
    slices = ct_series(8)
    keys = [str(slices[i].SOPInstanceUID) for i in (4, 3)]
    kos = build_key_object_selection(
        pe_result(slices),
        headers(slices),
        keys,
        title="of_interest",
        params=series(995),
        description="Slices with pulmonary embolism",
    )
    path = write(kos, tmp_path, "kos")
    assert_dciodvfy_clean(path)
    ds = pydicom.dcmread(path)
    _common(ds, slices[0], "ct-pe (DEMO)")
    _codes_from_table(ds)
    assert ds.Modality == "KO"
    assert (ds.ConceptNameCodeSequence[0].CodeValue, ds.ConceptNameCodeSequence[0].CodingSchemeDesignator) == (
        "113000",
        "DCM",
    )
    images = [
        str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for i in ds.ContentSequence if i.ValueType == "IMAGE"
    ]
    assert images == keys
    evidence = [
        str(i.ReferencedSOPInstanceUID)
        for s in ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for i in s.ReferencedSOPSequence
    ]
    assert sorted(evidence) == sorted(keys)
    descriptions = [
        str(i.TextValue)
        for i in ds.ContentSequence
        if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "113012"
    ]
    assert descriptions == ["Slices with pulmonary embolism (DEMO)"]
    # highdicom reads it back as a KOS (its own checks of TID 2010 pass).
    document = hd.ko.KeyObjectSelectionDocument.from_dataset(ds)
    assert document.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.59"


def test_kos_refuses_unknown_titles_and_foreign_slices() -> None:
    slices = ct_series(6)
    with pytest.raises(ValueError, match="is not one we write"):
        build_key_object_selection(
            pe_result(slices),
            headers(slices),
            [str(slices[0].SOPInstanceUID)],
            title="Rejected for Quality Reasons",
            params=series(995),
            description="x",
        )
    with pytest.raises(ValueError, match="not among the sources"):
        build_key_object_selection(
            pe_result(slices),
            headers(slices),
            ["1.2.3.4"],
            title="Of Interest",
            params=series(995),
            description="x",
        )


# --- SEG --------------------------------------------------------------------------------


def test_tissue_segmentation_reads_back_equal(tmp_path: Path) -> None:
    slices = ct_series(3)
    source = slices[1]
    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 32, xx - 32)
    masks = {
        "subcutaneous_fat": (r >= 26) & (r < 30),
        "muscle": (r >= 20) & (r < 26),
        "visceral_fat": (r < 12) & (xx > 32),
    }
    demo = AlgorithmInfo(name="ct-lumbar", version="demo-1", demo=True)
    seg = build_tissue_segmentation(source, masks, demo, params=series(996))
    path = write(seg, tmp_path, "seg")
    assert_dciodvfy_clean(path)
    ds = pydicom.dcmread(path)
    _common(ds, source, "ct-lumbar (DEMO)")
    assert ds.SegmentationType == "BINARY" and "DEMO" in ds.SeriesDescription

    back = hd.seg.segread(path)
    labels = [str(d.SegmentLabel) for d in back.SegmentSequence]
    assert labels == ["skeletal muscle", "subcutaneous fat", "visceral fat"]
    # Muscle, Subcutaneous tissue and Fat of CID 7191 (Tissue Segmentation Property Types), not the
    # anatomic structure "Skeletal muscle" (127954009), which no segmentation property type CID holds.
    types = [d.SegmentedPropertyTypeCodeSequence[0] for d in back.SegmentSequence]
    assert [(t.CodeValue, t.CodeMeaning) for t in types] == [
        ("91727004", "Muscle"),
        ("71966008", "Subcutaneous tissue"),
        ("55603005", "Fat"),
    ]
    # Visceral fat is Fat with the modifier Internal, as the lumbar SR's finding site says it.
    modifiers = [[m.CodeValue for m in t.get("SegmentedPropertyTypeModifierCodeSequence", [])] for t in types]
    assert modifiers == [[], [], ["260521003"]]
    assert all(d.SegmentedPropertyCategoryCodeSequence[0].CodeMeaning == "Tissue" for d in back.SegmentSequence)
    assert all([r.CodeValue for r in d.AnatomicRegionSequence] == ["818981001"] for d in back.SegmentSequence)
    assert all(d.SegmentAlgorithmName == "ct-lumbar (DEMO)" for d in back.SegmentSequence)
    pixels = back.get_pixels_by_source_instance(
        source_sop_instance_uids=[str(source.SOPInstanceUID)], segment_numbers=[1, 2, 3]
    )
    assert pixels.shape == (1, 64, 64, 3)
    for number, key in enumerate(("muscle", "subcutaneous_fat", "visceral_fat")):
        np.testing.assert_array_equal(pixels[0, :, :, number].astype(bool), masks[key])


def test_tissue_segmentation_refuses_wrong_masks() -> None:
    source = ct_series(1)[0]
    full = {k: np.zeros((64, 64), bool) for k in ("muscle", "subcutaneous_fat", "visceral_fat")}
    with pytest.raises(ValueError, match="must be exactly"):
        build_tissue_segmentation(source, {"muscle": full["muscle"]}, LUMBAR_MODEL, params=series(9))
    with pytest.raises(ValueError, match="has shape"):
        build_tissue_segmentation(source, {**full, "muscle": np.zeros((32, 64), bool)}, LUMBAR_MODEL, params=series(9))


# --- GSPS slice labels ------------------------------------------------------------------


def test_slice_labels_put_the_level_on_every_slice_with_its_window(tmp_path: Path) -> None:
    slices = ct_series(len(LEVELS))
    result = lumbar_result(slices)
    labels = {str(s.SOPInstanceUID): level for s, level in zip(slices, LEVELS, strict=False)}
    gsps = build_slice_labels(result, headers(slices), labels, params=series(997))
    path = write(gsps, tmp_path, "labels")
    assert_dciodvfy_clean(path)
    ds = pydicom.dcmread(path)
    _common(ds, slices[0], "ct-lumbar")
    texts = {}
    for annotation in ds.GraphicAnnotationSequence:
        assert annotation.GraphicLayer == LABEL_LAYER
        (image,) = annotation.ReferencedImageSequence
        (text,) = annotation.TextObjectSequence
        texts[str(image.ReferencedSOPInstanceUID)] = str(text.UnformattedTextValue)
    assert texts == labels
    # Each slice keeps its own window (40 + i).
    windows = {}
    for voi in ds.SoftcopyVOILUTSequence:
        for image in voi.ReferencedImageSequence:
            windows[str(image.ReferencedSOPInstanceUID)] = float(voi.WindowCenter)
    assert windows == {str(s.SOPInstanceUID): 40.0 + i for i, s in enumerate(slices)}


def test_pe_slice_labels_only_on_flagged_slices_say_demo(tmp_path: Path) -> None:
    slices = ct_series(8, window=False)
    result = pe_result(slices)
    assert result.pe is not None
    labels = pe_labels(result.pe)  # the node's own texts: 3 significant digits
    gsps = build_slice_labels(result, headers(slices), labels, params=series(997))
    path = write(gsps, tmp_path, "pe_labels")
    assert_dciodvfy_clean(path)
    ds = pydicom.dcmread(path)
    texts = {
        str(a.ReferencedImageSequence[0].ReferencedSOPInstanceUID): str(a.TextObjectSequence[0].UnformattedTextValue)
        for a in ds.GraphicAnnotationSequence
    }
    assert texts == {
        str(slices[4].SOPInstanceUID): "PE suspected p=0.930 (DEMO)",
        str(slices[3].SOPInstanceUID): "PE suspected p=0.710 (DEMO)",
        str(slices[5].SOPInstanceUID): "PE suspected p=0.880 (DEMO)",
    }
    # Slices without a window get a full-range one rather than none.
    assert all("WindowCenter" in voi for voi in ds.SoftcopyVOILUTSequence)


# --- Concepts ---------------------------------------------------------------------------


def test_detector_and_ct_labels_have_finding_concepts() -> None:
    from sr_writer import display_name, finding_concept

    # ChestX-Det's extra classes: chest CAD concepts of PS3.16 and SNOMED's fracture of bone.
    assert (finding_concept("calcification").value, finding_concept("calcification").scheme_designator) == (
        "112063",
        "DCM",
    )
    assert display_name("diffuse_nodule") == "Nodular pattern"
    assert finding_concept("fracture").value == "125605004"
    assert finding_concept("acute_pulmonary_embolism").value == "706870000"
    # Private until a standard code is checked: the report must say which scheme it is.
    for key in ("rv_lv_ratio_gte_1", "rv_lv_ratio_lt_1", "pe_indeterminate"):
        assert CONCEPTS[key].scheme == "99AINODE" and CONCEPTS[key].is_finding
    assert code("square_centimeter").value == "cm2" and code("square_centimeter_per_square_meter").value == "cm2/m2"
