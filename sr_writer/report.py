"""The TID 1500 Measurement Report around the groups of a writer: what the SR writers share.

The chest radiograph report (:mod:`sr_writer.sr`) and the CT reports (:mod:`sr_writer.ct_sr`) build
their own measurement groups (TID 1501, 1410) and hand them to :func:`document`, which wraps them in
a Comprehensive 3D SR (PS3.3 A.35.13) in the source study, in a new series:

- the first algorithm of the result as device observer (TID 1002/1004; :func:`observer`, which the
  Key Object Selection writer uses too);
- the procedure reported from the first source's Modality (radiograph, CT, or imaging procedure);
- when it supersedes earlier reports of ours, a TID 1500 row 12 container with a comment saying so,
  and the Predecessor Documents Sequence (:func:`check_predecessors` checks them first);
- Manufacturer's Model Name, Software Versions (the node and every algorithm) and the Coding Scheme
  Identification of the private schemes used.

And the content items every group uses: :func:`algorithm_id` (TID 4019), :func:`score` and
:func:`probability` (a 0..1 output as a NUM with UCUM "1", TID 300), :func:`comment` (a TEXT item).
All coded concepts come from :mod:`sr_writer.codes`.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import pydicom
from highdicom.sr import (
    AlgorithmIdentification,
    ContainerContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    RelationshipTypeValues,
    TextContentItem,
)

from core.findings import AlgorithmInfo, SeriesResult
from sr_writer.codes import CONCEPTS, code
from sr_writer.common import SeriesParams, evidence, is_demo, lo, name_series, new_instance, software_version, with_demo
from sr_writer.equipment import device_uid
from sr_writer.errors import InvalidResultError
from sr_writer.source_attributes import significant

__all__ = [
    "Group",
    "algorithm_id",
    "check_predecessors",
    "comment",
    "document",
    "observer",
    "probability",
    "score",
]

#: A measurement group of a TID 1500 report: with source images (TID 1501) or an image region (TID 1410).
Group = MeasurementsAndQualitativeEvaluations | PlanarROIMeasurementsAndQualitativeEvaluations


def document(
    result: SeriesResult,
    sources: Sequence[pydicom.Dataset],
    groups: Sequence[Group],
    predecessors: Sequence[pydicom.Dataset],
    params: SeriesParams,
    series_description: str,
    notes: Sequence[ContainerContentItem] = (),
) -> pydicom.Dataset:
    """The Comprehensive 3D SR (TID 1500) around ``groups``: what every SR writer of the node returns.

    The first algorithm of the result is the observer device and the model name; every algorithm is
    named in Software Versions and in the IHE AI Results contributing equipment. ``series_description``
    is the one to write (:meth:`sr_writer.common.SeriesParams.description`); ``notes`` are containers
    appended to the report's root after the groups.
    """
    primary = result.algorithms[0]
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=observer(primary)),
        procedure_reported=_procedure(sources[0]),
        imaging_measurements=list(groups),
        title=code("imaging_measurement_report"),
    )
    report[0].ContentSequence.extend(notes)
    if predecessors:
        report[0].ContentSequence.append(_supersession_note(predecessors))
    copied = evidence(sources)
    sr = hd.sr.Comprehensive3DSR(
        evidence=copied,
        content=report,
        **new_instance(params),
        is_complete=True,
        is_final=False,
        is_verified=False,
        institution_name=params.institution_name,
        previous_versions=list(predecessors) or None,
        manufacturer_model_name=lo(
            with_demo(primary.display_name, is_demo(result.algorithms)), "algorithm display name"
        ),
        coding_schemes=_private_schemes(),
    )
    # Set here: highdicom passes a tuple through, which pydicom warns about for a multi-valued LO.
    versions = [software_version()] + [
        lo(f"{a.display_name} {a.version}", "algorithm version") for a in result.algorithms
    ]
    sr.SoftwareVersions = versions  # type: ignore[assignment]  # pydicom takes a list for a multi-valued LO
    name_series(sr, result.algorithms, series_description, copied)
    return sr


def check_predecessors(result: SeriesResult, predecessors: Sequence[pydicom.Dataset]) -> None:
    """Every report ``result.supersedes`` is among ``predecessors``, and each has the UIDs to name it.

    Raises
    ------
    sr_writer.errors.InvalidResultError
        When a predecessor lacks a UID or a superseded report is not among them.
    """
    for ds in predecessors:
        for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            if keyword not in ds:
                raise InvalidResultError(f"predecessor dataset lacks {keyword}; pass the header of the earlier SR")
    known = {str(ds.SOPInstanceUID) for ds in predecessors}
    missing = [uid for uid in result.supersedes if uid not in known]
    if missing:
        raise InvalidResultError(
            f"result supersedes {', '.join(missing)} but no predecessor dataset was given for it; "
            "pass the earlier SRs as predecessors so the Predecessor Documents Sequence can name them"
        )


def observer(algorithm: AlgorithmInfo) -> ObserverContext:
    """The algorithm as device observer (TID 1002/1004), named by its Device UID
    (:func:`sr_writer.equipment.device_uid`)."""
    return ObserverContext(
        observer_type=code("device"),
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=device_uid(algorithm),
            name=lo(algorithm.display_name, "algorithm display name"),
            manufacturer_name=lo(algorithm.manufacturer, "algorithm manufacturer"),
            model_name=lo(f"{algorithm.display_name} {algorithm.version}", "algorithm model name"),
        ),
    )


def algorithm_id(algorithm: AlgorithmInfo) -> AlgorithmIdentification:
    """Algorithm Identification (TID 4019) of a measurement group."""
    return AlgorithmIdentification(name=algorithm.display_name, version=algorithm.version)


def probability(value: float) -> Measurement:
    """A probability as a NUM (:func:`score` with the concept "probability")."""
    return score("probability", value)


def score(key: str, value: float) -> Measurement:
    """A 0..1 model output as a NUM with UCUM "1" (TID 300), to 3 significant digits.

    Raises
    ------
    sr_writer.errors.InvalidResultError
        When ``value`` is outside 0..1 or not a number.
    """
    if not 0.0 <= value <= 1.0 or value != value:
        raise InvalidResultError(f"{key} {value!r} is outside 0..1")
    return Measurement(name=code(key), value=significant(float(value)), unit=code("no_units"))


def comment(text: str) -> TextContentItem:
    """A TEXT content item "Comment" (CONTAINS) for a group or a container."""
    return TextContentItem(name=code("comment"), value=text, relationship_type=RelationshipTypeValues.CONTAINS)


def _procedure(source: pydicom.Dataset) -> hd.sr.CodedConcept:
    modality = str(source.get("Modality", ""))
    if modality in ("CR", "DX", "RG"):
        return code("xr_procedure")
    if modality == "CT":
        return code("ct_procedure")
    return code("imaging_procedure")


def _supersession_note(predecessors: Sequence[pydicom.Dataset]) -> ContainerContentItem:
    uids = ", ".join(str(ds.SOPInstanceUID) for ds in predecessors)
    plural = "s" if len(predecessors) > 1 else ""
    container = ContainerContentItem(
        name=code("qualitative_evaluations"), relationship_type=RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = ContentSequence(
        [
            comment(
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
