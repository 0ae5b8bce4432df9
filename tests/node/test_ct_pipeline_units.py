"""The CT pipelines in-process: ``ct_pe`` and ``ct_lumbar`` on small phantoms, and on damaged series.

Detection is checked with the repository's demo weights (``weights/ct-pe``, ``weights/ct-lumbar``,
listed in ``config/models.yaml``) on phantoms of the size they were trained on: the planted right
embolus is found on its slices and side, a phantom without one is negative, the L3 slice and the
three tissue areas of an abdomen match the phantom's truth. Every object written passes dciodvfy.

Damaged input is checked with tiny constant ONNX models written by the test (one MatMul on the
mean of each window; the answer is set by the bias), so the test is about the pipeline's handling
of the series and not about a model: a file gone from the spool, a radiograph in a CT series, a
slice without pixels or cut short, a sagittal reformat, too few slices, undecodable pixels. Each
gives a warning with the reason (the rest of the series analysed) or an InputError naming it.
"""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import onnx
import pydicom
import pytest
from onnx import TensorProto, helper, numpy_helper
from pydicom.uid import JPEG2000Lossless

from core.findings import LUMBAR_LEVELS, PE_HEADS
from models.manifest import sha256_file
from models.registry import ModelRegistry
from node.errors import ConfigError, InputError
from node.pipelines import PIPELINE_MODELS
from node.pipelines.ct_lumbar import MIN_SLICES as LUMBAR_MIN_SLICES
from node.pipelines.ct_lumbar import CtLumbarPipeline
from node.pipelines.ct_pe import MIN_SLICES as PE_MIN_SLICES
from node.pipelines.ct_pe import CtPePipeline
from node.pipelines.registry import PIPELINES, build_pipeline
from node.settings import DEFAULT_MODELS_DIR, DEFAULT_MODELS_FILE, Settings
from tests.helpers import assert_dciodvfy_clean, lateral_radiograph
from training.phantoms.ct import CtPhantom, abdomen_phantom, ctpa_phantom

UID_ROOT = "1.2.826.0.1.3680043.8.498.1"
PE_WINDOWS = [[100.0, 700.0], [40.0, 400.0], [-600.0, 1500.0]]


# --------------------------------------------------------------------------- tiny constant models


