"""Key slices of a CT result as a Key Object Selection Document.

A viewer opens a Key Object Selection (PS3.3 A.59, KOS IOD; content TID
2010) as a short list of the images to look at first: the key PE slices of
a CTPA, the L3 slice of an abdominal CT. The document lives in the source
study, in a new series, and holds:

- a title from CID 7010 "Key Object Selection Document Title" (e.g. DCM
  113000 "Of Interest", 113002 "For Referring Provider");
- the algorithm as device observer (TID 1002/1004) and a Key Object
  Description saying why these images;
- one IMAGE item per key slice, and the same slices in the Current
  Requested Procedure Evidence Sequence (PS3.3 C.17.6.2);
- the IHE AI Results contributing-equipment items naming each algorithm.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import pydicom
from highdicom.sr import ObserverContext

from core.findings import SeriesResult
from sr_writer.codes import CONCEPTS, code
from sr_writer.common import SeriesParams, checked_sources, evidence, is_demo, lo, name_series, new_instance, with_demo
from sr_writer.errors import InvalidResultError, ParameterError
from sr_writer.report import observer as device_observer

__all__ = ["KOS_TITLES", "SERIES_DESCRIPTION", "build_key_object_selection"]

#: Series Description (0008,103E) of the selection unless :class:`~sr_writer.common.SeriesParams` gives one.
SERIES_DESCRIPTION = "AI key images"

#: Titles we write (keys of :data:`sr_writer.codes.CONCEPTS`, all of CID 7010).
KOS_TITLES: tuple[str, ...] = ("of_interest", "for_referring_provider", "best_in_set")


def build_key_object_selection(
    result: SeriesResult,
    sources: Sequence[pydicom.Dataset],
    key_uids: Sequence[str],
    params: SeriesParams,
    *,
    title: str,
    description: str,
) -> pydicom.Dataset:
    """Select ``key_uids`` among ``sources`` in a Key Object Selection Document.

    Parameters
    ----------
    result : core.findings.SeriesResult
        The result the selection comes from; ``result.algorithms[-1]`` is the
        observer.
    sources : sequence of pydicom.Dataset
        Headers of the series' images (pixels not needed).
    key_uids : sequence of str
        SOP Instance UIDs of the key images, in the order to show them; each
        must be among ``sources``; duplicates are dropped.
    params : sr_writer.common.SeriesParams
        UID root (series and instance UIDs), Series and Instance Number,
        Institution Name, and the Series Description
        (:data:`SERIES_DESCRIPTION` unless given; "(DEMO)" is appended for
        demo models).
    title : str
        Document title, a key of :data:`KOS_TITLES` (CID 7010), e.g.
        ``"of_interest"``, or its Code Meaning (``"Of Interest"``).
    description : str
        Key Object Description (TID 2010 row 3, DCM 113012): why these images,
        e.g. "Slices with pulmonary embolism"; "(DEMO)" is appended for demo
        models. At most 1024 characters (UT is unlimited, but keep it short).

    Returns
    -------
    pydicom.Dataset
        A :class:`highdicom.ko.KeyObjectSelectionDocument`.

    Raises
    ------
    sr_writer.errors.ParameterError
        (a ValueError) On an unknown title or a description that is too long.
    sr_writer.errors.InvalidResultError
        (a ValueError) On no key image, a key image not among the sources,
        or sources of another study.
    """
    by_uid = checked_sources(result, sources)
    title_key = _title_key(title)
    keys = list(dict.fromkeys(key_uids))
    if not keys:
        raise InvalidResultError("no key image to select; a Key Object Selection needs at least one")
    missing = [uid for uid in keys if uid not in by_uid]
    if missing:
        raise InvalidResultError(f"key images {missing} are not among the sources")
    if len(description) > 1024:
        raise ParameterError(f"key object description is {len(description)} characters; keep it under 1024")

    description = with_demo(description, is_demo(result.algorithms))
    algorithm = result.algorithms[-1]
    selected = [by_uid[uid] for uid in keys]
    observer: ObserverContext = device_observer(algorithm)
    content = hd.ko.KeyObjectSelection(
        document_title=code(title_key),
        referenced_objects=selected,
        observer_device_context=observer,
        description=description,
    )
    copied = evidence(selected)
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=copied,
        content=content,
        **new_instance(params),
        institution_name=params.institution_name,
    )
    # General Equipment (PS3.3 C.7.5.1): the model, saying DEMO for demo weights, as every object of ours does.
    kos.ManufacturerModelName = lo(
        with_demo(algorithm.display_name, is_demo(result.algorithms)), "algorithm display name"
    )
    name_series(kos, result.algorithms, params.description(SERIES_DESCRIPTION), copied[:1])
    return kos


def _title_key(title: str) -> str:
    for key in KOS_TITLES:
        if title == key or title.strip().lower() == CONCEPTS[key].meaning.lower():
            return key
    raise ParameterError(f"KOS title {title!r} is not one we write; use one of {list(KOS_TITLES)} (CID 7010)")
