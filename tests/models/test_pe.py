"""The PE model's serving code: windows, exam aggregation, RSNA consistency rules, key slices,
and ``PeModel`` end to end on a CT series written here, with a hand-built ONNX graph of the
same interface as the exported Xception (one input NHWC, one output of nine scores).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import onnx
import pydicom
import pytest
from onnx import TensorProto, helper, numpy_helper
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from core.findings import PE_EXAM_LABELS, PE_HEADS
from models.errors import ModelError
from models.manifest import load_manifest, sha256_file
from models.pe import (
    PeModel,
    aggregate_exam,
    apply_consistency,
    body_box,
    crop_to_body,
    exam_pe_probability,
    mirror_halves,
    select_key_slices,
    side_evidence,
    to_canonical,
    window_slices,
)
from models.preprocess.ct_series import plan_series

WINDOWS = [[100.0, 700.0], [40.0, 400.0], [-600.0, 1500.0]]
T = {label: 0.5 for label in (*PE_EXAM_LABELS, "pe_present_on_image")}
PE_ONLY = (
    "rv_lv_ratio_gte_1",
    "rv_lv_ratio_lt_1",
    "leftsided_pe",
    "rightsided_pe",
    "central_pe",
    "chronic_pe",
    "acute_and_chronic_pe",
)


# ----------------------------------------------------------------------------- fixtures


def write_ct_series(
    folder: Path,
    volume_hu: np.ndarray,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    spacing: float = 2.0,
    orientation: tuple[int, ...] = (1, 0, 0, 0, 1, 0),
) -> list[tuple[Path, str]]:
    """Write a (slices, rows, cols) HU volume as CT Image Storage files, slice 0 most inferior.

    Instance numbers run opposite to the positions and file names are SOP UIDs, so nothing
    but ImagePositionPatient orders them. Returns (path, SOPInstanceUID) in volume order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    written = []
    n = volume_hu.shape[0]
    for z in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "CT"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.InstanceNumber = n - z
        ds.ImageOrientationPatient = [str(v) for v in orientation]
        normal = np.cross(orientation[:3], orientation[3:])
        ds.ImagePositionPatient = [f"{v:.2f}" for v in normal * z * spacing]
        ds.PixelSpacing = ["0.8", "0.8"]
        ds.Rows, ds.Columns = volume_hu.shape[1:]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.PixelData = (volume_hu[z].astype(np.int32) + 1024).astype(np.int16).tobytes()
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.append((path, str(ds.SOPInstanceUID)))
    return written


