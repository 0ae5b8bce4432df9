"""Training helpers of the chest classifiers: data set writers, patient split, metrics (no TensorFlow)."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.architectures import FOUR_CLASSES
from training.finding_classifier import (
    choose_threshold,
    format_auc_table,
    iterative_stratified_split,
    label_matrix,
    read_data_entry,
    roc_auc,
)
from training.four_class import classification_metrics, confusion_matrix, format_metrics, list_four_class
from training.phantoms.cxr_datasets import FOUR_CLASS_FOLDERS, NIH_COLUMNS, write_four_class_dataset, write_nih_dataset

REAL_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)


def test_nih_writer_produces_the_release_layout(tmp_path: Path) -> None:
    rows = write_nih_dataset(tmp_path / "nih", patients=6, images_per_patient=(2, 3), size=128, seed=1)
    text = (tmp_path / "nih" / "Data_Entry_2017.csv").read_text(encoding="utf-8")
    assert text.splitlines()[0] == REAL_HEADER == ",".join(NIH_COLUMNS)
    with open(tmp_path / "nih" / "Data_Entry_2017.csv", newline="", encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == len(rows) >= 12
    per_patient: dict[str, int] = {}
    for row in table:
        assert re.fullmatch(r"\d{8}_\d{3}\.png", row["Image Index"])
        assert row["Image Index"].startswith(f"{int(row['Patient ID']):08d}_")
        assert int(row["Image Index"][9:12]) == int(row["Follow-up #"])
        assert row["Finding Labels"] == "No Finding" or all(
            label
            in {
                "Atelectasis",
                "Cardiomegaly",
                "Consolidation",
                "Effusion",
                "Infiltration",
                "Mass",
                "Nodule",
                "Pneumonia",
                "Pneumothorax",
            }
            for label in row["Finding Labels"].split("|")
        )
        assert row["View Position"] in ("PA", "AP") and row["Patient Gender"] in ("M", "F")
        assert (row["OriginalImage[Width"], row["Height]"]) == ("128", "128")
        assert float(row["OriginalImagePixelSpacing[x"]) == pytest.approx(430 / 128, abs=1e-3)
        per_patient[row["Patient ID"]] = per_patient.get(row["Patient ID"], 0) + 1
        with Image.open(tmp_path / "nih" / "images" / row["Image Index"]) as png:
            assert png.format == "PNG" and png.mode == "L" and png.size == (128, 128)
            pixels = np.asarray(png)
        # 255 = dense: the mediastinum (centre column) is brighter than the lungs either side.
        assert pixels[50:70, 60:68].mean() > pixels[50:70, 30:40].mean() + 20
    assert set(per_patient.values()) <= {2, 3} and len(per_patient) == 6
    records = read_data_entry(tmp_path / "nih" / "Data_Entry_2017.csv")
    assert [r.labels for r in records] == [r.labels for r in rows]


def test_read_data_entry_accepts_the_2017_trailing_column_and_rejects_unknown_labels(tmp_path: Path) -> None:
    path = tmp_path / "Data_Entry_2017.csv"
    path.write_text(
        REAL_HEADER + ",\n00000001_000.png,Cardiomegaly|Emphysema,0,1,58,M,PA,2682,2749,0.143,0.143,\n"
        "00000002_000.png,No Finding,0,2,81,M,PA,2500,2048,0.171,0.171,\n",
        encoding="utf-8",
    )
    records = read_data_entry(path)
    assert records[0].labels == ("Cardiomegaly", "Emphysema") and records[1].labels == ()
    assert label_matrix(records)[0].tolist() == [0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    path.write_text(REAL_HEADER + "\n00000001_000.png,Cardiomegalie,0,1,58,M,PA,1,1,1,1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="Cardiomegalie"):
        read_data_entry(path)


def test_four_class_writer_uses_the_kaggle_folders(tmp_path: Path) -> None:
    summary = write_four_class_dataset(tmp_path / "fc", per_class=4, fractions=(0.5, 0.25, 0.25), size=128, seed=3)
    assert summary == {s: {c: n for c in FOUR_CLASSES} for s, n in (("train", 2), ("val", 1), ("test", 1))}
    for split in ("train", "val", "test"):
        assert sorted(p.name for p in (tmp_path / "fc" / split).iterdir()) == sorted(FOUR_CLASS_FOLDERS)
    found = list_four_class(tmp_path / "fc")
    assert [len(found[s]) for s in ("train", "val", "test")] == [8, 4, 4]
    for rel, label in found["train"]:
        assert FOUR_CLASS_FOLDERS[rel.split("/")[1]] == FOUR_CLASSES[label]
        with Image.open(tmp_path / "fc" / rel) as png:
            assert png.mode == "L" and png.size == (128, 128)
    (tmp_path / "fc" / "test" / "EMPHYSEMA").mkdir()
    with pytest.raises(ValueError, match="EMPHYSEMA"):
        list_four_class(tmp_path / "fc")


def test_patient_split_is_disjoint_and_keeps_label_proportions() -> None:
    rng = np.random.default_rng(0)
    patients, y = [], []
    prevalence = np.array([0.3, 0.2, 0.1, 0.05, 0.02] + [0.0] * 9)
    for patient in range(400):
        for _ in range(int(rng.integers(1, 6))):
            patients.append(f"p{patient}")
            y.append((rng.random(14) < prevalence).astype(np.float32))
    y_arr = np.array(y)
    folds = iterative_stratified_split(patients, y_arr, (0.7, 0.15, 0.15), seed=2)
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(patients)))
    owners = [{patients[i] for i in fold} for fold in folds]
    assert not (owners[0] & owners[1] or owners[0] & owners[2] or owners[1] & owners[2])
    for fold, share in zip(folds, (0.7, 0.15, 0.15), strict=False):
        assert len(fold) / len(patients) == pytest.approx(share, abs=0.03)
        for label in range(5):  # each label's positives are split like the images
            assert y_arr[fold, label].sum() / y_arr[:, label].sum() == pytest.approx(share, abs=0.05)
    again = iterative_stratified_split(patients, y_arr, (0.7, 0.15, 0.15), seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(folds, again, strict=False))
    with pytest.raises(ValueError, match="summing to 1"):
        iterative_stratified_split(patients, y_arr, (0.7, 0.2, 0.2), seed=2)


def test_auc_against_hand_computed_values() -> None:
    # Pairs (positive, negative): (0.35, 0.1) right, (0.35, 0.4) wrong, (0.8, 0.1) and (0.8, 0.4) right: 3/4.
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # A tie between a positive and a negative counts one half: (0.5 = 0.5) + 3 right pairs = 3.5/4.
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(0.875)
    assert roc_auc([1, 1, 0], [0.9, 0.8, 0.1]) == 1.0 and roc_auc([1, 1, 0], [0.1, 0.2, 0.9]) == 0.0
    assert math.isnan(roc_auc([0, 0, 0], [0.1, 0.2, 0.3]))


def test_thresholds_youden_and_f1_by_hand() -> None:
    y, s = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    # Cuts: 0.1 (J 0, F1 .667), 0.35 (TPR 1, FPR .5: J .5, F1 .8), 0.4 (J 0), 0.8 (J .5, F1 .667): first best.
    assert choose_threshold(y, s, "youden") == 0.35
    assert choose_threshold(y, s, "f1") == 0.35
    assert choose_threshold([0, 0, 1, 1, 1], [0.1, 0.2, 0.3, 0.7, 0.9], "youden") == 0.3
    assert choose_threshold([0, 0], [0.2, 0.3]) == 0.5


def test_confusion_and_macro_metrics_by_hand() -> None:
    matrix = confusion_matrix([0, 0, 1, 1, 2, 2, 3, 3], [0, 1, 1, 1, 2, 0, 3, 3], 4)
    assert matrix.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 2]]
    m = classification_metrics(matrix)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["precision"] == pytest.approx([0.5, 2 / 3, 1.0, 1.0])
    assert m["recall"] == pytest.approx([0.5, 1.0, 0.5, 1.0])
    assert m["f1"] == pytest.approx([0.5, 0.8, 2 / 3, 1.0])
    assert m["macro_precision"] == pytest.approx((0.5 + 2 / 3 + 1 + 1) / 4)
    assert m["macro_recall"] == pytest.approx(0.75)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3 + 1) / 4)
    report = format_metrics(matrix, "test")
    assert "accuracy        0.7500" in report and "macro F1        0.7417" in report
    assert re.search(r"COVID-19\s+1\s+1\s+0\s+0", report)


def test_auc_table_has_14_rows_and_the_mean() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random((40, 14)) < 0.3).astype(np.float32)
    y[:, 7] = 0  # Hernia absent: its AUC is undefined, left out of the mean
    p = np.clip(y * 0.5 + rng.random((40, 14)) * 0.6, 0, 1)
    lines = format_auc_table(y, p, "title").splitlines()
    assert len(lines) == 1 + 1 + 14 + 1
    assert lines[2].startswith("Atelectasis") and lines[-2].startswith("Pneumothorax")
    assert lines[9].split()[-1] == "n/a" and lines[9].startswith("Hernia")
    defined = [roc_auc(y[:, i], p[:, i]) for i in range(14) if i != 7]
    assert float(lines[-1].split()[-1]) == pytest.approx(np.mean(defined), abs=1e-4)
