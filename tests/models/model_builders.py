"""Builders of small grey DICOM images for the ``models/`` tests.

``build_grey_image(pixels, ...)`` returns an in-memory pydicom Dataset with a native
(uncompressed) Explicit VR Little Endian Image Pixel module (PS3.3 C.7.6.3) whose
attributes are derived from the array's dtype and the arguments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.helpers.radiographs import cxr_view_dir, repo_root


def build_grey_image(
    pixels: np.ndarray,
    *,
    bits_stored: int | None = None,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
    voi_function: str | None = None,
    rescale: tuple[float, float] | None = None,
    view_position: str | None = None,
    **attributes: Any,
) -> Dataset:
    """A DX-like dataset holding ``pixels`` (2-D, or 3-D = frames) as native pixel data."""
    pixels = np.ascontiguousarray(pixels)
    signed = np.issubdtype(pixels.dtype, np.signedinteger)
    bits_allocated = pixels.dtype.itemsize * 8
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "DX"
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored or bits_allocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(signed)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_function is not None:
        ds.VOILUTFunction = voi_function
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
        ds.RescaleType = "US"
    if view_position is not None:
        ds.ViewPosition = view_position
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<"), copy=False).tobytes()
    return ds


def held_out(view: str) -> list[tuple[Path, float]]:
    """Held-out PNGs of one view from ``weights/cxr-view-filter/holdout.txt``, with P(lateral)."""
    listing = repo_root() / "weights" / "cxr-view-filter" / "holdout.txt"
    data = cxr_view_dir()
    found = []
    for line in listing.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        path, true_view, p_lateral = line.split(",")
        if true_view == view:
            found.append((data / path, float(p_lateral)))
    return found


def png_as_dicom(png: Path, view_position: str | None, *, invert: bool = False) -> Dataset:
    """An 8-bit grey PNG as a DICOM image whose window reproduces the PNG's grey levels.

    LINEAR_EXACT with centre 127.5 and width 255 maps stored value v to v/255 (PS3.3
    C.11.2.1.3.2), what training did with the PNG. ``invert`` stores 255 − v as
    MONOCHROME1, which must give the same input.
    """
    from PIL import Image

    with Image.open(png) as image:
        grey = np.asarray(image.convert("L"), dtype=np.uint8)
    if invert:
        return build_grey_image(
            255 - grey,
            photometric="MONOCHROME1",
            window=(127.5, 255.0),
            voi_function="LINEAR_EXACT",
            view_position=view_position,
        )
    return build_grey_image(grey, window=(127.5, 255.0), voi_function="LINEAR_EXACT", view_position=view_position)
