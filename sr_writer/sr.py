"""A SeriesResult as a Comprehensive 3D SR with a TID 1500 Measurement Report.

The report lives in the source study, in a new series, and references every
source image it speaks about (PS3.3 A.35.13, Comprehensive 3D SR IOD;
PS3.16 TID 1500). Its content tree:

- observer context: the node as a device observer (TID 1002/1004), and in
  each group the device observer of the model that made it
  (:func:`sr_writer.report.document`);
- an Image Library (TID 1600) listing every source image;
- per image with a view result, one measurement group (TID 1501) with
  tracking identifier, algorithm identification (TID 4019) and source image,
  holding "Image View" = frontal/lateral (CID 4010) and the model's
  probability (TID 300, UCUM "1"); if the header's ViewPosition says
  otherwise, the header's view too, coded and as text; if the image was not
  analysed further, "Analysed further" = No and a comment;
- per image, first, one planar ROI group (TID 1410) whose Image Region is
  the whole image (a closed SCOORD POLYLINE along its edges, selected from
  it), with Finding Site "Chest", the top finding as Finding, and one NUM
  per finding of the 14-finding classifier (or, without it, per class of
  the four-class classifier; or, with neither, the view) named by the
  finding and valued with its probability, the top findings first: what a
  viewer that reads measurement groups through their SCOORD (OHIF v3) shows
  on the image, as "Nodule: 0.87 1". Every group about the image as a whole
  (this one, the view, findings, classes, triage) shares one Tracking UID:
  one tracked object, which such a viewer shows as one measurement (OHIF
  3.13 stops on a Tracking UID it cannot place on an image);
- per finding or class, one group with the finding as present/absent and
  its probability, and its rank when it is among the image's top findings;
- per detector box, its own tracked object: a planar ROI group (TID 1410) with the finding as
  Finding, Finding Site "Chest", a NUM named by the finding and one named
  "Detection confidence", both with the detector's confidence (the first is
  the label a viewer shows), and the box as a closed SCOORD POLYLINE
  (5 points) in the source image's pixel coordinates;
- per triaged image, a group with "Priority" = urgent/priority/routine and
  the top findings in words;
- when it supersedes earlier reports of ours, a TID 1500 row 12 container
  with a comment saying so, and the Predecessor Documents Sequence.

All coded concepts come from :mod:`sr_writer.codes`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pydicom
from highdicom.sr import (
    FindingSite,
    ImageRegion,
    Measurement,
    MeasurementsAndQualitativeEvaluations,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    SourceImageForMeasurementGroup,
    SourceImageForRegion,
    TrackingIdentifier,
)

from core.findings import AlgorithmInfo, Finding, ImageResult, SeriesResult, ViewResult
from sr_writer.codes import TRIAGE_KEYS, VIEW_POSITION_KEYS, code, display_name, finding_concept, finding_key
from sr_writer.common import SeriesParams, checked_sources
from sr_writer.errors import InvalidResultError
from sr_writer.report import (
    Group,
    algorithm_id,
    check_predecessors,
    comment,
    document,
    probability,
    score,
    whole_image_region,
)
from sr_writer.source_attributes import probability_text
from sr_writer.uids import new_uid

__all__ = ["SERIES_DESCRIPTION", "build_measurement_report"]

#: Series Description (0008,103E) of the report unless :class:`~sr_writer.common.SeriesParams` gives one.
SERIES_DESCRIPTION = "AI results"


def build_measurement_report(
    result: SeriesResult,
    sources: Sequence[pydicom.Dataset],
    params: SeriesParams,
    *,
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
    params : sr_writer.common.SeriesParams
        UID root (series, instance and tracking UIDs are new UIDs under it),
        Series and Instance Number, Institution Name, and the Series
        Description (:data:`SERIES_DESCRIPTION` unless given; "(DEMO)" is
        appended when a demo model contributed).
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
    sr_writer.errors.InvalidResultError
        (a ValueError) On no sources, sources from another study, an image of
        the result missing from the sources, a probability outside 0..1,
        nothing to report, or ``result.supersedes`` naming a report that is
        not among ``predecessors``.
    sr_writer.errors.UnknownConceptError
        (a KeyError) When a finding's label has no concept in :mod:`sr_writer.codes`.
    """
    by_uid = checked_sources(result, sources)
    check_predecessors(result, predecessors)
    uid_root = params.uid_root

    groups: list[Group] = []
    for number, image in enumerate(result.images, start=1):
        source = by_uid.get(image.sop_instance_uid)
        if source is None:
            raise InvalidResultError(f"image {image.sop_instance_uid} of the result is not among the sources")
        ranks = _ranks(image)
        # Every group about the image as a whole shares its Tracking UID: one tracked object, the image,
        # which viewers (OHIF) show as one measurement on the image's region group, drawn first.
        image_uid = new_uid(uid_root)
        region = _image_group(image, source, number, result.algorithms, image_uid)
        if region is not None:
            groups.append(region)
        if image.view is not None:
            groups.append(_view_group(image, image.view, source, number, result.algorithms[0], image_uid))
        for finding in image.findings:
            finding_source = by_uid.get(finding.source_sop_uid or image.sop_instance_uid)
            if finding_source is None:
                raise InvalidResultError(
                    f"finding {finding.label!r} refers to {finding.source_sop_uid}, not among the sources"
                )
            rank = ranks.pop(finding_key(finding.label), None) if finding.group != "detection" else None
            # A box is a tracked object of its own.
            tracking_uid = new_uid(uid_root) if finding.group == "detection" else image_uid
            groups.append(
                _finding_group(
                    finding, finding_source, number, _algorithm_of(finding, result.algorithms), tracking_uid, rank
                )
            )
        if image.triage is not None or image.top_findings:
            groups.append(_triage_group(image, source, number, result.algorithms[-1], image_uid))
    if not groups:
        raise InvalidResultError("result has no view and no finding on any image; there is nothing to report")

    return document(result, sources, groups, predecessors, params, params.description(SERIES_DESCRIPTION))


