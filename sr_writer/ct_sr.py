"""CT pipeline results as Comprehensive 3D SRs with a TID 1500 Measurement Report.

Two reports, built like the chest radiograph one (:mod:`sr_writer.sr`): the
node is the report's device observer and the algorithm each group's (TID
1002/1004), the Image Library (TID 1600) lists the series' slices, the
procedure reported is CT (CID 100), every measurement group (TID 1501) names
the algorithm (TID 4019) and the slices it speaks about, probabilities are
NUMs with UCUM "1" (TID 300), and a report that replaces an earlier one says
so and lists it in the Predecessor Documents Sequence (PS3.3 C.17.2).

Every measurement group can be placed on a slice by a viewer that draws
groups only through an SCOORD (OHIF v3, which merges groups by Tracking UID
and stops on one it cannot place): groups about the exam share one Tracking
UID with a planar ROI group (TID 1410) on a slice, and so do a level run and
its region.

``build_pe_report`` (the pulmonary embolism model, RSNA-PE labels):

- the exam's region group (TID 1410): a POINT at the centre of the key
  slice (or the slice most probably with PE), an anchor for a viewer, not a
  location; the probability of PE as a NUM named "Pulmonary embolism", and
  the exam's answer as Finding and evaluation;
- an exam group: "Pulmonary embolism" = Present / Absent / Undetermined
  (CID 240) with the probability of PE, and the consistency rules'
  corrections as TEXT comments;
- one group per exam label: side (finding site "Pulmonary artery" with
  laterality Right/Left, CID 244, or topographical modifier Central, CID 2),
  chronic and acute-and-chronic (pulmonary embolism post-coordinated with
  "Composite Feature Modifier" = Chronic, or Acute onset and Chronic, CID
  6130), RV/LV >= 1 and < 1, indeterminate study, each present/absent with
  its probability; and acute PE, derived from them; all of these share the
  region group's Tracking UID;
- the positive slices as image-referenced evidence: one group whose source
  images are those slices, with one probability per slice that references
  its slice (INFERRED FROM an IMAGE item);
- and per positive slice a planar ROI group (TID 1410) whose Image Region
  is the whole slice (a closed SCOORD POLYLINE, selected from it): Finding
  "Pulmonary embolism" = Present, finding site "Pulmonary artery", and the
  slice's probability as a NUM named by the finding, which a viewer that
  reads groups through their SCOORD (OHIF v3) shows on the slice.

``build_lumbar_report`` (the vertebral level model):

- one group per level run whose source images are every slice of the run:
  Finding = the vertebra (or thoracic spine, sacrum), "Vertebral level" =
  the same concept, finding site = the vertebra;
- the L3 slice group: the slice, Finding and "Vertebral level" = L3
  vertebra, the three tissue areas as "Area" NUMs in UCUM cm2 with the
  tissue as finding site, the skeletal muscle index in cm2/m2 when the
  height is known, and the HU ranges in words;
- for each run, a planar ROI group (TID 1410) with the same tracking
  identifier and UID (the same tracked object) whose Image Region is the
  whole of the run's middle slice, with its Finding and finding site: what a
  viewer that reads groups through their SCOORD (OHIF v3) shows on the
  slice, merged with its partner by the Tracking UID. The L3 run's is on the
  L3 slice instead, and the L3 slice group shares that run's Tracking UID:
  one tracked object, the L3 vertebra, shown with the areas;
- or, when the level map is anatomically impossible (``lumbar.not_determined``,
  :mod:`models.plausibility`), one group only: "Vertebral level" = Indeterminate
  (SCT), with "Vertebral level could not be determined" and each reason as TEXT;
  no level runs, no L3, no areas.

A PE exam that cannot be read (``pe.indeterminate_reasons``: the series does not
cover the lungs, or flags slices outside them) is Indeterminate with the reasons
as TEXT in the exam group.

All coded concepts come from :mod:`sr_writer.codes`.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
import pydicom
from highdicom.sr import (
    FindingSite,
    Measurement,
    MeasurementsAndQualitativeEvaluations,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    SourceImageForMeasurement,
    SourceImageForMeasurementGroup,
    TrackingIdentifier,
)

from core.findings import LUMBAR_LEVELS, PE_EXAM_LABELS, AlgorithmInfo, PeExamResult, SeriesResult
from sr_writer.codes import code
from sr_writer.common import SeriesParams, checked_sources
from sr_writer.errors import InvalidResultError
from sr_writer.report import Group, algorithm_id, check_predecessors, comment, document, score, whole_image_region
from sr_writer.source_attributes import significant
from sr_writer.uids import new_uid

__all__ = [
    "HU_RANGES",
    "LEVEL_KEYS",
    "LUMBAR_SERIES_DESCRIPTION",
    "PE_SERIES_DESCRIPTION",
    "build_lumbar_report",
    "build_pe_report",
]

#: Series Description (0008,103E) of the PE report unless :class:`~sr_writer.common.SeriesParams` gives one.
PE_SERIES_DESCRIPTION = "AI pulmonary embolism report"
#: Series Description (0008,103E) of the lumbar report unless :class:`~sr_writer.common.SeriesParams` gives one.
LUMBAR_SERIES_DESCRIPTION = "AI vertebral levels and body composition"

#: The vertebral level model's classes mapped to concept keys of :mod:`sr_writer.codes`.
LEVEL_KEYS: dict[str, str] = {
    "T": "thoracic_spine",
    "L1": "l1_vertebra",
    "L2": "l2_vertebra",
    "L3": "l3_vertebra",
    "L4": "l4_vertebra",
    "L5": "l5_vertebra",
    "S": "sacrum",
}
assert set(LEVEL_KEYS) == set(LUMBAR_LEVELS)

#: HU ranges of issue 4 for the body composition (stated in the report, not applied here).
HU_RANGES: dict[str, tuple[int, int]] = {"muscle": (-29, 150), "fat": (-190, -30)}

_Group = MeasurementsAndQualitativeEvaluations
_Region = PlanarROIMeasurementsAndQualitativeEvaluations

# Exam labels other than the side: (concept key of the finding, tracking identifier).
_EXAM_LABEL_GROUPS: dict[str, tuple[str, str]] = {
    "rv_lv_ratio_gte_1": ("rv_lv_ratio_gte_1", "exam RV/LV >= 1"),
    "rv_lv_ratio_lt_1": ("rv_lv_ratio_lt_1", "exam RV/LV < 1"),
    "indeterminate": ("pe_indeterminate", "exam indeterminate"),
}
# Chronic and acute-and-chronic PE: pulmonary embolism with its clinical course (CID 6130) as modifiers.
_COURSES: dict[str, tuple[tuple[str, ...], str]] = {
    "chronic_pe": (("chronic",), "exam chronic PE"),
    "acute_and_chronic_pe": (("acute_onset", "chronic"), "exam acute and chronic PE"),
}
_SIDES: dict[str, tuple[FindingSite, str]] = {
    "rightsided_pe": (FindingSite(code("pulmonary_artery"), laterality=code("right")), "exam right-sided PE"),
    "leftsided_pe": (FindingSite(code("pulmonary_artery"), laterality=code("left")), "exam left-sided PE"),
    "central_pe": (FindingSite(code("pulmonary_artery"), topographical_modifier=code("central")), "exam central PE"),
}


def build_pe_report(
    result: SeriesResult,
    sources: Sequence[pydicom.Dataset],
    params: SeriesParams,
    *,
    predecessors: Sequence[pydicom.Dataset] = (),
) -> pydicom.Dataset:
    """Encode the ``ct_pe`` result of a CTPA series as a TID 1500 Comprehensive 3D SR.

    Parameters
    ----------
    result : core.findings.SeriesResult
        With ``pe`` set; ``result.algorithms[-1]`` is the PE model.
    sources : sequence of pydicom.Dataset
        Headers of the series' slices (pixels not needed); every slice of
        ``result.pe.slice_uids`` must be among them. They form the SR's
        evidence (Current Requested Procedure Evidence Sequence, PS3.3 C.17.2).
    params : sr_writer.common.SeriesParams
        UID root (series, instance and tracking UIDs), Series and Instance
        Number, Institution Name, and the Series Description
        (:data:`PE_SERIES_DESCRIPTION` unless given; "(DEMO)" is appended for
        demo models).
    predecessors : sequence of pydicom.Dataset
        Earlier reports of ours on this series that this one replaces.

    Returns
    -------
    pydicom.Dataset
        A :class:`highdicom.sr.Comprehensive3DSR`, COMPLETE and UNVERIFIED.

    Raises
    ------
    sr_writer.errors.InvalidResultError
        (a ValueError) When ``result.pe`` is missing or inconsistent (lengths, labels,
        slice indices, probabilities outside 0..1), a slice is not among the
        sources, or the sources are of another study.
    """
    pe = result.pe
    if pe is None:
        raise InvalidResultError("result has no PE exam result (result.pe); build_pe_report reports the ct_pe pipeline")
    _check_pe(pe)
    uid_root = params.uid_root
    algorithm, by_uid = _prepare(result, sources, predecessors)
    slices = [_source(by_uid, uid) for uid in pe.slice_uids]

    # Every group about the exam as a whole shares its Tracking UID: one tracked object, the exam, which
    # viewers (OHIF) show as one measurement on the exam's region group, drawn first.
    exam_uid = new_uid(uid_root)
    groups: list[Group] = [_exam_region(pe, slices, algorithm, exam_uid), _pe_exam_group(pe, algorithm, exam_uid)]
    for label, (site, tracking) in _SIDES.items():
        groups.append(_label_group(code("pulmonary_embolism"), tracking, pe, label, algorithm, exam_uid, [site]))
    for label, (courses, tracking) in _COURSES.items():
        groups.append(_course_group(courses, tracking, pe, label, algorithm, exam_uid))
    for label, (key, tracking) in _EXAM_LABEL_GROUPS.items():
        groups.append(_label_group(code(key), tracking, pe, label, algorithm, exam_uid))
    groups.append(_acute_group(pe, algorithm, exam_uid))
    if pe.positive_slices:
        groups.append(_positive_slices_group(pe, slices, algorithm, exam_uid))
        groups.extend(
            _positive_slice_region(pe, index, slices[index], algorithm, uid_root)
            for index in sorted(set(pe.positive_slices))
        )
    return document(result, sources, groups, predecessors, params, params.description(PE_SERIES_DESCRIPTION))


def build_lumbar_report(
    result: SeriesResult,
    sources: Sequence[pydicom.Dataset],
    params: SeriesParams,
    *,
    predecessors: Sequence[pydicom.Dataset] = (),
) -> pydicom.Dataset:
    """Encode the ``ct_lumbar`` result of an abdominal CT series as a TID 1500 Comprehensive 3D SR.

    Parameters
    ----------
    result : core.findings.SeriesResult
        With ``lumbar`` set; ``result.algorithms[-1]`` is the level model.
    sources : sequence of pydicom.Dataset
        Headers of the series' slices; every slice of
        ``result.lumbar.slice_uids`` must be among them.
    params : sr_writer.common.SeriesParams
        As for :func:`build_pe_report`; the Series Description is
        :data:`LUMBAR_SERIES_DESCRIPTION` unless given.
    predecessors : sequence of pydicom.Dataset
        As for :func:`build_pe_report`.

    Returns
    -------
    pydicom.Dataset
        A :class:`highdicom.sr.Comprehensive3DSR`, COMPLETE and UNVERIFIED.

    Raises
    ------
    sr_writer.errors.InvalidResultError
        (a ValueError) When ``result.lumbar`` is missing, its runs do not match its levels,
        a level is unknown, an area is negative, or a slice is not among the
        sources; or when a result whose levels were not determined carries an
        L3 slice or a body composition.
    """
    lumbar = result.lumbar
    if lumbar is None:
        raise InvalidResultError("result has no lumbar result (result.lumbar); build_lumbar_report reports ct_lumbar")
    if len(lumbar.levels) != len(lumbar.slice_uids):
        raise InvalidResultError(f"lumbar result has {len(lumbar.levels)} levels for {len(lumbar.slice_uids)} slices")
    uid_root = params.uid_root
    algorithm, by_uid = _prepare(result, sources, predecessors)
    slices = [_source(by_uid, uid) for uid in lumbar.slice_uids]
    if not lumbar.runs:
        raise InvalidResultError("lumbar result has no level runs; there is nothing to report")
    if lumbar.not_determined:
        if lumbar.l3_index is not None or lumbar.composition is not None:
            raise InvalidResultError(
                "a lumbar result whose levels were not determined cannot have an L3 slice or areas"
            )
        return document(
            result,
            sources,
            _not_determined_groups(lumbar.not_determined, slices, algorithm, new_uid(uid_root)),
            predecessors,
            params,
            params.description(LUMBAR_SERIES_DESCRIPTION),
        )

    groups: list[Group] = []
    l3_uid: str | None = None
    for number, run in enumerate(lumbar.runs, start=1):
        if run.level not in LEVEL_KEYS:
            raise InvalidResultError(f"level {run.level!r} of run {number} is not one of {list(LEVEL_KEYS)}")
        if not 0 <= run.first <= run.last < len(slices):
            raise InvalidResultError(
                f"run {number} ({run.level}) covers slices {run.first}..{run.last} of {len(slices)}"
            )
        if any(lumbar.levels[i] != run.level for i in range(run.first, run.last + 1)):
            raise InvalidResultError(
                f"run {number} says {run.level} for slices {run.first}..{run.last}, the levels disagree"
            )
        run_slices = slices[run.first : run.last + 1]
        level = code(LEVEL_KEYS[run.level])
        tracking = (new_uid(uid_root), f"level {run.level} run {number}")
        group = MeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(uid=tracking[0], identifier=tracking[1]),
            algorithm_id=algorithm_id(algorithm),
            finding_type=level,
            finding_sites=[FindingSite(level)],
            qualitative_evaluations=[QualitativeEvaluation(code("vertebral_level"), level)],
            source_images=[SourceImageForMeasurementGroup.from_source_image(s) for s in run_slices],
        )
        group[0].ContentSequence.append(
            comment(
                f"Level {run.level}: slices {run.first + 1} to {run.last + 1} of {len(slices)} along the patient axis "
                f"(instance numbers {_instance(run_slices[0])} to {_instance(run_slices[-1])})"
            )
        )
        groups.append(group)
        if lumbar.l3_index is not None and run.first <= lumbar.l3_index <= run.last:
            # The L3 vertebra: its slice's groups below share the run's Tracking UID and show it.
            l3_uid = tracking[0]
        else:
            groups.append(_slice_region(tracking, level, slices[(run.first + run.last) // 2], algorithm))
    if lumbar.l3_index is not None:
        if not 0 <= lumbar.l3_index < len(slices) or lumbar.levels[lumbar.l3_index] != "L3":
            raise InvalidResultError(f"L3 slice index {lumbar.l3_index} is not a slice decoded as L3")
        tracking = (l3_uid or new_uid(uid_root), "L3 slice body composition")
        l3 = slices[lumbar.l3_index]
        groups.append(_l3_group(result, l3, by_uid, algorithm, tracking))
        groups.append(_slice_region(tracking, code("l3_vertebra"), l3, algorithm))
    notes = [_no_l3_note()] if lumbar.l3_index is None else []
    return document(result, sources, groups, predecessors, params, params.description(LUMBAR_SERIES_DESCRIPTION), notes)


# --- PE ---------------------------------------------------------------------------------


def _check_pe(pe: PeExamResult) -> None:
    n = len(pe.slice_uids)
    if len(pe.slice_probabilities) != n:
        raise InvalidResultError(f"PE result has {len(pe.slice_probabilities)} slice probabilities for {n} slices")
    missing = [label for label in PE_EXAM_LABELS if label not in pe.exam_labels or label not in pe.exam_probabilities]
    if missing:
        raise InvalidResultError(f"PE result lacks exam labels or probabilities for {missing}")
    for index in (*pe.positive_slices, *pe.key_slices):
        if not 0 <= index < n:
            raise InvalidResultError(f"PE slice index {index} is outside the {n} slices of the result")
    if pe.indeterminate_reasons and (not pe.exam_labels["indeterminate"] or pe.positive_slices or pe.key_slices):
        raise InvalidResultError("a PE exam that cannot be read must be indeterminate, without positive or key slices")


def _pe_present(pe: PeExamResult) -> bool:
    # RSNA: an indeterminate exam is not negative either, and it is no finding of PE.
    return not pe.exam_labels["negative_exam_for_pe"] and not pe.exam_labels["indeterminate"]


def _pe_value(pe: PeExamResult) -> hd.sr.CodedConcept:
    """The exam's answer: Present, Absent, or (CID 240) Undetermined."""
    if pe.exam_labels["indeterminate"]:
        return code("indeterminate")
    return code("present" if _pe_present(pe) else "absent")