def tiny_onnx(path: Path, size: int) -> None:
    """An ONNX graph with the exported model's interface: image (N, size, size, 3) → scores (N, 9).

    Score *h* = sigmoid(a_h · mean(channel 0) + b_h): bright PE-window content drives the heads up.
    ``pe_present_on_image`` crosses 0.5 when the PE-window mean exceeds 0.5 (≈ 100 HU).
    """
    a = np.array([[8.0, 8.0, -8.0, 0.0, -8.0, 20.0, 8.0, 8.0, -8.0]], dtype=np.float32)
    b = np.array([-4.0, -4.0, 4.0, -4.0, 4.0, -10.0, -4.0, -4.0, 4.0], dtype=np.float32)
    nodes = [
        helper.make_node("Slice", ["image", "starts", "ends", "axes"], ["pe_window"]),
        helper.make_node("ReduceMean", ["pe_window", "mean_axes"], ["level"], keepdims=0),
        helper.make_node("MatMul", ["level", "a"], ["lin"]),
        helper.make_node("Add", ["lin", "b"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["scores"]),
    ]
    inits = [
        numpy_helper.from_array(v, name)
        for name, v in (
            ("starts", np.array([0], np.int64)),
            ("ends", np.array([1], np.int64)),
            ("axes", np.array([3], np.int64)),
            ("mean_axes", np.array([1, 2], np.int64)),
            ("a", a),
            ("b", b),
        )
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_pe",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", size, size, 3])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 9])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def tiny_manifest(folder: Path, size: int = 32, **changes: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tiny_onnx(folder / "model.onnx", size)
    manifest = {
        "name": "ct-pe",
        "version": "test-1",
        "task": "slice-classification",
        "backend": "onnx",
        "weights": "model.onnx",
        "sha256": sha256_file(folder / "model.onnx"),
        "labels": [{"key": h, "display": h, "threshold": 0.5} for h in PE_HEADS],
        "input": {
            "height": size,
            "width": size,
            "channels": 3,
            "layout": "NHWC",
            "preprocessing": {"kind": "ct_windows", "windows": WINDOWS},
        },
        "postprocessing": {"top_k": 3},
    }
    manifest.update(changes)
    (folder / "model.json").write_text(json.dumps(manifest), encoding="utf-8")
    return folder / "model.json"


def exam(**probs: float) -> dict[str, float]:
    """Exam probabilities, all 0.1 unless given."""
    return {label: probs.get(label, 0.1) for label in PE_EXAM_LABELS}


POSITIVE = [0.1] * 10 + [0.9, 0.95, 0.92] + [0.1] * 10  # top-3 mean 0.92
NEGATIVE = [0.1] * 23


# ----------------------------------------------------------------------------- windows and aggregation


def test_windows_map_each_hu_range_to_unit_interval_per_channel() -> None:
    hu = np.array([[[-1350.0, -250.0], [100.0, 450.0]]], dtype=np.float32)
    out = window_slices(hu, WINDOWS, 2, 2)
    assert out.shape == (1, 2, 2, 3)
    pe, mediastinal, lung = out[0, :, :, 0], out[0, :, :, 1], out[0, :, :, 2]
    np.testing.assert_allclose(pe, [[0.0, 0.0], [0.5, 1.0]], atol=1e-6)  # −250..450 HU
    np.testing.assert_allclose(mediastinal, [[0.0, 0.0], [260 / 400, 1.0]], atol=1e-6)  # −160..240 HU
    np.testing.assert_allclose(lung, [[0.0, 1100 / 1500], [1450 / 1500, 1.0]], atol=1e-6)  # −1350..150 HU


def test_windows_area_resize_keeps_the_mean() -> None:
    hu = np.random.default_rng(0).uniform(-1000, 600, size=(2, 64, 64)).astype(np.float32)
    out = window_slices(hu, WINDOWS, 16, 16)
    full = window_slices(hu, WINDOWS, 64, 64)
    assert out.shape == (2, 16, 16, 3)
    np.testing.assert_allclose(out.mean(axis=(1, 2)), full.mean(axis=(1, 2)), atol=1e-4)


def _slim_patient(size: int = 100) -> np.ndarray:
    """Air, an elliptic body 40 wide and 24 high centred at (row 40, column 50), a table line below."""
    rows, cols = np.mgrid[0:size, 0:size]
    hu = np.full((size, size), -1000.0, dtype=np.float32)
    hu[((cols - 50) / 20.0) ** 2 + ((rows - 40) / 12.0) ** 2 <= 1.0] = 40.0
    hu[80, 5:95] = 200.0  # table top: one row, long
    hu[10, 10] = 300.0  # a speck of noise
    return hu


def test_body_box_is_the_square_around_the_patient_not_the_table_or_noise() -> None:
    row, col, side = body_box(_slim_patient())
    # Body: rows 28..52, columns 30..70 (41 wide; the erosion takes the one-pixel tips of the ellipse):
    # the square is that width plus 4 % each side, centred on it.
    assert round(39 * 1.08) <= side <= round(41 * 1.08)
    assert abs((col + side / 2) - 50.5) <= 1 and abs((row + side / 2) - 40.5) <= 1
    assert row + side <= 80  # the table line is left out
    empty = np.full((30, 40), -1000.0, dtype=np.float32)
    assert body_box(empty) == (-5, 0, 40)  # nothing above -500 HU: the whole image, squared
    with pytest.raises(ValueError, match="one slice"):
        body_box(empty[None])


def test_crop_to_body_pads_with_air_where_the_square_leaves_the_image() -> None:
    hu = np.full((20, 60), -1000.0, dtype=np.float32)
    hu[2:18, 5:55] = 0.0  # a body wider than the image is high
    crop = crop_to_body(hu)
    assert crop.shape[0] == crop.shape[1] == round(50 * 1.08)
    assert (crop == 0.0).sum() == 16 * 50 and crop.min() == -1000.0


def test_window_crop_body_gives_the_patient_the_whole_input() -> None:
    hu = _slim_patient()[None]
    whole = window_slices(hu, WINDOWS, 50, 50)[0, :, :, 0]
    cropped = window_slices(hu, WINDOWS, 50, 50, crop_body=True)[0, :, :, 0]
    # Soft tissue maps to 290/700 in the PE window; the body covers about 4x more of the cropped input.
    assert (cropped > 0.2).mean() > 3.0 * (whole > 0.2).mean()
    assert (cropped > 0.2).mean() > 0.35  # the ellipse, 40 × 24, in a square of about 43


def test_aggregation_top_k_weighted_heads_and_negative() -> None:
    n = 6
    scores = np.zeros((n, 9))
    col = {h: i for i, h in enumerate(PE_HEADS)}
    scores[:, col["pe_present_on_image"]] = [0.0, 0.0, 0.0, 0.9, 0.6, 0.3]
    scores[:, col["rightsided_pe"]] = [0.0, 0.0, 0.0, 1.0, 1.0, 0.0]  # only where clot is: weighted → high
    scores[:, col["indeterminate"]] = [0.2, 0.2, 0.2, 0.2, 0.2, 0.2]
    slices, probs = aggregate_exam(scores, top_k=3)
    np.testing.assert_allclose(slices, scores[:, col["pe_present_on_image"]])
    p_pe = (0.9 + 0.6 + 0.3) / 3
    assert probs["rightsided_pe"] == pytest.approx((0.9 + 0.6) / 1.8)
    assert probs["indeterminate"] == pytest.approx(0.2)
    assert probs["negative_exam_for_pe"] == pytest.approx((1 - p_pe) * 0.8)
    assert set(probs) == set(PE_EXAM_LABELS)
    # No slice probability at all: a plain mean, not a division by zero.
    scores[:, col["pe_present_on_image"]] = 0.0
    _, flat = aggregate_exam(scores, top_k=3)
    assert flat["rightsided_pe"] == pytest.approx(2 / 6)


def test_a_single_stray_slice_does_not_make_an_exam_positive() -> None:
    stray = [0.05] * 299 + [0.8]
    labels, positive, corrections = apply_consistency(stray, exam(negative_exam_for_pe=0.9), T)
    assert labels["negative_exam_for_pe"] and positive == []
    assert any("cleared" in c for c in corrections)


# ----------------------------------------------------------------------------- RSNA rules, positive exams


def test_consistent_positive_exam_is_left_alone() -> None:
    probs = exam(rightsided_pe=0.8, rv_lv_ratio_lt_1=0.7)
    labels, positive, corrections = apply_consistency(POSITIVE, probs, T)
    assert corrections == []
    assert positive == [10, 11, 12]
    assert labels["rightsided_pe"] and labels["rv_lv_ratio_lt_1"]
    assert not labels["negative_exam_for_pe"] and not labels["indeterminate"]


@pytest.mark.parametrize("label", ["negative_exam_for_pe", "indeterminate"])
def test_positive_exam_is_neither_negative_nor_indeterminate(label: str) -> None:
    labels, _, corrections = apply_consistency(
        POSITIVE, exam(**{label: 0.9, "rightsided_pe": 0.8, "rv_lv_ratio_lt_1": 0.8}), T
    )
    assert labels[label] is False
    assert corrections == [c for c in corrections if c.startswith(f"{label} set absent")] and len(corrections) == 1


@pytest.mark.parametrize(
    ("gte", "lt", "kept"),
    [
        (0.9, 0.6, "rv_lv_ratio_gte_1"),
        (0.6, 0.9, "rv_lv_ratio_lt_1"),  # both above threshold
        (0.4, 0.2, "rv_lv_ratio_gte_1"),
        (0.2, 0.4, "rv_lv_ratio_lt_1"),  # neither
    ],
)
def test_positive_exam_has_exactly_one_rv_lv_label(gte: float, lt: float, kept: str) -> None:
    labels, _, corrections = apply_consistency(
        POSITIVE, exam(rv_lv_ratio_gte_1=gte, rv_lv_ratio_lt_1=lt, leftsided_pe=0.9), T
    )
    assert [name for name in ("rv_lv_ratio_gte_1", "rv_lv_ratio_lt_1") if labels[name]] == [kept]
    assert len(corrections) == 1 and "exactly one RV/LV" in corrections[0]


@pytest.mark.parametrize("best", ["leftsided_pe", "rightsided_pe", "central_pe"])
def test_positive_exam_without_location_gets_the_most_likely(best: str) -> None:
    probs = exam(leftsided_pe=0.2, rightsided_pe=0.3, central_pe=0.25, rv_lv_ratio_lt_1=0.9)
    probs[best] = 0.45
    labels, _, corrections = apply_consistency(POSITIVE, probs, T)
    assert [s for s in ("leftsided_pe", "rightsided_pe", "central_pe") if labels[s]] == [best]
    assert corrections == [
        f"{best} set present (p=0.450): a positive exam has at least one location, the most likely taken"
    ]


def test_positive_exam_keeps_several_locations() -> None:
    labels, _, corrections = apply_consistency(
        POSITIVE, exam(leftsided_pe=0.7, rightsided_pe=0.8, central_pe=0.6, rv_lv_ratio_gte_1=0.9), T
    )
    assert labels["leftsided_pe"] and labels["rightsided_pe"] and labels["central_pe"]
    assert corrections == []


@pytest.mark.parametrize(("chronic", "both", "kept"), [(0.9, 0.7, "chronic_pe"), (0.7, 0.9, "acute_and_chronic_pe")])
def test_positive_exam_has_at_most_one_chronicity(chronic: float, both: float, kept: str) -> None:
    labels, _, corrections = apply_consistency(
        POSITIVE, exam(chronic_pe=chronic, acute_and_chronic_pe=both, central_pe=0.9, rv_lv_ratio_gte_1=0.9), T
    )
    assert [c for c in ("chronic_pe", "acute_and_chronic_pe") if labels[c]] == [kept]
    assert len(corrections) == 1 and "exclude each other" in corrections[0]


def test_positive_exam_may_be_acute_only() -> None:
    labels, _, corrections = apply_consistency(POSITIVE, exam(central_pe=0.9, rv_lv_ratio_gte_1=0.9), T)
    assert not labels["chronic_pe"] and not labels["acute_and_chronic_pe"] and corrections == []


# ----------------------------------------------------------------------------- RSNA rules, negative exams


def test_consistent_negative_exam_is_left_alone() -> None:
    labels, positive, corrections = apply_consistency(NEGATIVE, exam(negative_exam_for_pe=0.9), T)
    assert labels["negative_exam_for_pe"] and positive == [] and corrections == []
    assert not any(labels[name] for name in PE_ONLY) and not labels["indeterminate"]


@pytest.mark.parametrize("label", PE_ONLY)
def test_negative_exam_has_no_pe_type_location_or_rv_lv_label(label: str) -> None:
    labels, _, corrections = apply_consistency(NEGATIVE, exam(negative_exam_for_pe=0.9, **{label: 0.8}), T)
    assert labels[label] is False
    assert len(corrections) == 1 and corrections[0].startswith(f"{label} set absent (p=0.800): the exam is negative")


def test_negative_exam_has_no_positive_slice() -> None:
    few = [0.1] * 20 + [0.9] + [0.1] * 5  # one slice above the threshold, top-3 mean 0.37
    labels, positive, corrections = apply_consistency(few, exam(negative_exam_for_pe=0.7), T)
    assert positive == [] and labels["negative_exam_for_pe"]
    assert corrections == [
        "1 slice(s) at or above the slice threshold cleared: the exam is negative "
        "(PE probability 0.367 over its 3 most likely slices)"
    ]


@pytest.mark.parametrize(
    ("negative", "indeterminate", "kept"),
    [
        (0.9, 0.6, "negative_exam_for_pe"),
        (0.6, 0.9, "indeterminate"),  # both
        (0.4, 0.3, "negative_exam_for_pe"),
        (0.3, 0.4, "indeterminate"),  # neither
    ],
)
def test_negative_exam_is_either_negative_or_indeterminate(negative: float, indeterminate: float, kept: str) -> None:
    labels, _, corrections = apply_consistency(
        NEGATIVE, exam(negative_exam_for_pe=negative, indeterminate=indeterminate), T
    )
    assert [name for name in ("negative_exam_for_pe", "indeterminate") if labels[name]] == [kept]
    assert len(corrections) == 1 and "either negative for PE or indeterminate" in corrections[0]


def test_every_decision_combination_ends_consistent() -> None:
    """All 2^9 above/below-threshold combinations of the exam labels, on a positive and a negative exam."""
    for slices in (POSITIVE, NEGATIVE):
        for bits in itertools.product((0.2, 0.8), repeat=len(PE_EXAM_LABELS)):
            probs = dict(zip(PE_EXAM_LABELS, bits, strict=False))
            labels, positive, _ = apply_consistency(slices, probs, T)
            if slices is POSITIVE:
                assert positive and not labels["negative_exam_for_pe"] and not labels["indeterminate"]
                assert labels["rv_lv_ratio_gte_1"] != labels["rv_lv_ratio_lt_1"]
                assert labels["leftsided_pe"] or labels["rightsided_pe"] or labels["central_pe"]
                assert not (labels["chronic_pe"] and labels["acute_and_chronic_pe"])
            else:
                assert not positive and not any(labels[name] for name in PE_ONLY)
                assert labels["negative_exam_for_pe"] != labels["indeterminate"]


def test_thresholds_come_from_the_caller() -> None:
    strict = dict(T, pe_present_on_image=0.95)
    labels, positive, _ = apply_consistency(POSITIVE, exam(negative_exam_for_pe=0.2, rightsided_pe=0.9), strict)
    assert positive == [] and not labels["rightsided_pe"]  # top-3 mean 0.92 < 0.95: negative exam


# ----------------------------------------------------------------------------- key slices


def test_key_slices_are_the_most_likely_and_spread_out() -> None:
    probs = np.full(200, 0.1)
    probs[50:70] = np.linspace(0.6, 0.99, 20)  # peak at 69
    probs[120:124] = 0.7
    positive = [int(i) for i in np.flatnonzero(probs >= 0.5)]
    keys = select_key_slices(probs, positive)
    assert len(keys) == 5 and keys == sorted(keys)
    assert 69 in keys and set(keys) <= set(positive)
    assert min(np.diff(keys)) >= 5  # gap max(2, 200 // 40)
    assert select_key_slices(probs, []) == []
    assert select_key_slices(probs, [60, 61], max_count=5) == [61]  # neighbours closer than the gap


# ----------------------------------------------------------------------------- PeModel end to end


def test_pe_model_on_a_written_series(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    volume = rng.normal(-700, 30, size=(40, 48, 48)).astype(np.float32)  # lung-like: PE window mean ≈ 0
    volume[22:27, 4:44, :] = 350.0  # bright contrast on 5 slices: PE-window level ≈ 0.71
    written = write_ct_series(tmp_path / "series", volume)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p, _ in written]
    plan = plan_series(headers[::-1])
    paths = {uid: p for p, uid in written}
    model = PeModel.from_manifest(load_manifest(tiny_manifest(tmp_path / "model")), threads=1)
    assert model.algorithm.name == "ct-pe" and model.algorithm.version == "test-1"
    # Lung-like noise with no body around it is no chest: the coverage check (models.plausibility, issue 14)
    # makes such a series indeterminate; the model's mechanics are checked with it off.
    unread = model.analyse(plan, paths, batch_size=4)
    assert unread.exam_labels["indeterminate"] and unread.positive_slices == [] == unread.key_slices
    assert unread.indeterminate_reasons[0].startswith("no lung on any of the 40 slices"), unread.indeterminate_reasons
    result = model.analyse(plan, paths, batch_size=4, check_coverage=False)
    assert result.slice_uids == [uid for _, uid in written]  # plan order = position order
    assert result.positive_slices == [22, 23, 24, 25, 26]
    assert not result.exam_labels["negative_exam_for_pe"]
    assert set(result.key_slices) <= set(result.positive_slices) and len(result.key_slices) >= 2
    assert result.exam_labels["rv_lv_ratio_gte_1"] != result.exam_labels["rv_lv_ratio_lt_1"]
    # The same series without the bright slices is negative with no positive slice.
    volume[22:27] = -700.0
    written = write_ct_series(tmp_path / "negative", volume)
    plan = plan_series([pydicom.dcmread(p, stop_before_pixels=True) for p, _ in written])
    negative = model.analyse(plan, {uid: p for p, uid in written}, batch_size=8, check_coverage=False)
    assert negative.exam_labels["negative_exam_for_pe"] and negative.positive_slices == [] == negative.key_slices
    assert max(negative.slice_probabilities) < 0.01


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {
                "input": {
                    "height": 32,
                    "width": 32,
                    "channels": 3,
                    "layout": "NCHW",
                    "preprocessing": {"kind": "ct_windows", "windows": WINDOWS},
                }
            },
            "NCHW",
        ),
        (
            {
                "input": {
                    "height": 32,
                    "width": 32,
                    "channels": 3,
                    "layout": "NHWC",
                    "preprocessing": {"kind": "radiograph"},
                }
            },
            "ct_windows",
        ),
        (
            {
                "input": {
                    "height": 32,
                    "width": 32,
                    "channels": 3,
                    "layout": "NHWC",
                    "preprocessing": {"kind": "ct_windows", "windows": [[40, 400], [40, 0], [1, 2]]},
                }
            },
            "positive widths",
        ),
        (
            {
                "input": {
                    "height": 32,
                    "width": 32,
                    "channels": 3,
                    "layout": "NHWC",
                    "preprocessing": {"kind": "ct_windows", "windows": WINDOWS, "crop": "lungs"},
                }
            },
            "crop must be",
        ),
        ({"labels": [{"key": h, "display": h} for h in reversed(PE_HEADS)]}, "nine PE heads in order"),
    ],
)
def test_manifest_mistakes_are_refused_with_reasons(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        PeModel.from_manifest(load_manifest(tiny_manifest(tmp_path, **change)))


def test_slice_stride_runs_fewer_slices_and_interpolates(tmp_path: Path) -> None:
    volume = np.full((21, 24, 24), -700.0, dtype=np.float32)
    volume[8:13] = 350.0
    written = write_ct_series(tmp_path / "series", volume)
    plan = plan_series([pydicom.dcmread(p, stop_before_pixels=True) for p, _ in written])
    paths = {uid: p for p, uid in written}
    every = PeModel.from_manifest(load_manifest(tiny_manifest(tmp_path / "every", size=24)))
    strided = PeModel.from_manifest(
        load_manifest(tiny_manifest(tmp_path / "strided", size=24, postprocessing={"slice_stride": 4}))
    )
    full, sparse = every.score_slices(plan, paths), strided.score_slices(plan, paths)
    run = [0, 4, 8, 12, 16, 20]
    np.testing.assert_allclose(sparse[run], full[run], atol=1e-6)  # slices run: the same scores
    np.testing.assert_allclose(sparse[10], (full[8] + full[12]) / 2, atol=1e-6)  # between: interpolated
    del paths[plan.sop_instance_uids[1]]  # a slice that is skipped need not even be readable
    # Interpolation blurs the edges by less than a stride: 7 and 13 get 0.75 from 0 and 1.
    assert strided.analyse(plan, paths, check_coverage=False).positive_slices == [7, 8, 9, 10, 11, 12, 13]


def test_exam_probability_is_the_mean_of_the_most_likely_slices() -> None:
    assert exam_pe_probability([0.1, 0.9, 0.2, 0.8, 0.7], top_k=3) == pytest.approx(0.8)
    assert exam_pe_probability([0.4, 0.6], top_k=3) == pytest.approx(0.5)  # fewer slices than top_k: all of them
    with pytest.raises(ValueError, match="at least one slice"):
        exam_pe_probability([])
    with pytest.raises(ValueError, match="top_k"):
        exam_pe_probability([0.5], top_k=0)


def test_a_volume_in_memory_scores_as_its_stored_series(tmp_path: Path) -> None:
    volume = np.full((11, 24, 24), -700.0, dtype=np.float32)
    volume[4:7] = 350.0
    written = write_ct_series(tmp_path / "series", volume)
    plan = plan_series([pydicom.dcmread(p, stop_before_pixels=True) for p, _ in written])
    model = PeModel.from_manifest(load_manifest(tiny_manifest(tmp_path / "model", size=24)))
    stored = model.score_slices(plan, {uid: p for p, uid in written})
    np.testing.assert_allclose(model.score_volume(volume, batch_size=4), stored, atol=1e-5)
    with pytest.raises(ValueError, match="volume of shape"):
        model.score_volume(volume[0])


# ----------------------------------------------------------------------------- orientation and side


def test_slices_are_turned_to_the_usual_display_whatever_their_storage() -> None:
    usual = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)  # right at column 0, anterior at row 0
    assert to_canonical(usual, (1, 0, 0, 0, 1, 0)) is usual
    np.testing.assert_array_equal(to_canonical(usual[:, :, ::-1], (-1, 0, 0, 0, 1, 0)), usual)  # columns left → right
    np.testing.assert_array_equal(to_canonical(usual[:, ::-1, ::-1], (-1, 0, 0, 0, -1, 0)), usual)  # prone
    np.testing.assert_array_equal(to_canonical(np.swapaxes(usual, 1, 2), (0, 1, 0, 1, 0, 0)), usual)  # transposed
    with pytest.raises(ValueError, match="shape"):
        to_canonical(usual[0], (1, 0, 0, 0, 1, 0))


