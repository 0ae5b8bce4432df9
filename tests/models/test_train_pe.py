"""The RSNA-PE Xception design's PE model: architecture and parameter counts, ONNX export with float16 storage, the
challenge's weighted log loss on a hand-computed case, and the training command end to end on a
tiny RSNA-PE folder written here.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from core.findings import PE_EXAM_LABELS, PE_HEADS
from models.manifest import load_manifest, sha256_file
from models.pe import PeModel
from tests.models.test_pe import write_ct_series
from training.pe import (
    EXAM_WEIGHTS,
    IMAGE_WEIGHT,
    LOCATION_HEADS,
    _parse,
    build_model,
    calibrate_on_phantoms,
    count_parameters,
    export_pe_onnx,
    main,
    mask_location_targets,
    masked_binary_crossentropy,
    patient_batches,
    read_rsna_labels,
    roc_auc,
    rsna_weighted_log_loss,
    separating_threshold,
    split_studies,
    train,
    write_phantom_dataset,
)


def test_seed_1_parameter_counts_and_head_order() -> None:
    model = build_model(512)
    assert count_parameters(model) == (23_239_089, 2_377_609)  # as the source design: backbone frozen
    assert count_parameters(build_model(512, freeze_backbone=False))[1] == 23_239_089 - 54_528  # BN statistics
    dense = [layer.name for layer in model.layers if type(layer).__name__ == "Dense"]
    assert dense == ["dense_1024", "dense_256", "dense_64", *PE_HEADS]


@pytest.mark.integration  # trains or exports a model for tens of seconds: not for the fast loop
def test_onnx_export_one_output_in_head_order_with_float16_storage(tmp_path: Path) -> None:
    model = build_model(71)
    for index, name in enumerate(PE_HEADS):  # head h outputs sigmoid(bias_h): the column order is visible
        layer = model.get_layer(name)
        layer.set_weights([np.zeros((64, 1), np.float32), np.array([index - 4.0], np.float32)])
    path = tmp_path / "pe.onnx"
    export_pe_onnx(model, path)
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["image"] and [o.name for o in graph.output] == ["scores"]
    big = [init for init in graph.initializer if int(np.prod(init.dims)) >= 1024]
    assert big and all(init.data_type == onnx.TensorProto.FLOAT16 for init in big)
    assert path.stat().st_size < 23_239_089 * 2.1  # float16: about 2 bytes per parameter
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((2, 71, 71, 3), dtype=np.float32)
    scores = session.run(None, {"image": x})[0]
    assert scores.shape == (2, 9)
    expected = 1 / (1 + np.exp(-(np.arange(9) - 4.0)))
    np.testing.assert_allclose(scores, np.tile(expected, (2, 1)), atol=1e-3)
    keras_scores = np.concatenate([np.asarray(o) for o in model(x, training=False)], axis=1)
    np.testing.assert_allclose(scores, keras_scores, atol=1e-3)


def test_weighted_log_loss_on_a_hand_computed_exam() -> None:
    # One exam, two images: truth [1, 0] → positive fraction q = 0.5; predictions 0.8 and 0.4.
    # Image part: w_img·q·(−ln 0.8 − ln 0.6) over weight w_img·q·2. Exam part: every label
    # predicted 0.5 → each loss ln 2, weight w_l.
    w_img, w_exam = 0.07361963, sum(EXAM_WEIGHTS.values())
    exam_true = {label: 0.0 for label in PE_EXAM_LABELS} | {"rightsided_pe": 1.0}
    loss = rsna_weighted_log_loss([[1, 0]], [[0.8, 0.4]], [exam_true], [{label: 0.5 for label in PE_EXAM_LABELS}])
    expected = (w_img * 0.5 * (-math.log(0.8) - math.log(0.6)) + w_exam * math.log(2)) / (w_img * 0.5 * 2 + w_exam)
    assert loss == pytest.approx(expected, rel=1e-12)
    assert w_img == IMAGE_WEIGHT and w_exam == pytest.approx(1.0, abs=1e-9)  # the official weights sum to 1
    # A negative exam (q = 0): images carry no weight, only the exam labels count.
    only_exam = rsna_weighted_log_loss([[0, 0, 0]], [[0.9, 0.9, 0.9]], [exam_true], [{k: 0.5 for k in PE_EXAM_LABELS}])
    assert only_exam == pytest.approx(math.log(2))
    # rv_lv_ratio_gte_1 weighs most: a wrong answer there costs more than on leftsided_pe.
    wrong_rv = dict(exam_true, rv_lv_ratio_gte_1=1.0)
    confident = {k: float(exam_true[k]) * 0.98 + 0.01 for k in PE_EXAM_LABELS}
    assert rsna_weighted_log_loss([[0]], [[0.0]], [wrong_rv], [confident]) > rsna_weighted_log_loss(
        [[0]], [[0.0]], [dict(exam_true, leftsided_pe=1.0)], [confident]
    )


def test_auc_with_ties_and_undefined() -> None:
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(0.875)  # the tie counts half
    assert roc_auc([1, 1], [0.2, 0.3]) is None


# ----------------------------------------------------------------------------- RSNA-PE folder and training


def write_rsna(folder: Path, exams: list[tuple[list[int], dict[str, int]]], size: int = 32) -> Path:
    """An RSNA-PE folder: ``train.csv`` and ``train/<study>/<series>/<sop>.dcm``; bright slices where PE."""
    rows = []
    rng = np.random.default_rng(5)
    for index, (slice_labels, exam_labels) in enumerate(exams):
        volume = rng.normal(-700, 20, size=(len(slice_labels), size, size)).astype(np.float32)
        for z, positive in enumerate(slice_labels):
            if positive:
                volume[z, size // 4 : 3 * size // 4, : size // 2] = 350.0
        study, series = f"1.2.826.0.1.{index + 1}", f"1.2.826.0.1.{index + 1}.1"
        written = write_ct_series(folder / "train" / study / series, volume, study_uid=study, series_uid=series)
        for (path, sop), positive in zip(written, slice_labels, strict=False):
            path.rename(path.with_name(f"{sop}.dcm"))
            rows.append(
                {
                    "StudyInstanceUID": study,
                    "SeriesInstanceUID": series,
                    "SOPInstanceUID": sop,
                    "pe_present_on_image": positive,
                    "qa_motion": 0,
                    **{label: exam_labels.get(label, 0) for label in PE_EXAM_LABELS},
                }
            )
    with open(folder / "train.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


POS = {"rightsided_pe": 1, "rv_lv_ratio_lt_1": 1}
NEG = {"negative_exam_for_pe": 1}


def test_reading_labels_and_study_wise_split(tmp_path: Path) -> None:
    data = write_rsna(
        tmp_path,
        [([0, 1, 1, 0], POS), ([0, 0, 0, 0], NEG), ([0, 1, 0, 0], POS), ([0, 0, 0, 0], NEG), ([1, 1, 0, 0], POS)],
        size=8,
    )
    studies = read_rsna_labels(data / "train.csv")
    assert len(studies) == 5
    first = studies["1.2.826.0.1.1"]
    assert sorted(first.series["1.2.826.0.1.1.1"].values()) == [0, 0, 1, 1] and first.exam["rightsided_pe"] == 1
    train, held = split_studies(studies, 0.4, seed=1)
    assert set(train).isdisjoint(held) and set(train) | set(held) == set(studies)
    assert len(held) == 2 and {studies[u].exam["negative_exam_for_pe"] for u in held} == {0, 1}  # one of each
    assert split_studies(studies, 0.4, seed=1) == (train, held)
    text = (data / "train.csv").read_text().replace(",1,0,", ",2,0,", 1)
    (data / "bad.csv").write_text(text)
    with pytest.raises(ValueError, match="0 or 1"):
        read_rsna_labels(data / "bad.csv")


@pytest.mark.integration  # trains or exports a model for tens of seconds: not for the fast loop
def test_training_command_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_rsna(tmp_path / "rsna", [([0, 1, 1, 0, 0], POS), ([0, 0, 0, 0, 0], NEG), ([0, 0, 1, 1, 0], POS)])
    out = tmp_path / "out"
    status = main(
        [
            "--data",
            str(data),
            "--out",
            str(out),
            "--size",
            "71",
            "--steps",
            "1",
            "--batch-size",
            "2",
            "--validation",
            "0.34",
            "--eager",
            "--version",
            "test-1",
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "RSNA weighted log loss" in printed and "| pe_present_on_image |" in printed
    manifest = load_manifest(out / "model.json")
    assert manifest.sha256 == sha256_file(out / "model.onnx")
    assert [label.key for label in manifest.labels] == list(PE_HEADS)
    assert manifest.task == "slice-classification" and manifest.input.height == 71
    assert manifest.input.preprocessing == {
        "kind": "ct_windows",
        "windows": [[100.0, 700.0], [40.0, 400.0], [-600.0, 1500.0]],
        "crop": "none",
    }
    card = (out / "MODEL_CARD.md").read_text()
    assert "23,239,089" in card and "1 validation studies" in card
    assert json.loads((out / "model.json").read_text())["postprocessing"]["top_k"] == 3
    assert main(["--data", str(tmp_path / "nowhere"), "--out", str(out)]) == 2


def test_patient_batches_draw_each_batch_from_one_patient() -> None:
    patients = ["A"] * 10 + ["B"] * 3 + ["C"] * 6
    order = patient_batches(patients, batch_size=4, steps=200, seed=1)
    assert order.shape == (200, 4)
    for row in order:
        assert len({patients[i] for i in row}) == 1  # twin series of one patient meet in a batch
        if patients[row[0]] != "B":
            assert len(set(row.tolist())) == 4  # without replacement while the patient has enough slices
    assert {patients[row[0]] for row in order} == {"A", "B", "C"}
    assert np.array_equal(order, patient_batches(patients, 4, 200, seed=1))
    with pytest.raises(ValueError, match="no slices"):
        patient_batches([], 4, 1, seed=0)


def test_separating_threshold_takes_the_middle_of_the_gap_or_the_best_balanced_accuracy() -> None:
    assert separating_threshold([0.8, 0.9, 0.7], [0.2, 0.4, 0.3]) == pytest.approx(0.55)  # separable: mid-gap
    # Overlap: one negative above two positives; 0.45 calls 3/3 positives and 2/3 negatives right, the best.
    assert separating_threshold([0.6, 0.65, 0.9], [0.2, 0.3, 0.7]) == pytest.approx(0.45)
    # 0.4 and 0.8 both call 3 of 4 right: the wider gap (0.2 either side of 0.4) wins.
    assert separating_threshold([0.6, 0.9], [0.2, 0.7]) == pytest.approx(0.4)
    assert separating_threshold([0.999, 0.998], [0.997]) == pytest.approx(0.9975)  # saturated, still separable
    assert separating_threshold([0.3], [0.3]) == pytest.approx(0.65)  # no information: above all, nothing called
    with pytest.raises(ValueError, match="both"):
        separating_threshold([], [0.1])
    # A rare class (3 central clots among 12): balanced accuracy buys the third central with three false calls
    # (0.25); plain accuracy keeps the false calls out (0.4, 11 of 12 right).
    central, others = [0.46, 0.49, 0.29], [0.1, 0.33, 0.3, 0.2, 0.15, 0.27, 0.25, 0.12, 0.22]
    assert separating_threshold(central, others) == pytest.approx(0.28)
    assert separating_threshold(central, others, balanced=False) == pytest.approx(0.395)


@pytest.mark.integration  # trains or exports a model for tens of seconds: not for the fast loop
def test_demo_training_chooses_the_exam_threshold_on_fresh_phantoms(tmp_path: Path) -> None:
    data = write_rsna(tmp_path / "rsna", [([0, 1, 1, 0], POS), ([0, 0, 0, 0], NEG), ([0, 0, 1, 0], POS)])
    out = tmp_path / "out"
    args = _parse(
        [
            "--data",
            str(data),
            "--out",
            str(out),
            "--size",
            "71",
            "--steps",
            "1",
            "--batch-size",
            "2",
            "--validation",
            "0.34",
            "--eager",
            "--demo",
            "--crop",
            "body",
            "--lr-schedule",
            "cosine",
            "--locate-on-clot-slices",
            "--location",
            "mirror",
        ]
    )
    args.calibration = {"calibration_pairs": 4, "seed": 7, "slices": 10, "phantom_size": 64}
    reported: list[str] = []
    train(args, progress=lambda done, total, message: reported.append(message))
    assert reported[-2:] == ["calibration phantom pair 3/4", "calibration phantom pair 4/4"]
    manifest = json.loads((out / "model.json").read_text())
    threshold = {label["key"]: label["threshold"] for label in manifest["labels"]}["pe_present_on_image"]
    calibration = calibrate_on_phantoms(out / "model.json", args.calibration)
    assert threshold == pytest.approx(calibration.threshold) and 0 < threshold < 1
    assert [(seed, side) for seed, side, _ in calibration.positive] == [
        (7500, "right"),
        (7501, "left"),
        (7502, "right"),
        (7503, "central"),
    ]
    assert [seed for seed, _ in calibration.negative] == [7500, 7501, 7502, 7503]  # the same seeds without a clot
    card = (out / "MODEL_CARD.md").read_text()
    assert f"Exam threshold {threshold:.3f}" in card and "4 + 4 fresh phantoms" in card
    # central_pe gets its own threshold from the same phantoms (central against the other sides), and the card
    # says which sides the served model then calls.
    central = {label["key"]: label["threshold"] for label in manifest["labels"]}["central_pe"]
    assert central == pytest.approx(calibration.central_threshold) and 0 < central < 1
    assert f"`central_pe` threshold {central:.3f}" in card and "sides called on the" in card
    assert manifest["postprocessing"]["location"] == "mirror" and "--location mirror" in card
    assert PeModel.from_manifest(load_manifest(out / "model.json")).location == "mirror"
    assert load_manifest(out / "model.json").labels[PE_HEADS.index("pe_present_on_image")].threshold == pytest.approx(
        threshold
    )
    # The crop the model was trained with is the crop it is served with.
    assert manifest["input"]["preprocessing"]["crop"] == "body" and "(crop: body)" in card and "cosine decay" in card
    assert "on slices with a clot only" in card and "--locate-on-clot-slices" in card
    assert PeModel.from_manifest(load_manifest(out / "model.json")).crop_body


def test_demo_data_pairs_each_clot_with_its_clot_free_twin_cut_to_slab_and_stride(tmp_path: Path) -> None:
    params = {"studies": 4, "slices": 24, "phantom_size": 64, "seed": 3, "negative_margin": 2, "negative_stride": 5}
    write_phantom_dataset(tmp_path, params)
    studies = read_rsna_labels(tmp_path / "train.csv")
    assert len(studies) == 4
    pairs = [list(studies.values())[i : i + 2] for i in (0, 2)]
    for positive, negative in pairs:
        [pos_slices] = positive.series.values()
        [neg_slices] = negative.series.values()
        assert len(pos_slices) == 24 and positive.exam["negative_exam_for_pe"] == 0  # the positive twin: whole series
        assert negative.exam["negative_exam_for_pe"] == 1 and not any(neg_slices.values())
        # Rows are written in slice order: the twin keeps the clot's slab ± 2 and every 5th slice elsewhere.
        clot = [k for k, label in enumerate(pos_slices.values()) if label]
        [series_dir] = (tmp_path / "train" / negative.study_uid).iterdir()
        on_disk = {p.stem for p in series_dir.glob("*.dcm")}
        assert on_disk == set(neg_slices)  # every file has its row and no row lacks its file
        slab = set(range(max(0, clot[0] - 2), min(24, clot[-1] + 3)))
        assert len(neg_slices) == len(slab | set(range(0, 24, 5)))


def _levels(folder: Path) -> list[float]:
    import pydicom

    return sorted(
        round(float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]), 3)
        for p in folder.glob("*.dcm")
    )


def test_demo_data_with_twin_levels_gives_every_clot_slice_its_clot_free_twin(tmp_path: Path) -> None:
    # With twin_levels the positive is cut to the same levels as its partner: no slice of a clot is
    # in the training set without the identical clot-free slice, so the clot is the only thing that
    # tells them apart (without it, an untwinned clot slice can be learnt from its anatomy and noise).
    params = {
        "studies": 4,
        "slices": 24,
        "phantom_size": 64,
        "seed": 3,
        "negative_margin": 2,
        "negative_stride": 5,
        "twin_levels": True,
    }
    write_phantom_dataset(tmp_path, params)
    studies = list(read_rsna_labels(tmp_path / "train.csv").values())
    assert len(studies) == 4
    for positive, negative in (studies[0:2], studies[2:4]):
        [pos_slices] = positive.series.values()
        [neg_slices] = negative.series.values()
        assert positive.exam["negative_exam_for_pe"] == 0 and negative.exam["negative_exam_for_pe"] == 1
        assert any(pos_slices.values()) and not any(neg_slices.values())
        assert 0 < len(pos_slices) == len(neg_slices) < 24  # cut, and to as many slices
        [pos_dir] = (tmp_path / "train" / positive.study_uid).iterdir()
        [neg_dir] = (tmp_path / "train" / negative.study_uid).iterdir()
        assert {p.stem for p in pos_dir.glob("*.dcm")} == set(pos_slices)
        assert _levels(pos_dir) == _levels(neg_dir)  # the same table positions: slice for slice twins


def test_location_heads_learn_from_clot_slices_only() -> None:
    y = np.zeros((3, len(PE_HEADS)), dtype=np.float32)
    col = {h: i for i, h in enumerate(PE_HEADS)}
    y[:2, col["rightsided_pe"]] = 1.0  # a right-sided exam: slice 0 shows the clot, slice 1 does not
    y[0, col["pe_present_on_image"]] = 1.0
    y[:2, col["rv_lv_ratio_lt_1"]] = 1.0
    masked = mask_location_targets(y)
    assert masked[0, col["rightsided_pe"]] == 1.0 and masked[1, col["rightsided_pe"]] == -1.0
    assert all(masked[2, col[h]] == -1.0 for h in LOCATION_HEADS)  # a clot-free slice says nothing of where
    assert masked[1, col["rv_lv_ratio_lt_1"]] == 1.0 and y[1, col["rightsided_pe"]] == 1.0  # others kept; a copy
    import keras

    true = np.array([[1.0], [-1.0], [0.0]], dtype=np.float32)
    pred = np.array([[0.8], [0.01], [0.3]], dtype=np.float32)
    loss = keras.ops.convert_to_numpy(masked_binary_crossentropy(true, pred))
    np.testing.assert_allclose(loss, [-np.log(0.8), 0.0, -np.log(0.7)], rtol=1e-5)
