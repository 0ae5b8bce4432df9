"""Chest radiograph results (14 findings, 4 classes, boxes, top three, triage) as SR, GSPS and SC.

Every object is written for two real sources: ``RG1_UNCR.dcm`` (a CR,
MONOCHROME1, 1955x1841) and a DX built from a real frontal PNG
(MONOCHROME2), then checked by ``dciodvfy`` and read back with pydicom and
highdicom.
"""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import Dataset

from core.findings import Finding, ImageResult, Region, SeriesResult
from sr_writer import (
    CHESTXRAY14_LABELS,
    FOUR_CLASS_LABELS,
    GRAPHIC_LAYER,
    MANUFACTURER,
    build_measurement_report,
    build_presentation_state,
    build_secondary_capture,
    code,
    display_name,
    finding_concept,
    render_radiograph,
)
from sr_writer.sc import BOX_COLOUR
from sr_writer.uids import is_under_root
from tests.helpers import assert_dciodvfy_clean, frontal_radiograph_from_png, rg1_uncr_path
from tests.sr_writer.scenarios import (
    CLASS_PROBABILITIES,
    DEMO_DETECTOR,
    FINDING_PROBABILITIES,
    UID_ROOT,
    boxes_for,
    cxr_result,
    series,
    write,
)
from tests.sr_writer.test_sr_codes import _code_items

SOURCES = ["rg1", "dx"]


def _source(name: str, tmp_path: Path, pixels: bool = False) -> Dataset:
    path = rg1_uncr_path() if name == "rg1" else frontal_radiograph_from_png(tmp_path)
    return pydicom.dcmread(path, stop_before_pixels=not pixels)


def _sop_uid_root_and_equipment(ds: Dataset, source: Dataset, detector: str = "cxr-detector") -> None:
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert is_under_root(ds.SeriesInstanceUID, UID_ROOT) and is_under_root(ds.SOPInstanceUID, UID_ROOT)
    assert ds.Manufacturer == MANUFACTURER
    assert ds.PatientID == source.PatientID
    purposes = {item.PurposeOfReferenceCodeSequence[0].CodeValue: item for item in ds.ContributingEquipmentSequence}
    assert "Newcode1" in purposes, "IHE AIR Processing Algorithm item missing"
    algorithms = [
        item.ManufacturerModelName
        for item in ds.ContributingEquipmentSequence
        if item.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"
    ]
    assert algorithms == ["cxr-view-filter", "cxr-findings", "cxr-four-class", detector]


# --- SR ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SOURCES)
def test_sr_of_a_full_cxr_result_is_valid_and_reads_back(name: str, tmp_path: Path) -> None:
    source = _source(name, tmp_path)
    sr = build_measurement_report(cxr_result(source), [source], params=series(990))
    path = write(sr, tmp_path, f"{name}_sr")
    assert_dciodvfy_clean(path)
    ds, report = pydicom.dcmread(path), hd.sr.srread(path)
    _sop_uid_root_and_equipment(ds, source)

    groups = report.content.get_image_measurement_groups()
    # Each of the 14 findings and the 4 classes: present/absent by its threshold (the most
    # probable class for the four-class model), with its probability.
    assert set(FINDING_PROBABILITIES) == set(CHESTXRAY14_LABELS) and set(CLASS_PROBABILITIES) == set(FOUR_CLASS_LABELS)
    expected = [(f"image 1 {label}", label, p, p >= 0.5) for label, p in FINDING_PROBABILITIES.items()]
    expected += [
        (f"image 1 class {label}", label, p, p == max(CLASS_PROBABILITIES.values()))
        for label, p in CLASS_PROBABILITIES.items()
    ]
    by_tracking = {str(g.tracking_identifier): g for g in groups}
    for tracking, label, probability, present in expected:
        group = by_tracking[tracking]
        assert group.finding_type == finding_concept(label)
        assert group.get_measurements(name=code("probability"))[0].value == pytest.approx(probability)
        (evaluation,) = group.get_qualitative_evaluations(name=finding_concept(label))
        assert evaluation.value == code("present" if present else "absent"), tracking

    # Top three, ranked, in the finding groups; the triage group says urgent and names them.
    ranks = {}
    for group in groups:
        found = group.get_measurements(name=code("top_finding_rank"))
        if found:
            ranks[group.finding_type.meaning] = found[0].value
    assert ranks == {"Nodule": 1, "Mass": 2, "Pleural effusion": 3}
    (triage,) = [g for g in groups if str(g.tracking_identifier).endswith("triage")]
    (priority,) = triage.get_qualitative_evaluations(name=code("triage_priority"))
    assert priority.value == code("triage_urgent")
    texts = [str(i.TextValue) for i in triage[0].ContentSequence if i.ValueType == "TEXT"]
    assert "Top findings: 1. Nodule 0.870; 2. Mass 0.710; 3. Pleural effusion 0.640" in texts

    # Detector boxes: planar ROI groups with a closed 5-point POLYLINE in the source's pixels.
    boxes = boxes_for(source)
    rois = [g for g in report.content.get_planar_roi_measurement_groups() if " box " in str(g.tracking_identifier)]
    assert sorted(g.finding_type.meaning for g in rois) == ["Mass", "Nodule"]
    for group in rois:
        label = group.finding_type.meaning.lower()
        region = group.roi
        assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        points = np.asarray(region.value)
        assert points.shape == (5, 2) and np.array_equal(points[0], points[-1])
        b = boxes[label]
        np.testing.assert_allclose(
            points,
            [[b.x_min, b.y_min], [b.x_max, b.y_min], [b.x_max, b.y_max], [b.x_min, b.y_max], [b.x_min, b.y_min]],
            rtol=1e-6,
        )
        assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        (confidence,) = group.get_measurements(name=code("confidence"))
        assert confidence.value == pytest.approx({"nodule": 0.83, "mass": 0.58}[label])
        assert not group.get_measurements(name=code("top_finding_rank"))  # ranks belong to the classifier


