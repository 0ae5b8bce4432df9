"""The shipped view filter (seed 5) and its ONNX backend on real radiographs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from models.backends.onnx_backend import OnnxModel
from models.errors import ModelError, PreprocessError
from models.manifest import Manifest, load_manifest, manifest_from_mapping
from models.registry import ModelRegistry
from models.view_filter import ViewFilter, header_view
from tests.helpers.radiographs import repo_root, rg1_uncr_path
from tests.models.model_builders import build_grey_image, held_out, png_as_dicom


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return ModelRegistry.discover(repo_root() / "weights").require("cxr-view-filter")


@pytest.fixture(scope="module")
def view_filter(manifest: Manifest) -> ViewFilter:
    return ViewFilter.from_manifest(manifest, threads=1)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("PA", "frontal"),
        ("AP", "frontal"),
        (" ap ", "frontal"),
        ("AP SUPINE", "frontal"),
        ("PA-ERECT", "frontal"),
        ("LL", "lateral"),
        ("RL", "lateral"),
        ("LATERAL", "lateral"),
        ("lat", "lateral"),
        ("RLD", None),
        ("LLD", None),
        ("APEX", None),
        ("", None),
        (None, None),
    ],
)
def test_header_view_position_mapping(value: str | None, expected: str | None) -> None:
    assert header_view(value) == expected


def test_real_chest_cr_is_frontal(view_filter: ViewFilter) -> None:
    [result] = view_filter.predict([pydicom.dcmread(rg1_uncr_path())])
    assert result.view == "frontal" and result.probability >= 0.9
    assert (result.header_view_position, result.header_view, result.disagreement) == ("PA", "frontal", False)


def test_held_out_laterals_are_lateral_in_one_batch(view_filter: ViewFilter) -> None:
    laterals = held_out("lateral")
    assert len(laterals) >= 5
    results = view_filter.predict([png_as_dicom(png, "LL") for png, _ in laterals])
    assert [r.view for r in results] == ["lateral"] * len(laterals)
    for result, (png, p_lateral) in zip(results, laterals, strict=False):
        # The DICOM route reproduces the training input: same probability as holdout.txt.
        assert result.probability == pytest.approx(p_lateral, abs=2e-3), png.name
        assert result.header_view == "lateral" and not result.disagreement


def test_monochrome1_copy_gives_the_same_answer(view_filter: ViewFilter) -> None:
    png, _ = held_out("lateral")[0]
    plain, inverted = view_filter.predict([png_as_dicom(png, None), png_as_dicom(png, None, invert=True)])
    assert plain.view == inverted.view == "lateral"
    assert plain.probability == pytest.approx(inverted.probability, abs=1e-5)
    assert plain.header_view is None and not plain.disagreement


def test_header_disagreement_is_flagged_when_the_model_is_confident(view_filter: ViewFilter) -> None:
    png, p_lateral = max(held_out("lateral"), key=lambda item: item[1])
    assert p_lateral >= 0.99
    rg1 = pydicom.dcmread(rg1_uncr_path())
    rg1.ViewPosition = "LL"  # a frontal image whose header says lateral
    lateral_said_pa, frontal_said_ll = view_filter.predict([png_as_dicom(png, "PA"), rg1])
    assert (lateral_said_pa.view, lateral_said_pa.header_view, lateral_said_pa.disagreement) == (
        "lateral",
        "frontal",
        True,
    )
    assert (frontal_said_ll.view, frontal_said_ll.header_view, frontal_said_ll.disagreement) == (
        "frontal",
        "lateral",
        True,
    )


def test_no_disagreement_below_the_manifest_probability(manifest: Manifest, tmp_path: Path) -> None:
    data = manifest.to_json_dict()
    data["postprocessing"] = {"disagreement_probability": 1.01}  # never confident enough
    shutil.copy(manifest.weights_path, tmp_path / manifest.weights)
    strict = ViewFilter.from_manifest(manifest_from_mapping(data, tmp_path, "test"))
    png, _ = held_out("lateral")[0]
    [result] = strict.predict([png_as_dicom(png, "PA")])
    assert result.view == "lateral" and result.header_view == "frontal" and not result.disagreement


def test_bad_image_in_a_batch_names_its_uid(view_filter: ViewFilter) -> None:
    broken = build_grey_image(np.zeros((8, 8), dtype=np.uint16))
    del broken.PixelData
    with pytest.raises(PreprocessError, match=broken.SOPInstanceUID):
        view_filter.predict([pydicom.dcmread(rg1_uncr_path()), broken])
    assert view_filter.predict([]) == []


def test_algorithm_identification(view_filter: ViewFilter, manifest: Manifest) -> None:
    info = view_filter.algorithm
    assert (info.name, info.version, info.weights_sha256, info.demo) == (
        "cxr-view-filter",
        manifest.version,
        manifest.sha256,
        False,
    )


def test_onnx_backend_shapes_threads_and_errors(manifest: Manifest, tmp_path: Path) -> None:
    model = OnnxModel(manifest, threads=2)
    assert model._session.get_session_options().intra_op_num_threads == 2
    out = model.run(np.zeros((3, 64, 64, 1), dtype=np.float32))
    assert out.shape == (3, 1) and np.all((out >= 0) & (out <= 1))
    with pytest.raises(ValueError, match="does not match"):
        model.run(np.zeros((1, 1, 64, 64), dtype=np.float32))
    data = manifest.to_json_dict()
    (tmp_path / "model.onnx").write_bytes(b"this is not an ONNX file")
    with pytest.raises(ModelError, match="cannot load ONNX weights"):
        OnnxModel(manifest_from_mapping(data, tmp_path, "garbage"))
    with pytest.raises(ModelError, match="backend 'keras'"):
        OnnxModel(manifest_from_mapping({**data, "backend": "keras"}, tmp_path, "keras"))
    shutil.copy(manifest.weights_path, tmp_path / "model.onnx")
    wrong_size = {**data, "input": {**data["input"], "height": 128}}
    with pytest.raises(ModelError, match="graph input 'image'"):
        OnnxModel(manifest_from_mapping(wrong_size, tmp_path, "wrong size"))
    with pytest.raises(ModelError, match="not 'view-filter'"):
        ViewFilter(OnnxModel(manifest_from_mapping({**data, "task": "classification"}, tmp_path, "task")))


def test_shipped_manifest_describes_seed_5_input() -> None:
    shipped = load_manifest(repo_root() / "weights" / "cxr-view-filter" / "model.json")
    spec = shipped.input
    assert (spec.height, spec.width, spec.channels, spec.layout) == (64, 64, 1, "NHWC")
    assert shipped.backend == "onnx" and shipped.task == "view-filter" and not shipped.demo
    assert "non-commercial" in shipped.licence.lower()
    assert shipped.weights_path.stat().st_size < 1_000_000