def _pe_exam_group(pe: PeExamResult, algorithm: AlgorithmInfo, tracking_uid: str) -> _Group:
    """The exam's answer: PE present, absent, or indeterminate, with P(PE) and the rules' corrections."""
    value = _pe_value(pe)
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=tracking_uid, identifier="exam PE"),
        algorithm_id=algorithm_id(algorithm),
        finding_type=code("pulmonary_embolism"),
        measurements=[score("probability", 1.0 - pe.exam_probabilities["negative_exam_for_pe"])],
        qualitative_evaluations=[QualitativeEvaluation(code("pulmonary_embolism"), value)],
    )
    texts = [_summary(pe)] + [f"Not assessable: {reason}" for reason in pe.indeterminate_reasons]
    texts += [f"Label consistency rule applied: {c}" for c in pe.corrections]
    group[0].ContentSequence.extend(comment(text) for text in texts)
    return group


def _summary(pe: PeExamResult) -> str:
    if pe.indeterminate_reasons:
        return "Study indeterminate for pulmonary embolism: the series cannot be read for it"
    if pe.exam_labels["indeterminate"]:
        return "Study indeterminate for pulmonary embolism"
    if not _pe_present(pe):
        return "No pulmonary embolism"
    sides = [
        side
        for label, side in (("rightsided_pe", "right"), ("leftsided_pe", "left"), ("central_pe", "central"))
        if pe.exam_labels[label]
    ]
    kind = (
        "chronic"
        if pe.exam_labels["chronic_pe"]
        else ("acute and chronic" if pe.exam_labels["acute_and_chronic_pe"] else "acute")
    )
    ratio = "RV/LV >= 1" if pe.exam_labels["rv_lv_ratio_gte_1"] else "RV/LV < 1"
    return (
        f"Pulmonary embolism present ({kind}; {', '.join(sides) or 'location not given'}; {ratio}); "
        f"{len(pe.positive_slices)} positive slice(s)"
    )


