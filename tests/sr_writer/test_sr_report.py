"""TID 1500 reports of view results: valid per dciodvfy, and readable back with what we put in."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import Dataset

import sr_writer
from core.findings import Finding, ImageResult, Region, ViewResult
from sr_writer import MANUFACTURER, SeriesParams, build_measurement_report, code, device_uid
from sr_writer.report import node_device_uid
from sr_writer.uids import is_under_root
from tests.helpers import dciodvfy
from tests.sr_writer.scenarios import (
    DEMO_VIEW_FILTER,
    UID_ROOT,
    VARIANTS,
    VIEW_FILTER,
    build_variant,
    frontal_image,
    lateral_header,
    series,
    series_result,
    write,
)
from tests.sr_writer.srtree import device_observers


@pytest.mark.parametrize("variant", VARIANTS)
def test_dciodvfy_reports_no_error(variant: str, tmp_path: Path) -> None:
    sr, _ = build_variant(variant)
    report = dciodvfy(write(sr, tmp_path, variant))
    for line in report.warnings:
        print(f"{variant}: {line}")
    assert "Comprehensive3DSR" in report.output, report.output  # dciodvfy recognised the IOD
    assert not report.errors, "\n".join(report.errors) + "\n" + report.output


def _read_back(sr: Dataset, tmp_path: Path, name: str) -> tuple[Dataset, hd.sr.Comprehensive3DSR]:
    path = write(sr, tmp_path, name)
    return pydicom.dcmread(path), hd.sr.srread(path)


def _texts(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> list[str]:
    return [
        str(item.TextValue)
        for item in group[0].ContentSequence
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == code("comment").value
    ]


def _algorithm(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> tuple[str, str]:
    """(name, version) of the group's TID 4019 Algorithm Identification."""
    values = {
        item.ConceptNameCodeSequence[0].CodeValue: str(item.TextValue)
        for item in group[0].ContentSequence
        if item.ValueType == "TEXT"
    }
    return values[code("algorithm_name").value], values[code("algorithm_version").value]


def _evaluation(group: hd.sr.MeasurementsAndQualitativeEvaluations, key: str) -> hd.sr.CodedConcept | None:
    found = group.get_qualitative_evaluations(name=code(key))
    assert len(found) <= 1
    return found[0].value if found else None


def test_frontal_round_trip(tmp_path: Path, rg1_header: Dataset) -> None:
    sr, sources = build_variant("frontal")
    ds, report = _read_back(sr, tmp_path, "frontal")

    assert isinstance(report, hd.sr.Comprehensive3DSR)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR Storage
    assert ds.StudyInstanceUID == rg1_header.StudyInstanceUID
    assert ds.SeriesInstanceUID != rg1_header.SeriesInstanceUID
    assert ds.PatientID == rg1_header.PatientID and ds.PatientName == rg1_header.PatientName
    for uid in (ds.SeriesInstanceUID, ds.SOPInstanceUID):
        assert is_under_root(uid, UID_ROOT), uid
    assert ds.Manufacturer == MANUFACTURER
    assert ds.ManufacturerModelName == "cxr-view-filter"
    assert ds.Modality == "SR" and ds.SeriesNumber == 990 and ds.InstanceNumber == 1
    assert ds.CompletionFlag == "COMPLETE" and ds.VerificationFlag == "UNVERIFIED"
    assert ds.InstitutionName == "Test Hospital"
    assert ds.ContentDate and ds.ContentTime

    groups = report.content.get_image_measurement_groups(referenced_sop_instance_uid=rg1_header.SOPInstanceUID)
    assert len(groups) == 1
    group = groups[0]
    assert _evaluation(group, "image_view") == code("frontal")
    (probability,) = group.get_measurements(name=code("probability"))
    assert probability.value == pytest.approx(0.97)
    assert probability.unit == code("no_units")
    assert [s.referenced_sop_instance_uid for s in group.source_images] == [rg1_header.SOPInstanceUID]
    assert is_under_root(group.tracking_uid, UID_ROOT)
    assert _algorithm(group) == ("cxr-view-filter", "1.2.0")
    assert _evaluation(group, "header_image_view") is None  # header and model agree
    assert _evaluation(group, "analysed_further") is None

    # The report's observer is the node; the view group's is the view filter.
    (observer,) = report.content.get_observer_contexts(observer_type=code("device"))
    assert observer.observer_identifying_attributes.name == "ainode"
    assert observer.observer_identifying_attributes.uid == node_device_uid()
    (group_observer,) = device_observers(list(group[0].ContentSequence))
    assert group_observer["121013"] == "cxr-view-filter"
    assert group_observer["121012"] == device_uid(VIEW_FILTER)
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == rg1_header.SOPInstanceUID