def test_mirror_halves_mirror_about_the_body_not_the_image_centre() -> None:
    hu = np.full((20, 40), -1000.0, dtype=np.float32)
    hu[4:16, 6:30] = 40.0  # the body: columns 6-29, midline between 17 and 18 (image centre: 19.5)
    hu[8:10, 8:10] = 300.0  # a bright spot in the low-column half
    low_replaced, high_replaced = mirror_halves(hu)
    assert low_replaced.max() == 40.0  # the spot's half replaced by the other's mirror image: gone
    assert np.array_equal(low_replaced[:, 18:], hu[:, 18:])  # the other half untouched
    np.testing.assert_array_equal(high_replaced[8:10, 26:28], 300.0)  # the spot mirrored about column 17.5 ...
    assert np.array_equal(high_replaced[:, :18], hu[:, :18])  # ... and kept where it was
    assert (high_replaced[4:16, 18:30] >= 40.0).all() and (high_replaced[:, 30:] == -1000.0).all()


def test_side_evidence_is_the_fall_of_the_slice_probability_per_half() -> None:
    # A right clot: replacing the right half takes the slice to 0.1, replacing the left half leaves it.
    right, left = side_evidence([0.9, 0.8], [0.09, 0.08], [0.9, 0.85])
    assert right == pytest.approx(0.9) and left == pytest.approx(0.0)
    # Weighted by the slice probabilities: the surer slice counts more.
    right, left = side_evidence([0.9, 0.1], [0.0, 0.1], [0.9, 0.0])
    assert right == pytest.approx(0.9) and left == pytest.approx(0.1)
    with pytest.raises(ValueError, match="one probability"):
        side_evidence([0.9], [0.1, 0.2], [0.3])


