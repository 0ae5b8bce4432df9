"""What a viewer shows of our SRs: the structure OHIF v3 reads (issue 20), checked the way it reads it.

OHIF draws a measurement group only through a top-level SCOORD selected from an image, labels it from its
NUMs ("name: value unit") and its first Finding Site, keys it by its first UIDREF, and older builds stop
without an Image Library (:mod:`tests.sr_writer.srtree` reads a report the same way). These tests check
that every analysed image, box, level run, L3 slice and positive PE slice is such a group, labelled by its
finding, and that who said what is recorded: the node as the report's device observer, each group's model
as its own.
"""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import Dataset

from core.findings import AlgorithmInfo
from core.identity import MANUFACTURER
from sr_writer import build_lumbar_report, build_measurement_report, build_pe_report, code, device_uid
from sr_writer.codes import finding_concept
from sr_writer.common import software_version
from sr_writer.report import node_device_uid
from tests.helpers import assert_dciodvfy_clean
from tests.helpers.dicom_tools import require_tool
from tests.sr_writer.scenarios import (
    CLASSIFIER,
    DETECTOR,
    FINDING_PROBABILITIES,
    FOUR_CLASS,
    VIEW_FILTER,
    cxr_image,
    cxr_result,
    lateral_header,
    lateral_image,
    series,
    write,
)
from tests.sr_writer.srtree import device_observers, group_algorithm, image_library, measurement_groups, shown
from tests.sr_writer.test_ct_objects import LEVELS, LUMBAR_MODEL, PE_MODEL, ct_series, headers, lumbar_result, pe_result


def _cr_without_pixel_spacing(rg1_header: Dataset) -> Dataset:
    source = copy.deepcopy(rg1_header)
    for keyword in ("ImagerPixelSpacing", "PixelSpacing", "FrameOfReferenceUID"):
        if keyword in source:
            delattr(source, keyword)
    assert source.Modality == "CR"
    return source


def _two_image_result(rg1_header: Dataset) -> tuple[Dataset, list[Dataset]]:
    """A frontal CR with every model's findings, a second frontal, and a lateral not analysed further."""
    frontal = _cr_without_pixel_spacing(rg1_header)
    second = lateral_header(frontal, uid="1.2.826.0.1.3680043.10.543.7.99.2")
    second.ViewPosition = "AP"
    lateral = lateral_header(frontal)
    result = cxr_result(frontal)
    result.images.append(cxr_image(second))
    result.images.append(lateral_image(lateral))
    sources = [frontal, second, lateral]
    return build_measurement_report(result, sources, params=series(990)), sources


def test_a_cr_without_imager_pixel_spacing_gets_an_image_library_of_every_source(
    rg1_header: Dataset, tmp_path: Path
) -> None:
    sr, sources = _two_image_result(rg1_header)
    path = write(sr, tmp_path, "cr_no_spacing")
    assert_dciodvfy_clean(path)
    ds = pydicom.dcmread(path)
    assert image_library(ds) == [(str(s.SOPClassUID), str(s.SOPInstanceUID)) for s in sources]
    # TID 1500: the library (row 5) comes before the Imaging Measurements (row 6).
    names = [str(i.ConceptNameCodeSequence[0].CodeValue) for i in ds.ContentSequence]
    assert names.index("111028") == names.index("126010") - 1


