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
from sr_writer.sr import _checked_sources, _evidence, _is_demo, _lo, _name_series, _new_instance, _observer, _with_demo

__all__ = ["KOS_TITLES", "build_key_object_selection"]

#: Titles we write (keys of :data:`sr_writer.codes.CONCEPTS`, all of CID 7010).
KOS_TITLES: tuple[str, ...] = ("of_interest", "for_referring_provider", "best_in_set")


def build_key_object_selection(
    result: SeriesResult,
    sources: Sequence[pydicom.Dataset],
    key_uids: Sequence[str],
    *,
    title: str,
    uid_root: str,
    series_number: int,
    description: str,
    instance_number: int = 1,
    series_description: str = "AI key images",
    institution_name: str | None = None,
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
    title : str
        Document title, a key of :data:`KOS_TITLES` (CID 7010), e.g.
        ``"of_interest"``, or its Code Meaning (``"Of Interest"``).
    uid_root : str
        Organisation UID root for the series and instance UIDs.
    series_number, instance_number : int
        Series Number (0020,0011) and Instance Number (0020,0013).
    description : str
        Key Object Description (TID 2010 row 3, DCM 113012): why these images,
        e.g. "Slices with pulmonary embolism"; "(DEMO)" is appended for demo
        models. At most 1024 characters (UT is unlimited, but keep it short).
    series_description : str
        Series Description (0008,103E); "(DEMO)" is appended for demo models.
    institution_name : str, optional
        Institution Name (0008,0080) of the node.

    Returns
    -------
    pydicom.Dataset
        A :class:`highdicom.ko.KeyObjectSelectionDocument`.

    Raises
    ------
    ValueError
        On an invalid UID root, no key image, a key image not among the
        sources, an unknown title, or sources of another study.
    """
    by_uid = _checked_sources(result, sources, uid_root)
    title_key = _title_key(title)
    keys = list(dict.fromkeys(key_uids))
    if not keys:
        raise ValueError("no key image to select; a Key Object Selection needs at least one")
    missing = [uid for uid in keys if uid not in by_uid]
    if missing:
        raise ValueError(f"key images {missing} are not among the sources")
    if len(description) > 1024:
        raise ValueError(f"key object description is {len(description)} characters; keep it under 1024")

    description = _with_demo(description, _is_demo(result.algorithms))
    algorithm = result.algorithms[-1]
    selected = [by_uid[uid] for uid in keys]
    observer: ObserverContext = _observer(algorithm)
    content = hd.ko.KeyObjectSelection(
        document_title=code(title_key),
        referenced_objects=selected,
        observer_device_context=observer,
        description=description,
    )
    evidence = _evidence(selected)
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=evidence,
        content=content,
        **_new_instance(uid_root, series_number, instance_number),
        institution_name=institution_name,
    )
    # General Equipment (PS3.3 C.7.5.1): the model, saying DEMO for demo weights, as every object of ours does.
    kos.ManufacturerModelName = _lo(
        _with_demo(algorithm.display_name, _is_demo(result.algorithms)), "algorithm display name"
    )
    _name_series(kos, result.algorithms, series_description, evidence[:1])
    return kos


def _title_key(title: str) -> str:
    for key in KOS_TITLES:
        if title == key or title.strip().lower() == CONCEPTS[key].meaning.lower():
            return key
    raise ValueError(f"KOS title {title!r} is not one we write; use one of {list(KOS_TITLES)} (CID 7010)")
