"""A SeriesResult as a Comprehensive 3D SR with a TID 1500 Measurement Report.

The report lives in the source study, in a new series, and references every
source image it speaks about (PS3.3 A.35.13, Comprehensive 3D SR IOD;
PS3.16 TID 1500). Its content tree:

- observer context: the algorithm as a device observer (TID 1002/1004);
- per image with a view result, one measurement group (TID 1501) with
  tracking identifier, algorithm identification (TID 4019) and source image,
  holding "Image View" = frontal/lateral (CID 4010) and the model's
  probability (TID 300, UCUM "1"); if the header's ViewPosition says
  otherwise, the header's view too, coded and as text; if the image was not
  analysed further, "Analysed further" = No and a comment;
- per finding or class, one group with the finding as present/absent and
  its probability, and its rank when it is among the image's top findings;
- per detector box, a planar ROI group (TID 1410) with the finding, its
  confidence and the box as a closed SCOORD POLYLINE (5 points) in the
  source image's pixel coordinates;
- per triaged image, a group with "Priority" = urgent/priority/routine and
  the top findings in words;
- when it supersedes earlier reports of ours, a TID 1500 row 12 container
  with a comment saying so, and the Predecessor Documents Sequence.

All coded concepts come from :mod:`sr_writer.codes`.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping, Sequence
from typing import TypedDict

import highdicom as hd
import numpy as np
import pydicom
from highdicom.sr import (
    AlgorithmIdentification,
    ContainerContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    ImageRegion,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    RelationshipTypeValues,
    SourceImageForMeasurementGroup,
    SourceImageForRegion,
    TextContentItem,
    TrackingIdentifier,
)

from core.findings import AlgorithmInfo, Finding, ImageResult, SeriesResult, ViewResult
from sr_writer.codes import CONCEPTS, TRIAGE_KEYS, VIEW_POSITION_KEYS, code, display_name, finding_concept, finding_key
from sr_writer.equipment import add_contributing_equipment, device_uid
from sr_writer.source_attributes import TYPE2_COPIED, clean_source, probability_text, record_issues, significant
from sr_writer.uids import new_uid, validate_uid_root

__all__ = ["MANUFACTURER", "build_measurement_report"]

#: Manufacturer (0008,0070) of every object we write; the router uses it to skip our own objects.
MANUFACTURER = "ainode"

_Group = MeasurementsAndQualitativeEvaluations | PlanarROIMeasurementsAndQualitativeEvaluations


def build_measurement_report(
    result: SeriesResult,
    sources: Sequence[pydicom.Dataset],
    *,
    uid_root: str,
    series_number: int = 990,
    instance_number: int = 1,
    series_description: str = "AI results",
    institution_name: str | None = None,
    predecessors: Sequence[pydicom.Dataset] = (),
) -> pydicom.Dataset:
    """Encode ``result`` as a Comprehensive 3D SR (TID 1500) in the source study.

    Parameters
    ----------
    result : core.findings.SeriesResult
        What the pipeline found; ``result.algorithms[0]`` is the observer and
        the algorithm of the view groups, ``result.algorithms[-1]`` that of
        the finding groups (pipelines list the view filter first).
    sources : sequence of pydicom.Dataset
        Headers of the source images (read with ``stop_before_pixels=True``);
        every image of ``result.images`` must be among them. Patient and study
        attributes are copied from the first one.
    uid_root : str
        Organisation UID root; the series, instance and tracking UIDs are new
        UIDs under it (:func:`sr_writer.uids.new_uid`).
    series_number, instance_number : int
        Series Number (0020,0011) and Instance Number (0020,0013).
    series_description : str
        Series Description (0008,103E); "(DEMO)" is appended when a demo
        model contributed.
    institution_name : str, optional
        Institution Name (0008,0080) of the node.
    predecessors : sequence of pydicom.Dataset
        Earlier SRs of ours for the same series that this one replaces; they
        fill the Predecessor Documents Sequence (0040,A360) (PS3.3 C.17.2).

    Returns
    -------
    pydicom.Dataset
        The SR (a :class:`highdicom.sr.Comprehensive3DSR`), COMPLETE and
        UNVERIFIED, ready for ``save_as`` or C-STORE.

    Raises
    ------
    ValueError
        On an invalid UID root, no sources, sources from another study, an
        image of the result missing from the sources, a probability outside
        0..1, nothing to report, or ``result.supersedes`` naming a report that
        is not among ``predecessors``.
    KeyError
        When a finding's label has no concept in :mod:`sr_writer.codes`.
    """
    by_uid = _checked_sources(result, sources, uid_root)
    _check_supersedes(result, predecessors)

    groups: list[_Group] = []
    for number, image in enumerate(result.images, start=1):
        source = by_uid.get(image.sop_instance_uid)
        if source is None:
            raise ValueError(f"image {image.sop_instance_uid} of the result is not among the sources")
        if image.view is not None:
            groups.append(_view_group(image, image.view, source, number, result.algorithms[0], uid_root))
        ranks = _ranks(image)
        for finding in image.findings:
            finding_source = by_uid.get(finding.source_sop_uid or image.sop_instance_uid)
            if finding_source is None:
                raise ValueError(f"finding {finding.label!r} refers to {finding.source_sop_uid}, not among the sources")
            rank = ranks.pop(finding_key(finding.label), None) if finding.group != "detection" else None
            groups.append(
                _finding_group(
                    finding, finding_source, number, _algorithm_of(finding, result.algorithms), uid_root, rank
                )
            )
        if image.triage is not None or image.top_findings:
            groups.append(_triage_group(image, source, number, result.algorithms[-1], uid_root))
    if not groups:
        raise ValueError("result has no view and no finding on any image; there is nothing to report")

    return _document(
        result,
        sources,
        groups,
        predecessors,
        uid_root=uid_root,
        series_number=series_number,
        instance_number=instance_number,
        series_description=series_description,
        institution_name=institution_name,
    )


def _document(
    result: SeriesResult,
    sources: Sequence[pydicom.Dataset],
    groups: Sequence[_Group],
    predecessors: Sequence[pydicom.Dataset],
    *,
    uid_root: str,
    series_number: int,
    instance_number: int,
    series_description: str,
    institution_name: str | None,
    notes: Sequence[ContainerContentItem] = (),
) -> pydicom.Dataset:
    """The Comprehensive 3D SR (TID 1500) around ``groups``: what every SR writer of the node returns.

    The first algorithm of the result is the observer device and the model name; every algorithm is
    named in Software Versions and in the IHE AI Results contributing equipment.
    """
    primary = result.algorithms[0]
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=_observer(primary)),
        procedure_reported=_procedure(sources[0]),
        imaging_measurements=list(groups),
        title=code("imaging_measurement_report"),
    )
    report[0].ContentSequence.extend(notes)
    if predecessors:
        report[0].ContentSequence.append(_supersession_note(predecessors))
    evidence = _evidence(sources)
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        **_new_instance(uid_root, series_number, instance_number),
        is_complete=True,
        is_final=False,
        is_verified=False,
        institution_name=institution_name,
        previous_versions=list(predecessors) or None,
        manufacturer_model_name=_lo(
            _with_demo(primary.display_name, _is_demo(result.algorithms)), "algorithm display name"
        ),
        coding_schemes=_private_schemes(),
    )
    # Set here: highdicom passes a tuple through, which pydicom warns about for a multi-valued LO.
    versions = [_lo(f"ainode {_node_version()}", "software version")] + [
        _lo(f"{a.display_name} {a.version}", "algorithm version") for a in result.algorithms
    ]
    sr.SoftwareVersions = versions  # type: ignore[assignment]  # pydicom takes a list for a multi-valued LO
    _name_series(sr, result.algorithms, series_description, evidence)
    return sr


def _checked_sources(
    result: SeriesResult, sources: Sequence[pydicom.Dataset], uid_root: str
) -> dict[str, pydicom.Dataset]:
    """What every writer checks first: the UID root, that the result names its algorithm, and the sources.

    Returns the sources by SOP Instance UID (:func:`_index_sources`).
    """
    validate_uid_root(uid_root)
    if not result.algorithms:
        raise ValueError("result names no algorithm; every AI result must name the algorithm (IHE AIR)")
    return _index_sources(result, sources)


class _NewInstance(TypedDict):
    """The keyword arguments of a highdicom constructor that make the object ours: a new series and instance."""

    series_instance_uid: str
    series_number: int
    sop_instance_uid: str
    instance_number: int
    manufacturer: str


def _new_instance(uid_root: str, series_number: int, instance_number: int) -> _NewInstance:
    """New Series and SOP Instance UIDs under ``uid_root``, the numbers, and our Manufacturer (0008,0070)."""
    return _NewInstance(
        series_instance_uid=new_uid(uid_root),
        series_number=series_number,
        sop_instance_uid=new_uid(uid_root),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
    )


def _is_demo(algorithms: Sequence[AlgorithmInfo]) -> bool:
    return any(a.demo for a in algorithms)


def _with_demo(text: str, demo: bool) -> str:
    """``text`` with "(DEMO)" appended when a demo model contributed and it does not say so yet."""
    return f"{text} (DEMO)" if demo and "DEMO" not in text else text


def _name_series(
    ds: pydicom.Dataset,
    algorithms: Sequence[AlgorithmInfo],
    series_description: str,
    sources: Sequence[pydicom.Dataset] = (),
) -> None:
    """Series Description (0008,103E), with "(DEMO)" for demo models, and the IHE AI Results
    contributing-equipment items naming each algorithm: the last touch of every object we write.

    ``sources`` are the cleaned sources the object copied attributes from (:func:`_with_empty_type2`);
    what was dropped or corrected in them is recorded on ``ds``
    (:func:`sr_writer.source_attributes.source_attribute_issues`)."""
    ds.SeriesDescription = _lo(_with_demo(series_description, _is_demo(algorithms)), "series_description")
    add_contributing_equipment(ds, list(algorithms))
    record_issues(ds, sources)


def _evidence(sources: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """The sources, the first cleaned (:func:`_with_empty_type2`): highdicom copies its patient and study attributes."""
    return [_with_empty_type2(sources[0]), *sources[1:]]


def _index_sources(result: SeriesResult, sources: Sequence[pydicom.Dataset]) -> dict[str, pydicom.Dataset]:
    if not sources:
        raise ValueError("no source datasets: an SR must reference the images it reports on")
    for ds in sources:
        for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            if keyword not in ds:
                raise ValueError(f"source dataset lacks {keyword}; pass the full header of each source image")
    study = str(sources[0].StudyInstanceUID)
    if result.study_instance_uid and result.study_instance_uid != study:
        raise ValueError(f"result is for study {result.study_instance_uid} but the sources are of study {study}")
    by_uid: dict[str, pydicom.Dataset] = {}
    for ds in sources:
        if str(ds.StudyInstanceUID) != study:
            raise ValueError(f"source {ds.SOPInstanceUID} is of study {ds.StudyInstanceUID}, not {study}")
        by_uid[str(ds.SOPInstanceUID)] = ds
    return by_uid


# Type 2 attributes of the Patient and General Study modules that highdicom reads from the first source
# (kept here under its old name; the list lives with the checks in sr_writer.source_attributes).
_TYPE2_COPIED = TYPE2_COPIED


def _with_empty_type2(source: pydicom.Dataset, extra: Mapping[str, str] | None = None) -> pydicom.Dataset:
    """The source as highdicom may copy it: missing Type 2 attributes empty, every copied value valid for its
    VR (:func:`sr_writer.source_attributes.clean_source`; what was dropped or corrected is recorded on it)."""
    return clean_source(source, extra)[0]


def _check_supersedes(result: SeriesResult, predecessors: Sequence[pydicom.Dataset]) -> None:
    for ds in predecessors:
        for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            if keyword not in ds:
                raise ValueError(f"predecessor dataset lacks {keyword}; pass the header of the earlier SR")
    known = {str(ds.SOPInstanceUID) for ds in predecessors}
    missing = [uid for uid in result.supersedes if uid not in known]
    if missing:
        raise ValueError(
            f"result supersedes {', '.join(missing)} but no predecessor dataset was given for it; "
            "pass the earlier SRs as predecessors so the Predecessor Documents Sequence can name them"
        )


def _observer(algorithm: AlgorithmInfo) -> ObserverContext:
    return ObserverContext(
        observer_type=code("device"),
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=device_uid(algorithm),
            name=_lo(algorithm.display_name, "algorithm display name"),
            manufacturer_name=_lo(algorithm.manufacturer, "algorithm manufacturer"),
            model_name=_lo(f"{algorithm.display_name} {algorithm.version}", "algorithm model name"),
        ),
    )


def _procedure(source: pydicom.Dataset) -> hd.sr.CodedConcept:
    modality = str(source.get("Modality", ""))
    if modality in ("CR", "DX", "RG"):
        return code("xr_procedure")
    if modality == "CT":
        return code("ct_procedure")
    return code("imaging_procedure")


def _algorithm_id(algorithm: AlgorithmInfo) -> AlgorithmIdentification:
    return AlgorithmIdentification(name=algorithm.display_name, version=algorithm.version)


def _probability(value: float) -> Measurement:
    return _score("probability", value)


def _score(key: str, value: float) -> Measurement:
    """A 0..1 model output as a NUM with UCUM "1" (TID 300), to 3 significant digits."""
    if not 0.0 <= value <= 1.0 or value != value:
        raise ValueError(f"{key} {value!r} is outside 0..1")
    return Measurement(name=code(key), value=significant(float(value)), unit=code("no_units"))


def _triage_group(
    image: ImageResult, source: pydicom.Dataset, number: int, algorithm: AlgorithmInfo, uid_root: str
) -> MeasurementsAndQualitativeEvaluations:
    """TID 1501 group with the triage level (coded) and the top findings in words."""
    evaluations = []
    if image.triage is not None:
        evaluations.append(QualitativeEvaluation(code("triage_priority"), code(TRIAGE_KEYS[image.triage])))
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=new_uid(uid_root), identifier=f"image {number} triage"),
        algorithm_id=_algorithm_id(algorithm),
        source_images=[SourceImageForMeasurementGroup.from_source_image(source)],
        qualitative_evaluations=evaluations or None,
    )
    if image.top_findings:
        # The top findings rank the 14-label classifier's outputs; a label that is also a four-class class
        # (pneumonia) must show the classifier's probability, so "finding" entries win over "class" ones.
        ordered = sorted((f for f in image.findings if f.group != "detection"), key=lambda f: f.group == "finding")
        probabilities = {finding_key(f.label): f.probability for f in ordered}
        ranked = "; ".join(
            f"{rank}. {display_name(label)} {probability_text(probabilities[finding_key(label)])}"
            for rank, label in enumerate(image.top_findings, start=1)
        )
        group[0].ContentSequence.append(_comment(f"Top findings: {ranked}"))
    elif any(f.group == "finding" for f in image.findings) and not any(
        f.present for f in image.findings if f.group == "finding"
    ):
        group[0].ContentSequence.append(_comment("Top findings: none at or above its threshold"))
    return group


def _comment(text: str) -> TextContentItem:
    return TextContentItem(name=code("comment"), value=text, relationship_type=RelationshipTypeValues.CONTAINS)


def _view_group(
    image: ImageResult, view: ViewResult, source: pydicom.Dataset, number: int, algorithm: AlgorithmInfo, uid_root: str
) -> MeasurementsAndQualitativeEvaluations:
    evaluations = [QualitativeEvaluation(code("image_view"), code(view.view))]
    comments: list[str] = []
    if view.disagreement or (view.header_view is not None and view.header_view != view.view):
        header_key = VIEW_POSITION_KEYS.get((view.header_view_position or "").strip().upper(), view.header_view)
        if header_key is not None:
            evaluations.append(QualitativeEvaluation(code("header_image_view"), code(header_key)))
        comments.append(
            f"ViewPosition in header: {view.header_view_position or '(empty)'}; "
            f"the model finds {view.view} (probability {probability_text(view.probability)})"
        )
    if not image.analysed_further:
        evaluations.append(QualitativeEvaluation(code("analysed_further"), code("no")))
        if not image.note:
            comments.append(f"{view.view} view: not analysed further")
    if image.note:
        comments.append(image.note)
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=new_uid(uid_root), identifier=f"image {number} view"),
        algorithm_id=_algorithm_id(algorithm),
        source_images=[SourceImageForMeasurementGroup.from_source_image(source)],
        measurements=[_probability(view.probability)],
        qualitative_evaluations=evaluations,
    )
    # TID 1501 allows TEXT qualitative evaluations beside CODE ones; highdicom has no argument for them.
    group[0].ContentSequence.extend(_comment(text) for text in comments)
    return group


def _ranks(image: ImageResult) -> dict[str, int]:
    """Rank (1 = most likely) of each top finding, keyed by its table key; checks the labels."""
    keys = [finding_key(label) for label in image.top_findings]
    if len(set(keys)) != len(keys):
        raise ValueError(f"top findings of image {image.sop_instance_uid} repeat a label: {image.top_findings}")
    reported = {finding_key(f.label) for f in image.findings if f.group != "detection"}
    missing = [label for label, key in zip(image.top_findings, keys, strict=False) if key not in reported]
    if missing:
        raise ValueError(f"top findings {missing} of image {image.sop_instance_uid} are not among its findings")
    if image.triage is not None and image.triage not in TRIAGE_KEYS:
        raise ValueError(
            f"triage {image.triage!r} of image {image.sop_instance_uid} is not one of {sorted(TRIAGE_KEYS)}"
        )
    return {key: rank for rank, key in enumerate(keys, start=1)}


def _algorithm_of(finding: Finding, algorithms: Sequence[AlgorithmInfo]) -> AlgorithmInfo:
    if finding.algorithm is None:
        return algorithms[-1]
    for algorithm in algorithms:
        if algorithm.name == finding.algorithm:
            return algorithm
    raise ValueError(f"finding {finding.label!r} names algorithm {finding.algorithm!r}, which the result does not list")


def _finding_group(
    finding: Finding,
    source: pydicom.Dataset,
    number: int,
    algorithm: AlgorithmInfo,
    uid_root: str,
    rank: int | None = None,
) -> _Group:
    concept = finding_concept(finding.label)
    kind = {"finding": "", "class": " class", "detection": " box"}[finding.group]
    tracking = TrackingIdentifier(uid=new_uid(uid_root), identifier=f"image {number}{kind} {finding.label}")
    if finding.group == "detection":
        if finding.region is None:
            raise ValueError(f"detection {finding.label!r} has no box (region)")
        measurements = [_score("confidence", finding.probability)]
    else:
        measurements = [_probability(finding.probability)]
    if rank is not None:
        measurements.append(Measurement(name=code("top_finding_rank"), value=rank, unit=code("no_units")))
    evaluations = [QualitativeEvaluation(concept, code("present" if finding.present else "absent"))]
    if finding.region is None:
        return MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            algorithm_id=_algorithm_id(algorithm),
            finding_type=concept,
            measurements=measurements,
            qualitative_evaluations=evaluations,
            source_images=[SourceImageForMeasurementGroup.from_source_image(source)],
        )
    return PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        algorithm_id=_algorithm_id(algorithm),
        finding_type=concept,
        measurements=measurements,
        qualitative_evaluations=evaluations,
        referenced_region=_rectangle(finding, source),
    )


def _rectangle(finding: Finding, source: pydicom.Dataset) -> ImageRegion:
    r = finding.region
    if r is None:
        raise ValueError(f"finding {finding.label!r} has no region")
    if not (0 <= r.x_min < r.x_max and 0 <= r.y_min < r.y_max):
        raise ValueError(f"region of finding {finding.label!r} is empty or negative: {r}")
    columns, rows = source.get("Columns"), source.get("Rows")
    if columns is not None and rows is not None and (r.x_max > columns or r.y_max > rows):
        raise ValueError(f"region of finding {finding.label!r} lies outside the {columns}x{rows} image: {r}")
    # SCOORD pixel coordinates (PS3.3 C.18.6.1.1): (column, row), a closed polyline.
    corners = np.array(
        [[r.x_min, r.y_min], [r.x_max, r.y_min], [r.x_max, r.y_max], [r.x_min, r.y_max], [r.x_min, r.y_min]],
        dtype=float,
    )
    return ImageRegion(
        graphic_type="POLYLINE", graphic_data=corners, source_image=SourceImageForRegion.from_source_image(source)
    )


def _supersession_note(predecessors: Sequence[pydicom.Dataset]) -> ContainerContentItem:
    uids = ", ".join(str(ds.SOPInstanceUID) for ds in predecessors)
    plural = "s" if len(predecessors) > 1 else ""
    container = ContainerContentItem(
        name=code("qualitative_evaluations"), relationship_type=RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = ContentSequence(
        [
            _comment(
                f"This report supersedes the earlier report{plural} {uids} of this series "
                "because new instances arrived after it was written."
            )
        ]
    )
    return container


def _private_schemes() -> list[hd.coding_schemes.CodingSchemeIdentificationItem]:
    """Coding Scheme Identification Sequence (0008,0110) items for the private schemes we use (PS3.3 C.12.1.1.5)."""
    names = {
        "99AINODE": ("ainode private concepts", "ainode project"),
        "99IHE": ("IHE private concepts", "IHE International"),
    }
    used = sorted({c.scheme for c in CONCEPTS.values() if c.scheme.startswith("99")})
    return [
        hd.coding_schemes.CodingSchemeIdentificationItem(
            designator=scheme, name=names[scheme][0], responsible_organization=names[scheme][1]
        )
        for scheme in used
    ]


def _lo(value: str, what: str) -> str:
    """A Long String (LO) value: at most 64 characters, no backslash (PS3.5 6.2)."""
    if len(value) > 64 or "\\" in value:
        raise ValueError(f"{what} {value!r} does not fit a DICOM LO value (at most 64 characters, no backslash)")
    return value


def _node_version() -> str:
    try:
        return importlib.metadata.version("ainode")
    except importlib.metadata.PackageNotFoundError:
        # Running from a source tree that was not installed: say so rather than invent a number.
        return "source"
