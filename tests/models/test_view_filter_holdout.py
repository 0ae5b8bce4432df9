"""Pins the shipped view filter's accuracy per image group on its own held-out patients.

``weights/cxr-view-filter/holdout.txt`` lists the images the trainer held out (whole
patients, about 20 % of each image group: adults' frontals, children's frontals,
laterals). These tests run the shipped ONNX weights through the node's own model
code on those images, so that a later retraining cannot silently lose children or
laterals, shrink the held-out set, or ship a card or list that does not belong to
its weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from models.manifest import Manifest
from models.registry import ModelRegistry
from models.view_filter import ViewFilter
from tests.helpers.radiographs import cxr_view_dir, repo_root
from training.data import IMAGE_GROUPS, Sample, image_group, list_samples, patient_groups, split_by_patient
from training.view_filter import load_images

WEIGHTS = repo_root() / "weights" / "cxr-view-filter"
# Issue 19's bar: >= 99.5 % of each frontal group, every lateral.
MIN_ACCURACY = {"adult frontal": 0.995, "pediatric frontal": 0.995, "lateral": 1.0}
# At least this many held-out images per group (the shipped split holds out 252, 60 and 7):
# with 60 children, 99.5 % means no error at all.
MIN_HELD_OUT = {"adult frontal": 250, "pediatric frontal": 60, "lateral": 7}


def read_holdout(listing: Path) -> tuple[int, list[tuple[str, str, float]]]:
    """The random seed named in the listing's header and its (path, true view, P(lateral)) rows."""
    text = listing.read_text(encoding="utf-8")
    found = re.search(r"seed (\d+)", text.splitlines()[0])
    assert found, f"{listing} does not name its seed in the first line"
    rows = []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        path, view, p_lateral = line.split(",")
        rows.append((path, view, float(p_lateral)))
    return int(found.group(1)), rows


@dataclass(frozen=True)
class Measured:
    seed: int
    rows: list[tuple[str, str, float]]
    samples: list[Sample]
    p: np.ndarray
    manifest: Manifest


@pytest.fixture(scope="module")
def measured() -> Measured:
    """The shipped weights' P(lateral) for every held-out image, computed now."""
    seed, rows = read_holdout(WEIGHTS / "holdout.txt")
    manifest = ModelRegistry.discover(repo_root() / "weights").require("cxr-view-filter")
    view_filter = ViewFilter.from_manifest(manifest, threads=1)
    samples = [Sample(path, 1 if view == "lateral" else 0) for path, view, _ in rows]
    images = load_images(cxr_view_dir(), samples)  # the trainer's own preprocessing
    probabilities = view_filter.lateral_probabilities(images[:, :, :, 0])
    return Measured(seed, rows, samples, probabilities, manifest)


def group_accuracy(samples: list[Sample], probabilities: np.ndarray) -> dict[str, tuple[int, int]]:
    tally = {g: [0, 0] for g in IMAGE_GROUPS}
    for sample, p in zip(samples, probabilities, strict=False):
        entry = tally[sample.group]
        entry[0] += int(int(p >= 0.5) == sample.label)
        entry[1] += 1
    return {g: (c, n) for g, (c, n) in tally.items()}


def test_every_group_meets_its_bar_on_held_out_patients(measured: Measured) -> None:
    samples, probabilities = measured.samples, measured.p
    accuracy = group_accuracy(samples, probabilities)
    for group in IMAGE_GROUPS:
        correct, total = accuracy[group]
        assert total >= MIN_HELD_OUT[group], f"only {total} held-out {group} images"
        wrong = [
            (s.relpath, round(float(p), 3))
            for s, p in zip(samples, probabilities, strict=False)
            if s.group == group and int(p >= 0.5) != s.label
        ]
        assert correct / total >= MIN_ACCURACY[group], f"{group}: {correct}/{total} correct; wrong: {wrong}"


def test_listed_probabilities_are_the_shipped_weights(measured: Measured) -> None:
    listed = np.array([p for _, _, p in measured.rows])
    # holdout.txt rounds to 4 decimals; other weights would differ by far more.
    assert np.max(np.abs(listed - measured.p)) < 2e-3


def test_held_out_images_are_the_trainers_split_of_the_shared_data(measured: Measured) -> None:
    """The listed images are exactly what the trainer holds out for that random seed, so none was trained on."""
    seed, rows = measured.seed, measured.rows
    data = cxr_view_dir()
    samples = list_samples(data)
    _, held = split_by_patient(samples, patient_groups(samples, data), 0.2, seed)
    assert sorted(path for path, _, _ in rows) == sorted(samples[i].relpath for i in held), (
        "holdout.txt is not the trainer's split of the shared data: the data or the split changed; retrain"
    )
    assert all(view == ("lateral" if image_group(path) == "lateral" else "frontal") for path, view, _ in rows)


def test_model_card_states_the_measured_figures(measured: Measured) -> None:
    card = (WEIGHTS / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert f"`{measured.manifest.sha256}`" in card
    for group, (correct, total) in group_accuracy(measured.samples, measured.p).items():
        assert f"| {group} | {total} | {correct} | {correct / total:.3f} |" in card, group
    assert "Images these weights saw" in card and "pediatric" in card