def write_constant_model(
    folder: Path,
    name: str,
    labels: tuple[str, ...],
    bias: list[float],
    *,
    channels: int,
    windows: list[list[float]],
    softmax: bool,
    size: int = 64,
) -> None:
    """A model folder (``model.onnx`` + ``model.json``) whose output is ``activation(bias)`` for any slice.

    The graph averages each input channel, multiplies by zero weights and adds ``bias``: a real
    ONNX model of the manifest's input shape whose answer the test chooses.
    """
    folder.mkdir(parents=True, exist_ok=True)
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", size, size, channels])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", len(labels)])
    init = [
        numpy_helper.from_array(np.zeros((channels, len(labels)), np.float32), "w"),
        numpy_helper.from_array(np.asarray(bias, np.float32), "b"),
        numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["image", "axes"], ["mean"], keepdims=0),
        helper.make_node("MatMul", ["mean", "w"], ["z"]),
        helper.make_node("Add", ["z", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["scores"], axis=-1)
        if softmax
        else helper.make_node("Sigmoid", ["logits"], ["scores"]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, name, [image], [scores], init), opset_imports=[helper.make_opsetid("", 18)]
    )
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, folder / "model.onnx")
    manifest = {
        "name": name,
        "version": "test-1",
        "task": "slice-classification",
        "backend": "onnx",
        "weights": "model.onnx",
        "sha256": sha256_file(folder / "model.onnx"),
        "labels": [{"key": key, "display": key} for key in labels],
        "input": {
            "height": size,
            "width": size,
            "channels": channels,
            "layout": "NHWC",
            "preprocessing": {"kind": "ct_windows", "windows": windows},
        },
        "demo": True,
    }
    (folder / "model.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def tiny_registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    """``ct-pe`` saying acute right-sided PE with RV/LV < 1 on every slice, ``ct-lumbar`` saying L3 everywhere."""
    root = tmp_path_factory.mktemp("tiny-ct-models")
    pe_bias = [-3.0] * len(PE_HEADS)  # sigmoid(-3) = 0.05: absent
    for head in ("pe_present_on_image", "rightsided_pe", "rv_lv_ratio_lt_1"):
        pe_bias[PE_HEADS.index(head)] = 3.0  # 0.95: present
    write_constant_model(root / "ct-pe", "ct-pe", PE_HEADS, pe_bias, channels=3, windows=PE_WINDOWS, softmax=False)
    level_bias = [0.0] * len(LUMBAR_LEVELS)
    level_bias[LUMBAR_LEVELS.index("L3")] = 4.0
    write_constant_model(
        root / "ct-lumbar", "ct-lumbar", LUMBAR_LEVELS, level_bias, channels=1, windows=[[400.0, 1800.0]], softmax=True
    )
    return ModelRegistry.discover(root)


@pytest.fixture(scope="module")
def tiny_pe(tiny_registry: ModelRegistry) -> CtPePipeline:
    return CtPePipeline(tiny_registry, uid_root=UID_ROOT)


@pytest.fixture(scope="module")
def tiny_lumbar(tiny_registry: ModelRegistry) -> CtLumbarPipeline:
    return CtLumbarPipeline(tiny_registry, uid_root=UID_ROOT)


# --------------------------------------------------------------------------- demo weights


@pytest.fixture(scope="module")
def demo_registry() -> ModelRegistry:
    """The models the node loads by default (``config/models.yaml`` over ``weights/``); verified by ``require``."""
    return ModelRegistry.discover(DEFAULT_MODELS_DIR, DEFAULT_MODELS_FILE)


def _series(phantom: CtPhantom, folder: Path) -> tuple[CtPhantom, list[Path]]:
    return phantom, phantom.write_series(folder)


@pytest.fixture(scope="module")
def ctpa_right(tmp_path_factory: pytest.TempPathFactory) -> tuple[CtPhantom, list[Path]]:
    # The demo PE model was trained on 60-slice 256² CTPA phantoms (its MODEL_CARD.md).
    return _series(ctpa_phantom(501, slices=60, size=256, embolus="right"), tmp_path_factory.mktemp("ctpa-right"))


@pytest.fixture(scope="module")
def ctpa_none(tmp_path_factory: pytest.TempPathFactory) -> tuple[CtPhantom, list[Path]]:
    return _series(ctpa_phantom(502, slices=60, size=256, embolus=None), tmp_path_factory.mktemp("ctpa-none"))


@pytest.fixture(scope="module")
def ctpa_left(tmp_path_factory: pytest.TempPathFactory) -> tuple[CtPhantom, list[Path]]:
    return _series(ctpa_phantom(2525, slices=60, size=256, embolus="left"), tmp_path_factory.mktemp("ctpa-left"))


@pytest.fixture(scope="module")
def abdomen(tmp_path_factory: pytest.TempPathFactory) -> tuple[CtPhantom, list[Path]]:
    return _series(abdomen_phantom(700, slices=60, size=256, spacing_z=5.0), tmp_path_factory.mktemp("abdomen"))


def _check_objects(objects: list[pydicom.Dataset], folder: Path) -> list[str]:
    """Write every object, check it with dciodvfy, return the modalities."""
    folder.mkdir(parents=True, exist_ok=True)
    for ds in objects:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert_dciodvfy_clean(path)
    return [str(ds.Modality) for ds in objects]


def test_ct_pipelines_are_registered_with_their_models(demo_registry: ModelRegistry, tmp_path: Path) -> None:
    assert PIPELINES.keys() == PIPELINE_MODELS.keys()
    assert PIPELINE_MODELS["ct_pe"] == ("ct-pe",) and PIPELINE_MODELS["ct_lumbar"] == ("ct-lumbar",)
    settings = Settings(data_dir=tmp_path / "data")
    assert isinstance(build_pipeline("ct_pe", settings, demo_registry), CtPePipeline)
    assert isinstance(build_pipeline("ct_lumbar", settings, demo_registry), CtLumbarPipeline)
    with pytest.raises(ConfigError, match="unknown pipeline 'ct_brain'"):
        build_pipeline("ct_brain", settings, demo_registry)


def test_demo_pe_model_finds_the_right_embolus_on_its_slices(
    demo_registry: ModelRegistry, ctpa_right: tuple[CtPhantom, list[Path]], tmp_path: Path
) -> None:
    phantom, paths = ctpa_right
    out = CtPePipeline(demo_registry, uid_root=UID_ROOT).analyse(
        phantom.truth["study_uid"], phantom.truth["series_uid"], paths
    )
    pe = out.result.pe
    assert pe is not None
    assert out.summary.startswith("PE present"), out.summary
    assert pe.exam_labels["rightsided_pe"] and not pe.exam_labels["negative_exam_for_pe"], pe.exam_probabilities
    assert not pe.exam_labels["leftsided_pe"], pe.exam_probabilities
    flagged = {pe.slice_uids[i] for i in pe.positive_slices}
    assert_on_the_clot(flagged, phantom)
    assert _check_objects(out.objects, tmp_path) == ["SR", "KO", "PR"]
    kos = out.objects[1]
    keys = {
        ref.ReferencedSOPInstanceUID
        for s in kos.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for ref in s.ReferencedSOPSequence
    }
    assert keys and keys <= flagged


def assert_on_the_clot(flagged: set[str], phantom: CtPhantom) -> None:
    """Some slices are flagged, and every one lies in the clot's slab or next to it (the README: "its flagged slices
    on the clot"), not merely one of them."""
    order = phantom.truth["sop_uids"]  # volume order
    clot = phantom.truth["pe_slices"]
    found = sorted(order.index(uid) for uid in flagged)
    assert found and all(min(clot) - 1 <= k <= max(clot) + 1 for k in found), (found, clot)


def _stored_mirrored(paths: list[Path], folder: Path) -> list[Path]:
    """The series as a scanner storing its columns from the patient's left to right would: every row reversed and
    ImageOrientationPatient's row direction (−1, 0, 0), so the patient is the same, only the storage differs."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.PixelData = np.ascontiguousarray(ds.pixel_array[:, ::-1]).tobytes()
        ds.ImageOrientationPatient = ["-1", "0", "0", "0", "1", "0"]
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [f"{x + (ds.Columns - 1) * float(ds.PixelSpacing[1]):.3f}", f"{y:.3f}", f"{z:.3f}"]
        ds.save_as(folder / path.name, enforce_file_format=True)
        out.append(folder / path.name)
    return out


def test_demo_pe_model_tells_a_left_embolus_from_a_right_one_however_the_columns_are_stored(
    demo_registry: ModelRegistry, ctpa_left: tuple[CtPhantom, list[Path]], tmp_path: Path
) -> None:
    # The demo manifest says location "mirror": the side comes from the slice head's fall when each half of the
    # chest is replaced by the other's mirror image; the location heads alone called every clot right-sided.
    phantom, paths = ctpa_left
    for series in (paths, _stored_mirrored(paths, tmp_path / "mirrored")):
        out = CtPePipeline(demo_registry, uid_root=UID_ROOT).analyse(
            phantom.truth["study_uid"], phantom.truth["series_uid"], series
        )
        pe = out.result.pe
        assert pe is not None and not pe.exam_labels["negative_exam_for_pe"], out.summary
        assert pe.exam_labels["leftsided_pe"] and not pe.exam_labels["rightsided_pe"], pe.exam_probabilities
        assert_on_the_clot({pe.slice_uids[i] for i in pe.positive_slices}, phantom)
        assert "left" in out.summary.lower(), out.summary


def test_demo_pe_model_calls_a_phantom_without_embolus_negative(
    demo_registry: ModelRegistry, ctpa_none: tuple[CtPhantom, list[Path]], tmp_path: Path
) -> None:
    phantom, paths = ctpa_none
    out = CtPePipeline(demo_registry, uid_root=UID_ROOT).analyse(
        phantom.truth["study_uid"], phantom.truth["series_uid"], paths
    )
    pe = out.result.pe
    assert pe is not None
    assert out.summary.startswith("PE absent"), out.summary
    assert pe.exam_labels["negative_exam_for_pe"] and not pe.positive_slices
    assert _check_objects(out.objects, tmp_path) == ["SR"]  # no KOS or GSPS with nothing in it


def test_demo_lumbar_model_finds_levels_l3_and_body_composition(
    demo_registry: ModelRegistry, abdomen: tuple[CtPhantom, list[Path]], tmp_path: Path
) -> None:
    phantom, paths = abdomen
    out = CtLumbarPipeline(demo_registry, uid_root=UID_ROOT).analyse(
        phantom.truth["study_uid"], phantom.truth["series_uid"], paths
    )
    lumbar = out.result.lumbar
    assert lumbar is not None and lumbar.l3_index is not None, out.summary
    truth_levels = phantom.truth["levels_by_sop_uid"]
    agree = np.mean([level == truth_levels[uid] for uid, level in zip(lumbar.slice_uids, lumbar.levels, strict=False)])
    assert agree >= 0.85, out.summary
    order = [LUMBAR_LEVELS.index(r.level) for r in lumbar.runs]
    assert order == sorted(order) or order == sorted(order, reverse=True), "levels not monotonic along the series"
    assert len(lumbar.evaluated) < len(lumbar.slice_uids)  # searched, not every slice through the model
    truth_l3 = phantom.truth["sop_uids"].index(phantom.truth["l3_sop_uid"])
    found_l3 = phantom.truth["sop_uids"].index(lumbar.slice_uids[lumbar.l3_index])
    assert abs(found_l3 - truth_l3) <= 1, out.summary
    comp = lumbar.composition
    assert comp is not None
    areas = {
        "muscle": comp.muscle_cm2,
        "subcutaneous_fat": comp.subcutaneous_fat_cm2,
        "visceral_fat": comp.visceral_fat_cm2,
    }
    for tissue, expected in phantom.truth["areas_cm2"].items():
        assert areas[tissue] == pytest.approx(expected, rel=0.05), (tissue, areas, phantom.truth["areas_cm2"])
    assert _check_objects(out.objects, tmp_path) == ["SR", "PR", "KO", "SEG"]
    seg = hd.seg.segread(tmp_path / f"{out.objects[3].SOPInstanceUID}.dcm")
    assert len(seg.SegmentSequence) == 3


# --------------------------------------------------------------------------- damaged series


def test_constant_models_drive_each_branch(
    tiny_pe: CtPePipeline,
    tiny_lumbar: CtLumbarPipeline,
    ctpa_none: tuple[CtPhantom, list[Path]],
    abdomen: tuple[CtPhantom, list[Path]],
) -> None:
    # PE on every slice: the exam is positive and right-sided whatever the phantom shows.
    phantom, paths = ctpa_none
    out = tiny_pe.analyse(phantom.truth["study_uid"], phantom.truth["series_uid"], paths)
    assert out.summary.startswith("PE present (right)"), out.summary
    assert [str(o.Modality) for o in out.objects] == ["SR", "KO", "PR"]
    assert out.warnings == []  # consistent labels: nothing for the RSNA rules to correct
    # L3 on every slice, 300 mm of it: anatomically impossible (issue 14), so the levels are not determined;
    # the report says so and why, and nothing a radiologist could read as a level or an L3 finding is sent.
    # (A plausible map with its SEG and L3: test_demo_lumbar_model_finds_levels_l3_and_body_composition.)
    phantom, paths = abdomen
    out = tiny_lumbar.analyse(phantom.truth["study_uid"], phantom.truth["series_uid"], paths)
    lumbar = out.result.lumbar
    assert lumbar is not None and [r.level for r in lumbar.runs] == ["L3"]
    assert lumbar.l3_index is None and lumbar.composition is None
    assert any(r.startswith("L3 spans 300 mm") for r in lumbar.not_determined), lumbar.not_determined
    assert [str(o.Modality) for o in out.objects] == ["SR"]
    assert out.summary.startswith("level not determined: "), out.summary


def test_file_gone_from_the_spool_is_left_out_with_a_warning(
    tiny_pe: CtPePipeline, ctpa_none: tuple[CtPhantom, list[Path]]
) -> None:
    phantom, paths = ctpa_none
    gone = paths[10].with_name("IM-gone.dcm")
    out = tiny_pe.analyse(phantom.truth["study_uid"], phantom.truth["series_uid"], [*paths[:10], gone, *paths[11:]])
    assert any("IM-gone.dcm: unreadable" in w for w in out.warnings), out.warnings
    assert any("gap" in w.lower() or "missing" in w.lower() for w in out.warnings), out.warnings
    assert out.result.pe is not None and len(out.result.pe.slice_uids) == len(paths) - 1


def test_radiograph_mixed_into_a_ct_series_is_left_out(
    tiny_lumbar: CtLumbarPipeline, abdomen: tuple[CtPhantom, list[Path]], tmp_path: Path
) -> None:
    phantom, paths = abdomen
    radiograph = lateral_radiograph(tmp_path)
    uid = pydicom.dcmread(radiograph, stop_before_pixels=True).SOPInstanceUID
    out = tiny_lumbar.analyse(phantom.truth["study_uid"], phantom.truth["series_uid"], [radiograph, *paths])
    assert any(w.startswith(f"{uid}: not a CT image") for w in out.warnings), out.warnings
    assert out.result.lumbar is not None and len(out.result.lumbar.slice_uids) == len(paths)


def _rewrite(src: Path, dst: Path, change: object) -> Path:
    ds = pydicom.dcmread(src)
    change(ds)  # type: ignore[operator]
    ds.save_as(dst, enforce_file_format=True)
    return dst


def test_slice_without_pixels_or_cut_short_is_left_out(
    tiny_pe: CtPePipeline, ctpa_none: tuple[CtPhantom, list[Path]], tmp_path: Path
) -> None:
    phantom, paths = ctpa_none
    no_pixels = _rewrite(paths[5], tmp_path / "nopixels.dcm", lambda ds: delattr(ds, "PixelData"))
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(paths[20].read_bytes()[:-5000])
    series = [p for i, p in enumerate(paths) if i not in (5, 20)] + [no_pixels, truncated]
    out = tiny_pe.analyse(phantom.truth["study_uid"], phantom.truth["series_uid"], series)
    uids = phantom.truth["sop_uids"]
    assert f"{uids[5]}: no pixel data; left out" in out.warnings, out.warnings
    assert any(w.startswith(f"{uids[20]}: file truncated") for w in out.warnings), out.warnings
    assert out.result.pe is not None and len(out.result.pe.slice_uids) == len(paths) - 2


def test_sagittal_series_is_refused_naming_the_reason(
    tiny_pe: CtPePipeline, ctpa_none: tuple[CtPhantom, list[Path]], tmp_path: Path
) -> None:
    phantom, paths = ctpa_none

    def sagittal(k: int) -> object:
        def change(ds: pydicom.Dataset) -> None:
            ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
            ds.ImagePositionPatient = [-100.0 + 2.0 * k, -100.0, 150.0]

        return change

    series = [_rewrite(p, tmp_path / f"sag{k}.dcm", sagittal(k)) for k, p in enumerate(paths[: PE_MIN_SLICES + 2])]
    with pytest.raises(InputError, match=r"ct_pe: not an axial series: .*sagittal or coronal"):
        tiny_pe.analyse(phantom.truth["study_uid"], phantom.truth["series_uid"], series)


def test_too_few_slices_are_refused(
    tiny_pe: CtPePipeline,
    tiny_lumbar: CtLumbarPipeline,
    ctpa_none: tuple[CtPhantom, list[Path]],
    abdomen: tuple[CtPhantom, list[Path]],
) -> None:
    phantom, paths = ctpa_none
    with pytest.raises(
        InputError, match=rf"ct_pe: the series has {PE_MIN_SLICES - 1} axial slice\(s\).*at least {PE_MIN_SLICES}"
    ):
        tiny_pe.analyse(phantom.truth["study_uid"], phantom.truth["series_uid"], paths[: PE_MIN_SLICES - 1])
    phantom, paths = abdomen
    with pytest.raises(InputError, match=rf"at least {LUMBAR_MIN_SLICES}"):
        tiny_lumbar.analyse(phantom.truth["study_uid"], phantom.truth["series_uid"], paths[:5])


def test_series_with_nothing_readable_is_refused(tiny_lumbar: CtLumbarPipeline, tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not DICOM at all" * 10)
    radiograph = lateral_radiograph(tmp_path)
    with pytest.raises(InputError, match=r"ct_lumbar: no readable CT image in the series: junk.dcm: unreadable"):
        tiny_lumbar.analyse("1.2.3", "1.2.3.4", [junk, radiograph])


def test_undecodable_pixels_are_an_input_error(
    tiny_pe: CtPePipeline, ctpa_none: tuple[CtPhantom, list[Path]], tmp_path: Path
) -> None:
    phantom, paths = ctpa_none

    def broken_jpeg2000(ds: pydicom.Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
        ds.PixelData = pydicom.encaps.encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 60])

    broken = _rewrite(paths[7], tmp_path / "broken.dcm", broken_jpeg2000)
    series = [p for i, p in enumerate(paths) if i != 7] + [broken]
    with pytest.raises(InputError, match=rf"ct_pe: cannot decode the pixels of slice {phantom.truth['sop_uids'][7]}"):
        tiny_pe.analyse(phantom.truth["study_uid"], phantom.truth["series_uid"], series)


def test_localizer_sent_with_the_series_is_dropped(tiny_lumbar: CtLumbarPipeline, tmp_path: Path) -> None:
    phantom = abdomen_phantom(504, slices=LUMBAR_MIN_SLICES + 4, size=96, spacing_z=12.0)
    slices = phantom.write_series(tmp_path, localizer=True)
    every_file = sorted(tmp_path.glob("*.dcm"))  # what the node received: the scout is one of them
    assert len(every_file) == len(slices) + 1
    out = tiny_lumbar.analyse(phantom.truth["study_uid"], phantom.truth["series_uid"], every_file)
    scout = phantom.truth["localizer_sop_uid"]
    assert any(w.startswith(f"{scout}: localizer") for w in out.warnings), out.warnings
    assert (
        out.result.lumbar is not None and out.result.lumbar.slice_uids == phantom.truth["sop_uids"][: len(slices)][::-1]
    )
