"""What every writer of :mod:`sr_writer` shares: the series an object goes into, and what makes it ours.

- :class:`SeriesParams`: the UID root, Series and Instance Number, Series Description and Institution
  Name that every builder takes, checked once when it is made;
- :func:`new_instance`: the keyword arguments that put a highdicom object into a new series of ours
  (new UIDs under the root, the numbers, Manufacturer :data:`core.identity.MANUFACTURER`);
- :func:`checked_sources`: the checks every writer makes first on the result and its sources;
- :func:`with_empty_type2` and :func:`evidence`: the sources as highdicom may copy them
  (:mod:`sr_writer.source_attributes`);
- :func:`name_series`: the last touch of every object (Series Description, "(DEMO)", the IHE AI Results
  contributing equipment, the source attribute issues);
- :func:`lo`, :func:`is_demo`, :func:`with_demo`, :func:`software_version`: small rules every writer follows.
"""

from __future__ import annotations

import importlib.metadata
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TypedDict

import pydicom

from core.findings import AlgorithmInfo, SeriesResult
from core.identity import MANUFACTURER
from sr_writer.codes import declare_private_schemes
from sr_writer.equipment import add_contributing_equipment
from sr_writer.errors import InvalidResultError, ParameterError, ParameterTypeError
from sr_writer.source_attributes import clean_source, record_issues
from sr_writer.uids import new_uid, validate_uid_root

__all__ = [
    "MANUFACTURER",
    "NewInstance",
    "SeriesParams",
    "checked_sources",
    "evidence",
    "is_demo",
    "lo",
    "name_series",
    "new_instance",
    "node_version",
    "software_version",
    "with_demo",
    "with_empty_type2",
]

#: Largest Integer String (IS) value (PS3.5 6.2): the bound of Series and Instance Number.
_IS_MAX = 2**31 - 1
#: Distribution name of the node, whose version goes into Software Versions (0018,1020).
_DISTRIBUTION = "ainode"


@dataclass(frozen=True)
class SeriesParams:
    """Where a written object goes and who writes it: the parameters every builder takes.

    Checked when made (highdicom style: the message names the argument), so that a bad setting fails
    where it is given rather than in the middle of writing a result.

    Attributes
    ----------
    uid_root : str
        Organisation UID root; the series, instance and tracking UIDs are new UIDs under it
        (:func:`sr_writer.uids.new_uid`; checked with :func:`sr_writer.uids.validate_uid_root`).
    series_number : int
        Series Number (0020,0011), 1 to 2**31 - 1.
    instance_number : int
        Instance Number (0020,0013), 1 to 2**31 - 1; 1 unless given.
    series_description : str or None
        Series Description (0008,103E), an LO value; None for the writer's own (e.g. "AI results" for the
        chest radiograph SR). "(DEMO)" is appended when a demo model contributed.
    institution_name : str or None
        Institution Name (0008,0080) of the node, an LO value; None leaves it out.

    Raises
    ------
    sr_writer.errors.ParameterError
        (a ValueError) On an invalid UID root, a number outside 1..2**31 - 1, or a text that is not an LO
        value (more than 64 characters, or a backslash).
    sr_writer.errors.ParameterTypeError
        (a TypeError) When an attribute is of another type.
    """

    uid_root: str
    series_number: int
    instance_number: int = 1
    series_description: str | None = None
    institution_name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.uid_root, str):
            raise ParameterTypeError(f'Argument "uid_root" should be a str, got {type(self.uid_root).__name__}.')
        validate_uid_root(self.uid_root)
        for name in ("series_number", "instance_number"):
            number = getattr(self, name)
            try:
                if isinstance(number, bool):
                    raise TypeError(name)
                number = operator.index(number)  # int, or a NumPy integer
            except TypeError:
                raise ParameterTypeError(f'Argument "{name}" should be an int, got {type(number).__name__}.') from None
            if not 1 <= number <= _IS_MAX:
                raise ParameterError(f'Argument "{name}" should be an integer from 1 to {_IS_MAX}, got {number}.')
        for name in ("series_description", "institution_name"):
            text = getattr(self, name)
            if text is None:
                continue
            if not isinstance(text, str):
                raise ParameterTypeError(f'Argument "{name}" should be a str or None, got {type(text).__name__}.')
            if len(text) > 64 or "\\" in text:
                raise ParameterError(
                    f'Argument "{name}" {text!r} does not fit a DICOM LO value (at most 64 characters, no backslash).'
                )

    def description(self, default: str) -> str:
        """The Series Description to write: :attr:`series_description`, or the writer's ``default``."""
        return default if self.series_description is None else self.series_description

    def with_series_number(self, series_number: int) -> SeriesParams:
        """The same parameters for another series (checked again), e.g. a pipeline's second object."""
        return replace(self, series_number=series_number)


