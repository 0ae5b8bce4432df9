"""Projection radiograph (CR/DX) pixels → a float image in 0..1, bone white.

The display pipeline of PS3.3 C.11 (and PS3.4 N.2) is followed up to the VOI stage:

1. stored values → Modality LUT or Rescale Slope/Intercept (PS3.3 C.11.1),
   ``pydicom.pixels.apply_modality_lut``;
2. VOI: a VOI LUT Sequence (``pydicom.pixels.apply_voi``), else the first Window
   Center/Width pair with its VOI LUT Function (LINEAR, LINEAR_EXACT, SIGMOID;
   PS3.3 C.11.2.1.2), else a robust window from the 0.5th to the 99.5th percentile
   of the image (what a viewer's auto-window does, ignoring collimator edges and
   burnt-in text);
3. scaled to 0..1 and, for MONOCHROME1 (minimum = white, PS3.3 C.7.6.3.1.2),
   inverted, so that dense structures (bone) are bright in every output.

Colour images (RGB, YBR decoded to RGB by pydicom, PALETTE COLOR) become luminance
(ITU-R BT.601 weights) scaled by their own percentile window. Of a multi-frame
image only the first frame is used: a radiograph is one projection, and the
frames of the rare multi-frame DX are usually repeats of it.

Resizing (:func:`resize_image`) is an area average when shrinking (each output
pixel is the mean of the input pixels it covers, so thin structures are not lost
to aliasing) and bilinear when enlarging. The aspect ratio is **stretched**, not
padded: the view filter's source design (the MIMIC-CXR view-filter design, see
:mod:`models`) was trained on images resized plainly to 64×64, and its training in
``training.view_filter`` uses this same function, so inference sees the same geometry
as training did.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.errors import PreprocessError

__all__ = ["radiograph_to_unit", "resize_image", "radiograph_input", "grey_png_to_input"]

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


def _check_pixel_module(ds: Any) -> None:
    """Raise :class:`PreprocessError` for missing or inconsistent Image Pixel attributes."""
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise PreprocessError("the dataset has no Pixel Data (7FE0,0010): nothing to analyse")
    for keyword in ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "PhotometricInterpretation"):
        if ds.get(keyword) in (None, ""):
            raise PreprocessError(f"the Image Pixel module lacks {keyword} (PS3.3 C.7.6.3)")
    rows, columns = int(ds.Rows), int(ds.Columns)
    if rows < 2 or columns < 2:
        raise PreprocessError(f"image of {rows}×{columns} pixels is too small to analyse")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if "PixelData" in ds and (syntax is None or not syntax.is_compressed):
        frames = int(ds.get("NumberOfFrames") or 1)
        bits = int(ds.BitsAllocated)
        per_frame_bits = rows * columns * int(ds.SamplesPerPixel) * bits
        needed = (per_frame_bits * frames + 7) // 8
        found = len(ds.PixelData or b"")
        if found < needed:
            raise PreprocessError(
                f"Pixel Data holds {found} bytes but Rows {rows} × Columns {columns} × "
                f"Samples {ds.SamplesPerPixel} × {bits} bits × {frames} frame(s) need {needed}"
            )


def _decode_first_frame(ds: Any) -> np.ndarray:
    try:
        arr = np.asarray(ds.pixel_array)
    except Exception as exc:  # pydicom raises ValueError/NotImplementedError/RuntimeError
        raise PreprocessError(f"cannot decode Pixel Data: {exc}") from exc
    frames = int(ds.get("NumberOfFrames") or 1)
    samples = int(ds.SamplesPerPixel)
    if frames > 1:
        arr = arr[0]
    expected_ndim = 3 if samples > 1 else 2
    if arr.ndim != expected_ndim:
        raise PreprocessError(f"decoded pixels have shape {arr.shape}, expected {expected_ndim} dimensions")
    return arr


def _percentile_window(values: np.ndarray) -> np.ndarray:
    low, high = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    if high <= low:
        low, high = float(values.min()), float(values.max())
    if high <= low:  # a constant image: no contrast to show
        return np.zeros(values.shape, dtype=np.float64)
    return np.asarray(np.clip((values - low) / (high - low), 0.0, 1.0), dtype=np.float64)


def _first(value: Any) -> float:
    if isinstance(value, (list, tuple)) or (hasattr(value, "__len__") and not isinstance(value, str)):
        return float(value[0])
    return float(value)


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """VOI LUT Function of PS3.3 C.11.2.1.2/3, output scaled to 0..1."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    return np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def _voi_to_unit(values: np.ndarray, ds: Any) -> np.ndarray:
    from pydicom.pixels.processing import apply_voi

    if ds.get("VOILUTSequence"):
        item = ds.VOILUTSequence[0]
        entries, first_map = int(item.LUTDescriptor[0]) or 65536, int(item.LUTDescriptor[1])
        # The LUT's output range, found by passing its whole domain through it.
        table = apply_voi(np.arange(first_map, first_map + entries), ds).astype(np.float64)
        mapped = apply_voi(np.rint(values).astype(np.int64), ds).astype(np.float64)
        low, high = float(table.min()), float(table.max())
        return np.clip((mapped - low) / (high - low), 0.0, 1.0) if high > low else np.zeros_like(mapped)
    if ds.get("WindowCenter") not in (None, "") and ds.get("WindowWidth") not in (None, ""):
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        function = str(ds.get("VOILUTFunction") or "LINEAR").upper()
        minimum_width = 0.0 if function in ("SIGMOID", "LINEAR_EXACT") else 1.0
        if width > minimum_width:
            return _window(values, center, width, function)
    return _percentile_window(values)