def _ihe_items(ds: Dataset) -> list[Dataset]:
    return [
        item
        for item in ds.ContributingEquipmentSequence
        if (
            item.PurposeOfReferenceCodeSequence[0].CodeValue,
            item.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator,
        )
        == ("Newcode1", "99IHE")
    ]


def test_contributing_equipment_names_the_model_version(tmp_path: Path, rg1_header: Dataset) -> None:
    ds, _ = _read_back(build_variant("frontal")[0], tmp_path, "v1")
    (item,) = _ihe_items(ds)
    assert item.PurposeOfReferenceCodeSequence[0].CodeMeaning == "Processing Algorithm"
    assert item.Manufacturer == "ainode" and item.ManufacturerModelName == "cxr-view-filter"
    assert item.SoftwareVersions == "1.2.0"

    newer = dataclasses.replace(VIEW_FILTER, version="1.3.0")
    sr2 = build_measurement_report(
        series_result([frontal_image(rg1_header)], rg1_header, algorithm=newer), [rg1_header], params=series(990)
    )
    ds2, _ = _read_back(sr2, tmp_path, "v2")
    (item2,) = _ihe_items(ds2)
    assert item2.SoftwareVersions == "1.3.0"
    assert item2.DeviceUID != item.DeviceUID
    # The same model build always names the same device.
    sr3 = build_measurement_report(
        series_result([frontal_image(rg1_header)], rg1_header), [rg1_header], params=series(990)
    )
    assert _ihe_items(sr3)[0].DeviceUID == item.DeviceUID


def test_lateral_is_recorded_as_not_analysed_further(tmp_path: Path, rg1_header: Dataset) -> None:
    _, report = _read_back(build_variant("lateral")[0], tmp_path, "lateral")
    lateral_uid = lateral_header(rg1_header).SOPInstanceUID
    (group,) = report.content.get_image_measurement_groups(referenced_sop_instance_uid=lateral_uid)
    assert _evaluation(group, "image_view") == code("lateral")
    assert _evaluation(group, "analysed_further") == code("no")
    assert "lateral view: not analysed further" in _texts(group)
    (frontal,) = report.content.get_image_measurement_groups(referenced_sop_instance_uid=rg1_header.SOPInstanceUID)
    assert _evaluation(frontal, "image_view") == code("frontal")
    assert frontal.tracking_uid != group.tracking_uid


def test_disagreement_records_model_and_header(tmp_path: Path) -> None:
    _, report = _read_back(build_variant("disagreement")[0], tmp_path, "disagreement")
    (group,) = report.content.get_image_measurement_groups()
    assert _evaluation(group, "image_view") == code("lateral")
    assert _evaluation(group, "header_image_view") == code("postero_anterior")
    (text,) = [t for t in _texts(group) if "ViewPosition" in t]
    assert text.startswith("ViewPosition in header: PA") and "lateral" in text
    assert group.get_measurements(name=code("probability"))[0].value == pytest.approx(0.96)


def test_demo_model_says_demo_everywhere_a_user_looks(tmp_path: Path) -> None:
    ds, report = _read_back(build_variant("demo")[0], tmp_path, "demo")
    assert "DEMO" in ds.ManufacturerModelName
    assert "DEMO" in ds.SeriesDescription
    assert any("DEMO" in v for v in ds.SoftwareVersions)
    assert "DEMO" in _ihe_items(ds)[0].ManufacturerModelName
    (group,) = report.content.get_image_measurement_groups()
    assert _algorithm(group)[0] == DEMO_VIEW_FILTER.display_name == "cxr-view-filter (DEMO)"
    (observer,) = device_observers(list(group[0].ContentSequence))
    assert "DEMO" in observer["121013"] and "DEMO" in observer["121015"]


