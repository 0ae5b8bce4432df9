"""Scenarios for the SR writer tests: a real chest CR header and results built on it.

The source is ``RG1_UNCR.dcm`` (pydicom-data), a real PA chest CR, read with
``stop_before_pixels=True`` as the node does. Variants of it (a lateral with
ViewPosition ``LL``) are header copies with new SOP Instance UIDs in the
same study and series.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pydicom
from pydicom import Dataset

from core.findings import AlgorithmInfo, Finding, ImageResult, Region, SeriesResult, ViewResult
from sr_writer import SeriesParams, build_measurement_report
from tests.helpers import rg1_uncr_path

UID_ROOT = "1.2.826.0.1.3680043.10.543.7"

VIEW_FILTER = AlgorithmInfo(
    name="cxr-view-filter", version="1.2.0", manufacturer="ainode", weights_sha256="a1" * 32, demo=False
)
DEMO_VIEW_FILTER = AlgorithmInfo(
    name="cxr-view-filter", version="1.2.0", manufacturer="ainode", weights_sha256="b2" * 32, demo=True
)


def series(number: int, institution_name: str | None = None) -> SeriesParams:
    """The writers' parameters under :data:`UID_ROOT`, Series Number ``number``.

    The tests number their objects as the node does by default: SR 990, GSPS 991, SC 992, PE SR 993,
    lumbar SR 994, KOS 995, SEG 996, slice labels 997 and 998.
    """
    return SeriesParams(uid_root=UID_ROOT, series_number=number, institution_name=institution_name)


def read_rg1_header() -> Dataset:
    """Header of the real PA chest CR (ViewPosition ``PA``)."""
    return pydicom.dcmread(rg1_uncr_path(), stop_before_pixels=True)


def lateral_header(source: Dataset, uid: str = "1.2.826.0.1.3680043.10.543.7.99.1") -> Dataset:
    """A copy of ``source`` as a left lateral image (ViewPosition ``LL``) with a new SOP Instance UID."""
    header = copy.deepcopy(source)
    header.SOPInstanceUID = uid
    header.file_meta.MediaStorageSOPInstanceUID = uid
    header.ViewPosition = "LL"
    header.InstanceNumber = 2
    return header


def series_result(
    images: list[ImageResult],
    source: Dataset,
    algorithm: AlgorithmInfo = VIEW_FILTER,
    supersedes: list[str] | None = None,
) -> SeriesResult:
    return SeriesResult(
        pipeline="cxr",
        study_instance_uid=str(source.StudyInstanceUID),
        series_instance_uid=str(source.SeriesInstanceUID),
        algorithms=[algorithm],
        images=images,
        supersedes=list(supersedes or []),
    )


def frontal_image(source: Dataset, probability: float = 0.97) -> ImageResult:
    return ImageResult(
        sop_instance_uid=str(source.SOPInstanceUID),
        view=ViewResult(view="frontal", probability=probability, header_view_position="PA", header_view="frontal"),
    )


def lateral_image(source: Dataset) -> ImageResult:
    return ImageResult(
        sop_instance_uid=str(source.SOPInstanceUID),
        view=ViewResult(view="lateral", probability=0.91, header_view_position="LL", header_view="lateral"),
        analysed_further=False,
        note="lateral view: not analysed further",
    )


def disagreeing_image(source: Dataset) -> ImageResult:
    """The header says PA (frontal); the model is confident it is lateral."""
    return ImageResult(
        sop_instance_uid=str(source.SOPInstanceUID),
        view=ViewResult(
            view="lateral", probability=0.96, header_view_position="PA", header_view="frontal", disagreement=True
        ),
        analysed_further=False,
    )


def finding_image(source: Dataset) -> ImageResult:
    return ImageResult(
        sop_instance_uid=str(source.SOPInstanceUID),
        view=ViewResult(view="frontal", probability=0.99, header_view_position="PA", header_view="frontal"),
        findings=[
            Finding(label="pneumothorax", probability=0.82, present=True, region=Region(100.0, 150.5, 700.0, 900.0)),
            Finding(label="pleural_effusion", probability=0.12, present=False),
        ],
    )


CLASSIFIER = AlgorithmInfo(name="cxr-findings", version="0.3.0", weights_sha256="c3" * 32)
FOUR_CLASS = AlgorithmInfo(name="cxr-four-class", version="0.2.0", weights_sha256="d4" * 32)
DETECTOR = AlgorithmInfo(name="cxr-detector", version="0.1.0", weights_sha256="e5" * 32)
DEMO_DETECTOR = AlgorithmInfo(name="cxr-detector", version="0.1.0", weights_sha256="f6" * 32, demo=True)

#: Probabilities of the 14 ChestX-ray14 findings in the CXR scenario (nodule, mass, effusion on top).
FINDING_PROBABILITIES = {
    "atelectasis": 0.21,
    "cardiomegaly": 0.08,
    "consolidation": 0.12,
    "edema": 0.03,
    "effusion": 0.64,
    "emphysema": 0.02,
    "fibrosis": 0.05,
    "hernia": 0.01,
    "infiltration": 0.30,
    "mass": 0.71,
    "nodule": 0.87,
    "pleural_thickening": 0.09,
    "pneumonia": 0.11,
    "pneumothorax": 0.04,
}
CLASS_PROBABILITIES = {"covid19": 0.05, "normal": 0.10, "pneumonia": 0.15, "tuberculosis": 0.70}
THRESHOLD = 0.5


def boxes_for(source: Dataset) -> dict[str, Region]:
    """Two detector boxes inside ``source``, in its pixel coordinates (column, row)."""
    columns, rows = int(source.Columns), int(source.Rows)
    return {
        "nodule": Region(0.20 * columns, 0.30 * rows, 0.35 * columns, 0.45 * rows),
        "mass": Region(0.55 * columns, 0.25 * rows, 0.80 * columns, 0.50 * rows),
    }


def cxr_image(source: Dataset, *, detector: AlgorithmInfo = DETECTOR) -> ImageResult:
    """A frontal image with the 14 findings, the 4 classes, 2 boxes, the top three and a triage."""
    uid = str(source.SOPInstanceUID)
    findings = [
        Finding(label, p, p >= THRESHOLD, algorithm=CLASSIFIER.name) for label, p in FINDING_PROBABILITIES.items()
    ]
    findings += [
        Finding(label, p, p == max(CLASS_PROBABILITIES.values()), group="class", algorithm=FOUR_CLASS.name)
        for label, p in CLASS_PROBABILITIES.items()
    ]
    confidences = {"nodule": 0.83, "mass": 0.58}
    findings += [
        Finding(label, confidences[label], True, region=box, group="detection", algorithm=detector.name)
        for label, box in boxes_for(source).items()
    ]
    return ImageResult(
        sop_instance_uid=uid,
        view=ViewResult(
            view="frontal",
            probability=0.99,
            header_view_position=str(source.get("ViewPosition", "")) or None,
            header_view="frontal",
        ),
        findings=findings,
        top_findings=["nodule", "mass", "effusion"],
        triage="urgent",
    )


def cxr_result(source: Dataset, *, detector: AlgorithmInfo = DETECTOR) -> SeriesResult:
    """The whole cxr pipeline's result on ``source``: view filter, classifier, four-class, detector."""
    return SeriesResult(
        pipeline="cxr",
        study_instance_uid=str(source.StudyInstanceUID),
        series_instance_uid=str(source.SeriesInstanceUID),
        algorithms=[VIEW_FILTER, CLASSIFIER, FOUR_CLASS, detector],
        images=[cxr_image(source, detector=detector)],
    )