def test_each_analysed_image_shows_its_top_findings_with_probabilities(rg1_header: Dataset) -> None:
    sr, (frontal, second, lateral) = _two_image_result(rg1_header)
    # One measurement per image: every group about the whole image shares the image's Tracking UID, and the
    # image's TID 1410 group comes first, so its NUMs lead the text box. Boxes are measurements of their own.
    on_image = {m.referenced_sop_instance_uid: m for m in shown(sr) if " box " not in m.tracking_identifier}
    assert list(on_image) == [str(s.SOPInstanceUID) for s in (frontal, second, lateral)]
    assert [m.tracking_identifier for m in on_image.values()] == ["image 1", "image 2", "image 3"]
    ranked = [p for _, p in sorted(FINDING_PROBABILITIES.items(), key=lambda kv: -kv[1])]
    for source in (frontal, second):
        measurement = on_image[str(source.SOPInstanceUID)]
        assert measurement.referenced_sop_class_uid == str(source.SOPClassUID)
        assert measurement.graphic_type == "POLYLINE"
        # The top findings first (what OHIF's text box shows), then the others, most probable first.
        assert measurement.lines()[:3] == ["Nodule: 0.87 1", "Mass: 0.71 1", "Pleural effusion: 0.64 1"]
        assert [float(v.split()[0]) for _, v in measurement.labels[:14]] == pytest.approx(ranked)
        assert measurement.labels[-1] == ("363698007", "Chest")
    # The lateral, not analysed further, shows its view.
    assert on_image[str(lateral.SOPInstanceUID)].lines()[0] == "lateral: 0.91 1"
    # Read back with highdicom: a TID 1410 group on the whole image, Finding the first top finding.
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    regions = report.content.get_planar_roi_measurement_groups()
    groups = [g for g in regions if str(g.tracking_identifier) in ("image 1", "image 2")]
    assert len(groups) == 2
    for group in groups:
        assert group.finding_type == finding_concept("nodule")
        assert [s.value for s in group.finding_sites] == [code("chest")]
        assert group.roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        columns, rows = int(frontal.Columns), int(frontal.Rows)
        np.testing.assert_allclose(
            np.asarray(group.roi.value), [[0, 0], [columns, 0], [columns, rows], [0, rows], [0, 0]]
        )
        (nodule,) = group.get_measurements(name=finding_concept("nodule"))
        assert nodule.value == pytest.approx(0.87) and nodule.unit == code("no_units")
        assert group_algorithm(group[0]) == (CLASSIFIER.display_name, CLASSIFIER.version)