def test_predecessor_is_referenced_and_explained(tmp_path: Path) -> None:
    sr, _ = build_variant("predecessor")
    ds, report = _read_back(sr, tmp_path, "predecessor")
    first_uid = (
        sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    )
    assert first_uid != ds.SOPInstanceUID
    pre = ds.PredecessorDocumentsSequence[0]
    assert pre.StudyInstanceUID == ds.StudyInstanceUID
    assert pre.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPClassUID == ds.SOPClassUID
    (container,) = [
        item
        for item in ds.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == code("qualitative_evaluations").value
    ]
    (note,) = container.ContentSequence
    assert "supersedes" in note.TextValue and first_uid in note.TextValue and "new instances" in note.TextValue
    assert len(report.content.get_image_measurement_groups()) == 2


def test_findings_become_present_absent_with_probability_and_region(tmp_path: Path, rg1_header: Dataset) -> None:
    _, report = _read_back(build_variant("findings")[0], tmp_path, "findings")
    (effusion,) = report.content.get_image_measurement_groups(finding_type=code("effusion"))
    assert _evaluation(effusion, "effusion") == code("absent")
    assert effusion.get_measurements(name=code("probability"))[0].value == pytest.approx(0.12)
    (pneumothorax,) = report.content.get_planar_roi_measurement_groups(finding_type=code("pneumothorax"))
    assert _evaluation(pneumothorax, "pneumothorax") == code("present")
    region = pneumothorax.roi
    assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
    np.testing.assert_allclose(region.value, [[100, 150.5], [700, 150.5], [700, 900], [100, 900], [100, 150.5]])
    assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == rg1_header.SOPInstanceUID


def test_unknown_finding_label_is_a_clear_key_error(rg1_header: Dataset) -> None:
    image = frontal_image(rg1_header)
    image.findings.append(Finding(label="unicorn_sign", probability=0.5, present=True))
    with pytest.raises(KeyError, match="unicorn_sign"):
        build_measurement_report(series_result([image], rg1_header), [rg1_header], params=series(990))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("root", "UID root"),
        ("missing_source", "not among the sources"),
        ("other_study", "study"),
        ("probability", "outside 0..1"),
        ("nothing", "nothing to report"),
        ("supersedes", "no predecessor dataset"),
        ("no_algorithm", "name the algorithm"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(change: str, message: str, rg1_header: Dataset) -> None:
    images = [frontal_image(rg1_header)]
    root = UID_ROOT
    result = series_result(images, rg1_header)
    if change == "root":
        root = "1.2.x"
    elif change == "missing_source":
        result.images.append(ImageResult(sop_instance_uid="1.2.3.4", view=ViewResult("frontal", 0.9)))
    elif change == "other_study":
        result.study_instance_uid = "1.2.3"
    elif change == "probability":
        result.images[0].view = ViewResult("frontal", 1.5)
    elif change == "nothing":
        result.images[0].view = None
    elif change == "supersedes":
        result.supersedes = ["1.2.3.4.5"]
    elif change == "no_algorithm":
        result.algorithms = []
    with pytest.raises(ValueError, match=message):
        build_measurement_report(result, [rg1_header], SeriesParams(uid_root=root, series_number=990))


def test_region_outside_the_image_is_refused(rg1_header: Dataset) -> None:
    image = frontal_image(rg1_header)
    image.findings.append(Finding("pneumothorax", 0.9, True, region=Region(10, 10, 5000, 20)))
    with pytest.raises(ValueError, match="outside the 1841x1955 image"):
        build_measurement_report(series_result([image], rg1_header), [rg1_header], params=series(990))


def test_source_without_type2_study_attributes_still_gives_a_valid_sr(rg1_header: Dataset, tmp_path: Path) -> None:
    # Real files omit Type 2 attributes at times; the SR carries them empty (PS3.3 C.7.1.1, C.7.2.1).
    for keyword in ("PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber", "ReferringPhysicianName"):
        del rg1_header[keyword]
    sr = build_measurement_report(
        series_result([frontal_image(rg1_header)], rg1_header), [rg1_header], params=series(990)
    )
    ds, _ = _read_back(sr, tmp_path, "sparse")
    assert ds.PatientBirthDate == "" and ds.StudyID == "" and ds.AccessionNumber == ""
    assert ds.PatientID == rg1_header.PatientID
    report = dciodvfy(tmp_path / "sparse.dcm")
    assert not report.errors, report.output


def test_public_api_is_explicit() -> None:
    assert sorted(sr_writer.__all__) == sorted(set(sr_writer.__all__))
    for name in sr_writer.__all__:
        assert hasattr(sr_writer, name), name
    assert MANUFACTURER == "ainode"
