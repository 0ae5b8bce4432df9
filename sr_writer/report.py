"""The TID 1500 Measurement Report around the groups of a writer: what the SR writers share.

The chest radiograph report (:mod:`sr_writer.sr`) and the CT reports (:mod:`sr_writer.ct_sr`) build
their own measurement groups (TID 1501, 1410) and hand them to :func:`document`, which wraps them in
a Comprehensive 3D SR (PS3.3 A.35.13) in the source study, in a new series:

- the node itself as the report's device observer (TID 1002/1004; :func:`node_observer`): the report is
  the node's, though its findings come from several models;
- in every measurement group, after its tracking identifier, the device observer of the algorithm that
  made it (:func:`observer`, which the Key Object Selection writer uses too), beside its TID 4019
  Algorithm Identification: a reader knows which model said what;
- the procedure reported from the first source's Modality (radiograph, CT, or imaging procedure);
- an Image Library (TID 1600, :func:`image_library`) listing every source image, which viewers (OHIF)
  read to find the images the measurement groups refer to;
- when it supersedes earlier reports of ours, a TID 1500 row 12 container with a comment saying so,
  and the Predecessor Documents Sequence (:func:`check_predecessors` checks them first);
- Manufacturer's Model Name, Software Versions (the node and every algorithm) and the Coding Scheme
  Identification of the private schemes used.

And the content items every group uses: :func:`algorithm_id` (TID 4019), :func:`score` and
:func:`probability` (a 0..1 output as a NUM with UCUM "1", TID 300), :func:`comment` (a TEXT item),
:func:`whole_image_region` (the Image Region of a TID 1410 group about a whole image or slice).
All coded concepts come from :mod:`sr_writer.codes`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import highdicom as hd
import numpy as np
import pydicom
from highdicom.sr import (
    AlgorithmIdentification,
    ContainerContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    ImageContentItem,
    ImageRegion,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    RelationshipTypeValues,
    SourceImageForRegion,
    TextContentItem,
    UIDRefContentItem,
)

from core.findings import AlgorithmInfo, SeriesResult
from core.identity import MANUFACTURER
from sr_writer.codes import CONCEPTS, code, coding_scheme_items
from sr_writer.common import (
    SeriesParams,
    evidence,
    is_demo,
    lo,
    name_series,
    new_instance,
    node_version,
    software_version,
    with_demo,
)
from sr_writer.equipment import device_uid
from sr_writer.errors import InvalidResultError
from sr_writer.source_attributes import significant

__all__ = [
    "Group",
    "algorithm_id",
    "check_predecessors",
    "comment",
    "document",
    "image_library",
    "node_device_uid",
    "node_observer",
    "observer",
    "probability",
    "score",
    "whole_image_region",
]

#: Name of the node as device observer (Device Observer Name) of every report.
NODE_DEVICE_NAME = "ainode"
# Fixed namespace so that one node version always names the same Device Observer UID.
_NODE_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_OID, "ainode.node")

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

    The node is the report's observer device (:func:`node_observer`); each group gets the device observer
    of the algorithm its TID 4019 Algorithm Identification names (one of ``result.algorithms``). The
    first algorithm of the result is the model name; every algorithm is named in Software Versions and in
    the IHE AI Results contributing equipment. The Image Library lists every source. ``series_description``
    is the one to write (:meth:`sr_writer.common.SeriesParams.description`); ``notes`` are containers
    appended to the report's root after the groups.

    Raises
    ------
    sr_writer.errors.InvalidResultError
        When a group names no algorithm, or one that ``result.algorithms`` does not list.
    """
    primary = result.algorithms[0]
    for group in groups:
        _add_group_observer(group, result.algorithms)
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=node_observer()),
        procedure_reported=_procedure(sources[0]),
        imaging_measurements=list(groups),
        title=code("imaging_measurement_report"),
    )
    content = report[0].ContentSequence
    # TID 1500 row 5: the Image Library comes before the Imaging Measurements (row 6).
    at = next(i for i, item in enumerate(content) if item.ConceptNameCodeSequence[0].CodeValue == "126010")
    content.insert(at, image_library(sources))
    content.extend(notes)
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


def node_device_uid() -> str:
    """The Device Observer UID of the node: ``2.25.`` + a UUID5 of its version, the same for every report
    one installed version writes (PS3.5 B.2)."""
    return f"2.25.{uuid.uuid5(_NODE_NAMESPACE, node_version()).int}"


def node_observer() -> ObserverContext:
    """The node as the device observer of a report (TID 1002/1004): Device Observer Name "ainode",
    Manufacturer :data:`core.identity.MANUFACTURER`, Model Name "ainode VERSION"."""
    return ObserverContext(
        observer_type=code("device"),
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=node_device_uid(),
            name=NODE_DEVICE_NAME,
            manufacturer_name=MANUFACTURER,
            model_name=software_version(),
        ),
    )


