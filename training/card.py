"""The model card of a trained view filter, written from the figures of its run (:class:`TrainResult`).

``training.view_filter`` trains and fills a :class:`TrainResult`; this module only reads it, so the
trainer imports the card and not the other way round.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.data import CLASSES, IMAGE_GROUPS, image_group

__all__ = ["TrainResult", "write_model_card", "wilson_interval"]

SOURCE_FIGURES = (
    "The source design reports 1.0 on 174 validation images and 99.74 % on 38,552 more, with far more laterals."
)
"""The figures of the MIMIC-CXR view-filter design, quoted on the card (its authors', not measured here)."""


@dataclass
class TrainResult:
    """Figures of one training run (written to the model card and printed)."""

    holdout_files: list[str]
    holdout_labels: list[int]
    holdout_probabilities: list[float]
    total_counts: tuple[int, int]
    total_group_counts: dict[str, int]
    nih_frontals: int
    train_counts: tuple[int, int]
    train_group_counts: dict[str, int]
    balance: str
    group_shares: dict[str, float]
    train_patients: int
    holdout_patients: int
    steps: int
    seconds: float
    onnx_max_abs_diff: float

    def confusion(self) -> list[list[int]]:
        """Rows = true class (frontal, lateral), columns = predicted class, at 0.5."""
        matrix = [[0, 0], [0, 0]]
        for label, p in zip(self.holdout_labels, self.holdout_probabilities, strict=False):
            matrix[label][int(p >= 0.5)] += 1
        return matrix

    def group_accuracy(self) -> dict[str, tuple[int, int]]:
        """(correct, held-out images) per image group present in the hold-out, at 0.5."""
        tally: dict[str, list[int]] = {}
        for path, label, p in zip(self.holdout_files, self.holdout_labels, self.holdout_probabilities, strict=False):
            entry = tally.setdefault(image_group(path), [0, 0])
            entry[0] += int(int(p >= 0.5) == label)
            entry[1] += 1
        return {g: (tally[g][0], tally[g][1]) for g in IMAGE_GROUPS if g in tally}


def wilson_interval(correct: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval (95 % by default) of a proportion ``correct / total``.

    Raises
    ------
    ValueError
        If ``total`` is not positive or ``correct`` is outside 0..total.
    """
    if total <= 0 or not 0 <= correct <= total:
        raise ValueError(f"need 0 <= correct <= total and total > 0, got {correct}/{total}")
    p = correct / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _group_lines(result: TrainResult) -> list[str]:
    lines = [
        "| image group | held-out images | correct | accuracy | 95 % interval (Wilson) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for group, (correct, total) in result.group_accuracy().items():
        low, high = wilson_interval(correct, total)
        lines.append(f"| {group} | {total} | {correct} | {correct / total:.3f} | {low:.3f}–{high:.3f} |")
    return lines


def _accuracy_lines(result: TrainResult) -> list[str]:
    matrix = result.confusion()
    lines = ["| class | held-out images | correct | accuracy |", "| --- | ---: | ---: | ---: |"]
    for c, cls in enumerate(CLASSES):
        total = sum(matrix[c])
        accuracy = f"{matrix[c][c] / total:.3f}" if total else "n/a"
        lines.append(f"| {cls} | {total} | {matrix[c][c]} | {accuracy} |")
    # The NIH images are 64-px frontals: report them apart, so that a model that
    # only learnt "small source image = frontal" would show in the other row.
    for prefix, what in (("frontal/nih-", "frontal, NIH 64-px copies"), ("frontal/covid-", "frontal, other sources")):
        picked = [
            (y, p)
            for f, y, p in zip(result.holdout_files, result.holdout_labels, result.holdout_probabilities, strict=False)
            if f.startswith(prefix)
        ]
        if picked:
            correct = sum(1 for y, p in picked if int(p >= 0.5) == y)
            lines.append(f"| {what} | {len(picked)} | {correct} | {correct / len(picked):.3f} |")
    return lines


def write_model_card(path: Path, args: argparse.Namespace, result: TrainResult, manifest: dict[str, Any]) -> None:
    """Write ``MODEL_CARD.md`` for a run: data and licence, design, figures, limits, how to reproduce."""
    matrix = result.confusion()
    held = {c: sum(matrix[i]) for i, c in enumerate(CLASSES)}
    by_group = result.group_accuracy()
    total_groups = result.total_group_counts
    train_groups = ", ".join(f"{result.train_group_counts.get(g, 0):,} {g}" for g in IMAGE_GROUPS)
    held_groups = ", ".join(f"{by_group.get(g, (0, 0))[1]:,} {g}" for g in IMAGE_GROUPS)
    if result.balance in ("sampling", "sqrt-sampling"):
        how = (
            "equal probability"
            if result.balance == "sampling"
            else "probability proportional to the square root of its size"
        )
        balance = (
            "Balance: group-balanced sampling. Each training example is drawn from one of the "
            f"{len(result.group_shares)} image groups present with {how} ("
            + ", ".join(f"{g} {share:.2f}" for g, share in result.group_shares.items())
            + "), then uniformly within the group; no loss weights. So no group is drowned out by a "
            "larger one, and the few laterals are seen often, augmented anew each time."
        )
    else:
        balance = (
            "Balance: loss weights n / (k × n_group), the same total weight for each of the "
            f"{len(result.group_shares)} image groups: "
            + ", ".join(f"{g} {share:.2f}" for g, share in result.group_shares.items())
            + "; batches are drawn uniformly from all training images."
        )
    threads = f" --threads {args.threads}" if args.threads else ""
    options = f"--seed {args.seed} --steps {result.steps} --balance {result.balance}{threads}"
    lateral_correct, lateral_total = by_group.get("lateral", (0, 0))
    if lateral_total:
        low, high = wilson_interval(lateral_correct, lateral_total)
        lateral_note = (
            f"With {lateral_total} held-out laterals, the lateral accuracy "
            f"({lateral_correct}/{lateral_total}) is uncertain: its 95 % Wilson interval is "
            f"{low:.3f}–{high:.3f}, so an error rate of up to about {1 - low:.0%} on laterals like these "
            "is compatible with this test."
        )
    else:
        lateral_note = "No lateral was held out: the lateral accuracy is unknown."
    wrong = (
        ", ".join(
            f"`{f}` ({p:.3f})"
            for f, y, p in zip(result.holdout_files, result.holdout_labels, result.holdout_probabilities, strict=False)
            if int(p >= 0.5) != y
        )
        or "none"
    )
    text = f"""# {manifest["name"]} {manifest["version"]} — frontal vs lateral chest radiograph filter

Trained {_dt.date.today().isoformat()} with `training/view_filter.py` (random seed {args.seed}).
Weights file `{manifest["weights"]}`, SHA-256 `{manifest["sha256"]}`.

## Licence of these weights: non-commercial use only

The training images come from a public COVID-19 chest X-ray collection whose images carry
mostly CC BY-NC-SA and CC BY-NC-ND terms (others CC BY, or "see source"), plus NIH
ChestX-ray14 images (CC0) and pediatric radiographs of Kermany et al. (CC BY 4.0). Weights
trained on non-commercial images inherit their terms: **these weights may be used for research
and non-commercial purposes only.** The code that trains them is under the repository's
licence; retrain on data you may use commercially if you need that.

## Data

Folder `frontal/` and `lateral/` of grey PNGs (the shared `cxr-view` set): {result.total_counts[0]:,} frontal
and {result.total_counts[1]:,} lateral images in the run reported here, in three image groups:
{total_groups.get("adult frontal", 0):,} adult frontal, {total_groups.get("pediatric frontal", 0):,} pediatric frontal
(`peds-*`: Kermany et al., CC BY 4.0, one image per child; normal, bacterial and viral
pneumonia) and {total_groups.get("lateral", 0):,} lateral (all adults). {result.nih_frontals:,} of the adult
frontals are NIH ChestX-ray14 images reduced to 64×64 (`nih-*`); the other adult frontals and
all laterals are full radiographs (≤ 512 px) from the COVID-19 collection. Labels may be noisy.

Hold-out: whole patients, drawn until about {args.holdout:.0%} of each image group's images are held
out (`training/data.py`: NIH patient ID from the file name; other files grouped by file name
without its view/panel tag and by case URL in `SOURCES.csv`; each child is its own patient).

**Images these weights saw:** every image of the set except those listed in `holdout.txt`, that is
{train_groups} images ({result.train_counts[0]:,} frontal + {result.train_counts[1]:,} lateral) of
{result.train_patients} patients. Held out and never trained on: {held_groups} images
({held["frontal"]} frontal + {held["lateral"]} lateral) of {result.holdout_patients} other patients,
listed in `holdout.txt` with each image's P(lateral).

## Design (the MIMIC-CXR view-filter design)

64×64×1 grey input in 0..1 (bone white; DICOM windowed by `models/preprocess/radiograph.py`,
PNG scaled by 1/255; area-average resize, aspect stretched as in the source design); Conv2D 3×3 16, 32,
64, 128 filters, valid padding, ReLU; 2×2 max-pooling after the first three; 4×4 average
pooling; flatten; Dense 64 ReLU; Dense 1 sigmoid = P(lateral). **105,473 parameters**
(the source design reports 105,761 for a 3-channel input). ONNX graph input `image`, shape (N, 64, 64, 1),
NHWC, float32; output (N, 1).

## Training

Binary cross-entropy, RMSprop (learning rate 1e-3), batch {args.batch_size}, {result.steps} steps
({result.seconds:.0f} s on CPU). Augmentation: rotation ±45°, shifts ±10 %, shear 0.1,
zoom ±10 %, horizontal flip. {balance}
ONNX export by tf2onnx; largest |ONNX − Keras| difference on the held-out images:
{result.onnx_max_abs_diff:.1e}.

## Held-out results (threshold 0.5)

Per image group:

{chr(10).join(_group_lines(result))}

Per class and source:

{chr(10).join(_accuracy_lines(result))}

Confusion matrix (rows = true, columns = predicted):

| | predicted frontal | predicted lateral |
| --- | ---: | ---: |
| frontal | {matrix[0][0]} | {matrix[0][1]} |
| lateral | {matrix[1][0]} | {matrix[1][1]} |

Misclassified held-out images (path, P(lateral)): {wrong}

{lateral_note} {SOURCE_FIGURES}

## Intended use and limits

- Use: decide whether a chest CR/DX image is a frontal (PA/AP) or a lateral view, so that
  frontal-only classifiers are not run on laterals, and flag images whose ViewPosition
  (0018,5101) contradicts the pixels.
- Not a diagnostic device; not validated clinically. Chest radiographs of adults, and
  children's frontal radiographs like those of the Kermany set (young children from one
  hospital); children's laterals, other body parts, oblique or decubitus views are outside
  its training data and get an arbitrary answer.
- Few laterals ({total_groups.get("lateral", 0)}, adults, from one collection) and frontal images from three sources
  of different resolution: the model may have learnt features of the sources. Check it on
  your site's images before relying on it; the node records its output next to the header's
  view and never discards an image on the model's word alone.

## How to reproduce

```
pip install -e '.[train]'
ainode-train view-filter --data DATA --out MODELS_DIR/cxr-view-filter {options}
# or: python -m training.view_filter --data DATA --out OUT {options}
```

With `--threads 1` a run is repeatable on one machine (same seed, same model); TensorFlow on
CPU is not bit-for-bit deterministic across machines, so figures may differ slightly from this card.
"""
    path.write_text(text, encoding="utf-8")