def _label_group(
    concept: hd.sr.CodedConcept,
    tracking: str,
    pe: PeExamResult,
    label: str,
    algorithm: AlgorithmInfo,
    tracking_uid: str,
    sites: list[FindingSite] | None = None,
) -> _Group:
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=tracking_uid, identifier=tracking),
        algorithm_id=algorithm_id(algorithm),
        finding_type=concept,
        finding_sites=sites,
        measurements=[score("probability", pe.exam_probabilities[label])],
        qualitative_evaluations=[
            QualitativeEvaluation(concept, code("present" if pe.exam_labels[label] else "absent"))
        ],
    )


def _course_group(
    courses: Sequence[str], tracking: str, pe: PeExamResult, label: str, algorithm: AlgorithmInfo, tracking_uid: str
) -> _Group:
    """An RSNA course label: Finding "Pulmonary embolism" and its evaluation, each post-coordinated with
    "Composite Feature Modifier" = the label's courses from CID 6130 (HAS CONCEPT MOD, PS3.16 section 6.2.4)."""
    pe_code = code("pulmonary_embolism").value
    group = _label_group(code("pulmonary_embolism"), tracking, pe, label, algorithm, tracking_uid)
    for item in group[0].ContentSequence:
        # The Finding (its value) and the evaluation (its name) are the chronic or acute-and-chronic PE.
        if item.ValueType == "CODE" and pe_code in (
            item.ConceptCodeSequence[0].CodeValue,
            item.ConceptNameCodeSequence[0].CodeValue,
        ):
            item.ContentSequence = hd.sr.ContentSequence(
                [
                    hd.sr.CodeContentItem(
                        name=code("composite_feature_modifier"),
                        value=code(course),
                        relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD,
                    )
                    for course in courses
                ]
            )
    return group


