"""Body-composition tissues of one CT slice as a binary Segmentation.

The L3 slice's skeletal muscle, subcutaneous fat and visceral fat masks
(measured once the vertebral level model has chosen the slice) as a Segmentation (PS3.3 A.51, Segmentation IOD,
BINARY, one frame per segment) over the source slice, so a viewer can
overlay them and a tool can recompute the areas. Segments (PS3.3 C.8.20.2), each
in the anatomic region Abdomen (CID 4):

====================  =========================  ===================================  =================
label                 category (CID 7150)        type (CID 7191)                      type modifier
====================  =========================  ===================================  =================
skeletal muscle       Tissue                     Muscle (SCT 91727004)                -
subcutaneous fat      Tissue                     Subcutaneous tissue (SCT 71966008)   -
visceral fat          Tissue                     Fat (SCT 55603005)                   Internal (CID 2)
====================  =========================  ===================================  =================

Each segment carries a Recommended Display CIELab Value (PS3.3 C.8.20.2: :data:`COLOURS`, muscle red,
subcutaneous fat green, visceral fat yellow), so viewers draw the three tissues the same way everywhere; without
it OHIF v3 warns "RecommendedDisplayCIELabValue not found" each time the segmentation is opened.

Visceral fat is encoded as in the body-composition SR (:mod:`sr_writer.ct_sr`), whose finding
site is Fat with the topographical modifier Internal: PS3.16 has no visceral adipose tissue.

Each segment names the algorithm (Segment Algorithm Name, family "Artificial
Intelligence", CID 7162) with its HU range as a parameter; the object names
it in Manufacturer's Model Name and the IHE AI Results contributing
equipment. "(DEMO)" is in the name for demo models.
"""

from __future__ import annotations

from collections.abc import Mapping

import highdicom as hd
import numpy as np
import pydicom

from core.findings import AlgorithmInfo
from sr_writer.codes import code
from sr_writer.common import (
    MANUFACTURER,
    SeriesParams,
    lo,
    name_series,
    new_instance,
    software_version,
    with_empty_type2,
)
from sr_writer.ct_sr import HU_RANGES
from sr_writer.errors import InvalidResultError
from sr_writer.uids import new_uid

__all__ = ["COLOURS", "REGION", "SERIES_DESCRIPTION", "TISSUES", "build_tissue_segmentation"]

#: Series Description (0008,103E) of the segmentation unless :class:`~sr_writer.common.SeriesParams` gives one.
SERIES_DESCRIPTION = "AI body composition (L3)"

#: Mask keys in segment order (segment numbers 1, 2, 3): (label, type key, type modifier key, HU range key).
TISSUES: dict[str, tuple[str, str, str | None, str]] = {
    "muscle": ("skeletal muscle", "muscle", None, "muscle"),
    "subcutaneous_fat": ("subcutaneous fat", "subcutaneous_tissue", None, "fat"),
    "visceral_fat": ("visceral fat", "fat", "internal", "fat"),
}

#: Display colour (sRGB) of each segment, written as its Recommended Display CIELab Value (0062,000D).
COLOURS: dict[str, tuple[int, int, int]] = {
    "muscle": (221, 84, 84),
    "subcutaneous_fat": (77, 228, 121),
    "visceral_fat": (240, 200, 60),
}

#: Anatomic region of every segment: the slice is an abdominal CT slice at L3.
REGION = "abdomen"


def build_tissue_segmentation(
    source: pydicom.Dataset,
    masks: Mapping[str, np.ndarray],
    algorithm: AlgorithmInfo,
    params: SeriesParams,
) -> pydicom.Dataset:
    """Encode the three tissue masks of one slice as a binary Segmentation.

    Parameters
    ----------
    source : pydicom.Dataset
        The CT slice the masks were measured on (pixels not needed, but its
        geometry must be: Rows, Columns, PixelSpacing, ImagePositionPatient,
        ImageOrientationPatient, FrameOfReferenceUID).
    masks : mapping of str to numpy.ndarray
        Boolean (or 0/1) arrays of shape (Rows, Columns) for the keys
        ``"muscle"``, ``"subcutaneous_fat"`` and ``"visceral_fat"``.
    algorithm : core.findings.AlgorithmInfo
        The model that chose the slice; its display name (with "(DEMO)") is
        the segment algorithm name.
    params : sr_writer.common.SeriesParams
        UID root (series and instance UIDs), Series and Instance Number,
        Institution Name (left out when None), and the Series Description
        (:data:`SERIES_DESCRIPTION` unless given; "(DEMO)" is appended for
        demo models).

    Returns
    -------
    pydicom.Dataset
        A :class:`highdicom.seg.Segmentation`; empty masks are kept as
        empty frames so that every segment reads back.

    Raises
    ------
    sr_writer.errors.InvalidResultError
        (a ValueError) On a missing or extra mask, a mask of another shape
        than the slice, or values other than 0/1.
    """
    if set(masks) != set(TISSUES):
        raise InvalidResultError(f"masks must be exactly {sorted(TISSUES)}, got {sorted(masks)}")
    rows, columns = int(source.Rows), int(source.Columns)
    planes = []
    for key in TISSUES:
        mask = np.asarray(masks[key])
        if mask.shape != (rows, columns):
            raise InvalidResultError(f"mask {key!r} has shape {mask.shape}, the slice is {rows}x{columns}")
        if mask.dtype != bool and not np.isin(mask, (0, 1)).all():
            raise InvalidResultError(f"mask {key!r} has values other than 0 and 1")
        planes.append(mask.astype(bool))
    pixels = np.stack(planes, axis=-1)[np.newaxis]  # (frames=1, rows, columns, segments)

    name = lo(algorithm.display_name, "algorithm display name")
    descriptions = []
    for number, (key, (label, type_key, modifier_key, hu_key)) in enumerate(TISSUES.items(), start=1):
        low, high = HU_RANGES[hu_key]
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=code("tissue"),
            segmented_property_type=code(type_key),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name=name,
                family=code("artificial_intelligence"),
                version=lo(algorithm.version, "version"),
                source=lo(algorithm.manufacturer, "manufacturer"),
                parameters={"HU range": f"{low} to {high}", "mask": key},
            ),
            anatomic_regions=[code(REGION)],
            display_color=hd.color.CIELabColor.from_rgb(*COLOURS[key]),
        )
        if modifier_key is not None:
            # Segmented Property Type Modifier Code Sequence (0062,0011); highdicom takes no modifier.
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                code(modifier_key)
            ]
        descriptions.append(description)
    cleaned = with_empty_type2(source)
    seg = hd.seg.Segmentation(
        source_images=[cleaned],
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        **new_instance(params),
        institution_name=params.institution_name,
        manufacturer_model_name=name,
        software_versions=software_version(),
        device_serial_number=MANUFACTURER,
        content_label="BODYCOMP",
        content_description=lo(f"Body composition on the L3 slice by {name}", "content description"),
        omit_empty_frames=False,
    )
    # highdicom draws a random Dimension Organization UID under its own root; ours, like every UID we
    # write, is under the configured root (and the same when a job runs again: sr_writer.uids).
    dimension_uid = new_uid(params.uid_root)
    for item in (*seg.DimensionOrganizationSequence, *seg.get("DimensionIndexSequence", [])):
        item.DimensionOrganizationUID = dimension_uid
    name_series(seg, [algorithm], params.description(SERIES_DESCRIPTION), [cleaned])
    return seg
