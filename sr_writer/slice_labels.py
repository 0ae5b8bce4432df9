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
from sr_writer.common import SeriesParams, checked_sources, is_demo, with_demo, with_empty_type2
from sr_writer.errors import InvalidResultError, ParameterError
from sr_writer.gsps import PR_COPIED, PR_COPIED_EACH, presentation_state, text_box
from sr_writer.source_attributes import clean_source, probability_text

__all__ = ["LABEL_LAYER", "SERIES_DESCRIPTION", "build_slice_labels", "level_labels", "pe_labels"]

#: Series Description (0008,103E) of the labels' GSPS unless :class:`~sr_writer.common.SeriesParams` gives one.
SERIES_DESCRIPTION = "AI slice labels"

#: Graphic layer of the slice labels (a CS value).
LABEL_LAYER = "AI_LABELS"


def pe_labels(pe: PeExamResult) -> dict[str, str]:
    """Texts for :func:`build_slice_labels` on a CTPA: "PE suspected p=0.930" on each positive slice
    (3 significant digits)."""
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
    params: SeriesParams,
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
    params : sr_writer.common.SeriesParams
        UID root (series and instance UIDs), Series and Instance Number,
        Institution Name, and the Series Description
        (:data:`SERIES_DESCRIPTION` unless given; "(DEMO)" is appended for
        demo models).

    Returns
    -------
    pydicom.Dataset
        A :class:`highdicom.pr.GrayscaleSoftcopyPresentationState`.

    Raises
    ------
    sr_writer.errors.ParameterError
        (a ValueError) On no label, or an empty or too long text.
    sr_writer.errors.InvalidResultError
        (a ValueError) On a labelled slice not among the sources, or sources
        that mix slices with and without VOI settings.
    """
    by_uid = checked_sources(result, sources)
    if not labels:
        raise ParameterError("no slice label; a presentation state would draw nothing")
    demo = is_demo(result.algorithms)

    layer = hd.pr.GraphicLayer(layer_name=LABEL_LAYER, order=1, description="AI labels per slice")
    annotations: list[pydicom.Dataset] = []
    referenced: list[pydicom.Dataset] = []
    # In the order of the sources (the series), not of the mapping.
    for source in sources:
        uid = str(source.SOPInstanceUID)
        if uid not in labels:
            continue
        text = with_demo(labels[uid].strip(), demo)
        if not text or len(text) > 64:
            raise ParameterError(f"label of slice {uid} is empty or longer than 64 characters: {text!r}")
        columns, rows = int(source.Columns), int(source.Rows)
        line = max(8.0, rows / 32)
        box = text_box(line / 2, line / 2, len(text), line, columns, rows)
        annotations.append(_annotation(source, text, box))
        referenced.append(source)
    unknown = [uid for uid in labels if uid not in by_uid]
    if unknown:
        raise InvalidResultError(
            f"labelled slices {unknown[:3]}{'...' if len(unknown) > 3 else ''} are not among the sources"
        )

    gsps = presentation_state(
        result,
        _cleaned(referenced),
        layer,
        None,
        content_description=f"Slice labels by {result.algorithms[-1].display_name}",
        presentation_lut_shape="IDENTITY",
        params=params,
        series_description=params.description(SERIES_DESCRIPTION),
    )
    gsps.GraphicAnnotationSequence = annotations
    return gsps


def _cleaned(referenced: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """The labelled slices as the GSPS copies from them: the first wholly cleaned, each other's window
    explanation checked (copied only when it must change; a series can have hundreds of slices)."""
    return [
        with_empty_type2(referenced[0], PR_COPIED),
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
