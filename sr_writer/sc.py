"""The radiograph with boxes and top findings burned in, as a Secondary Capture image.

For viewers that show neither SR nor presentation states: a new image (PS3.3
A.8.1, Secondary Capture Image IOD) in the source study, in a new series,
marked as derived so that nobody takes it for the acquisition:

- Image Type ``DERIVED\\SECONDARY`` (PS3.3 C.7.6.1.1.2), Burned In Annotation
  ``YES`` (C.7.6.1.1.4), a Derivation Description and the Source Image
  Sequence naming the radiograph (C.7.6.1.1.3);
- 8-bit RGB pixels: the source rendered as the modality meant (Modality LUT,
  then its first window or VOI LUT, MONOCHROME1 inverted; PS3.4 N.2), the
  boxes in colour with "Nodule 0.83" above each, and a banner with the top
  findings and the triage level; "DEMO - not for diagnosis" when a demo model
  contributed;
- the IHE AI Results contributing-equipment items naming each algorithm.

Drawing uses Pillow (a base dependency); no pixel of the source is changed.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian

from core.findings import ImageResult, SeriesResult
from sr_writer.codes import code, display_name
from sr_writer.common import (
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
from sr_writer.gsps import PR_COPIED, box_corners, caption, copy_laterality
from sr_writer.source_attributes import probability_text

__all__ = ["BOX_COLOUR", "SERIES_DESCRIPTION", "build_secondary_capture", "render_radiograph"]

#: Series Description (0008,103E) of the capture unless :class:`~sr_writer.common.SeriesParams` gives one.
SERIES_DESCRIPTION = "AI findings (burned in)"

#: RGB colour of burned-in boxes and labels: saturated, so it cannot be mistaken for grey anatomy.
BOX_COLOUR = (255, 196, 0)
_BANNER_COLOUR = (255, 255, 255)

# CID 7203 "Image Derivation" has no code for "annotations burned in"; the description says it.
_DERIVATION = "Source radiograph with AI findings burned in (boxes, labels, top findings); not for primary diagnosis"


def build_secondary_capture(
    result: SeriesResult,
    source: pydicom.Dataset,
    params: SeriesParams,
) -> hd.sc.SCImage:
    """Burn the boxes and top findings of one image of ``result`` into a copy of ``source``.

    Parameters
    ----------
    result : core.findings.SeriesResult
        What the pipeline found; the image whose SOP Instance UID is that of
        ``source`` is drawn.
    source : pydicom.Dataset
        The source radiograph **with pixel data** (grayscale, one frame).
    params : sr_writer.common.SeriesParams
        UID root (new series and instance UIDs), Series and Instance Number,
        Institution Name, and the Series Description
        (:data:`SERIES_DESCRIPTION` unless given; "(DEMO)" is appended for
        demo models).

    Returns
    -------
    highdicom.sc.SCImage
        8-bit RGB Secondary Capture, ready for ``save_as`` or C-STORE.

    Raises
    ------
    sr_writer.errors.InvalidResultError
        (a ValueError) On a source that is not in the result or has no
        pixels, a multi-frame or colour source, or a box outside the image.
    """
    checked_sources(result, [source])
    image = next((i for i in result.images if i.sop_instance_uid == str(source.SOPInstanceUID)), None)
    if image is None:
        raise InvalidResultError(f"source {source.SOPInstanceUID} is not an image of the result")
    demo = is_demo(result.algorithms)

    pixels = burn_in(image, source, demo)
    reference = with_empty_type2(source, {**PR_COPIED, "PatientOrientation": "2"})
    orientation = reference.get("PatientOrientation")
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=reference,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        # highdicom needs an orientation for the PATIENT system; it is replaced below when the
        # source does not state one, since we must not invent it.
        patient_orientation=tuple(orientation) if orientation and len(orientation) == 2 else ("L", "F"),
        **new_instance(params),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        institution_name=params.institution_name,
        manufacturer_model_name=lo(with_demo(result.algorithms[-1].display_name, demo), "algorithm display name"),
        software_versions=software_version(),
    )
    if not (orientation and len(orientation) == 2):
        sc.PatientOrientation = ""  # type: ignore[assignment]  # Type 2 in the General Image module: empty means unknown
    copy_laterality(sc, reference)  # Type 2C: the source's, else absent
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "YES"
    sc.DerivationDescription = _DERIVATION
    source_item = pydicom.Dataset()
    source_item.ReferencedSOPClassUID = source.SOPClassUID
    source_item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    source_item.PurposeOfReferenceCodeSequence = [code("source_image_for_processing")]
    sc.SourceImageSequence = [source_item]
    name_series(sc, result.algorithms, params.description(SERIES_DESCRIPTION), [reference])
    return sc


def render_radiograph(source: pydicom.Dataset) -> np.ndarray:
    """The source's pixels as 8-bit grey (rows, columns), as a viewer would show them.

    Modality LUT (PS3.3 C.11.1), then the first window or VOI LUT (C.11.2),
    else the full range of the stored values; MONOCHROME1 is inverted so that
    the result is MONOCHROME2.

    Raises
    ------
    sr_writer.errors.InvalidResultError
        (a ValueError) When the source has no pixels, more than one frame or sample.
    """
    if "PixelData" not in source:
        raise InvalidResultError("source has no pixel data; read it without stop_before_pixels to burn in findings")
    if int(source.get("SamplesPerPixel", 1)) != 1 or int(source.get("NumberOfFrames", 1)) != 1:
        raise InvalidResultError("only single-frame grayscale radiographs can be burned in")
    modality = apply_modality_lut(source.pixel_array, source)
    values = modality.astype(np.float64)
    if "VOILUTSequence" in source:
        # A VOI LUT is indexed by integer modality values.
        indices = modality if np.issubdtype(modality.dtype, np.integer) else np.rint(modality).astype(np.int64)
        shown = apply_voi_lut(indices, source, index=0).astype(np.float64)
        low, high = 0.0, float(2 ** int(source.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    elif "WindowCenter" in source:
        # The linear window of PS3.3 C.11.2.1.2.1 (a SIGMOID function is drawn linear, close enough
        # for a capture whose purpose is to show where the boxes are).
        center = float(np.atleast_1d(source.WindowCenter)[0])
        width = float(np.atleast_1d(source.WindowWidth)[0])
        low, high = center - width / 2, center + width / 2
        shown = np.clip(values, low, high)
    else:
        shown, low, high = values, float(values.min()), float(values.max())
    scaled = (shown - low) / max(high - low, 1e-9)
    grey = np.clip(np.rint(scaled * 255), 0, 255).astype(np.uint8)
    if str(source.PhotometricInterpretation) == "MONOCHROME1":
        grey = 255 - grey
    return grey


def burn_in(image: ImageResult, source: pydicom.Dataset, demo: bool) -> np.ndarray:
    """RGB pixels (rows, columns, 3) of the rendered source with boxes, labels and banner drawn."""
    canvas = Image.fromarray(render_radiograph(source), mode="L").convert("RGB")
    draw = ImageDraw.Draw(canvas)
    rows = canvas.height
    line = max(2, rows // 400)
    size = max(12, rows // 45)
    font = _font(size)
    for finding in image.findings:
        if finding.region is None:
            continue
        corners = box_corners(finding.region, source, finding.label)
        # Whole pixels: PIL would otherwise split a width-2 line around a fractional coordinate.
        draw.line([(int(round(x)), int(round(y))) for x, y in corners], fill=BOX_COLOUR, width=line)
        label = f"{display_name(finding.label)} {probability_text(finding.probability)}"
        x, y = float(corners[0][0]), float(corners[0][1])
        # Bottom of the label one line width above the box, so that it never covers the box edge.
        bottom = draw.textbbox((x, 0), label, font=font, stroke_width=1)[3]
        top = max(0.0, y - line - bottom)
        draw.text((x, top), label, fill=BOX_COLOUR, font=font, stroke_width=1, stroke_fill=(0, 0, 0))
    text = caption(image, demo)
    margin = size // 2
    if draw.textbbox((margin, margin), text, font=font)[2] > canvas.width - margin:
        text = text.replace(" | ", "\n")  # a narrow image: one part of the caption per line
    left, top, right, bottom = draw.multiline_textbbox((margin, margin), text, font=font)
    draw.rectangle((0, 0, min(canvas.width - 1, right + margin), bottom + margin), fill=(0, 0, 0))
    draw.multiline_text((margin, margin), text, fill=_BANNER_COLOUR, font=font)
    return np.asarray(canvas, dtype=np.uint8)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: scalable
    except (TypeError, OSError):
        return ImageFont.load_default()