def _image_group(
    image: ImageResult,
    source: pydicom.Dataset,
    number: int,
    algorithms: Sequence[AlgorithmInfo],
    tracking_uid: str,
) -> PlanarROIMeasurementsAndQualitativeEvaluations | None:
    """TID 1410 group on the whole image with one model's image-level findings, top findings first.

    The findings are the 14-finding classifier's ("finding"), or the four-class classifier's ("class")
    when there are none; each is a NUM named by the finding, valued with its probability. An image with
    neither (a view not analysed further, or boxes only) shows its view's probability, named by the view.
    None when the image has no view either.
    """
    shown = [f for f in image.findings if f.group == "finding"] or [f for f in image.findings if f.group == "class"]
    ranks = {finding_key(label): rank for rank, label in enumerate(image.top_findings)}
    shown.sort(key=lambda f: (ranks.get(finding_key(f.label), len(ranks)), -f.probability))
    top = bool(shown) and finding_key(shown[0].label) in ranks
    if shown:
        algorithm = _algorithm_of(shown[0], algorithms)
        measurements = [score(finding_concept(f.label), f.probability) for f in shown]
        order = "the top findings first" if top else "the most probable first"
        what = f"gives each finding on this image, {order}"
    elif image.view is not None:
        algorithm = algorithms[0]
        measurements = [score(image.view.view, image.view.probability)]
        what = "gives the view of this image"
    else:
        return None
    group = PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=tracking_uid, identifier=f"image {number}"),
        algorithm_id=algorithm_id(algorithm),
        finding_type=finding_concept(shown[0].label) if top else None,
        finding_sites=[FindingSite(code("chest"))],
        measurements=measurements,
        referenced_region=whole_image_region(source),
    )
    group[0].ContentSequence.append(
        comment(
            f"Each measurement is the probability (0 to 1) of what it is named by, as {algorithm.display_name} {what}"
        )
    )
    return group


def _triage_group(
    image: ImageResult, source: pydicom.Dataset, number: int, algorithm: AlgorithmInfo, tracking_uid: str
) -> MeasurementsAndQualitativeEvaluations:
    """TID 1501 group with the triage level (coded) and the top findings in words."""
    evaluations = []
    if image.triage is not None:
        evaluations.append(QualitativeEvaluation(code("triage_priority"), code(TRIAGE_KEYS[image.triage])))
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=tracking_uid, identifier=f"image {number} triage"),
        algorithm_id=algorithm_id(algorithm),
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
        group[0].ContentSequence.append(comment(f"Top findings: {ranked}"))
    elif any(f.group == "finding" for f in image.findings) and not any(
        f.present for f in image.findings if f.group == "finding"
    ):
        group[0].ContentSequence.append(comment("Top findings: none at or above its threshold"))
    return group


