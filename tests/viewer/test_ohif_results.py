"""What a radiologist sees of the node's results in OHIF v3 (issue 20, "Done when"; issue 18's browser test).

Orthanc plays the PACS: a chest radiograph without a box (the real CR ``RG1_UNCR.dcm``, see ``_drawable_cr``),
a chest phantom with a planted nodule (the detector boxes it) and an abdominal CT phantom are stored into it
and forwarded to the node (``ainode serve`` with the shipped models), which sends its results back. OHIF, served
with its DICOMweb data source proxied to that Orthanc, opens each study in headless Chromium; the test double-clicks
the node's SR and reads the labels OHIF draws on the image (the SVG layer of the viewport), as a person
reads them on the screenshots (``viewer-screenshots`` in pytest's base temporary folder):

- the radiograph without a box: its top findings, each with its probability;
- the radiograph with a box: a box whose own label names its finding;
- the abdominal CT: the L3 level, stepping through the SR's measurements with the viewport's arrow; its SEG,
  loaded, lists the three tissues with the labels and colours the SEG gives them, each drawn over the L3 slice.

Reference SRs made here with highdicom (TID 1500 with an Image Library, SCOORD regions labelled by NUMs and a
Finding Site, the way OHIF reads them) go through the same reading and the same checks: they show that the
harness sees labels wherever OHIF draws them, so a failure of the node's SR is the SR's.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from highdicom import sr
from highdicom.color import CIELabColor
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from tests.helpers import OrthancServer, rg1_uncr_path
from tests.helpers.ohif import OhifBrowser, SrView
from tests.integration.nodeproc import NodeProcess
from tests.integration.srread import texts
from training.phantoms import chest_phantom, phantom_dataset
from training.phantoms.ct import abdomen_phantom

pytestmark = pytest.mark.integration

#: The chest phantom of test_cxr_full.py whose nodule the demo detector boxes.
NODULE_SEED = 7_000_003
#: The chest phantom of the reference SR (stored into Orthanc only, never sent to the node).
REFERENCE_SEED = 7_000_005
REFERENCE_DESCRIPTION = "Reference SR (viewer test)"
#: The reference SR's probabilities: what its labels must show.
REFERENCE_TOP = [("Nodule", 0.83), ("Mass", 0.41)]
#: "Top findings: 1. Nodule 0.976; 2. Pneumothorax 0.473; 3. Mass 0.356", the SR's summary.
_TOP = re.compile(r"(\d+)\. (.+?) (\d+(?:\.\d+)?)(?:;|$)")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


@dataclass
class Study:
    """A study sent through the node: its UID and the SR the node sent back into it."""

    study_uid: str
    sr: pydicom.Dataset | None = field(default=None, repr=False)
    seg: pydicom.Dataset | None = field(default=None, repr=False)
    #: Instance Number of each slice (SOP Instance UID), for the CT.
    instance_numbers: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def sr_description(self) -> str:
        assert self.sr is not None, f"no SR came back into study {self.study_uid}"
        return str(self.sr.SeriesDescription)

    def top_findings(self) -> list[tuple[str, float]]:
        """The SR's top findings (name, probability), from its "Top findings" summary text."""
        assert self.sr is not None
        [summary] = [t for t in texts(self.sr) if t.startswith("Top findings:")]
        return [(name, float(value)) for _, name, value in _TOP.findall(summary.removeprefix("Top findings:"))]


