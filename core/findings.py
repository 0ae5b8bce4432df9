"""Plain result data passed from pipelines to writers.

This module is the contract between ``models/`` (which produces results) and
``sr_writer/`` (which encodes them as DICOM). It holds no DICOM or network
logic: only frozen dataclasses of numbers and strings, so a result can be
stored as JSON in the database and turned into objects later.

Labels are keys into the coded-concept table of ``sr_writer.codes``; models
never carry codes themselves.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

View = Literal["frontal", "lateral"]
#: What produced a finding: a multi-label classifier ("finding", the emergency-department
#: triage service's ChestX-ray14 classifier), a single-label classifier over classes ("class",
#: the four-class COVID-19/normal/pneumonia/tuberculosis classifier), or a detector box ("detection").
FindingGroup = Literal["finding", "class", "detection"]
#: Triage levels of the cxr pipeline, most urgent first.
Triage = Literal["urgent", "priority", "routine"]
TRIAGE_LEVELS: tuple[str, ...] = ("urgent", "priority", "routine")

#: The nine sigmoid heads of the PE model (the RSNA-PE Xception design: Xception trained on the
#: RSNA Pulmonary Embolism Detection Challenge 2020 data), in that design's output order.
PE_HEADS: tuple[str, ...] = (
    "acute_and_chronic_pe",
    "central_pe",
    "chronic_pe",
    "indeterminate",
    "leftsided_pe",
    "pe_present_on_image",
    "rightsided_pe",
    "rv_lv_ratio_gte_1",
    "rv_lv_ratio_lt_1",
)
#: Exam-level labels of the RSNA PE challenge (``pe_present_on_image`` is per slice).
PE_EXAM_LABELS: tuple[str, ...] = (
    "negative_exam_for_pe",
    "indeterminate",
    "rv_lv_ratio_gte_1",
    "rv_lv_ratio_lt_1",
    "leftsided_pe",
    "rightsided_pe",
    "central_pe",
    "chronic_pe",
    "acute_and_chronic_pe",
)
#: The seven classes of the lumbar-level slice classifier (EfficientNetV2-M over abdominal CT
#: slices, to find L3 for sarcopenia), head to feet.
LUMBAR_LEVELS: tuple[str, ...] = ("T", "L1", "L2", "L3", "L4", "L5", "S")


@dataclass(frozen=True)
class AlgorithmInfo:
    """Identification of the algorithm that produced a result (IHE AIR).

    Parameters
    ----------
    name : str
        Model name, e.g. ``"cxr-view-filter"``. When ``demo`` is true the
        displayed name (:attr:`display_name`) carries ``DEMO``.
    version : str
        Model version from the manifest; changes the Device UID.
    manufacturer : str
        Who made the model (the manifest's ``manufacturer``).
    weights_sha256 : str
        Checksum of the weights file the result was computed with.
    demo : bool
        True for weights the repository builds on synthetic data.
    """

    name: str
    version: str
    manufacturer: str = "ainode"
    weights_sha256: str = ""
    demo: bool = False

    @property
    def display_name(self) -> str:
        return f"{self.name} (DEMO)" if self.demo else self.name


@dataclass(frozen=True)
class Region:
    """A rectangle in the source image's pixel coordinates (column, row), 0-based."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float


@dataclass(frozen=True)
class Finding:
    """One finding of one model on one image or series.

    ``label`` is a key of ``sr_writer.codes.CONCEPTS``; ``present`` is the
    probability compared with the manifest's threshold for that label. For a
    detection (``group="detection"``), ``probability`` is the detector's
    confidence and ``region`` its box. ``algorithm`` names the
    :class:`AlgorithmInfo` (by ``name``) that produced it, when a result
    combines several models.
    """

    label: str
    probability: float
    present: bool
    region: Region | None = None
    source_sop_uid: str | None = None
    group: FindingGroup = "finding"
    algorithm: str | None = None


@dataclass(frozen=True)
class ViewResult:
    """Outcome of the frontal/lateral view filter (the MIMIC-CXR view-filter design) on one radiograph.

    Parameters
    ----------
    view : {"frontal", "lateral"}
        The predicted view.
    probability : float
        Model probability of the predicted view (0.5 .. 1).
    header_view_position : str or None
        ViewPosition (0018,5101) of the source, as found (e.g. "PA", "LL").
    header_view : {"frontal", "lateral"} or None
        What the header's ViewPosition means, when it is one we know.
    disagreement : bool
        True when the header names the other view and the prediction is
        confident; the SR then records both.
    """

    view: View
    probability: float
    header_view_position: str | None = None
    header_view: View | None = None
    disagreement: bool = False


@dataclass
class ImageResult:
    """Everything a pipeline found on one source image."""

    sop_instance_uid: str
    view: ViewResult | None = None
    findings: list[Finding] = field(default_factory=list)
    analysed_further: bool = True
    note: str | None = None
    #: Labels of the most likely findings, most likely first (the emergency-department triage
    #: service shows three).
    top_findings: list[str] = field(default_factory=list)
    #: Triage level from the configured per-finding thresholds, or None when not triaged.
    triage: Triage | None = None


@dataclass
class PeExamResult:
    """The PE model (the RSNA-PE Xception design) on one CT pulmonary angiography series.

    Slices are indexed in the series plan's order (``models.preprocess.ct_series``:
    along the ImageOrientationPatient normal), ``slice_uids[i]`` being slice ``i``.

    Parameters
    ----------
    slice_uids : list of str
        SOP Instance UIDs of the analysed slices, in plan order.
    slice_probabilities : list of float
        ``pe_present_on_image`` per slice.
    exam_probabilities : dict
        Probability of each of :data:`PE_EXAM_LABELS` for the exam.
    exam_labels : dict
        The decision for each of :data:`PE_EXAM_LABELS` after the RSNA
        label-consistency rules.
    positive_slices : list of int
        Slices whose ``pe_present_on_image`` is at or above its threshold (after
        the rules: none when the exam is negative).
    key_slices : list of int
        The few slices a radiologist should see first (for the KOS and GSPS).
    corrections : list of str
        What the consistency rules changed, in words, for the SR and the log.
    indeterminate_reasons : list of str
        Why the series cannot be read for PE at all (``models.plausibility``: it does not cover
        the lungs, or flagged slices lie outside them); when set the exam is indeterminate,
        with no positive or key slices.
    """

    slice_uids: list[str]
    slice_probabilities: list[float]
    exam_probabilities: dict[str, float]
    exam_labels: dict[str, bool]
    positive_slices: list[int] = field(default_factory=list)
    key_slices: list[int] = field(default_factory=list)
    corrections: list[str] = field(default_factory=list)
    indeterminate_reasons: list[str] = field(default_factory=list)


@dataclass
class LevelRun:
    """Consecutive slices (plan order, ``first`` .. ``last`` inclusive) decoded as one vertebral level."""

    level: str
    first: int
    last: int


@dataclass
class BodyComposition:
    """Tissue areas on one axial slice, by HU ranges (the step the lumbar-level design names next).

    Areas are in cm² from PixelSpacing; ``skeletal_muscle_index`` is muscle area
    over height squared (cm²/m²), present only when PatientSize (0010,1020) is.
    """

    sop_instance_uid: str
    muscle_cm2: float
    subcutaneous_fat_cm2: float
    visceral_fat_cm2: float
    patient_size_m: float | None = None
    skeletal_muscle_index: float | None = None


@dataclass
class LumbarResult:
    """The lumbar-level model on one abdominal CT series: the level of every slice, L3, body composition.

    Parameters
    ----------
    slice_uids : list of str
        SOP Instance UIDs of the analysed slices, in plan order.
    levels : list of str
        The decoded level (one of :data:`LUMBAR_LEVELS`) of every slice, monotonic
        along the patient axis.
    evaluated : list of int
        The slices the model actually ran on (the search strategy skips most).
    runs : list of LevelRun
        The levels as runs of consecutive slices, in plan order.
    l3_index : int or None
        The slice at the centre of the L3 run, or None when no L3 was found.
    composition : BodyComposition or None
        Areas measured on the L3 slice.
    not_determined : list of str
        Why the decoded level map is anatomically impossible (``models.plausibility``); when
        set the levels are not reported as findings, and there is no L3 slice or composition.
    """

    slice_uids: list[str]
    levels: list[str]
    evaluated: list[int] = field(default_factory=list)
    runs: list[LevelRun] = field(default_factory=list)
    l3_index: int | None = None
    composition: BodyComposition | None = None
    not_determined: list[str] = field(default_factory=list)


@dataclass
class SeriesResult:
    """Everything a pipeline found on one series; what writers consume.

    ``supersedes`` lists SOP Instance UIDs of earlier result objects for the
    same series that this result replaces (a re-analysis after late
    instances); writers say so in the new objects.
    """

    pipeline: str
    study_instance_uid: str
    series_instance_uid: str
    algorithms: list[AlgorithmInfo]
    images: list[ImageResult] = field(default_factory=list)
    supersedes: list[str] = field(default_factory=list)
    #: Exam result of the ``ct_pe`` pipeline.
    pe: PeExamResult | None = None
    #: Level and body-composition result of the ``ct_lumbar`` pipeline.
    lumbar: LumbarResult | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SeriesResult:
        images = []
        for img in data.get("images", []):
            view = ViewResult(**img["view"]) if img.get("view") else None
            findings = [
                Finding(**{**f, "region": Region(**f["region"]) if f.get("region") else None})
                for f in img.get("findings", [])
            ]
            images.append(
                ImageResult(
                    sop_instance_uid=img["sop_instance_uid"],
                    view=view,
                    findings=findings,
                    analysed_further=img.get("analysed_further", True),
                    note=img.get("note"),
                    top_findings=list(img.get("top_findings", [])),
                    triage=img.get("triage"),
                )
            )
        return cls(
            pipeline=data["pipeline"],
            study_instance_uid=data["study_instance_uid"],
            series_instance_uid=data["series_instance_uid"],
            algorithms=[AlgorithmInfo(**a) for a in data.get("algorithms", [])],
            images=images,
            supersedes=list(data.get("supersedes", [])),
            pe=PeExamResult(**data["pe"]) if data.get("pe") else None,
            lumbar=_lumbar_from_json(data["lumbar"]) if data.get("lumbar") else None,
        )


def _lumbar_from_json(data: dict[str, Any]) -> LumbarResult:
    composition = data.get("composition")
    return LumbarResult(
        slice_uids=list(data["slice_uids"]),
        levels=list(data["levels"]),
        evaluated=list(data.get("evaluated", [])),
        runs=[LevelRun(**r) for r in data.get("runs", [])],
        l3_index=data.get("l3_index"),
        composition=BodyComposition(**composition) if composition else None,
        not_determined=list(data.get("not_determined", [])),
    )