def _view_group(
    image: ImageResult,
    view: ViewResult,
    source: pydicom.Dataset,
    number: int,
    algorithm: AlgorithmInfo,
    tracking_uid: str,
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
        tracking_identifier=TrackingIdentifier(uid=tracking_uid, identifier=f"image {number} view"),
        algorithm_id=algorithm_id(algorithm),
        source_images=[SourceImageForMeasurementGroup.from_source_image(source)],
        measurements=[probability(view.probability)],
        qualitative_evaluations=evaluations,
    )
    # TID 1501 allows TEXT qualitative evaluations beside CODE ones; highdicom has no argument for them.
    group[0].ContentSequence.extend(comment(text) for text in comments)
    return group


def _ranks(image: ImageResult) -> dict[str, int]:
    """Rank (1 = most likely) of each top finding, keyed by its table key; checks the labels."""
    keys = [finding_key(label) for label in image.top_findings]
    if len(set(keys)) != len(keys):
        raise InvalidResultError(f"top findings of image {image.sop_instance_uid} repeat a label: {image.top_findings}")
    reported = {finding_key(f.label) for f in image.findings if f.group != "detection"}
    missing = [label for label, key in zip(image.top_findings, keys, strict=False) if key not in reported]
    if missing:
        raise InvalidResultError(f"top findings {missing} of image {image.sop_instance_uid} are not among its findings")
    if image.triage is not None and image.triage not in TRIAGE_KEYS:
        raise InvalidResultError(
            f"triage {image.triage!r} of image {image.sop_instance_uid} is not one of {sorted(TRIAGE_KEYS)}"
        )
    return {key: rank for rank, key in enumerate(keys, start=1)}


def _algorithm_of(finding: Finding, algorithms: Sequence[AlgorithmInfo]) -> AlgorithmInfo:
    if finding.algorithm is None:
        return algorithms[-1]
    for algorithm in algorithms:
        if algorithm.name == finding.algorithm:
            return algorithm
    raise InvalidResultError(
        f"finding {finding.label!r} names algorithm {finding.algorithm!r}, which the result does not list"
    )


def _finding_group(
    finding: Finding,
    source: pydicom.Dataset,
    number: int,
    algorithm: AlgorithmInfo,
    tracking_uid: str,
    rank: int | None = None,
) -> Group:
    concept = finding_concept(finding.label)
    kind = {"finding": "", "class": " class", "detection": " box"}[finding.group]
    tracking = TrackingIdentifier(uid=tracking_uid, identifier=f"image {number}{kind} {finding.label}")
    if finding.group == "detection":
        if finding.region is None:
            raise InvalidResultError(f"detection {finding.label!r} has no box (region)")
        # The NUM named by the finding comes first: viewers label a region by its NUMs' names.
        measurements = [score(concept, finding.probability), score("confidence", finding.probability)]
    else:
        measurements = [probability(finding.probability)]
    if rank is not None:
        measurements.append(Measurement(name=code("top_finding_rank"), value=rank, unit=code("no_units")))
    evaluations = [QualitativeEvaluation(concept, code("present" if finding.present else "absent"))]
    if finding.region is None:
        return MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            algorithm_id=algorithm_id(algorithm),
            finding_type=concept,
            measurements=measurements,
            qualitative_evaluations=evaluations,
            source_images=[SourceImageForMeasurementGroup.from_source_image(source)],
        )
    return PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        algorithm_id=algorithm_id(algorithm),
        finding_type=concept,
        finding_sites=[FindingSite(code("chest"))],
        measurements=measurements,
        qualitative_evaluations=evaluations,
        referenced_region=_rectangle(finding, source),
    )


def _rectangle(finding: Finding, source: pydicom.Dataset) -> ImageRegion:
    r = finding.region
    if r is None:
        raise InvalidResultError(f"finding {finding.label!r} has no region")
    if not (0 <= r.x_min < r.x_max and 0 <= r.y_min < r.y_max):
        raise InvalidResultError(f"region of finding {finding.label!r} is empty or negative: {r}")
    columns, rows = source.get("Columns"), source.get("Rows")
    if columns is not None and rows is not None and (r.x_max > columns or r.y_max > rows):
        raise InvalidResultError(f"region of finding {finding.label!r} lies outside the {columns}x{rows} image: {r}")
    # SCOORD pixel coordinates (PS3.3 C.18.6.1.1): (column, row), a closed polyline.
    corners = np.array(
        [[r.x_min, r.y_min], [r.x_max, r.y_min], [r.x_max, r.y_max], [r.x_min, r.y_max], [r.x_min, r.y_min]],
        dtype=float,
    )
    return ImageRegion(
        graphic_type="POLYLINE", graphic_data=corners, source_image=SourceImageForRegion.from_source_image(source)
    )