def test_sr_groups_name_the_model_that_produced_them(rg1_header: Dataset) -> None:
    sr = build_measurement_report(cxr_result(rg1_header), [rg1_header], params=series(990))
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    names = {}
    groups = [*report.content.get_image_measurement_groups(), *report.content.get_planar_roi_measurement_groups()]
    for group in groups:
        values = {
            i.ConceptNameCodeSequence[0].CodeValue: str(i.TextValue)
            for i in group[0].ContentSequence
            if i.ValueType == "TEXT"
        }
        names[str(group.tracking_identifier)] = values[code("algorithm_name").value]
    assert names["image 1 nodule"] == "cxr-findings"
    assert names["image 1 class tuberculosis"] == "cxr-four-class"
    assert names["image 1 box nodule"] == "cxr-detector"
    assert names["image 1 view"] == "cxr-view-filter"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("unknown_top", "not among its findings"),
        ("repeated_top", "repeat a label"),
        ("triage", "is not one of"),
        ("box_without_region", "has no box"),
        ("unknown_algorithm", "does not list"),
        ("confidence", "outside 0..1"),
    ],
)
def test_inconsistent_cxr_results_are_refused(change: str, message: str, rg1_header: Dataset) -> None:
    result = cxr_result(rg1_header)
    image = result.images[0]
    if change == "unknown_top":
        image.top_findings = ["nodule", "pulmonary_embolism"]  # a finding concept this image does not report
    elif change == "repeated_top":
        image.top_findings = ["nodule", "Nodule"]
    elif change == "triage":
        image.triage = "soon"  # type: ignore[assignment]
    elif change == "box_without_region":
        image.findings.append(Finding("mass", 0.5, True, group="detection"))
    elif change == "unknown_algorithm":
        image.findings.append(Finding("mass", 0.5, True, algorithm="someone-else"))
    elif change == "confidence":
        image.findings.append(Finding("mass", 1.5, True, region=Region(1, 1, 5, 5), group="detection"))
    with pytest.raises((ValueError, KeyError), match=message):
        build_measurement_report(result, [rg1_header], params=series(990))


def test_series_result_json_round_trip_keeps_the_new_fields(rg1_header: Dataset) -> None:
    result = cxr_result(rg1_header)
    data = json.loads(json.dumps(result.to_json()))
    back = SeriesResult.from_json(data)
    assert back == result
    image = back.images[0]
    assert image.top_findings == ["nodule", "mass", "effusion"] and image.triage == "urgent"
    assert {f.group for f in image.findings} == {"finding", "class", "detection"}
    # JSON written before these fields existed still loads, with the defaults.
    for img in data["images"]:
        del img["top_findings"], img["triage"]
        for f in img["findings"]:
            del f["group"], f["algorithm"]
    old = SeriesResult.from_json(data)
    assert old.images[0].top_findings == [] and old.images[0].triage is None
    assert all(f.group == "finding" and f.algorithm is None for f in old.images[0].findings)