def radiograph_to_unit(ds: Any) -> np.ndarray:
    """Pixels of a dataset as a 2-D float32 array in 0..1, dense (bone) bright.

    Parameters
    ----------
    ds : pydicom.Dataset
        A dataset with the Image Pixel module (PS3.3 C.7.6.3); grey (MONOCHROME1/2)
        or colour. Multi-frame: the first frame.

    Returns
    -------
    numpy.ndarray
        float32, shape (Rows, Columns), values in [0, 1].

    Raises
    ------
    PreprocessError
        Missing or short Pixel Data, missing Image Pixel attributes, undecodable
        pixels (e.g. a compressed transfer syntax without its decoder).
    """
    from pydicom.pixels.processing import apply_color_lut, apply_modality_lut

    _check_pixel_module(ds)
    arr = _decode_first_frame(ds)
    photometric = str(ds.PhotometricInterpretation).upper()
    if photometric == "PALETTE COLOR":
        try:
            arr = apply_color_lut(arr, ds)
        except Exception as exc:
            raise PreprocessError(f"cannot apply the palette colour LUT: {exc}") from exc
        photometric = "RGB"
    if arr.ndim == 3:
        luminance = arr[..., :3].astype(np.float64) @ _LUMA
        return _percentile_window(luminance).astype(np.float32)
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise PreprocessError(f"unsupported Photometric Interpretation {photometric!r} for one sample per pixel")
    values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    unit = _voi_to_unit(values, ds)
    if photometric == "MONOCHROME1":
        unit = 1.0 - unit
    return unit.astype(np.float32)


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a 2-D float image to ``height × width`` (area average down, bilinear up).

    The aspect ratio is stretched, as in the view filter's training (see the module docstring).
    """
    from PIL import Image

    if image.ndim != 2:
        raise PreprocessError(f"expected a 2-D image, got shape {image.shape}")
    if image.shape == (height, width):
        return image.astype(np.float32, copy=True)
    shrinking = image.shape[0] >= height and image.shape[1] >= width
    resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    resized = Image.fromarray(image.astype(np.float32), mode="F").resize((width, height), resample=resample)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def radiograph_input(ds: Any, height: int, width: int) -> np.ndarray:
    """:func:`radiograph_to_unit` then :func:`resize_image`: a (height, width) float32 array."""
    return resize_image(radiograph_to_unit(ds), height, width)


def grey_png_to_input(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """An 8-bit grey display image (a training PNG) → the same input as a DICOM would give.

    A PNG of a radiograph is already windowed for display, white = dense, so it is
    only scaled to 0..1 before resizing.
    """
    if pixels.ndim != 2:
        raise PreprocessError(f"expected a grey image, got shape {pixels.shape}")
    scale = 65535.0 if pixels.dtype == np.uint16 else 255.0
    return resize_image(pixels.astype(np.float32) / scale, height, width)