def test_a_four_class_only_result_shows_its_classes(rg1_header: Dataset) -> None:
    result = cxr_result(rg1_header)
    image = result.images[0]
    image.findings = [f for f in image.findings if f.group == "class"]
    image.top_findings = []
    result.algorithms = [VIEW_FILTER, FOUR_CLASS]
    sr = build_measurement_report(result, [rg1_header], params=series(990))
    (measurement,) = [m for m in shown(sr) if m.tracking_identifier == "image 1"]
    assert measurement.lines()[:2] == ["Pulmonary tuberculosis: 0.70 1", "Pneumonia: 0.15 1"]
    (group,) = [g for g in measurement_groups(sr) if _identifier(g) == "image 1"]
    assert group_algorithm(group) == (FOUR_CLASS.display_name, FOUR_CLASS.version)
    assert not [i for i in group.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121071"]  # no top


def test_each_box_is_labelled_by_its_finding(rg1_header: Dataset) -> None:
    sr = build_measurement_report(cxr_result(rg1_header), [rg1_header], params=series(990))
    boxes = [m for m in shown(sr) if " box " in m.tracking_identifier]
    assert sorted(m.tracking_identifier for m in boxes) == ["image 1 box mass", "image 1 box nodule"]
    for measurement in boxes:
        finding = measurement.tracking_identifier.rsplit(" ", 1)[1]
        meaning = finding_concept(finding).meaning
        # The first line, the one every OHIF build shows, names the finding; the site is the chest.
        assert measurement.lines()[0] == f"{meaning}: {dict(nodule=0.83, mass=0.58)[finding]:.2f} 1"
        assert measurement.lines()[1].startswith("Detection confidence: ")
        assert measurement.labels[-1] == ("363698007", "Chest")
        assert measurement.graphic_type == "POLYLINE"
        assert measurement.referenced_sop_instance_uid == str(rg1_header.SOPInstanceUID)


def test_the_report_observer_is_the_node_as_a_device(rg1_header: Dataset) -> None:
    sr = build_measurement_report(cxr_result(rg1_header), [rg1_header], params=series(990))
    assert device_observers(list(sr.ContentSequence)) == [
        {"121012": node_device_uid(), "121013": "ainode", "121014": MANUFACTURER, "121015": software_version()}
    ]
    assert node_device_uid() == node_device_uid() and node_device_uid().startswith("2.25.")


def _identifier(group: Dataset) -> str:
    return next(str(i.TextValue) for i in group.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "112039")


def _check_group_observers(sr: Dataset, algorithms: list[AlgorithmInfo]) -> set[str]:
    """Each group has one device observer, the algorithm its TID 4019 names, after its tracking UID."""
    by_name = {(a.display_name, a.version): a for a in algorithms}
    named = set()
    for group in measurement_groups(sr):
        algorithm = by_name[group_algorithm(group)]
        (observer,) = device_observers(list(group.ContentSequence))
        assert observer == {
            "121012": device_uid(algorithm),
            "121013": algorithm.display_name,
            "121014": algorithm.manufacturer,
            "121015": f"{algorithm.display_name} {algorithm.version}",
        }, _identifier(group)
        # OHIF keys a group by its first UIDREF: it must be the Tracking Unique Identifier.
        first = next(i for i in group.ContentSequence if i.ValueType == "UIDREF")
        assert first.ConceptNameCodeSequence[0].CodeValue == "112040", _identifier(group)
        named.add(algorithm.name)
    return named


def test_each_group_names_the_model_that_made_it_as_its_observer(rg1_header: Dataset) -> None:
    sr = build_measurement_report(cxr_result(rg1_header), [rg1_header], params=series(990))
    named = _check_group_observers(sr, [VIEW_FILTER, CLASSIFIER, FOUR_CLASS, DETECTOR])
    assert named == {a.name for a in (VIEW_FILTER, CLASSIFIER, FOUR_CLASS, DETECTOR)}


def test_lumbar_levels_and_l3_are_shown_on_their_slices(tmp_path: Path) -> None:
    slices = ct_series(len(LEVELS))
    sr = build_lumbar_report(lumbar_result(slices), headers(slices), params=series(994))
    assert_dciodvfy_clean(write(sr, tmp_path, "lumbar"))
    assert image_library(sr) == [(str(s.SOPClassUID), str(s.SOPInstanceUID)) for s in slices]
    _check_group_observers(sr, [LUMBAR_MODEL])
    on_slice = {m.tracking_identifier: m for m in shown(sr)}
    # Runs T 0-1, L1 2-3, L2 4-5, L3 6-8, L4 9-10, L5 11, S 12-13: each on its middle slice, labelled by its
    # level; the L3 run and the L3 slice's body composition are one tracked object, shown on the L3 slice with
    # the areas and the L3 vertebra.
    expected = {
        "level T run 1": (0, "Thoracic spine"),
        "level L1 run 2": (2, "L1 vertebra"),
        "level L2 run 3": (4, "L2 vertebra"),
        "level L4 run 5": (9, "L4 vertebra"),
        "level L5 run 6": (11, "L5 vertebra"),
        "level S run 7": (12, "Sacrum"),
        "level L3 run 4": (7, "L3 vertebra"),
    }
    assert set(on_slice) == set(expected)
    for identifier, (index, level) in expected.items():
        measurement = on_slice[identifier]
        assert measurement.referenced_sop_instance_uid == str(slices[index].SOPInstanceUID), identifier
        assert measurement.labels[-1] == ("363698007", level), identifier
    l3_lines = on_slice["level L3 run 4"].lines()
    assert l3_lines[:3] == ["Area: 152.30 cm2", "Area: 201.70 cm2", "Area: 120.40 cm2"]
    assert len(l3_lines) == 5 and l3_lines[-1] == "363698007: L3 vertebra"  # all within OHIF's five lines
    # The run groups carry their level as Finding and as "Vertebral level".
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    for group in report.content.get_image_measurement_groups():
        (evaluation,) = group.get_qualitative_evaluations(name=code("vertebral_level"))
        assert group.finding_type == evaluation.value == group.finding_sites[0].value, str(group.tracking_identifier)


def test_pe_exam_and_positive_slices_are_shown_with_their_probability(tmp_path: Path) -> None:
    slices = ct_series(10)
    sr = build_pe_report(pe_result(slices), headers(slices), params=series(993))
    assert_dciodvfy_clean(write(sr, tmp_path, "pe"))
    assert image_library(sr) == [(str(s.SOPClassUID), str(s.SOPInstanceUID)) for s in slices]
    _check_group_observers(sr, [PE_MODEL])
    exam, *measurements = shown(sr)
    # The exam: every exam-level group shares one Tracking UID with a POINT on the key slice (index 4), the
    # probability of PE first.
    assert exam.tracking_identifier == "exam" and exam.graphic_type == "POINT"
    assert exam.referenced_sop_instance_uid == str(slices[4].SOPInstanceUID)
    assert exam.lines()[0] == "Pulmonary embolism: 0.92 1"
    # Each positive slice on its own, with its probability.
    assert [m.referenced_sop_instance_uid for m in measurements] == [str(slices[i].SOPInstanceUID) for i in (3, 4, 5)]
    for measurement, p in zip(measurements, (0.71, 0.93, 0.88), strict=True):
        assert measurement.lines() == [f"Pulmonary embolism: {p:.2f} 1", "363698007: Pulmonary artery"]
    # A negative exam shows its answer, on the slice most probably with PE, and nothing else.
    negative = build_pe_report(pe_result(slices, positive=False), headers(slices), params=series(993))
    (exam,) = shown(negative)
    assert exam.tracking_identifier == "exam" and exam.lines()[0] == "Pulmonary embolism: 0.04 1"


def test_every_group_of_our_reports_can_be_placed_on_an_image(rg1_header: Dataset) -> None:
    """OHIF 3.13 stops with "Something went wrong" on a measurement it cannot place: a Tracking UID none of
    whose groups has an SCOORD (or a NUM inferred from one). Every Tracking UID of every report has one."""
    slices, pe_slices = ct_series(len(LEVELS)), ct_series(10)
    reports = [
        build_measurement_report(cxr_result(rg1_header), [rg1_header], params=series(990)),
        _two_image_result(rg1_header)[0],
        build_pe_report(pe_result(pe_slices), headers(pe_slices), params=series(993)),
        build_pe_report(pe_result(pe_slices, positive=False), headers(pe_slices), params=series(993)),
        build_lumbar_report(lumbar_result(slices), headers(slices), params=series(994)),
        build_lumbar_report(lumbar_result(slices, with_l3=False), headers(slices), params=series(994)),
    ]
    not_determined = lumbar_result(slices, with_l3=False)
    assert not_determined.lumbar is not None
    not_determined.lumbar.not_determined = ["L1 below L2"]
    reports.append(build_lumbar_report(not_determined, headers(slices), params=series(994)))
    for sr in reports:
        uids = set()
        for group in measurement_groups(sr):
            (uid,) = [str(i.UID) for i in group.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "112040"]
            uids.add(uid)
        assert uids == {m.tracking_uid for m in shown(sr)}, sr.SeriesDescription


@pytest.mark.integration
def test_dsr2html_renders_the_top_findings_with_their_probabilities(rg1_header: Dataset, tmp_path: Path) -> None:
    sr = build_measurement_report(cxr_result(rg1_header), [rg1_header], params=series(990))
    path = write(sr, tmp_path, "cxr")
    done = subprocess.run(
        [require_tool("dsr2html"), str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", done.stdout))
    assert "Top findings: 1. Nodule 0.870; 2. Mass 0.710; 3. Pleural effusion 0.640" in text, text[:3000]
    # The image's group: its Finding, then its NUMs' values (dsr2html writes a NUM's value without its name).
    assert re.search(r"Nodule Concept Modifier : Finding Site = Chest .*? 0\.87 1 0\.71 1 0\.64 1 ", text), text[:3000]
    assert 'Device Observer Name = "ainode"' in text and "Image Library" in text
