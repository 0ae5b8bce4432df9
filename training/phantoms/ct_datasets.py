"""Tiny data sets in the public training formats, drawn from the CT phantoms.

- :func:`write_rsna_pe`: the RSNA STR Pulmonary Embolism Detection layout (the RSNA-PE Xception design):
  ``train.csv`` with the challenge's columns in its order (:data:`RSNA_PE_COLUMNS`), one
  row per image with the exam labels repeated on every row of the exam, and the DICOM
  tree ``train/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``.
- :func:`write_lumbar_folders`: the lumbar-level design's folder layout ``train|test/<class>/<image>.png``,
  one folder per class ``T, L1..L5, S``, 8-bit grey PNGs of the abdominal window
  :data:`LUMBAR_PNG_WINDOW` (HU → ``round(clip((HU - (c - w/2)) / w, 0, 1) * 255)``, see
  :func:`window_to_uint8`). Like the source design's data set, disc slices are left out unless asked.

Everything is a deterministic function of the arguments (UIDs included), so a test can
write a data set twice and compare.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom.uid import generate_uid

from training.phantoms.ct import LEVELS, abdomen_phantom, ctpa_phantom

__all__ = [
    "GENERATOR_VERSION",
    "RSNA_PE_COLUMNS",
    "LUMBAR_PNG_WINDOW",
    "window_to_uint8",
    "write_rsna_pe",
    "write_lumbar_folders",
]

GENERATOR_VERSION = 1
"""Version of what this module writes (the RSNA-PE and lumbar-folder data sets written from the CT phantoms):
bump it when a change alters the output for the same arguments, so that the demo recipes built on it are
rebuilt (``training.demo.recipe_hash``)."""

RSNA_PE_COLUMNS: tuple[str, ...] = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "pe_present_on_image",
    "negative_exam_for_pe",
    "qa_motion",
    "qa_contrast",
    "flow_artifact",
    "rv_lv_ratio_gte_1",
    "rv_lv_ratio_lt_1",
    "leftsided_pe",
    "chronic_pe",
    "true_filling_defect_not_pe",
    "rightsided_pe",
    "acute_and_chronic_pe",
    "central_pe",
    "indeterminate",
)
"""Columns of the challenge's ``train.csv``, in its order."""

LUMBAR_PNG_WINDOW: tuple[float, float] = (40.0, 400.0)
"""(center, width) in HU of the abdominal soft-tissue window the lumbar PNGs are written with."""

# Exam configurations cycled through by write_rsna_pe: negatives, each side, chronic forms, RV strain.
_PE_EXAMS: tuple[dict[str, Any], ...] = (
    {"embolus": None, "rv_lv_ratio": 0.8},
    {"embolus": "right", "rv_lv_ratio": 0.85},
    {"embolus": "left", "rv_lv_ratio": 1.2},
    {"embolus": "central", "rv_lv_ratio": 1.35},
    {"embolus": None, "rv_lv_ratio": 0.95},
    {"embolus": "right", "chronic": True, "rv_lv_ratio": 0.9},
    {"embolus": "left", "acute_and_chronic": True, "rv_lv_ratio": 1.1},
    {"embolus": "right", "rv_lv_ratio": 1.25},
)


def window_to_uint8(
    hu: np.ndarray, center: float = LUMBAR_PNG_WINDOW[0], width: float = LUMBAR_PNG_WINDOW[1]
) -> np.ndarray:
    """Map HU through a linear window (PS3.3 C.11.2.1.2, without the -0.5 offsets) to 0..255 uint8."""
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    unit = np.clip((np.asarray(hu, dtype=np.float32) - (center - width / 2.0)) / width, 0.0, 1.0)
    return np.rint(unit * 255.0).astype(np.uint8)