# --- GSPS -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SOURCES)
def test_gsps_draws_the_boxes_and_labels_with_the_source_voi(name: str, tmp_path: Path) -> None:
    source = _source(name, tmp_path)
    gsps = build_presentation_state(cxr_result(source), [source], params=series(991))
    path = write(gsps, tmp_path, f"{name}_pr")
    assert_dciodvfy_clean(path)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.11.1"  # Grayscale Softcopy Presentation State
    assert ds.Modality == "PR"
    _sop_uid_root_and_equipment(ds, source)
    # highdicom 0.28 has no reader for presentation states; pydicom reads what highdicom wrote.
    assert ds.ReferencedSeriesSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID

    # VOI as the source has it; MONOCHROME1 kept by an INVERSE presentation LUT.
    voi = ds.SoftcopyVOILUTSequence[0]
    assert float(voi.WindowCenter) == float(np.atleast_1d(source.WindowCenter)[0])
    assert float(voi.WindowWidth) == float(np.atleast_1d(source.WindowWidth)[0])
    expected_shape = "INVERSE" if source.PhotometricInterpretation == "MONOCHROME1" else "IDENTITY"
    assert ds.PresentationLUTShape == expected_shape

    assert [layer.GraphicLayer for layer in ds.GraphicLayerSequence] == [GRAPHIC_LAYER]
    (annotation,) = ds.GraphicAnnotationSequence
    assert annotation.GraphicLayer == GRAPHIC_LAYER
    assert annotation.ReferencedImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    boxes = boxes_for(source)
    drawn = []
    for graphic in annotation.GraphicObjectSequence:
        assert graphic.GraphicType == "POLYLINE" and graphic.GraphicAnnotationUnits == "PIXEL"
        assert int(graphic.NumberOfGraphicPoints) == 5
        points = np.asarray(graphic.GraphicData, dtype=float).reshape(-1, 2)
        assert np.array_equal(points[0], points[-1])  # closed
        drawn.append((points[:, 0].min(), points[:, 1].min(), points[:, 0].max(), points[:, 1].max()))
    for box in boxes.values():
        assert any(np.allclose(d, (box.x_min, box.y_min, box.x_max, box.y_max), atol=0.01) for d in drawn)
    texts = [str(t.UnformattedTextValue) for t in annotation.TextObjectSequence]
    assert "Nodule 0.830" in texts and "Mass 0.580" in texts
    assert "AI: Nodule 0.870, Mass 0.710, Pleural effusion 0.640 | URGENT" in texts
    for text in annotation.TextObjectSequence:
        left, top = text.BoundingBoxTopLeftHandCorner
        right, bottom = text.BoundingBoxBottomRightHandCorner
        assert 0 <= left < right <= source.Columns and 0 <= top < bottom <= source.Rows


def test_gsps_of_demo_weights_says_demo(rg1_header: Dataset) -> None:
    gsps = build_presentation_state(cxr_result(rg1_header, detector=DEMO_DETECTOR), [rg1_header], params=series(991))
    assert "DEMO" in gsps.SeriesDescription and "DEMO" in gsps.ContentDescription
    texts = [str(t.UnformattedTextValue) for t in gsps.GraphicAnnotationSequence[0].TextObjectSequence]
    assert any("DEMO" in t for t in texts)


def test_top_findings_show_the_classifier_probability_when_a_class_has_the_same_label(rg1_header: Dataset) -> None:
    # Pneumonia is both a ChestX-ray14 finding (0.11) and a four-class class (0.15): the top findings rank
    # the classifier's outputs, so the SR text and the GSPS caption must show 0.11.
    result = cxr_result(rg1_header)
    result.images[0].top_findings = ["pneumonia", "nodule", "mass"]
    sr = build_measurement_report(result, [rg1_header], params=series(990))
    texts = [str(item.TextValue) for item in _walk(sr) if item.get("ValueType") == "TEXT"]
    top = [t for t in texts if t.startswith("Top findings:")]
    assert top and "Pneumonia 0.110" in top[0] and "0.150" not in top[0], top
    gsps = build_presentation_state(result, [rg1_header], params=series(991))
    captions = [str(t.UnformattedTextValue) for t in gsps.GraphicAnnotationSequence[0].TextObjectSequence]
    assert any("Pneumonia 0.110" in c for c in captions) and not any("Pneumonia 0.150" in c for c in captions), captions