@pytest.fixture(scope="module")
def studies(
    module_orthanc: OrthancServer, ohif_browser: OhifBrowser, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Study]]:
    """Send the radiographs and the CT through Orthanc to the node; point the viewer at that Orthanc."""
    work = tmp_path_factory.mktemp("viewer")
    nodule_file = work / "nodule.dcm"
    phantom_dataset(chest_phantom(NODULE_SEED, ["Nodule"])).save_as(nodule_file, enforce_file_format=True)
    radiographs = {"no_box": _drawable_cr(work / "rg1.dcm"), "box": nodule_file}
    ct = abdomen_phantom(603, slices=60, size=256, spacing_z=5.0)
    ct_paths = ct.write_series(work / "ct")
    found = {
        name: Study(str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID))
        for name, path in radiographs.items()
    }
    found["ct"] = Study(ct.truth["study_uid"])

    node = NodeProcess(
        work / "node",
        full_models=True,
        destinations={
            "orthanc": {
                "type": "dicom",
                "ae_title": module_orthanc.aet,
                "host": "127.0.0.1",
                "port": module_orthanc.dicom_port,
            }
        },
        quiet_period={"default": 1.0, "CR": 0.5, "DX": 0.5},
    )
    node.start()
    try:
        module_orthanc.add_modality("ainode-viewer", "AINODE", node.port)
        module_orthanc.store_with_storescu([*radiographs.values(), *ct_paths])
        for study in found.values():
            answer = module_orthanc.forward_study(study.study_uid, "ainode-viewer")
            assert answer.get("FailedInstancesCount", 0) == 0, answer
        jobs = node.wait_jobs(len(found), timeout=150)
        assert all(j.error is None for j in jobs), [(j.id, j.error) for j in jobs]
        node.wait_delivered()
    finally:
        node.stop()
    by_uid = {s.study_uid: s for s in found.values()}
    for instance in module_orthanc.instances():
        study = by_uid.get(instance.study_instance_uid)
        if study is not None and instance.modality == "SR":
            study.sr = pydicom.dcmread(_download(module_orthanc, instance.id, work))
        elif study is not None and instance.modality == "SEG":
            study.seg = pydicom.dcmread(_download(module_orthanc, instance.id, work))
    ct_slices = [pydicom.dcmread(p, stop_before_pixels=True) for p in ct_paths]
    found["ct"].instance_numbers = {str(ds.SOPInstanceUID): int(ds.InstanceNumber) for ds in ct_slices}
    found["reference"] = _reference_radiograph(module_orthanc, work)
    found["ct_reference"] = _reference_ct(module_orthanc, [pydicom.dcmread(p) for p in ct_paths], work)
    ohif_browser.server.point_at(module_orthanc.dicomweb_url)
    yield found


def _drawable_cr(path: Path) -> Path:
    """RG1_UNCR.dcm as a new instance without its Pixel Spacing of 0\\0, with which OHIF draws neither the image
    nor its annotations (a black viewport, labels in its corner): a CR may leave the attribute out."""
    image = pydicom.dcmread(rg1_uncr_path())
    del image.PixelSpacing
    image.SOPInstanceUID = image.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    image.SeriesInstanceUID = generate_uid()
    image.save_as(path, enforce_file_format=True)
    return path


def _unit_less(name: str, value: float) -> sr.Measurement:
    return sr.Measurement(
        name=hd.sr.CodedConcept(name.lower().replace(" ", "-")[:16], "99AINODETEST", name),
        value=value,
        unit=codes.UCUM.NoUnits,
    )


def _box(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=float)


def _group(
    source: pydicom.Dataset, label: str, corners: np.ndarray, site: hd.sr.CodedConcept, numbers: list[sr.Measurement]
) -> sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    region = sr.ImageRegion(
        graphic_type=sr.GraphicTypeValues.POLYLINE,
        graphic_data=corners,
        source_image=sr.SourceImageForRegion.from_source_image(source),
    )
    return sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=sr.TrackingIdentifier(uid=hd.UID(), identifier=label),
        referenced_region=region,
        finding_type=codes.SCT.Finding,
        finding_sites=[sr.FindingSite(anatomic_location=site)],
        measurements=numbers,
    )


def _reference_sr(
    images: list[pydicom.Dataset], groups: list[sr.PlanarROIMeasurementsAndQualitativeEvaluations]
) -> sr.MeasurementReport:
    device = sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=sr.DeviceObserverIdentifyingAttributes(uid=hd.UID(), name="viewer test"),
    )
    report = sr.MeasurementReport(
        observation_context=sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=groups,
        referenced_images=images,
    )
    return report


def _store_reference(
    orthanc: OrthancServer,
    images: list[pydicom.Dataset],
    groups: list[sr.PlanarROIMeasurementsAndQualitativeEvaluations],
    path: Path,
) -> None:
    document = sr.Comprehensive3DSR(
        evidence=images,
        content=_reference_sr(images, groups),
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="ainode tests",
        series_description=REFERENCE_DESCRIPTION,
    )
    document.save_as(path)
    orthanc.upload(path)