def _acute_group(pe: PeExamResult, algorithm: AlgorithmInfo, tracking_uid: str) -> _Group:
    """RSNA has no "acute" label: a PE that is neither chronic nor acute-and-chronic is acute."""
    acute = _pe_present(pe) and not pe.exam_labels["chronic_pe"] and not pe.exam_labels["acute_and_chronic_pe"]
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=tracking_uid, identifier="exam acute PE"),
        algorithm_id=algorithm_id(algorithm),
        finding_type=code("acute_pulmonary_embolism"),
        qualitative_evaluations=[
            QualitativeEvaluation(code("acute_pulmonary_embolism"), code("present" if acute else "absent"))
        ],
    )
    group[0].ContentSequence.append(
        comment("Derived: pulmonary embolism present, neither chronic nor acute and chronic")
    )
    return group


def _positive_slices_group(
    pe: PeExamResult, slices: list[pydicom.Dataset], algorithm: AlgorithmInfo, tracking_uid: str
) -> _Group:
    """The slices with PE, each with its pe_present_on_image probability referencing it."""
    positive = sorted(set(pe.positive_slices))
    measurements = []
    for index in positive:
        p = pe.slice_probabilities[index]
        if not 0.0 <= p <= 1.0:
            raise InvalidResultError(f"probability {p!r} of slice {index} is outside 0..1")
        measurements.append(
            Measurement(
                name=code("probability"),
                value=significant(float(p)),
                unit=code("no_units"),
                referenced_images=[SourceImageForMeasurement.from_source_image(slices[index])],
            )
        )
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=tracking_uid, identifier="slices with PE"),
        algorithm_id=algorithm_id(algorithm),
        finding_type=code("pulmonary_embolism"),
        measurements=measurements,
        qualitative_evaluations=[QualitativeEvaluation(code("pulmonary_embolism"), code("present"))],
        source_images=[SourceImageForMeasurementGroup.from_source_image(slices[i]) for i in positive],
    )
    if pe.key_slices:
        numbers = ", ".join(str(_instance(slices[i])) for i in sorted(set(pe.key_slices)))
        group[0].ContentSequence.append(comment(f"Key slices (instance numbers): {numbers}"))
    return group