def _walk(ds: Dataset) -> list[Dataset]:
    items = []
    for item in ds.get("ContentSequence", []):
        items.append(item)
        items.extend(_walk(item))
    return items


def test_gsps_of_a_source_without_voi_gets_a_full_range_window(tmp_path: Path) -> None:
    source = _source("dx", tmp_path)
    for keyword in ("WindowCenter", "WindowWidth", "WindowCenterWidthExplanation", "VOILUTSequence"):
        if keyword in source:
            delattr(source, keyword)
    gsps = build_presentation_state(cxr_result(source), [source], params=series(991))
    voi = gsps.SoftcopyVOILUTSequence[0]
    bits = int(source.BitsStored)
    assert float(voi.WindowWidth) == 2**bits and float(voi.WindowCenter) == 2 ** (bits - 1)
    assert_dciodvfy_clean(write(gsps, tmp_path, "no_voi_pr"))


def test_gsps_refuses_a_result_with_nothing_to_draw(rg1_header: Dataset) -> None:
    result = cxr_result(rg1_header)
    result.images[0] = ImageResult(sop_instance_uid=str(rg1_header.SOPInstanceUID))
    with pytest.raises(ValueError, match="draw nothing"):
        build_presentation_state(result, [rg1_header], params=series(991))
    outside = cxr_result(rg1_header)
    outside.images[0].findings.append(
        Finding("nodule", 0.9, True, region=Region(10, 10, rg1_header.Columns + 5, 50), group="detection")
    )
    with pytest.raises(ValueError, match="outside"):
        build_presentation_state(outside, [rg1_header], params=series(991))


# --- Secondary Capture ------------------------------------------------------------------


