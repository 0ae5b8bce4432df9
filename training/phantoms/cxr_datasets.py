"""Synthetic chest radiograph data sets written in the layout of the real public ones.

The training commands read the real data sets; the demo build (``ainode models
build-demo``) writes phantoms (:func:`training.phantoms.chest.chest_phantom`) in the
same layout and runs the same commands on them, so the code path that trains on
phantoms is the one that trains on real data.

NIH ChestX-ray14 (:func:`write_nih_dataset`)::

    ROOT/Data_Entry_2017.csv
    ROOT/images/00000001_000.png ...

The CSV has the real file's eleven columns (``Image Index``, ``Finding Labels``,
``Follow-up #``, ``Patient ID``, ``Patient Age``, ``Patient Gender``, ``View
Position``, ``OriginalImage[Width``, ``Height]``, ``OriginalImagePixelSpacing[x``,
``y]`` — the brackets split across two columns each, as in the NIH release);
``Finding Labels`` is ``A|B`` or ``No Finding``; image names are
``<8-digit patient>_<3-digit follow-up>.png``, several per patient. Images are
8-bit grey PNGs, 255 = dense (bone white), as NIH's.

Four-class folders (:func:`write_four_class_dataset`), the layout of the Kaggle set
"Chest X-Ray (Pneumonia, Covid-19, Tuberculosis)" used by the four-class design::

    ROOT/train/COVID19/*.png  ROOT/train/NORMAL/  ROOT/train/PNEUMONIA/  ROOT/train/TUBERCULOSIS/
    ROOT/val/...              ROOT/test/...

Folder names map to the class keys of :data:`training.architectures.FOUR_CLASSES`
by :data:`FOUR_CLASS_FOLDERS` (upper case in the data set, lower case keys here).
"""

from __future__ import annotations

import csv
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from training.phantoms.chest import DETECTOR_MM, FINDINGS, FOUR_CLASSES, chest_phantom

__all__ = [
    "GENERATOR_VERSION",
    "FOUR_CLASS_FOLDERS",
    "NIH_COLUMNS",
    "NihImage",
    "write_four_class_dataset",
    "write_nih_dataset",
    "write_png",
]

GENERATOR_VERSION = 1
"""Version of what this module writes (the NIH ChestX-ray14 and four-class data sets written from the chest
phantoms): bump it when a change alters the output for the same arguments, so that the demo recipes built on
it are rebuilt (``training.demo.recipe_hash``)."""

NIH_COLUMNS = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
    "OriginalImage[Width",
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
)
"""Header of ``Data_Entry_2017.csv`` (the comma inside the brackets makes two columns of each)."""

FOUR_CLASS_FOLDERS = {
    "COVID19": "covid19",
    "NORMAL": "normal",
    "PNEUMONIA": "pneumonia",
    "TUBERCULOSIS": "tuberculosis",
}
"""Class folder of the Kaggle four-class set → class key (``FOUR_CLASSES``)."""

# Relative frequency of each plantable finding in a demo NIH set (when an image has findings).
# Small lesions are drawn more often: they are the hardest to learn and the ones the demo is checked on.
_FINDING_WEIGHTS = {
    "Nodule": 2.0,
    "Mass": 1.0,
    "Effusion": 1.0,
    "Cardiomegaly": 1.0,
    "Pneumothorax": 1.0,
    "Consolidation": 1.0,
    "Infiltration": 1.0,
    "Atelectasis": 1.0,
}
assert set(_FINDING_WEIGHTS) == set(FINDINGS), "every plantable finding needs a weight"


@dataclass(frozen=True)
class NihImage:
    """One row of ``Data_Entry_2017.csv`` and the phantom behind it."""

    index: str  # Image Index, e.g. 00000001_000.png
    labels: tuple[str, ...]  # NIH spelling, empty = No Finding
    follow_up: int
    patient_id: int
    seed: int
    findings: tuple[str, ...]  # what was asked of chest_phantom
    four_class: str