def _exam_region(
    pe: PeExamResult, slices: list[pydicom.Dataset], algorithm: AlgorithmInfo, tracking_uid: str
) -> _Region:
    """The exam's answer as a TID 1410 group: a POINT at the centre of its key slice (or, without one, the
    slice most probably with PE), an anchor for a viewer rather than a location; the probability of PE as a
    NUM named by the finding, the answer as Finding and evaluation, the pulmonary artery as finding site."""
    concept = code("pulmonary_embolism")
    if pe.key_slices:
        index = min(pe.key_slices)
        where = "its key slice"
    else:
        index = max(range(len(slices)), key=lambda i: pe.slice_probabilities[i])
        where = "the slice most probably with pulmonary embolism"
    source = slices[index]
    columns, rows = source.get("Columns"), source.get("Rows")
    if not columns or not rows:
        raise InvalidResultError(f"slice {source.SOPInstanceUID} has no Rows or Columns")
    group = _Region(
        tracking_identifier=TrackingIdentifier(uid=tracking_uid, identifier="exam"),
        algorithm_id=algorithm_id(algorithm),
        finding_type=concept,
        finding_sites=[FindingSite(code("pulmonary_artery"))],
        measurements=[score(concept, 1.0 - pe.exam_probabilities["negative_exam_for_pe"])],
        qualitative_evaluations=[QualitativeEvaluation(concept, _pe_value(pe))],
        referenced_region=hd.sr.ImageRegion(
            graphic_type="POINT",
            graphic_data=np.array([[columns / 2.0, rows / 2.0]]),
            source_image=hd.sr.SourceImageForRegion.from_source_image(source),
        ),
    )
    group[0].ContentSequence.append(
        comment(
            f"The exam's answer, shown on {where} (instance {_instance(source)}); the point is not a location. "
            "The measurement named by the finding is the probability (0 to 1) of pulmonary embolism in the exam"
        )
    )
    return group


