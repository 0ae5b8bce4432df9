"""Detector boxes and their labels as a Grayscale Softcopy Presentation State.

A viewer that supports presentation states (PS3.4 Annex N) shows the source
radiograph with our boxes and text drawn over it, without any change to the
image itself. The object (PS3.3 A.33.1, Grayscale Softcopy Presentation
State IOD) lives in the source study, in a new series, and holds:

- one Graphic Annotation per source image with boxes or top findings, in the
  graphic layer ``AI_FINDINGS``: each box as a closed POLYLINE (5 points) in
  the image's pixel coordinates (PS3.3 C.10.5, Graphic Annotation Units
  PIXEL), a text label above it ("Nodule 0.83"), and a caption with the top
  findings and the triage level in the top-left corner;
- the source's VOI settings (window centre/width or VOI LUT, PS3.3 C.11.8)
  and its Modality LUT, so that the image looks as the modality meant; for a
  MONOCHROME1 source the Presentation LUT Shape is INVERSE (PS3.3 C.11.6.1.2),
  which is how a presentation state keeps "low values are white";
- the IHE AI Results contributing-equipment items naming each algorithm.

The text says DEMO when a demo model contributed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import highdicom as hd
import numpy as np
import pydicom

from core.findings import ImageResult, Region, SeriesResult
from sr_writer.codes import display_name
from sr_writer.common import (
    MANUFACTURER,
    SeriesParams,
    checked_sources,
    is_demo,
    lo,
    name_series,
    new_instance,
    software_version,
    with_demo,
    with_empty_type2,
)
from sr_writer.errors import InvalidResultError
from sr_writer.source_attributes import probability_text

__all__ = [
    "GRAPHIC_LAYER",
    "PR_COPIED",
    "PR_COPIED_EACH",
    "SERIES_DESCRIPTION",
    "UNPAIRED_BODY_PARTS",
    "box_corners",
    "build_presentation_state",
    "caption",
    "copy_laterality",
    "presentation_state",
    "text_box",
]

#: Series Description (0008,103E) of the boxes' GSPS unless :class:`~sr_writer.common.SeriesParams` gives one.
SERIES_DESCRIPTION = "AI findings (boxes)"

#: Name of the graphic layer that holds our annotations (a CS value: capitals and underscores).
GRAPHIC_LAYER = "AI_FINDINGS"

#: Body Part Examined (0018,0015) defined terms (PS3.16 Annex L) of unpaired parts, for which a
#: series has no Laterality (0020,0060): those that dciodvfy (dicom3tools) accepts without one.
UNPAIRED_BODY_PARTS = frozenset(
    [
        "ABDOMEN",
        "ABDOMENPELVIS",
        "AORTA",
        "BACK",
        "BLADDER",
        "BRAIN",
        "CEREBELLUM",
        "CERVIX",
        "CHEST",
        "CHESTABDOMEN",
        "CHESTABDPELVIS",
        "CIRCLEOFWILLIS",
        "COCCYX",
        "COLON",
        "CORONARYARTERY",
        "CSPINE",
        "CTSPINE",
        "DUODENUM",
        "ESOPHAGUS",
        "FACE",
        "GALLBLADDER",
        "HEAD",
        "HEADNECK",
        "HEART",
        "ILEUM",
        "ILIUM",
        "JAW",
        "JEJUNUM",
        "LARYNX",
        "LIVER",
        "LSPINE",
        "LSSPINE",
        "MAXILLA",
        "MEDIASTINUM",
        "MOUTH",
        "NECK",
        "NECKCHEST",
        "NECKCHESTABDOMEN",
        "NECKCHESTABDPELV",
        "NOSE",
        "PANCREAS",
        "PELVIS",
        "PENIS",
        "PHARYNX",
        "PROSTATE",
        "RECTUM",
        "SCALP",
        "SKULL",
        "SPINE",
        "SPLEEN",
        "SSPINE",
        "STERNUM",
        "STOMACH",
        "THYMUS",
        "THYROID",
        "TLSPINE",
        "TONGUE",
        "TRACHEA",
        "TSPINE",
        "URETER",
        "URETHRA",
        "UTERUS",
        "VAGINA",
        "VULVA",
        "WHOLEBODY",
    ]
)

#: Attributes a presentation state copies from every image (highdicom, with its VOI), with their Type.
PR_COPIED_EACH: dict[str, str] = {"WindowCenterWidthExplanation": "3"}
#: And from its first image besides highdicom's patient and study attributes: General Series
#: Laterality (0020,0060), Type 2C, its condition met when the source has one, and Body Part Examined
#: (0018,0015), Type 3, which says whether the body part is paired (:func:`copy_laterality`).
PR_COPIED: dict[str, str] = {"Laterality": "2C", "BodyPartExamined": "3", **PR_COPIED_EACH}


def build_presentation_state(
    result: SeriesResult,
    sources: Sequence[pydicom.Dataset],
    params: SeriesParams,
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """Encode the boxes and top findings of ``result`` as a GSPS over the source images.

    Parameters
    ----------
    result : core.findings.SeriesResult
        What the pipeline found; findings with a ``region`` become boxes,
        ``top_findings`` and ``triage`` of an image become its caption.
    sources : sequence of pydicom.Dataset
        Headers of the source images (pixels not needed); each image of the
        result must be among them. All must be single-sample (grayscale).
    params : sr_writer.common.SeriesParams
        UID root (new series and instance UIDs), Series and Instance Number,
        Institution Name, and the Series Description
        (:data:`SERIES_DESCRIPTION` unless given; "(DEMO)" is appended for
        demo models).

    Returns
    -------
    highdicom.pr.GrayscaleSoftcopyPresentationState
        Ready for ``save_as`` or C-STORE.

    Raises
    ------
    sr_writer.errors.InvalidResultError
        (a ValueError) On sources that do not match the result, a box
        outside its image, or a result with nothing to draw.
    """
    by_uid = checked_sources(result, sources)
    demo = is_demo(result.algorithms)

    layer = hd.pr.GraphicLayer(layer_name=GRAPHIC_LAYER, order=1, description="AI findings: boxes and labels")
    annotations: list[hd.pr.GraphicAnnotation] = []
    referenced: list[pydicom.Dataset] = []
    for image in result.images:
        source = by_uid.get(image.sop_instance_uid)
        if source is None:
            raise InvalidResultError(f"image {image.sop_instance_uid} of the result is not among the sources")
        annotation = _annotation(image, source, layer, demo)
        if annotation is not None:
            annotations.append(annotation)
            referenced.append(with_empty_type2(source, PR_COPIED))
    if not annotations:
        raise InvalidResultError(
            "result has no box and no top finding on any image; a presentation state would draw nothing"
        )

    detector = result.algorithms[-1]
    inverse = str(referenced[0].get("PhotometricInterpretation", "")) == "MONOCHROME1"
    return presentation_state(
        result,
        referenced,
        layer,
        annotations,
        content_description=with_demo(f"Boxes by {detector.display_name}", demo),
        presentation_lut_shape="INVERSE" if inverse else "IDENTITY",
        params=params,
        series_description=params.description(SERIES_DESCRIPTION),
    )


def presentation_state(
    result: SeriesResult,
    referenced: Sequence[pydicom.Dataset],
    layer: hd.pr.GraphicLayer,
    annotations: Sequence[hd.pr.GraphicAnnotation] | None,
    *,
    content_description: str,
    presentation_lut_shape: str,
    params: SeriesParams,
    series_description: str,
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """A GSPS of ours over ``referenced`` with one graphic layer: the part the box and slice-label writers share.

    ``result.algorithms[-1]`` is the Manufacturer's Model Name; the layer's name is the Content Label;
    each image keeps its own VOI (:func:`_voi`). ``annotations`` may be None when the caller sets the
    Graphic Annotation Sequence itself. ``series_description`` is the one to write
    (:meth:`sr_writer.common.SeriesParams.description`).
    """
    gsps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=referenced,
        **new_instance(params),
        manufacturer_model_name=lo(
            with_demo(result.algorithms[-1].display_name, is_demo(result.algorithms)), "algorithm display name"
        ),
        software_versions=software_version(),
        device_serial_number=MANUFACTURER,
        content_label=layer.GraphicLayer,
        content_description=lo(content_description, "content description"),
        graphic_annotations=annotations,
        graphic_layers=[layer],
        institution_name=params.institution_name,
        voi_lut_transformations=_voi(referenced),
        presentation_lut_transformation=hd.PresentationLUTTransformation(presentation_lut_shape=presentation_lut_shape),
    )
    # General Series Laterality (0020,0060) is Type 2C (PS3.3 C.7.3.1), required for a paired body part:
    # copied when the source has it (its condition met there), absent otherwise (a chest, a CT series).
    copy_laterality(gsps, referenced[0])
    name_series(gsps, result.algorithms, series_description, referenced)
    return gsps


def copy_laterality(target: pydicom.Dataset, source: pydicom.Dataset) -> None:
    """General Series Laterality (0020,0060) and Body Part Examined (0018,0015) of ``target`` from the
    (cleaned) ``source``.

    Laterality is Type 2C (PS3.3 C.7.3.1): required when the body part is paired and the object has no
    Image Laterality, which a presentation state or a capture never has. So it is absent for a body
    part of :data:`UNPAIRED_BODY_PARTS` (a chest, an abdomen: the attribute does not apply), and
    otherwise the source's Laterality, else its Image Laterality, when R or L; else empty, which PS3.3
    reserves for an unknown laterality (a paired part, or a source that does not name its body part).
    """
    body_part = str(source.get("BodyPartExamined", "") or "")
    if body_part:
        target.BodyPartExamined = body_part
    laterality = next(
        (str(source.get(k, "")) for k in ("Laterality", "ImageLaterality") if str(source.get(k, "")) in ("R", "L")),
        "",
    )
    if body_part in UNPAIRED_BODY_PARTS:
        if "Laterality" in target:
            del target.Laterality
    else:
        target.Laterality = laterality


def box_corners(region: Region, source: pydicom.Dataset, label: str) -> np.ndarray:
    """The 5 points (column, row) of ``region`` as a closed polyline, checked against the image size."""
    r = region
    if not (0 <= r.x_min < r.x_max and 0 <= r.y_min < r.y_max):
        raise InvalidResultError(f"box of {label!r} is empty or negative: {r}")
    columns, rows = source.get("Columns"), source.get("Rows")
    if columns is not None and rows is not None and (r.x_max > columns or r.y_max > rows):
        raise InvalidResultError(f"box of {label!r} lies outside the {columns}x{rows} image: {r}")
    return np.array(
        [[r.x_min, r.y_min], [r.x_max, r.y_min], [r.x_max, r.y_max], [r.x_min, r.y_max], [r.x_min, r.y_min]],
        dtype=float,
    )


def caption(image: ImageResult, demo: bool) -> str:
    """One line with the top findings (3 significant digits) and the triage.

    E.g. "AI: Nodule 0.870, Mass 0.710 | URGENT".
    """
    # "finding" (the 14-label classifier, which the top findings rank) wins over a four-class "class" of the
    # same label (pneumonia).
    ordered = sorted((f for f in image.findings if f.group != "detection"), key=lambda f: f.group == "finding")
    probabilities = {f.label: f.probability for f in ordered}
    parts = [
        f"{display_name(label)} {probability_text(probabilities[label])}"
        if label in probabilities
        else display_name(label)
        for label in image.top_findings
    ]
    if parts:
        text = "AI: " + ", ".join(parts)
    elif any(f.present for f in image.findings if f.group == "finding"):
        text = "AI: no finding ranked"
    else:
        text = "AI: no finding at or above its threshold"
    if image.triage is not None:
        text += f" | {image.triage.upper()}"
    if demo:
        text += " | DEMO - not for diagnosis"
    return text


def _annotation(
    image: ImageResult, source: pydicom.Dataset, layer: hd.pr.GraphicLayer, demo: bool
) -> hd.pr.GraphicAnnotation | None:
    boxes = [f for f in image.findings if f.region is not None]
    if not boxes and not image.top_findings and image.triage is None:
        return None
    columns, rows = int(source.Columns), int(source.Rows)
    line = max(12.0, rows / 40)  # text height in pixels: readable on a full-size radiograph
    graphics = [
        hd.pr.GraphicObject(graphic_type="POLYLINE", graphic_data=box_corners(f.region, source, f.label), units="PIXEL")
        for f in boxes
        if f.region is not None
    ]
    texts = []
    for finding in boxes:
        assert finding.region is not None
        label = f"{display_name(finding.label)} {probability_text(finding.probability)}"
        texts.append(
            hd.pr.TextObject(
                text_value=label,
                units="PIXEL",
                bounding_box=text_box(
                    finding.region.x_min, finding.region.y_min - line, len(label), line, columns, rows
                ),
                text_justification="LEFT",
            )
        )
    if image.top_findings or image.triage is not None or demo:
        text = caption(image, demo)
        texts.append(
            hd.pr.TextObject(
                text_value=text,
                units="PIXEL",
                bounding_box=text_box(line / 2, line / 2, len(text), line, columns, rows),
                text_justification="LEFT",
            )
        )
    return hd.pr.GraphicAnnotation(
        referenced_images=[source], graphic_layer=layer, graphic_objects=graphics or None, text_objects=texts or None
    )


def text_box(
    left: float, top: float, characters: int, line: float, columns: int, rows: int
) -> tuple[float, float, float, float]:
    """A bounding box (left, top, right, bottom) for ``characters`` of text ``line`` pixels high, inside the image.

    Text wider than the image gets as many lines as it needs (a viewer wraps text in its box, PS3.3
    C.10.5.1.1) instead of one line it would have to shrink or clip.
    """
    wide = characters * line * 0.6
    width = min(float(columns) - 1, wide)
    height = line * max(1, math.ceil(wide / width)) if width > 0 else line
    height = min(height, float(rows) - 1)
    top = min(max(0.0, top), rows - height - 1)
    left = min(max(0.0, left), columns - width - 1)
    return (left, top, left + width, top + height)


def _voi(referenced: Sequence[pydicom.Dataset]) -> list[hd.pr.SoftcopyVOILUTTransformation] | None:
    """VOI of the sources as they are; a full-range window when a source has none (PS3.3 C.11.2)."""
    if all("WindowCenter" in ds or "VOILUTSequence" in ds for ds in referenced):
        return None  # highdicom copies the sources' own VOI LUT or window
    transforms = []
    for ds in referenced:
        if "WindowCenter" in ds or "VOILUTSequence" in ds:
            raise InvalidResultError("sources mix images with and without VOI settings; send them in separate objects")
        bits = int(ds.get("BitsStored", 8))
        slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
        low = -(2 ** (bits - 1)) if int(ds.get("PixelRepresentation", 0)) else 0
        center = slope * (low + 2 ** (bits - 1)) + intercept
        transforms.append(
            hd.pr.SoftcopyVOILUTTransformation(
                window_center=center,
                window_width=abs(slope) * 2**bits,
                referenced_images=hd.ReferencedImageSequence(referenced_images=[ds]),
            )
        )
    return transforms