def build_variant(name: str) -> tuple[Dataset, list[Dataset]]:
    """``(sr, sources)`` for each scenario the node writes (see :data:`VARIANTS`)."""
    frontal = read_rg1_header()
    lateral = lateral_header(frontal)
    predecessors: list[Dataset] = []
    supersedes: list[str] = []
    algorithm = VIEW_FILTER
    if name == "frontal":
        sources, images = [frontal], [frontal_image(frontal)]
    elif name == "lateral":
        sources, images = [frontal, lateral], [frontal_image(frontal), lateral_image(lateral)]
    elif name == "disagreement":
        sources, images = [frontal], [disagreeing_image(frontal)]
    elif name == "demo":
        sources, images, algorithm = [frontal], [frontal_image(frontal)], DEMO_VIEW_FILTER
    elif name == "findings":
        sources, images = [frontal], [finding_image(frontal)]
    elif name == "cxr":
        sr = build_measurement_report(
            cxr_result(frontal), [frontal], params=series(990, institution_name="Test Hospital")
        )
        return sr, [frontal]
    elif name == "predecessor":
        first = build_measurement_report(
            series_result([frontal_image(frontal)], frontal), [frontal], params=series(990)
        )
        predecessors, supersedes = [first], [str(first.SOPInstanceUID)]
        sources, images = [frontal, lateral], [frontal_image(frontal), lateral_image(lateral)]
    else:
        raise ValueError(f"unknown variant {name!r}")
    result = series_result(images, frontal, algorithm=algorithm, supersedes=supersedes)
    sr = build_measurement_report(
        result, sources, params=series(990, institution_name="Test Hospital"), predecessors=predecessors
    )
    return sr, sources


VARIANTS = ["frontal", "lateral", "disagreement", "demo", "findings", "predecessor", "cxr"]


def write(sr: Dataset, folder: Path, name: str) -> Path:
    path = folder / f"{name}.dcm"
    sr.save_as(path, enforce_file_format=True)
    return path