@pytest.mark.parametrize("name", SOURCES)
def test_secondary_capture_burns_in_the_boxes_and_is_marked_derived(name: str, tmp_path: Path) -> None:
    source = _source(name, tmp_path, pixels=True)
    sc = build_secondary_capture(cxr_result(source, detector=DEMO_DETECTOR), source, params=series(992))
    path = write(sc, tmp_path, f"{name}_sc")
    assert_dciodvfy_clean(path)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
    _sop_uid_root_and_equipment(ds, source, detector="cxr-detector (DEMO)")
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
    assert ds.BurnedInAnnotation == "YES"
    assert "burned in" in ds.DerivationDescription
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert ds.SourceImageSequence[0].PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    assert "DEMO" in ds.SeriesDescription
    assert ds.PhotometricInterpretation == "RGB" and ds.BitsAllocated == 8
    assert (ds.Rows, ds.Columns) == (source.Rows, source.Columns)

    pixels = ds.pixel_array
    grey = render_radiograph(source)
    # Along every edge of each box the pixels are the box colour, which the grey source never is.
    for box in boxes_for(source).values():
        top, left = int(round(box.y_min)), int(round(box.x_min))
        bottom, right = int(round(box.y_max)), int(round(box.x_max))
        is_box = (pixels == BOX_COLOUR).all(axis=2)
        # Each point of each edge has the box colour within a line width (2 px) of it.
        for edge in (
            is_box[top - 2 : top + 3, left:right].any(axis=0),
            is_box[bottom - 2 : bottom + 3, left:right].any(axis=0),
            is_box[top:bottom, left - 2 : left + 3].any(axis=1),
            is_box[top:bottom, right - 2 : right + 3].any(axis=1),
        ):
            assert edge.all()
        # ... and differs from the source as rendered there.
        assert not np.array_equal(pixels[bottom, left:right, 0], grey[bottom, left:right])
        # Inside the box, away from its label and edges, the image is untouched grey.
        inner = pixels[(top + bottom) // 2, left + 10 : right - 10]
        assert np.array_equal(inner[:, 0], inner[:, 2])
        np.testing.assert_array_equal(inner[:, 0], grey[(top + bottom) // 2, left + 10 : right - 10])
    # The banner (white text on black) is at the top; the bottom row is the radiograph as rendered.
    assert (pixels[: max(12, ds.Rows // 45), :, :] == 255).all(axis=2).any()
    np.testing.assert_array_equal(pixels[-1, :, 1], grey[-1])


def test_rendering_follows_the_source_window_and_polarity(tmp_path: Path) -> None:
    cr = _source("rg1", tmp_path, pixels=True)  # MONOCHROME1: low stored values are white
    grey = render_radiograph(cr)
    assert grey.dtype == np.uint8 and grey.shape == (cr.Rows, cr.Columns)
    stored = cr.pixel_array
    low, high = np.unravel_index(stored.argmin(), stored.shape), np.unravel_index(stored.argmax(), stored.shape)
    assert grey[low] > grey[high]
    dx = _source("dx", tmp_path, pixels=True)  # MONOCHROME2: high stored values are white
    grey_dx = render_radiograph(dx)
    stored = dx.pixel_array
    assert (
        grey_dx[np.unravel_index(stored.argmax(), stored.shape)]
        >= grey_dx[np.unravel_index(stored.argmin(), stored.shape)]
    )
    with pytest.raises(ValueError, match="no pixel data"):
        render_radiograph(_source("dx", tmp_path))


def test_rendering_applies_a_voi_lut_sequence(tmp_path: Path) -> None:
    dx = _source("dx", tmp_path, pixels=True)
    bits = int(dx.BitsStored)
    # An inverting 8-bit VOI LUT over the whole stored range: the rendering must follow it.
    item = Dataset()
    item.LUTDescriptor = [2**bits if bits < 16 else 0, 0, 8]
    item.LUTData = [int(255 - v * 255 // (2**bits - 1)) for v in range(2**bits)]
    for keyword in ("WindowCenter", "WindowWidth", "WindowCenterWidthExplanation"):
        if keyword in dx:
            delattr(dx, keyword)
    dx.VOILUTSequence = [item]
    grey = render_radiograph(dx)
    stored = dx.pixel_array
    assert grey[np.unravel_index(stored.argmax(), stored.shape)] < grey[np.unravel_index(stored.argmin(), stored.shape)]


def test_secondary_capture_needs_the_source_of_the_result(rg1_header: Dataset, tmp_path: Path) -> None:
    other = _source("dx", tmp_path, pixels=True)
    with pytest.raises(ValueError):
        build_secondary_capture(cxr_result(rg1_header), other, params=series(992))


# --- Codes in the new objects ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gsps", "sc"])
def test_every_code_in_gsps_and_sc_comes_from_the_table(kind: str, tmp_path: Path) -> None:
    from sr_writer.codes import CONCEPTS, key_for

    source = _source("rg1", tmp_path, pixels=kind == "sc")
    result = cxr_result(source)
    ds = (
        build_presentation_state(result, [source], params=series(991))
        if kind == "gsps"
        else build_secondary_capture(result, source, params=series(992))
    )
    seen = 0
    for path, item in _code_items(ds):
        seen += 1
        key = key_for(str(item.CodeValue), str(item.CodingSchemeDesignator))
        assert key is not None, f"{kind}: code {item.CodeValue} {item.CodingSchemeDesignator} at {path} not in table"
        assert item.CodeMeaning == CONCEPTS[key].meaning
    assert seen >= 4


def test_labels_shown_to_readers_are_the_code_meanings() -> None:
    assert display_name("nodule") == "Nodule"
    assert display_name("effusion") == "Pleural effusion"
    assert display_name("covid19") == "COVID-19"
    assert display_name("Pleural_Thickening") == "Pleural thickening"  # as the NIH CSV spells it


def test_a_caption_wider_than_the_image_gets_the_lines_it_needs() -> None:
    from sr_writer.gsps import text_box

    line = 48.0
    short = text_box(24, 24, 20, line, 1841, 1955)
    assert short == (24, 24, 24 + 20 * line * 0.6, 24 + line)  # one line, as wide as its text
    left, top, right, bottom = text_box(24, 24, 103, line, 1841, 1955)  # 103 characters need 2966 px
    assert right - left == 1840 and bottom - top == 2 * line and left >= 0 and right <= 1841
    tiny = text_box(0, 0, 500, 12.0, 64, 40)  # never taller than the image
    assert tiny[3] <= 40 and tiny[1] >= 0