def _positive_slice_region(
    pe: PeExamResult, index: int, source: pydicom.Dataset, algorithm: AlgorithmInfo, uid_root: str
) -> _Region:
    """A slice with PE as a TID 1410 group on the whole slice, its probability a NUM named by the finding."""
    concept = code("pulmonary_embolism")
    group = _Region(
        tracking_identifier=TrackingIdentifier(
            uid=new_uid(uid_root), identifier=f"PE on slice {index + 1} (instance {_instance(source)})"
        ),
        algorithm_id=algorithm_id(algorithm),
        finding_type=concept,
        finding_sites=[FindingSite(code("pulmonary_artery"))],
        measurements=[score(concept, pe.slice_probabilities[index])],
        qualitative_evaluations=[QualitativeEvaluation(concept, code("present"))],
        referenced_region=whole_image_region(source),
    )
    group[0].ContentSequence.append(
        comment(f"The measurement named by the finding is the probability (0 to 1) of {concept.meaning} on this slice")
    )
    return group


# --- Lumbar -----------------------------------------------------------------------------


def _slice_region(
    tracking: tuple[str, str], level: hd.sr.CodedConcept, source: pydicom.Dataset, algorithm: AlgorithmInfo
) -> _Region:
    """The TID 1410 partner of a level group: the same tracking identifier and UID, the whole slice as its
    Image Region, the vertebra as Finding and finding site."""
    return _Region(
        tracking_identifier=TrackingIdentifier(uid=tracking[0], identifier=tracking[1]),
        algorithm_id=algorithm_id(algorithm),
        finding_type=level,
        finding_sites=[FindingSite(level)],
        referenced_region=whole_image_region(source),
    )