def write_rsna_pe(folder: Path | str, studies: int = 4, slices: int = 40, size: int = 128, seed: int = 0) -> Path:
    """Write a tiny RSNA-PE training set of CTPA phantoms.

    Parameters
    ----------
    folder : path
        Root of the data set (created): ``train.csv`` and ``train/`` go in it.
    studies : int
        Exams, one series each; they cycle through negative, right, left, central,
        chronic and acute-and-chronic exams with RV/LV ratios below and above 1, so any
        ``studies >= 4`` holds negatives and positives of every side.
    slices, size : int
        Slices per series and their rows/columns (see :func:`ctpa_phantom`).
    seed : int
        Exam ``i`` is drawn from phantom seed ``seed * 1000 + i``; UIDs derive from it.

    Returns
    -------
    Path
        ``folder``. ``train.csv`` has :data:`RSNA_PE_COLUMNS`, one row per image, rows
        grouped by exam and sorted by SOPInstanceUID within it (not in slice order, like
        the challenge's file); ``pe_present_on_image`` is the phantom's per-slice truth,
        the exam labels come from :func:`ctpa_phantom`; ``qa_motion``, ``qa_contrast``,
        ``flow_artifact``, ``true_filling_defect_not_pe`` and ``indeterminate`` are 0.
    """
    if studies < 1 or slices < 2:
        raise ValueError(f"need at least one study of two slices, got {studies} × {slices}")
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for index in range(studies):
        config = _PE_EXAMS[index % len(_PE_EXAMS)]
        phantom_seed = seed * 1000 + index
        phantom = ctpa_phantom(phantom_seed, slices=slices, size=size, **config)
        entropy = f"rsna-pe-{seed}-{index}-{slices}-{size}"
        study = generate_uid(entropy_srcs=[entropy, "study"])
        series = generate_uid(entropy_srcs=[entropy, "series"])
        phantom.write_series(
            root / "train" / study / series,
            study_uid=study,
            series_uid=series,
            file_names="sop_uid",
            instance_numbers="shuffled" if index % 2 else "feet_first",
            uid_entropy=entropy,
            patient_id=f"RSNA-PHANTOM-{seed}-{index}",
        )
        truth = phantom.truth
        exam = truth["exam_labels"]
        exam_rows = []
        for k, sop in enumerate(truth["sop_uids"]):
            row: dict[str, Any] = dict.fromkeys(RSNA_PE_COLUMNS, 0)
            row.update(
                StudyInstanceUID=study,
                SeriesInstanceUID=series,
                SOPInstanceUID=sop,
                pe_present_on_image=truth["pe_present_on_image"][k],
            )
            row.update({label: exam[label] for label in exam})
            exam_rows.append(row)
        rows.extend(sorted(exam_rows, key=lambda r: r["SOPInstanceUID"]))
    with open(root / "train.csv", "w", newline="", encoding="ascii") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(RSNA_PE_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return root


def write_lumbar_folders(
    folder: Path | str,
    series: int = 4,
    size: int = 128,
    seed: int = 0,
    *,
    slices: int = 100,
    spacing_z: float = 3.0,
    test_fraction: float = 0.25,
    include_discs: bool = False,
) -> Path:
    """Write a tiny lumbar-level data set in the lumbar-level design's folder layout.

    Parameters
    ----------
    folder : path
        Root (created): ``train/<class>/`` and ``test/<class>/`` for every class of
        :data:`training.phantoms.ct.LEVELS`, each created even when empty.
    series : int
        Abdominal phantoms; whole series go to one split (no patient in both): the last
        ``ceil(series * test_fraction)`` (at least one when ``series >= 2``) go to ``test``.
    size : int
        PNG rows/columns (the phantom's; 410 mm field of view).
    seed : int
        Series ``i`` is drawn from phantom seed ``seed * 1000 + i``.
    slices, spacing_z : int, float
        Per series; ``slices * spacing_z`` must cover T12..S1 (about 260 mm).
    test_fraction : float
        Share of the series written to ``test``.
    include_discs : bool
        Also write the slices through intervertebral discs (labelled with the nearer
        body's level); the lumbar-level design left them out.

    Returns
    -------
    Path
        ``folder``; images are ``s<seed>-<series>-<slice>.png`` (slice = volume index, 0
        most cranial), 8-bit grey, windowed with :data:`LUMBAR_PNG_WINDOW`.
    """
    if series < 1:
        raise ValueError(f"need at least one series, got {series}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    root = Path(folder)
    for split in ("train", "test"):
        for level in LEVELS:
            (root / split / level).mkdir(parents=True, exist_ok=True)
    tests = int(np.ceil(series * test_fraction)) if series >= 2 else 0
    for index in range(series):
        split = "test" if index >= series - tests else "train"
        phantom = abdomen_phantom(seed * 1000 + index, slices=slices, size=size, spacing_z=spacing_z)
        pixels = window_to_uint8(phantom.volume_hu)
        for k, level in enumerate(phantom.truth["levels"]):
            if phantom.truth["disc"][k] and not include_discs:
                continue
            Image.fromarray(pixels[k]).save(root / split / level / f"s{seed}-{index:03d}-{k:03d}.png")
    return root
