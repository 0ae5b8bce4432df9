"""Radiograph preprocessing on real pydicom test files and on images built here."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from models.errors import PreprocessError
from models.preprocess.radiograph import grey_png_to_input, radiograph_input, radiograph_to_unit, resize_image
from tests.models.model_builders import build_grey_image


def read(name: str) -> Dataset:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} is missing: install pydicom-data (test extra)"
    return pydicom.dcmread(path)


def assert_unit_image(out: np.ndarray, shape: tuple[int, int]) -> None:
    assert out.dtype == np.float32 and out.shape == shape
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert float(out.max()) - float(out.min()) > 0.5  # the window shows real contrast


@pytest.mark.parametrize(
    "name",
    ["CT_small.dcm", "MR_small.dcm", "US1_J2KR.dcm", "RG1_UNCR.dcm", "RG1_J2KI.dcm", "RG3_UNCR.dcm", "MR2_J2KR.dcm"],
)
def test_real_files_give_unit_range_images_of_their_size(name: str) -> None:
    ds = read(name)
    assert_unit_image(radiograph_to_unit(ds), (ds.Rows, ds.Columns))
    assert radiograph_input(ds, 64, 64).shape == (64, 64)


def test_monochrome1_chest_is_shown_bone_white() -> None:
    ds = read("RG1_UNCR.dcm")
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    out = radiograph_to_unit(ds).astype(np.float64)
    stored = ds.pixel_array.astype(np.float64)
    # MONOCHROME1: a higher stored value is darker, so output falls as stored rises.
    assert np.corrcoef(stored.ravel()[::97], out.ravel()[::97])[0, 1] < -0.9
    # The spine (central columns) is brighter than the lungs either side of it.
    small = resize_image(radiograph_to_unit(ds), 64, 64)
    spine = small[20:44, 30:34].mean()
    lungs = np.concatenate([small[20:44, 14:20], small[20:44, 44:50]]).mean()
    assert spine > lungs + 0.05


def test_lossy_and_lossless_copies_agree() -> None:
    lossless = radiograph_input(read("RG1_UNCR.dcm"), 64, 64)
    lossy = radiograph_input(read("RG1_J2KI.dcm"), 64, 64)
    assert float(np.abs(lossless - lossy).mean()) < 0.01


def test_rgb_becomes_luminance() -> None:
    ds = read("US1_J2KR.dcm")
    rgb = ds.pixel_array.astype(np.float64)
    out = radiograph_to_unit(ds)
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    assert np.corrcoef(luma.ravel(), out.ravel())[0, 1] > 0.99


def test_multiframe_uses_the_first_frame() -> None:
    ds = read("emri_small.dcm")  # 10 frames, 12 bits stored
    assert int(ds.NumberOfFrames) == 10 and ds.BitsStored == 12
    frames = ds.pixel_array
    single = build_grey_image(frames[0].astype(np.uint16), bits_stored=12)
    np.testing.assert_array_equal(radiograph_to_unit(ds), radiograph_to_unit(single))
    other = build_grey_image(frames[5].astype(np.uint16), bits_stored=12)
    assert not np.array_equal(radiograph_to_unit(ds), radiograph_to_unit(other))


def ramp(dtype: type, low: int, high: int, shape: tuple[int, int] = (40, 50), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(low, high, size=shape, endpoint=True).astype(dtype)


def test_monochrome1_equals_monochrome2_of_negated_data() -> None:
    data = ramp(np.int16, -3000, 3000)
    as_m1 = radiograph_to_unit(build_grey_image(data, photometric="MONOCHROME1"))
    as_m2 = radiograph_to_unit(build_grey_image((-data).astype(np.int16), photometric="MONOCHROME2"))
    np.testing.assert_allclose(as_m1, as_m2, atol=1e-6)


@pytest.mark.parametrize("bits", [10, 12, 14, 16])
def test_unsigned_bit_depths_with_percentile_window(bits: int) -> None:
    data = ramp(np.uint16, 0, 2**bits - 1)
    out = radiograph_to_unit(build_grey_image(data, bits_stored=bits))
    assert_unit_image(out, data.shape)
    assert out.flat[np.argmax(data)] == 1.0 and out.flat[np.argmin(data)] == 0.0


def test_signed_sixteen_bit_keeps_order() -> None:
    data = ramp(np.int16, -32000, 32000)
    out = radiograph_to_unit(build_grey_image(data))
    assert_unit_image(out, data.shape)
    order = np.argsort(data.ravel(), kind="stable")
    assert np.all(np.diff(out.ravel()[order]) >= 0)  # monotonic: negative values stay darker


def test_twelve_bit_window_follows_ps3_3_linear_function() -> None:
    data = np.array([[0, 1000, 1500, 2000, 4095]] * 4, dtype=np.uint16)
    out = radiograph_to_unit(build_grey_image(data, bits_stored=12, window=(1500.0, 1001.0)))
    np.testing.assert_allclose(out[0], [0.0, 0.0005, 0.5005, 1.0, 1.0], atol=1e-4)


def test_window_applies_to_rescaled_values() -> None:
    stored = np.array([[0, 500, 1000, 1500, 2000]] * 4, dtype=np.uint16)  # HU = 2*stored - 1000
    out = radiograph_to_unit(
        build_grey_image(stored, rescale=(2.0, -1000.0), window=(0.0, 2000.0), voi_function="LINEAR_EXACT")
    )
    np.testing.assert_allclose(out[0], [0.0, 0.5, 1.0, 1.0, 1.0], atol=1e-6)  # HU -1000, 0, 1000, ...
    assert radiograph_to_unit(build_grey_image(stored, window=(0.0, 2000.0), voi_function="LINEAR_EXACT"))[0, 1] == 0.75


def test_sigmoid_voi_function() -> None:
    data = np.array([[100, 200, 300]] * 3, dtype=np.uint16)
    out = radiograph_to_unit(build_grey_image(data, window=(200.0, 100.0), voi_function="SIGMOID"))
    np.testing.assert_allclose(out[0], 1 / (1 + np.exp(-4 * (data[0] - 200.0) / 100.0)), rtol=1e-6)


def test_voi_lut_sequence_is_used_and_scaled_to_its_range() -> None:
    data = np.array([[0, 1, 2, 3]] * 3, dtype=np.uint16)
    item = Dataset()
    item.LUTDescriptor = [4, 0, 16]
    item.LUTData = [100, 200, 300, 1100]
    ds = build_grey_image(data, bits_stored=12, window=(0.0, 1.0))  # the LUT takes precedence
    ds.VOILUTSequence = DicomSequence([item])
    np.testing.assert_allclose(radiograph_to_unit(ds)[0], [0.0, 0.1, 0.2, 1.0], atol=1e-6)


def test_constant_image_is_black_not_an_error() -> None:
    out = radiograph_to_unit(build_grey_image(np.full((8, 8), 700, dtype=np.uint16)))
    assert out.shape == (8, 8) and float(out.max()) == 0.0


def test_missing_pixel_data_is_a_clear_error() -> None:
    ds = build_grey_image(np.zeros((8, 8), dtype=np.uint16))
    del ds.PixelData
    with pytest.raises(PreprocessError, match=r"no Pixel Data \(7FE0,0010\)"):
        radiograph_to_unit(ds)


def test_short_pixel_data_names_the_sizes() -> None:
    ds = build_grey_image(np.zeros((8, 8), dtype=np.uint16))
    ds.Rows = 16  # the data hold 8 rows only
    with pytest.raises(PreprocessError, match=r"holds 128 bytes but Rows 16 × Columns 8 .* need 256"):
        radiograph_to_unit(ds)


def test_missing_rows_and_undecodable_data_are_preprocess_errors() -> None:
    ds = build_grey_image(np.zeros((8, 8), dtype=np.uint16))
    del ds.Rows
    with pytest.raises(PreprocessError, match="lacks Rows"):
        radiograph_to_unit(ds)
    bad = build_grey_image(np.zeros((8, 8), dtype=np.uint16))
    bad.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"  # says JPEG, holds raw bytes
    bad.PixelData = pydicom.encaps.encapsulate([b"\x00" * 16])
    with pytest.raises(PreprocessError, match="cannot decode Pixel Data"):
        radiograph_to_unit(bad)
    assert issubclass(PreprocessError, ValueError)


def test_area_resize_keeps_thin_lines_and_the_mean() -> None:
    image = np.zeros((512, 512), dtype=np.float32)
    image[:, 256] = 1.0  # a 1-pixel wire
    small = resize_image(image, 64, 64)
    assert small.shape == (64, 64)
    assert small.max() == pytest.approx(1 / 8, abs=1e-6)  # averaged into its 8-pixel cell, not dropped
    assert small.mean() == pytest.approx(image.mean(), rel=1e-5)
    assert resize_image(np.eye(4, dtype=np.float32), 8, 8).shape == (8, 8)  # enlarging works too


def test_png_and_dicom_of_the_same_pixels_give_the_same_input() -> None:
    grey = ramp(np.uint8, 0, 255, shape=(128, 96))
    from_png = grey_png_to_input(grey, 64, 64)
    from_dicom = radiograph_input(build_grey_image(grey, window=(127.5, 255.0), voi_function="LINEAR_EXACT"), 64, 64)
    np.testing.assert_allclose(from_png, from_dicom, atol=1e-6)


def test_unused_high_bits_are_ignored_and_twelve_bit_signed_is_sign_extended() -> None:
    clean = np.array([[5, 100, 4095, 7]] * 3, dtype=np.uint16)
    dirty = clean | np.uint16(0xF000)  # overlay bits above BitsStored 12 (PS3.5 8.1.1)
    np.testing.assert_array_equal(
        radiograph_to_unit(build_grey_image(clean, bits_stored=12)),
        radiograph_to_unit(build_grey_image(dirty, bits_stored=12)),
    )
    raw = np.array([[0x0800, 0x0FFF, 0x0000, 0x07FF]] * 3, dtype=np.uint16)  # -2048, -1, 0, 2047
    ds = build_grey_image(raw, bits_stored=12)
    ds.PixelRepresentation = 1
    out = radiograph_to_unit(ds)[0]
    assert out[0] == 0.0 and out[3] == 1.0 and out[0] < out[1] < out[2] < out[3]