def _l3_group(
    result: SeriesResult,
    l3: pydicom.Dataset,
    by_uid: dict[str, pydicom.Dataset],
    algorithm: AlgorithmInfo,
    tracking: tuple[str, str],
) -> _Group:
    assert result.lumbar is not None
    composition = result.lumbar.composition
    measurements: list[Measurement] = []
    texts = [f"L3 slice: the centre of the L3 run (instance number {_instance(l3)})"]
    if composition is not None:
        measured = _source(by_uid, composition.sop_instance_uid)
        reference = [SourceImageForMeasurement.from_source_image(measured)]
        sites = {
            "muscle": FindingSite(code("skeletal_muscle")),
            "subcutaneous_fat": FindingSite(code("subcutaneous_tissue")),
            "visceral_fat": FindingSite(code("fat"), topographical_modifier=code("internal")),
        }
        values = {
            "muscle": composition.muscle_cm2,
            "subcutaneous_fat": composition.subcutaneous_fat_cm2,
            "visceral_fat": composition.visceral_fat_cm2,
        }
        for tissue, area in values.items():
            if not area >= 0.0:
                raise InvalidResultError(f"{tissue} area {area!r} cm2 is negative or not a number")
            measurements.append(
                Measurement(
                    name=code("area"),
                    value=float(area),
                    unit=code("square_centimeter"),
                    finding_sites=[sites[tissue]],
                    referenced_images=reference,
                )
            )
        if composition.skeletal_muscle_index is not None:
            measurements.append(
                Measurement(
                    name=code("skeletal_muscle_index"),
                    value=float(composition.skeletal_muscle_index),
                    unit=code("square_centimeter_per_square_meter"),
                    finding_sites=[sites["muscle"]],
                    referenced_images=reference,
                )
            )
        muscle, fat = HU_RANGES["muscle"], HU_RANGES["fat"]
        texts.append(
            f"Areas from PixelSpacing on that slice: skeletal muscle {muscle[0]} to {muscle[1]} HU; "
            f"subcutaneous and visceral fat {fat[0]} to {fat[1]} HU (visceral = fat inside the abdominal wall)"
        )
        if composition.skeletal_muscle_index is not None and composition.patient_size_m is not None:
            texts.append(
                f"Skeletal muscle index = muscle area / height squared, height {composition.patient_size_m:.2f} m "
                "from PatientSize"
            )
        elif composition.skeletal_muscle_index is None:
            texts.append("No skeletal muscle index: PatientSize (0010,1020) is not in the images")
    else:
        texts.append("Body composition was not measured on this slice")
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=tracking[0], identifier=tracking[1]),
        algorithm_id=algorithm_id(algorithm),
        finding_type=code("l3_vertebra"),
        finding_sites=[FindingSite(code("l3_vertebra"))],
        measurements=measurements or None,
        qualitative_evaluations=[QualitativeEvaluation(code("vertebral_level"), code("l3_vertebra"))],
        source_images=[SourceImageForMeasurementGroup.from_source_image(l3)],
    )
    group[0].ContentSequence.extend(comment(text) for text in texts)
    return group