def _reference_radiograph(orthanc: OrthancServer, work: Path) -> Study:
    """A chest phantom and a reference SR: the image's probabilities over the whole image, a labelled box."""
    image = phantom_dataset(chest_phantom(REFERENCE_SEED, ["Nodule"]))
    image_path = work / "reference.dcm"
    image.save_as(image_path, enforce_file_format=True)
    orthanc.upload(image_path)
    rows, columns = int(image.Rows), int(image.Columns)
    whole = _group(
        image,
        "image findings",
        _box(0, 0, columns, rows),
        codes.SCT.Chest,
        [_unit_less(f"{name} probability", p) for name, p in REFERENCE_TOP],
    )
    box = _group(image, "nodule box", _box(columns / 4, rows / 4, columns / 2, rows / 2), codes.SCT.Nodule, [])
    _store_reference(orthanc, [image], [whole, box], work / "reference-sr.dcm")
    return Study(str(image.StudyInstanceUID))


def _reference_ct(orthanc: OrthancServer, slices: list[pydicom.Dataset], work: Path) -> Study:
    """A reference SR on the abdominal CT: a labelled region on a first slice, the L3 vertebra on a later one."""
    slices = sorted(slices, key=lambda ds: int(ds.InstanceNumber))
    first, later = slices[5], slices[30]
    rows, columns = int(first.Rows), int(first.Columns)
    groups = [
        _group(first, "level S", _box(8, 8, columns - 8, rows - 8), codes.SCT.Sacrum, []),
        _group(later, "level L3", _box(8, 8, columns - 8, rows - 8), codes.SCT.L3Vertebra, []),
    ]
    _store_reference(orthanc, [first, later], groups, work / "reference-ct-sr.dcm")
    return Study(str(first.StudyInstanceUID))


def _download(orthanc: OrthancServer, instance_id: str, folder: Path) -> Path:
    path = folder / f"{instance_id}.dcm"
    path.write_bytes(orthanc.download_instance(instance_id))
    return path


def _shown(view: SrView) -> str:
    """What the viewport showed, for failure messages."""
    return (
        f"labels readable: {view.labels() or 'none'}{' (after a step and back)' if view.nudged else ''}"
        f"{' (opened again)' if view.retried else ''}; "
        f"lines cut off at the viewport's edge: {view.clipped or 'none'}; "
        f"errors: {view.errors or 'none'}; "
        f"screenshots: {[str(p) for p in view.screenshots]}"
    )


def _shows_probability(lines: list[str], name: str, probability: float) -> bool:
    """Whether one annotation's label shows ``name`` with ``probability`` (as a fraction or a percentage)
    on the same line or in the same label."""
    text = " ".join(lines)
    if name.lower() not in text.lower():
        return False
    for value in (float(v) for v in _NUMBER.findall(text)):
        if abs(value - probability) <= 0.006 or abs(value - 100 * probability) <= 0.6:
            return True
    return False


def _box_labels(view: SrView, finding: str, others: list[str]) -> list[list[str]]:
    """Labels naming ``finding`` and none of ``others`` (a label listing them all is the whole image's)."""
    return [
        lines
        for lines in view.annotations
        if finding.lower() in " ".join(lines).lower() and not any(o.lower() in " ".join(lines).lower() for o in others)
    ]


def _shows_l3(view: SrView) -> bool:
    return any(re.search(r"\bL3\b", " ".join(lines)) for lines in view.annotations)


def test_reference_radiograph_sr_shows_probabilities_and_a_labelled_box(
    studies: dict[str, Study], ohif_browser: OhifBrowser
) -> None:
    study = studies["reference"]
    view = ohif_browser.open_sr(study.study_uid, REFERENCE_DESCRIPTION, "reference-radiograph")
    assert not view.errors, _shown(view)
    for name, p in REFERENCE_TOP:
        assert any(_shows_probability(lines, name, p) for lines in view.annotations), (name, _shown(view))
    assert _box_labels(view, "Nodule", ["Mass"]), _shown(view)


