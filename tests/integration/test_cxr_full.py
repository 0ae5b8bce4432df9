"""The full ``cxr`` pipeline through a real Orthanc and the node process, with the demo weights.

Orthanc plays the PACS: four studies are stored into it with DCMTK's storescu
and forwarded to the node (C-STORE), which runs with the shipped models
(``weights/``, ``config/models.yaml``: view filter, finding classifier,
four-class classifier, detector) and the Secondary Capture switched on. The
results must come back into each source study in Orthanc and pass dciodvfy:

- the real CR ``RG1_UNCR.dcm`` (frontal): SR + GSPS + SC;
- a DX chest phantom with a planted nodule: the same, with a box over the
  nodule (IoU ≥ 0.5, read back from the SR's SCOORD and from the GSPS) and
  nodule among the top three findings;
- a DX chest phantom with no finding: no nodule box, nodule not among the top three;
- a lateral DX: the view filter's SR only.

The node runs once for the module; each test looks at one study's objects.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pytest

from sr_writer.codes import code, finding_concept
from tests.helpers import OrthancServer, assert_dciodvfy_clean, lateral_radiograph, rg1_uncr_path
from tests.integration.nodeproc import NodeProcess
from tests.integration.srread import coded_values, texts, walk
from training.phantoms import chest_phantom, phantom_dataset

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
PR_CLASS = "1.2.840.10008.5.1.4.1.1.11.1"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
MEASUREMENT_GROUP = "125007"
FINDING_TYPE = "121071"
IMAGE_VIEW = "111031"
NODULE = finding_concept("nodule").value
RANK = code("top_finding_rank").value
TRIAGE = code("triage_priority").value
PRESENT = code("present").value
#: Seeds of the phantoms: drawn for this test, not among the seeds the demo weights were trained on
#: (the demo recipes draw from small seeds upwards).
NODULE_SEED, NORMAL_SEED = 7_000_003, 7_000_004


@dataclass
class Study:
    """One source image sent through Orthanc and the objects the node sent back into its study."""

    source: pydicom.Dataset
    objects: dict[str, list[pydicom.Dataset]] = field(default_factory=dict)  # SOP Class UID -> data sets
    paths: list[Path] = field(default_factory=list)
    truth: list[tuple[int, int, int, int]] = field(default_factory=list)  # nodule boxes of a phantom

    def only(self, sop_class: str) -> pydicom.Dataset:
        found = self.objects.get(sop_class, [])
        assert len(found) == 1, f"expected one {sop_class}, got {len(found)}: {sorted(self.objects)}"
        return found[0]


@pytest.fixture(scope="module")
def studies(module_orthanc: OrthancServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Study]]:
    """Send the four studies through Orthanc to the node; collect what comes back."""
    work = tmp_path_factory.mktemp("cxr-full")
    nodule = chest_phantom(NODULE_SEED, ["Nodule"])
    normal = chest_phantom(NORMAL_SEED)
    files = {"rg1": rg1_uncr_path(), "lateral": lateral_radiograph(work)}
    for name, phantom in (("nodule", nodule), ("normal", normal)):
        files[name] = work / f"{name}.dcm"
        phantom_dataset(phantom).save_as(files[name], enforce_file_format=True)
    found = {name: Study(pydicom.dcmread(path, stop_before_pixels=True)) for name, path in files.items()}
    found["nodule"].truth = [b.as_tuple() for b in nodule.boxes_of("Nodule")]

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
        cxr={"secondary_capture": True},
    )
    node.start()
    try:
        module_orthanc.add_modality("ainode-cxr", "AINODE", node.port)
        module_orthanc.store_with_storescu(list(files.values()))
        for study in found.values():
            answer = module_orthanc.forward_study(str(study.source.StudyInstanceUID), "ainode-cxr")
            assert answer.get("FailedInstancesCount", 0) == 0, answer
        jobs = node.wait_jobs(len(files), timeout=120)
        assert all(j.error is None for j in jobs), [(j.id, j.error) for j in jobs]
        node.wait_delivered()
    finally:
        node.stop()
    by_study = {str(s.source.StudyInstanceUID): s for s in found.values()}
    for instance in module_orthanc.instances():
        study = by_study.get(instance.study_instance_uid)
        if study is None or instance.sop_instance_uid == str(study.source.SOPInstanceUID):
            continue
        path = work / "back" / f"{instance.sop_instance_uid}.dcm"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(module_orthanc.download_instance(instance.id))
        study.objects.setdefault(instance.sop_class_uid, []).append(pydicom.dcmread(path))
        study.paths.append(path)
    yield found


def _groups(sr: pydicom.Dataset) -> list[dict[str, object]]:
    """Each measurement group of a TID 1500 SR: finding type, numbers by concept, SCOORD boxes."""
    groups = []
    for item in walk(sr):
        name = item.get("ConceptNameCodeSequence")
        if not (name and name[0].CodeValue == MEASUREMENT_GROUP):
            continue
        group: dict[str, object] = {"finding": None, "numbers": {}, "boxes": [], "values": {}}
        for child in walk(item):
            concept = child.ConceptNameCodeSequence[0].CodeValue if child.get("ConceptNameCodeSequence") else None
            if concept == FINDING_TYPE and child.ValueType == "CODE":
                group["finding"] = child.ConceptCodeSequence[0].CodeValue
            elif child.ValueType == "CODE":  # a qualitative evaluation: concept -> coded value
                group["values"][concept] = child.ConceptCodeSequence[0].CodeValue  # type: ignore[index]
            elif child.ValueType == "NUM" and child.get("MeasuredValueSequence"):
                group["numbers"][concept] = float(child.MeasuredValueSequence[0].NumericValue)  # type: ignore[index]
            elif child.ValueType == "SCOORD":
                group["boxes"].append(_bounds(child.GraphicData))  # type: ignore[attr-defined]
        groups.append(group)
    return groups


def _bounds(graphic_data: object) -> tuple[float, float, float, float]:
    points = np.asarray(graphic_data, dtype=float).reshape(-1, 2)  # (column, row) pairs
    return (points[:, 0].min(), points[:, 1].min(), points[:, 0].max(), points[:, 1].max())


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _nodule_boxes(sr: pydicom.Dataset) -> list[tuple[float, float, float, float]]:
    return [box for g in _groups(sr) if g["finding"] == NODULE for box in g["boxes"]]  # type: ignore[attr-defined]


def _top_ranked(sr: pydicom.Dataset) -> dict[str, int]:
    """Finding code -> rank among the top findings, from the rank NUM of each finding group."""
    return {
        str(g["finding"]): int(g["numbers"][RANK])
        for g in _groups(sr)  # type: ignore[index]
        if RANK in g["numbers"]
    }  # type: ignore[operator]


def _present(sr: pydicom.Dataset, finding: str) -> bool:
    """Whether the classifiers' group of ``finding`` says present (vs absent); pneumonia has two
    (the 14-label classifier's and the four-class one's), and either saying present counts."""
    values = [
        g["values"][finding]
        for g in _groups(sr)  # type: ignore[index]
        if g["finding"] == finding and not g["boxes"] and finding in g["values"]
    ]  # type: ignore[operator]
    assert values, f"no classifier group for {finding}"
    return PRESENT in values


def _gsps_boxes(gsps: pydicom.Dataset) -> list[tuple[float, float, float, float]]:
    return [_bounds(g.GraphicData) for a in gsps.GraphicAnnotationSequence for g in a.get("GraphicObjectSequence", [])]


def _check_frontal_objects(study: Study) -> tuple[pydicom.Dataset, pydicom.Dataset, pydicom.Dataset]:
    sr, gsps, sc = study.only(SR_CLASS), study.only(PR_CLASS), study.only(SC_CLASS)
    assert sorted(study.objects) == sorted([SR_CLASS, PR_CLASS, SC_CLASS])
    for path in study.paths:
        assert_dciodvfy_clean(path)
    source = study.source
    for ds in (sr, gsps, sc):
        assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == source.PatientID
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        assert "DEMO" in ds.SeriesDescription  # the demo weights say so on every object
    assert coded_values(sr, IMAGE_VIEW)[0].lower().startswith("frontal")
    assert [v.lower() for v in coded_values(sr, TRIAGE)] in (["urgent"], ["priority"], ["routine"])
    ranked = _top_ranked(sr)  # the default ranks only findings at or above their thresholds
    assert len(ranked) <= 3 and all(_present(sr, finding) for finding in ranked), ranked
    assert (
        gsps.GraphicAnnotationSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    )
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert list(sc.ImageType) == ["DERIVED", "SECONDARY"] and sc.BurnedInAnnotation == "YES"
    return sr, gsps, sc


def test_real_frontal_cr_comes_back_with_sr_gsps_and_sc(studies: dict[str, Study]) -> None:
    _check_frontal_objects(studies["rg1"])


def test_phantom_nodule_is_among_the_top_findings(studies: dict[str, Study]) -> None:
    study = studies["nodule"]
    sr, _, _ = _check_frontal_objects(study)
    assert _present(sr, NODULE)
    assert NODULE in _top_ranked(sr), _top_ranked(sr)
    assert any("Nodule" in t for t in texts(sr) if t.startswith("Top findings"))


def test_phantom_nodule_gets_a_box_over_it(studies: dict[str, Study]) -> None:
    study = studies["nodule"]
    sr, gsps, _ = _check_frontal_objects(study)
    [truth] = study.truth
    boxes = _nodule_boxes(sr)
    assert boxes and max(_iou(box, truth) for box in boxes) >= 0.5, (boxes, truth)
    assert max(_iou(box, truth) for box in _gsps_boxes(gsps)) >= 0.5


def test_phantom_without_finding_gets_no_nodule(studies: dict[str, Study]) -> None:
    sr, gsps, _ = _check_frontal_objects(studies["normal"])
    assert _nodule_boxes(sr) == [] and _gsps_boxes(gsps) == []
    captions = [t.UnformattedTextValue for a in gsps.GraphicAnnotationSequence for t in a.get("TextObjectSequence", [])]
    assert any("no finding at or above its threshold" in c for c in captions), captions
    assert not _present(sr, NODULE)
    assert NODULE not in _top_ranked(sr), _top_ranked(sr)


def test_lateral_comes_back_with_the_view_filter_sr_only(studies: dict[str, Study]) -> None:
    study = studies["lateral"]
    assert list(study.objects) == [SR_CLASS]
    sr = study.only(SR_CLASS)
    for path in study.paths:
        assert_dciodvfy_clean(path)
    assert coded_values(sr, IMAGE_VIEW)[0].lower().startswith("lateral")
    assert any("not analysed further" in t.lower() for t in texts(sr)), texts(sr)
    assert coded_values(sr, TRIAGE) == [] and _groups(sr) and all(g["finding"] is None for g in _groups(sr))