def image_library(sources: Sequence[pydicom.Dataset]) -> ContainerContentItem:
    """The Image Library (TID 1600) of the sources: one Image Library Group per Modality and Frame of
    Reference, holding the Frame of Reference UID when there is one (TID 1602) and one IMAGE item per
    image (TID 1601), in the order of ``sources``.

    Built here rather than with highdicom's ``MeasurementReport(referenced_images=...)``, whose entry
    descriptors require Imager Pixel Spacing, which a computed radiograph need not carry. The entries
    hold no descriptors of their own: the images' headers say the rest, and a viewer needs only the
    references.
    """
    groups: dict[tuple[str, str | None], list[pydicom.Dataset]] = {}
    for ds in sources:
        frame = ds.get("FrameOfReferenceUID")
        groups.setdefault((str(ds.get("Modality", "")), str(frame) if frame else None), []).append(ds)
    library = ContainerContentItem(name=code("image_library"), relationship_type=RelationshipTypeValues.CONTAINS)
    library.ContentSequence = ContentSequence()
    for (_, frame), images in groups.items():
        group = ContainerContentItem(
            name=code("image_library_group"), relationship_type=RelationshipTypeValues.CONTAINS
        )
        group.ContentSequence = ContentSequence()
        if frame is not None:
            group.ContentSequence.append(
                UIDRefContentItem(
                    name=code("frame_of_reference_uid"),
                    value=frame,
                    relationship_type=RelationshipTypeValues.HAS_ACQ_CONTEXT,
                )
            )
        group.ContentSequence.extend(
            ImageContentItem(
                name=code("source"),
                referenced_sop_class_uid=str(ds.SOPClassUID),
                referenced_sop_instance_uid=str(ds.SOPInstanceUID),
                relationship_type=RelationshipTypeValues.CONTAINS,
            )
            for ds in images
        )
        library.ContentSequence.append(group)
    return library


def whole_image_region(source: pydicom.Dataset) -> ImageRegion:
    """The whole of ``source`` as the Image Region of a TID 1410 group: a closed POLYLINE along its edges
    in pixel coordinates (PS3.3 C.18.6.1.1: (0, 0) is the top left corner of the top left pixel, (Columns,
    Rows) the bottom right corner of the bottom right pixel), selected from the image.

    Raises
    ------
    sr_writer.errors.InvalidResultError
        When the header lacks Rows or Columns.
    """
    columns, rows = source.get("Columns"), source.get("Rows")
    if not columns or not rows:
        raise InvalidResultError(f"source {source.get('SOPInstanceUID')} has no Rows or Columns: its region is unknown")
    corners = np.array(
        [[0.0, 0.0], [columns, 0.0], [columns, rows], [0.0, rows], [0.0, 0.0]],
        dtype=float,
    )
    return ImageRegion(
        graphic_type="POLYLINE", graphic_data=corners, source_image=SourceImageForRegion.from_source_image(source)
    )


def algorithm_id(algorithm: AlgorithmInfo) -> AlgorithmIdentification:
    """Algorithm Identification (TID 4019) of a measurement group."""
    return AlgorithmIdentification(name=algorithm.display_name, version=algorithm.version)


def probability(value: float) -> Measurement:
    """A probability as a NUM (:func:`score` with the concept "probability")."""
    return score("probability", value)


def score(key: str | hd.sr.CodedConcept, value: float) -> Measurement:
    """A 0..1 model output as a NUM with UCUM "1" (TID 300), to 3 significant digits, named by the
    concept stored under ``key`` or by the concept ``key`` itself (e.g. a finding).

    Raises
    ------
    sr_writer.errors.InvalidResultError
        When ``value`` is outside 0..1 or not a number.
    """
    name = code(key) if isinstance(key, str) else key
    if not 0.0 <= value <= 1.0 or value != value:
        raise InvalidResultError(f"{key if isinstance(key, str) else key.meaning} {value!r} is outside 0..1")
    return Measurement(name=name, value=significant(float(value)), unit=code("no_units"))


def comment(text: str) -> TextContentItem:
    """A TEXT content item "Comment" (CONTAINS) for a group or a container."""
    return TextContentItem(name=code("comment"), value=text, relationship_type=RelationshipTypeValues.CONTAINS)


def _add_group_observer(group: Group, algorithms: Sequence[AlgorithmInfo]) -> None:
    """Put the device observer of the group's algorithm right after its tracking identifier and UID.

    Viewers take a group's first UIDREF for its Tracking Unique Identifier (OHIF does), so the observer's
    Device Observer UID must come after it.
    """
    items = group[0].ContentSequence
    texts = {
        item.ConceptNameCodeSequence[0].CodeValue: str(item.TextValue) for item in items if item.ValueType == "TEXT"
    }
    name, version = texts.get("111001"), texts.get("111003")
    matches = [a for a in algorithms if a.display_name == name and (version is None or a.version == version)]
    if not matches:
        raise InvalidResultError(
            f"measurement group names algorithm {name!r} {version!r}, which the result does not list"
        )
    after = 1 + max(
        i for i, item in enumerate(items) if item.ConceptNameCodeSequence[0].CodeValue in ("112039", "112040")
    )
    for offset, item in enumerate(observer(matches[0])):
        items.insert(after + offset, item)


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
    """Coding Scheme Identification Sequence (0008,0110) items for the private schemes of the concept table
    (PS3.3 C.12.1.1.5), as :data:`sr_writer.codes.PRIVATE_SCHEMES` declares them."""
    return coding_scheme_items({c.scheme for c in CONCEPTS.values()})