def _lateral_volume() -> np.ndarray:
    """40 slices of a 48² 'chest' (body: columns 4-43, 150 HU) with contrast (450 HU) on the patient's left,
    columns 30-41, of slices 22-26. For the tiny model only those slices are positive (PE-window mean 0.58
    against 0.48), and its heads call them right-sided (rightsided_pe rises with brightness, leftsided_pe falls)."""
    volume = np.full((40, 48, 48), -1000.0, dtype=np.float32)
    volume[:, :, 4:44] = 150.0
    volume[22:27, :, 30:42] = 450.0
    return volume


@pytest.mark.parametrize("orientation", [(1, 0, 0, 0, 1, 0), (-1, 0, 0, 0, 1, 0), (-1, 0, 0, 0, -1, 0)])
def test_mirror_location_reads_the_side_from_the_slice_head(tmp_path: Path, orientation: tuple[int, ...]) -> None:
    usual = _lateral_volume()
    stored = usual[:, :, ::-1] if orientation[0] < 0 else usual
    stored = stored[:, ::-1, :] if orientation[4] < 0 else stored
    written = write_ct_series(tmp_path / "series", np.ascontiguousarray(stored), orientation=orientation)
    plan = plan_series([pydicom.dcmread(p, stop_before_pixels=True) for p, _ in written])
    paths = {uid: p for p, uid in written}
    heads = PeModel.from_manifest(load_manifest(tiny_manifest(tmp_path / "heads", size=48)))
    mirror = PeModel.from_manifest(
        load_manifest(tiny_manifest(tmp_path / "mirror", size=48, postprocessing={"top_k": 3, "location": "mirror"}))
    )
    # A body without lungs is no chest for the coverage check (models.plausibility): off, as it is not the subject.
    by_heads = heads.analyse(plan, paths, check_coverage=False)
    by_mirror = mirror.analyse(plan, paths, check_coverage=False)
    positive = by_heads.positive_slices
    assert positive == by_mirror.positive_slices and len(positive) == 5
    assert {by_heads.slice_uids[i] for i in positive} == {uid for _, uid in written[22:27]}
    assert by_heads.exam_labels["rightsided_pe"] and not by_heads.exam_labels["leftsided_pe"]  # the heads: wrong side
    # The probes: replacing the left half (with the right's mirror image) takes the contrast away, replacing the
    # right half doubles it; stored mirrored or prone, the same answer.
    assert by_mirror.exam_labels["leftsided_pe"] and not by_mirror.exam_labels["rightsided_pe"], (
        by_mirror.exam_probabilities
    )
    assert by_mirror.exam_probabilities["leftsided_pe"] > 0.5 and by_mirror.exam_probabilities["rightsided_pe"] == 0.0
    # A negative exam is not probed: the heads' values stand.
    assert mirror.probe_slices(np.full((10, len(PE_HEADS)), 0.01, dtype=np.float32)) == []


def test_mirror_location_is_refused_unless_known(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="location must be"):
        PeModel.from_manifest(load_manifest(tiny_manifest(tmp_path, postprocessing={"location": "sideways"})))
