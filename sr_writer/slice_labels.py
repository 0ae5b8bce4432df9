"""A text label on each slice of a CT series as one Grayscale Softcopy Presentation State.

For viewers that show presentation states (PS3.4 Annex N) but not SR: the
vertebral level on every slice of an abdominal CT ("L3"), or "PE suspected
p=0.93" on the flagged slices of a CTPA. One GSPS (PS3.3 A.33.1) in the
source study, in a new series, holds:

- one Graphic Annotation per labelled slice, in the graphic layer
  ``AI_LABELS``, with one unformatted text in the image's top-left corner
  (PIXEL units, PS3.3 C.10.5);
- each slice's own VOI (window centre/width or VOI LUT, PS3.3 C.11.8), so
  labelling does not change how the slices look; slices without any get a
  full-range window, as in :mod:`sr_writer.gsps`;
- the IHE AI Results contributing-equipment items naming each algorithm.

Labels say "(DEMO)" when a demo model contributed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import highdicom as hd
import pydicom

from core.findings import LumbarResult, PeExamResult, SeriesResult
from sr_writer.gsps import PR_COPIED, PR_COPIED_EACH, _presentation_state, _text_box
from sr_writer.source_attributes import clean_source, probability_text
from sr_writer.sr import _checked_sources, _is_demo, _with_demo, _with_empty_type2

__all__ = ["LABEL_LAYER", "build_slice_labels", "level_labels", "pe_labels"]

#: Graphic layer of the slice labels (a CS value).
LABEL_LAYER = "AI_LABELS"


def pe_labels(pe: PeExamResult) -> dict[str, str]:
    """Texts for :func:`build_slice_labels` on a CTPA: "PE suspected p=0.930" on each positive slice (3 significant digits)."""
    return {
        pe.slice_uids[i]: f"PE suspected p={probability_text(pe.slice_probabilities[i])}"
        for i in sorted(set(pe.positive_slices))
    }


def level_labels(lumbar: LumbarResult) -> dict[str, str]:
    """Texts for :func:`build_slice_labels` on an abdominal CT: the level of every slice, "L3 (L3 slice)" on L3."""
    labels = dict(zip(lumbar.slice_uids, lumbar.levels, strict=False))
    if lumbar.l3_index is not None:
        uid = lumbar.slice_uids[lumbar.l3_index]
        labels[uid] = f"{labels[uid]} (L3 slice)"
    return labels


def build_slice_labels(
    result: SeriesResult,
    sources: Sequence[pydicom.Dataset],
    labels: Mapping[str, str],
    *,
    uid_root: str,
    series_number: int,
    instance_number: int = 1,
    series_description: str = "AI slice labels",
    institution_name: str | None = None,
) -> pydicom.Dataset:
    """One GSPS with a text label on each slice named in ``labels``.

    Parameters
    ----------
    result : core.findings.SeriesResult
        The result the labels come from (its algorithms are named).
    sources : sequence of pydicom.Dataset
        Headers of the series' slices (pixels not needed), single-sample.
    labels : mapping of str to str
        SOP Instance UID -> text (at most 64 characters; PS3.3 C.10.5 Unformatted
        Text Value is ST, but one line must fit on the slice).
    uid_root : str
        Organisation UID root for the series and instance UIDs.
    series_number, instance_number : int
        Series Number (0020,0011) and Instance Number (0020,0013).
    series_description : str
        Series Description (0008,103E); "(DEMO)" is appended for demo models.
    institution_name : str, optional
        Institution Name (0008,0080) of the node.

    Returns
    -------
    pydicom.Dataset
        A :class:`highdicom.pr.GrayscaleSoftcopyPresentationState`.

    Raises
    ------
    ValueError
        On an invalid UID root, no label, a labelled slice not among the
        sources, an empty or too long text, or sources that mix slices with
        and without VOI settings.
    """
    by_uid = _checked_sources(result, sources, uid_root)
    if not labels:
        raise ValueError("no slice label; a presentation state would draw nothing")
    demo = _is_demo(result.algorithms)

    layer = hd.pr.GraphicLayer(layer_name=LABEL_LAYER, order=1, description="AI labels per slice")
    annotations: list[pydicom.Dataset] = []
    referenced: list[pydicom.Dataset] = []
    # In the order of the sources (the series), not of the mapping.
    for source in sources:
        uid = str(source.SOPInstanceUID)
        if uid not in labels:
            continue
        text = _with_demo(labels[uid].strip(), demo)
        if not text or len(text) > 64:
            raise ValueError(f"label of slice {uid} is empty or longer than 64 characters: {text!r}")
        columns, rows = int(source.Columns), int(source.Rows)
        line = max(8.0, rows / 32)
        box = _text_box(line / 2, line / 2, len(text), line, columns, rows)
        annotations.append(_annotation(source, text, box))
        referenced.append(source)
    unknown = [uid for uid in labels if uid not in by_uid]
    if unknown:
        raise ValueError(f"labelled slices {unknown[:3]}{'...' if len(unknown) > 3 else ''} are not among the sources")

    gsps = _presentation_state(
        result,
        _cleaned(referenced),
        layer,
        None,
        content_description=f"Slice labels by {result.algorithms[-1].display_name}",
        presentation_lut_shape="IDENTITY",
        uid_root=uid_root,
        series_number=series_number,
        instance_number=instance_number,
        series_description=series_description,
        institution_name=institution_name,
    )
    gsps.GraphicAnnotationSequence = annotations
    return gsps


def _cleaned(referenced: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """The labelled slices as the GSPS copies from them: the first wholly cleaned, each other's window
    explanation checked (copied only when it must change; a series can have hundreds of slices)."""
    return [
        _with_empty_type2(referenced[0], PR_COPIED),
        *(clean_source(ds, PR_COPIED_EACH, patient_study=False)[0] for ds in referenced[1:]),
    ]


def _annotation(source: pydicom.Dataset, text: str, box: tuple[float, float, float, float]) -> pydicom.Dataset:
    """One Graphic Annotation Sequence item (PS3.3 C.10.5) with one text on one slice.

    Built with pydicom rather than :class:`highdicom.pr.GraphicAnnotation`, whose per-image
    checks cost about 10 ms a slice: 3 s for a 300-slice series.
    """
    image = pydicom.Dataset()
    image.ReferencedSOPClassUID = source.SOPClassUID
    image.ReferencedSOPInstanceUID = source.SOPInstanceUID
    text_object = hd.pr.TextObject(text_value=text, units="PIXEL", bounding_box=box, text_justification="LEFT")
    item = pydicom.Dataset()
    item.ReferencedImageSequence = [image]
    item.GraphicLayer = LABEL_LAYER
    item.TextObjectSequence = [text_object]
    return item