class NewInstance(TypedDict):
    """The keyword arguments of a highdicom constructor that make the object ours: a new series and instance."""

    series_instance_uid: str
    series_number: int
    sop_instance_uid: str
    instance_number: int
    manufacturer: str


def new_instance(params: SeriesParams) -> NewInstance:
    """New Series and SOP Instance UIDs under the root, the numbers, and our Manufacturer (0008,0070)."""
    return NewInstance(
        series_instance_uid=new_uid(params.uid_root),
        series_number=params.series_number,
        sop_instance_uid=new_uid(params.uid_root),
        instance_number=params.instance_number,
        manufacturer=MANUFACTURER,
    )


def checked_sources(result: SeriesResult, sources: Sequence[pydicom.Dataset]) -> dict[str, pydicom.Dataset]:
    """What every writer checks first: that the result names its algorithm, and the sources.

    Returns the sources by SOP Instance UID.

    Raises
    ------
    sr_writer.errors.InvalidResultError
        When the result names no algorithm, there is no source, a source lacks its SOP Class, SOP
        Instance, Study or Series Instance UID, or the sources and the result are of different studies.
    """
    if not result.algorithms:
        raise InvalidResultError("result names no algorithm; every AI result must name the algorithm (IHE AIR)")
    if not sources:
        raise InvalidResultError("no source datasets: an SR must reference the images it reports on")
    for ds in sources:
        for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            if keyword not in ds:
                raise InvalidResultError(f"source dataset lacks {keyword}; pass the full header of each source image")
    study = str(sources[0].StudyInstanceUID)
    if result.study_instance_uid and result.study_instance_uid != study:
        raise InvalidResultError(
            f"result is for study {result.study_instance_uid} but the sources are of study {study}"
        )
    by_uid: dict[str, pydicom.Dataset] = {}
    for ds in sources:
        if str(ds.StudyInstanceUID) != study:
            raise InvalidResultError(f"source {ds.SOPInstanceUID} is of study {ds.StudyInstanceUID}, not {study}")
        by_uid[str(ds.SOPInstanceUID)] = ds
    return by_uid


def with_empty_type2(source: pydicom.Dataset, extra: Mapping[str, str] | None = None) -> pydicom.Dataset:
    """The source as highdicom may copy it: missing Type 2 attributes empty, every copied value valid for its
    VR (:func:`sr_writer.source_attributes.clean_source`; what was dropped or corrected is recorded on it)."""
    return clean_source(source, extra)[0]


def evidence(sources: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """The sources, the first cleaned (:func:`with_empty_type2`): highdicom copies its patient and study attributes."""
    return [with_empty_type2(sources[0]), *sources[1:]]


def is_demo(algorithms: Sequence[AlgorithmInfo]) -> bool:
    """Whether a demo model contributed (its objects say "(DEMO)")."""
    return any(a.demo for a in algorithms)


def with_demo(text: str, demo: bool) -> str:
    """``text`` with "(DEMO)" appended when a demo model contributed and it does not say so yet."""
    return f"{text} (DEMO)" if demo and "DEMO" not in text else text


def lo(value: str, what: str) -> str:
    """A Long String (LO) value: at most 64 characters, no backslash (PS3.5 6.2).

    Raises
    ------
    sr_writer.errors.InvalidResultError
        When ``value`` does not fit; the message names it as ``what``.
    """
    if len(value) > 64 or "\\" in value:
        raise InvalidResultError(
            f"{what} {value!r} does not fit a DICOM LO value (at most 64 characters, no backslash)"
        )
    return value


def name_series(
    ds: pydicom.Dataset,
    algorithms: Sequence[AlgorithmInfo],
    series_description: str,
    sources: Sequence[pydicom.Dataset] = (),
) -> None:
    """Series Description (0008,103E), with "(DEMO)" for demo models, the IHE AI Results
    contributing-equipment items naming each algorithm, and the Coding Scheme Identification of every
    private scheme the object uses (:func:`sr_writer.codes.declare_private_schemes`): the last touch of
    every object we write.

    ``sources`` are the cleaned sources the object copied attributes from (:func:`with_empty_type2`);
    what was dropped or corrected in them is recorded on ``ds``
    (:func:`sr_writer.source_attributes.source_attribute_issues`)."""
    ds.SeriesDescription = lo(with_demo(series_description, is_demo(algorithms)), "series_description")
    add_contributing_equipment(ds, list(algorithms))
    record_issues(ds, sources)
    declare_private_schemes(ds)


def node_version() -> str:
    """The installed node's version, or "source" when it runs from a source tree that was not installed."""
    try:
        return importlib.metadata.version(_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        # Running from a source tree that was not installed: say so rather than invent a number.
        return "source"


def software_version() -> str:
    """The node's entry of Software Versions (0018,1020): "ainode 1.2.3"."""
    return lo(f"{_DISTRIBUTION} {node_version()}", "software version")
