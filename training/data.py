"""Listing, patient grouping and hold-out split of a frontal/lateral PNG data set.

Layout expected (the view filter's training set)::

    DATA/frontal/*.png
    DATA/lateral/*.png
    DATA/SOURCES.csv        optional: view,file,source,licence,url

Images of one patient must not be on both sides of the split, but the file names
carry no patient ID for every source. The patient of a file is derived as follows,
and files are merged (union-find) when any of their keys agree:

* ``nih-<8 digits>_<3 digits>.png`` (NIH ChestX-ray14): the 8 digits are the
  patient ID, the last 3 the follow-up number.
* any other file: its stem without the source prefix and without a trailing view or
  panel tag (``-L``, ``-PA``, ``-AP``, ``-a`` … ``-h``, ``-a1``), so that
  ``x-14-L.png`` and ``x-14-PA.png`` are one patient;
* and, when ``SOURCES.csv`` gives a case URL for the file, that URL (one case page is
  one patient; an article page with several patients merges them, which can only make
  the split stricter). A URL shared by more than ``MAX_CASE_FILES`` files names a
  collection (a repository, a data set's home page), not a case, and is not used.

Each image also belongs to one of three *image groups* (:data:`IMAGE_GROUPS`):
laterals, children's frontals (files ``peds-*``, one child each) and the other
(adult) frontals. The split is stratified by image group, so that each group has
about the same held-out fraction, and is deterministic for a given seed; training
balances the groups (``training.view_filter``).
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Sample", "list_samples", "patient_groups", "split_by_patient", "image_group", "CLASSES", "IMAGE_GROUPS"]

CLASSES: tuple[str, str] = ("frontal", "lateral")
#: Image groups, reported and balanced separately: adults' frontals, children's frontals, laterals.
IMAGE_GROUPS: tuple[str, str, str] = ("adult frontal", "pediatric frontal", "lateral")
PEDIATRIC_PREFIX = "peds-"
_NIH = re.compile(r"^nih-(\d{8})_\d{3}$")
_TAG = re.compile(r"[-_](?:L|l|PA|pa|AP|ap|[a-h]\d?)$")
MAX_CASE_FILES = 12


@dataclass(frozen=True)
class Sample:
    """One training image: its path relative to the data folder, and its class index."""

    relpath: str
    label: int  # 0 = frontal, 1 = lateral

    @property
    def name(self) -> str:
        return Path(self.relpath).name

    @property
    def group(self) -> str:
        """The sample's image group (see :func:`image_group`)."""
        return image_group(self.relpath)


def image_group(relpath: str) -> str:
    """Image group of a data-set path such as ``frontal/peds-normal-IM-0341-0001.png``.

    ``lateral`` for anything under ``lateral/``; ``pediatric frontal`` for a frontal
    whose file name starts with ``peds-``; ``adult frontal`` for the other frontals.
    """
    folder, _, name = relpath.replace("\\", "/").rpartition("/")
    if folder.rsplit("/", 1)[-1] == "lateral":
        return "lateral"
    return "pediatric frontal" if name.startswith(PEDIATRIC_PREFIX) else "adult frontal"


def list_samples(data_dir: Path) -> list[Sample]:
    """All PNGs under ``frontal/`` and ``lateral/``, sorted (deterministic order).

    Raises
    ------
    FileNotFoundError
        If a class folder is missing or empty.
    """
    samples: list[Sample] = []
    for label, cls in enumerate(CLASSES):
        folder = Path(data_dir) / cls
        files = sorted(folder.glob("*.png")) if folder.is_dir() else []
        if not files:
            raise FileNotFoundError(f"no PNG images in {folder}: expected DATA/frontal/*.png and DATA/lateral/*.png")
        samples.extend(Sample(f"{cls}/{f.name}", label) for f in files)
    return samples


def _read_case_urls(data_dir: Path) -> dict[str, set[str]]:
    urls: dict[str, set[str]] = defaultdict(set)
    sources = Path(data_dir) / "SOURCES.csv"
    if not sources.is_file():
        return {}
    with open(sources, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            url = (row.get("url") or "").strip()
            if url:
                urls[(row.get("file") or "").strip()].add(url)
    files_per_url: dict[str, int] = defaultdict(int)
    for file_urls in urls.values():
        for url in file_urls:
            files_per_url[url] += 1
    return {f: {u for u in us if files_per_url[u] <= MAX_CASE_FILES} for f, us in urls.items()}


def _name_key(filename: str) -> str:
    stem = Path(filename).stem
    nih = _NIH.match(stem)
    if nih:
        return f"nih:{nih.group(1)}"
    stem = stem.split("-", 1)[1] if "-" in stem else stem  # drop the source prefix
    stem = stem.replace(".annot.original", "")
    while (shorter := _TAG.sub("", stem)) != stem and shorter:
        stem = shorter
    return f"name:{stem}"


def patient_groups(samples: list[Sample], data_dir: Path) -> list[int]:
    """Patient-group index of each sample (see the module docstring for the rules)."""
    urls = _read_case_urls(data_dir)
    parent = list(range(len(samples)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_with_key: dict[str, int] = {}
    for index, sample in enumerate(samples):
        keys = {_name_key(sample.name)} | {f"url:{u}" for u in urls.get(sample.name, ())}
        for key in keys:
            if key in first_with_key:
                parent[find(index)] = find(first_with_key[key])
            else:
                first_with_key[key] = index
    roots: dict[int, int] = {}
    return [roots.setdefault(find(i), len(roots)) for i in range(len(samples))]


def split_by_patient(
    samples: list[Sample], groups: list[int], fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Indices of (training, held-out) samples; no patient group on both sides.

    Each patient group is assigned to the rarest image group among its images
    (lateral before pediatric frontal before adult frontal). Patient groups are
    drawn in a seeded random order, image group by image group (laterals first),
    until about ``fraction`` of that image group's images are held out; so every
    image group, however small, is represented on both sides.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"hold-out fraction must be between 0 and 1, got {fraction}")
    members: dict[int, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        members[group].append(index)
    sample_groups = [s.group for s in samples]
    total = {g: sample_groups.count(g) for g in IMAGE_GROUPS}
    target = {g: round(fraction * total[g]) for g in IMAGE_GROUPS}
    drawn_for = {
        group: next(g for g in reversed(IMAGE_GROUPS) if any(sample_groups[i] == g for i in idx))
        for group, idx in members.items()
    }
    rng = np.random.default_rng(seed)
    order = [sorted(members)[i] for i in rng.permutation(len(members))]
    held: list[int] = []
    counts = dict.fromkeys(IMAGE_GROUPS, 0)
    for wanted in reversed(IMAGE_GROUPS):
        for group in order:
            if drawn_for[group] != wanted or counts[wanted] >= target[wanted]:
                continue
            held.extend(members[group])
            for i in members[group]:
                counts[sample_groups[i]] += 1
    held_set = set(held)
    train = [i for i in range(len(samples)) if i not in held_set]
    return train, sorted(held)