def test_reference_ct_sr_shows_l3_after_stepping(studies: dict[str, Study], ohif_browser: OhifBrowser) -> None:
    study = studies["ct_reference"]
    view = ohif_browser.open_sr(study.study_uid, REFERENCE_DESCRIPTION, "reference-ct", max_steps=4)
    assert not view.errors, _shown(view)
    assert _shows_l3(view), _shown(view)
    assert not any(re.search(r"\bL3\b", line) for line in view.annotations[0]), "L3 must be on a later slice"


def test_study_list_shows_each_study_with_its_results(
    studies: dict[str, Study], module_orthanc: OrthancServer, ohif_browser: OhifBrowser
) -> None:
    page = ohif_browser.study_list("study-list")
    for name in ("no_box", "box", "ct"):
        study = studies[name]
        assert study.sr is not None
        modalities = sorted({i.modality for i in module_orthanc.instances() if i.study_instance_uid == study.study_uid})
        assert "SR" in modalities
        assert str(study.sr.PatientID)[:12] in page, (name, page)
        assert "\\".join(modalities) in page, (name, modalities, page)


def test_radiograph_without_box_shows_its_top_findings_with_probabilities(
    studies: dict[str, Study], ohif_browser: OhifBrowser
) -> None:
    study = studies["no_box"]
    top = study.top_findings()
    assert top, "the SR names no top finding"
    view = ohif_browser.open_sr(study.study_uid, study.sr_description, "radiograph-no-box")
    assert not view.errors, _shown(view)
    missing = [
        (name, p) for name, p in top if not any(_shows_probability(lines, name, p) for lines in view.annotations)
    ]
    assert not missing, f"top findings not shown with their probability: {missing}; {_shown(view)}"


def test_radiograph_with_box_shows_the_box_labelled_with_its_finding(
    studies: dict[str, Study], ohif_browser: OhifBrowser
) -> None:
    study = studies["box"]
    others = [name for name, _ in study.top_findings() if name.lower() != "nodule"]
    view = ohif_browser.open_sr(study.study_uid, study.sr_description, "radiograph-box")
    assert not view.errors, _shown(view)
    # The box's own label: it names the nodule and not the other top findings (a label listing them all is
    # the whole image's).
    boxes = [
        lines
        for lines in view.annotations
        if "nodule" in " ".join(lines).lower() and not any(o.lower() in " ".join(lines).lower() for o in others)
    ]
    assert boxes, f"no annotation labelled with its finding (Nodule); {_shown(view)}"


def test_abdominal_ct_shows_its_l3_level(studies: dict[str, Study], ohif_browser: OhifBrowser) -> None:
    study = studies["ct"]
    view = ohif_browser.open_sr(study.study_uid, study.sr_description, "abdominal-ct", max_steps=12)
    assert not view.errors, _shown(view)
    assert _shows_l3(view), _shown(view)


def test_abdominal_ct_seg_loads_as_its_labelled_segments_on_the_l3_slice(
    studies: dict[str, Study], ohif_browser: OhifBrowser
) -> None:
    study = studies["ct"]
    seg = study.seg
    assert seg is not None, f"no SEG came back into study {study.study_uid}"
    segments = list(seg.SegmentSequence)
    view = ohif_browser.open_seg(study.study_uid, str(seg.SeriesDescription), "abdominal-ct")
    shown = f"{view} (screenshots: {[str(p) for p in view.screenshots]})"
    assert not view.errors, shown
    # Every notification is a fault here: OHIF warns, for one, when a segment has no display colour.
    assert not view.notifications, shown
    assert view.labels == [str(s.SegmentLabel) for s in segments], shown
    assert view.colours == [CIELabColor.from_dicom_value(s.RecommendedDisplayCIELabValue).to_rgb() for s in segments]
    # Drawn over the image: hiding any one segment changes the viewport where it lies (thousands of pixels).
    assert all(view.drawn[str(s.SegmentLabel)] > 1000 for s in segments), shown
    # On the slice the SEG was made on, the L3 slice the SR names.
    [source] = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    number = study.instance_numbers[str(source.ReferencedSOPInstanceUID)]
    assert re.match(rf"I:\s*{number}\b", view.slice_label), (number, shown)