def write_png(path: Path, image: np.ndarray) -> None:
    """Write a 0..1 float image as an 8-bit grey PNG, 255 = dense (white)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    grey = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    Image.fromarray(grey, mode="L").save(path, optimize=False, compress_level=1)


def _draw(job: tuple[str, int, tuple[str, ...], str, int]) -> tuple[str, tuple[str, ...]]:
    path, seed, findings, four_class, size = job
    phantom = chest_phantom(seed, findings, four_class=four_class, size=size)
    write_png(Path(path), phantom.image)
    return path, phantom.labels


def _run(
    jobs: list[tuple[str, int, tuple[str, ...], str, int]], workers: int, progress: object = None
) -> list[tuple[str, ...]]:
    """Draw all jobs (in ``workers`` processes when > 1); the labels of each, in order."""
    report = getattr(progress, "step", None)
    labels: list[tuple[str, ...]] = []
    if workers <= 1:
        results = map(_draw, jobs)
        for done, (_, lab) in enumerate(results, start=1):
            labels.append(lab)
            if report and (done % 25 == 0 or done == len(jobs)):
                report(done, len(jobs), "drawing phantoms")
        return labels
    # spawn, not fork: the caller may already run TensorFlow's threads, which a fork would copy half-locked.
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for done, (_, lab) in enumerate(pool.map(_draw, jobs, chunksize=8), start=1):
            labels.append(lab)
            if report and (done % 25 == 0 or done == len(jobs)):
                report(done, len(jobs), "drawing phantoms")
    return labels


def write_nih_dataset(
    root: Path,
    *,
    patients: int,
    images_per_patient: tuple[int, int] = (1, 4),
    size: int = 256,
    seed: int = 0,
    normal_fraction: float = 0.35,
    pneumonia_fraction: float = 0.05,
    workers: int = 1,
    progress: object = None,
) -> list[NihImage]:
    """Write a synthetic NIH ChestX-ray14 set: ``Data_Entry_2017.csv`` + ``images/*.png``.

    Each patient gets between ``images_per_patient[0]`` and ``[1]`` images
    (follow-ups 000, 001, ...), drawn from one phantom seed per patient: the same
    anatomy and noise, so a patient's images differ only by their findings (a model
    cannot tell a nodule from the anatomy it sits on by memorising the patient). An image is normal with
    probability ``normal_fraction``; otherwise it holds one finding (two with
    probability 0.3) drawn from :data:`training.phantoms.chest.FINDINGS`, nodules
    twice as often as the others; a ``pneumonia_fraction`` of images get the four-class design's
    pneumonia pattern (labels Pneumonia and Consolidation). ``Finding Labels`` is
    the phantom's ground truth, sorted, joined by ``|``.

    Parameters
    ----------
    root : Path
        Folder to create (``Data_Entry_2017.csv`` and ``images/`` inside).
    patients : int
        Number of patients.
    images_per_patient : tuple of int
        Inclusive range of images per patient.
    size : int
        Rows and columns of every image (the image spans 43 cm).
    seed : int
        Seeds the draw of findings, ages, sexes and the phantoms.
    normal_fraction, pneumonia_fraction : float
        See above.
    workers : int
        Processes drawing phantoms.
    progress : object, optional
        Anything with ``step(done, total, message)``.

    Returns
    -------
    list of NihImage
        The rows written, in CSV order.
    """
    if patients < 1:
        raise ValueError(f"patients must be at least 1, got {patients}")
    low, high = images_per_patient
    if not 1 <= low <= high:
        raise ValueError(f"images_per_patient must be (low, high) with 1 <= low <= high, got {images_per_patient}")
    rng = np.random.default_rng([seed, 7])
    names = list(_FINDING_WEIGHTS)
    weights = np.array([_FINDING_WEIGHTS[n] for n in names])
    weights /= weights.sum()
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows: list[tuple[NihImage, int, str, str]] = []
    jobs = []
    for patient in range(1, patients + 1):
        age, sex = int(rng.integers(18, 90)), str(rng.choice(["M", "F"]))
        for follow_up in range(int(rng.integers(low, high + 1))):
            # One anatomy per patient: follow-ups differ only by their findings (chest_phantom's guarantee).
            image_seed = int(seed) * 1_000_003 + patient * 64
            findings: tuple[str, ...] = ()
            four_class = "normal"
            if rng.random() >= normal_fraction:
                count = 2 if rng.random() < 0.3 else 1
                findings = tuple(str(f) for f in rng.choice(names, size=count, replace=False, p=weights))
            if rng.random() < pneumonia_fraction:
                four_class = "pneumonia"
            index = f"{patient:08d}_{follow_up:03d}.png"
            image = NihImage(index, (), follow_up, patient, image_seed, findings, four_class)
            rows.append((image, age + follow_up // 2, sex, str(rng.choice(["PA", "PA", "AP"]))))
            jobs.append((str(root / "images" / index), image_seed, findings, four_class, size))
    labels = _run(jobs, workers, progress)
    spacing = f"{DETECTOR_MM / size:.4f}"
    written = []
    with open(root / "Data_Entry_2017.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(NIH_COLUMNS)
        for (image, age, sex, view), lab in zip(rows, labels, strict=False):
            image = NihImage(
                image.index, lab, image.follow_up, image.patient_id, image.seed, image.findings, image.four_class
            )
            written.append(image)
            writer.writerow(
                [
                    image.index,
                    "|".join(lab) if lab else "No Finding",
                    image.follow_up,
                    image.patient_id,
                    age,
                    sex,
                    view,
                    size,
                    size,
                    spacing,
                    spacing,
                ]
            )
    return written


def write_four_class_dataset(
    root: Path,
    *,
    per_class: dict[str, int] | int,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    size: int = 256,
    seed: int = 0,
    workers: int = 1,
    progress: object = None,
) -> dict[str, dict[str, int]]:
    """Write a synthetic four-class set: ``train|val|test/<CLASS FOLDER>/*.png``.

    Parameters
    ----------
    root : Path
        Folder to create.
    per_class : dict or int
        Images per class key (``covid19``, ``normal``, ``pneumonia``,
        ``tuberculosis``), or one count for all.
    fractions : sequence of float
        Share of each class's images in train, val and test (summing to 1).
    size : int
        Rows and columns of every image.
    seed : int
        Seeds the phantoms.
    workers : int
        Processes drawing phantoms.
    progress : object, optional
        Anything with ``step(done, total, message)``.

    Returns
    -------
    dict
        ``{split: {class key: images written}}``.
    """
    counts = per_class if isinstance(per_class, dict) else {c: int(per_class) for c in FOUR_CLASSES}
    unknown = set(counts) - set(FOUR_CLASSES)
    if unknown:
        raise ValueError(f"unknown four-class class(es) {sorted(unknown)}; choose from {', '.join(FOUR_CLASSES)}")
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"fractions must be three shares (train, val, test) summing to 1, got {tuple(fractions)}")
    folder_of = {key: folder for folder, key in FOUR_CLASS_FOLDERS.items()}
    jobs: list[tuple[str, int, tuple[str, ...], str, int]] = []
    summary: dict[str, dict[str, int]] = {s: {} for s in ("train", "val", "test")}
    for c, key in enumerate(FOUR_CLASSES):
        n = counts.get(key, 0)
        n_train = int(round(fractions[0] * n))
        n_val = int(round(fractions[1] * n))
        for i in range(n):
            split = "train" if i < n_train else "val" if i < n_train + n_val else "test"
            summary[split][key] = summary[split].get(key, 0) + 1
            path = Path(root) / split / folder_of[key] / f"{folder_of[key].lower()}-{i:05d}.png"
            jobs.append((str(path), int(seed) * 1_000_003 + 200_000 * (c + 1) + i, (), key, size))
    _run(jobs, workers, progress)
    return summary