def _not_determined_groups(
    reasons: Sequence[str], slices: list[pydicom.Dataset], algorithm: AlgorithmInfo, tracking_uid: str
) -> list[Group]:
    """The finding of a level map that is anatomically impossible: the level is Indeterminate, and why; and
    its TID 1410 partner (the same tracking identifier and UID) on the series' middle slice, which viewers
    that draw measurements only through an SCOORD (OHIF) can show."""
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=tracking_uid, identifier="vertebral level not determined"),
        algorithm_id=algorithm_id(algorithm),
        finding_type=code("vertebral_level"),
        qualitative_evaluations=[QualitativeEvaluation(code("vertebral_level"), code("indeterminate"))],
    )
    texts = [
        "Vertebral level could not be determined: the level map found by the algorithm is anatomically "
        "impossible, so no level, L3 slice or body composition is reported"
    ]
    texts += [f"Reason: {reason}" for reason in reasons]
    group[0].ContentSequence.extend(comment(text) for text in texts)
    partner = _Region(
        tracking_identifier=TrackingIdentifier(uid=tracking_uid, identifier="vertebral level not determined"),
        algorithm_id=algorithm_id(algorithm),
        finding_type=code("vertebral_level"),
        qualitative_evaluations=[QualitativeEvaluation(code("vertebral_level"), code("indeterminate"))],
        referenced_region=whole_image_region(slices[len(slices) // 2]),
    )
    return [partner, group]


def _no_l3_note() -> hd.sr.ContainerContentItem:
    container = hd.sr.ContainerContentItem(
        name=code("qualitative_evaluations"), relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence(
        [comment("No L3 vertebra was found in this series; body composition was not measured.")]
    )
    return container


# --- Shared -----------------------------------------------------------------------------


def _prepare(
    result: SeriesResult, sources: Sequence[pydicom.Dataset], predecessors: Sequence[pydicom.Dataset]
) -> tuple[AlgorithmInfo, dict[str, pydicom.Dataset]]:
    by_uid = checked_sources(result, sources)
    check_predecessors(result, predecessors)
    return result.algorithms[-1], by_uid


def _source(by_uid: dict[str, pydicom.Dataset], uid: str) -> pydicom.Dataset:
    source = by_uid.get(uid)
    if source is None:
        raise InvalidResultError(f"slice {uid} of the result is not among the sources")
    return source


def _instance(ds: pydicom.Dataset) -> str:
    return str(ds.get("InstanceNumber", "?"))
