"""Synthetic chest phantoms: determinism, planted findings where their boxes say, DICOM, routing, view filter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from models.registry import ModelRegistry
from models.view_filter import ViewFilter
from node.router import load_routing, route
from tests.helpers import assert_dciodvfy_clean, repo_root
from training.phantoms import FINDINGS, FOUR_CLASSES, NIH_LABELS, chest_phantom, phantom_dataset

SEEDS = (0, 1, 2)
# Findings that add density (mean rises in their box) and those that remove it.
DENSER = {"Nodule", "Mass", "Effusion", "Cardiomegaly", "Consolidation", "Infiltration", "Atelectasis"}
LUCENT = {"Pneumothorax"}


def test_same_seed_same_image_other_seed_other_image() -> None:
    a, b = chest_phantom(11, ["Nodule", "Effusion"]), chest_phantom(11, ["effusion", "nodule"])
    np.testing.assert_array_equal(a.image, b.image)
    assert a.boxes == b.boxes and a.labels == b.labels == ("Effusion", "Nodule")
    c = chest_phantom(12, ["Nodule", "Effusion"])
    assert np.mean(np.abs(a.image - c.image)) > 0.005 and a.boxes != c.boxes
    assert a.image.dtype == np.float32 and a.image.shape == (512, 512)
    assert a.image.min() >= 0.0 and a.image.max() <= 1.0


def test_normal_phantom_anatomy() -> None:
    p = chest_phantom(5)
    assert p.labels == () and p.boxes == [] and p.four_class == "normal" and p.label_string == "No Finding"
    lungs = p.image[p.lung_mask].mean()
    body_soft = p.image[300:340, 20:40].mean()  # lateral chest wall, outside the lungs
    air = p.image[2:20, 2:20].mean()
    assert air < lungs < body_soft, (air, lungs, body_soft)
    assert p.pixel_spacing_mm == pytest.approx(430 / 512)


@pytest.mark.parametrize("finding", FINDINGS)
@pytest.mark.parametrize("seed", SEEDS)
def test_finding_changes_the_image_inside_its_box(finding: str, seed: int) -> None:
    normal, sick = chest_phantom(seed), chest_phantom(seed, [finding])
    assert sick.labels == (finding,) and finding in NIH_LABELS
    [box] = sick.boxes_of(finding)
    x0, y0, x1, y1 = box.as_tuple()
    assert 0 <= x0 < x1 <= 512 and 0 <= y0 < y1 <= 512
    inside = np.zeros(normal.image.shape, bool)
    inside[y0:y1, x0:x1] = True
    diff = sick.image.astype(np.float64) - normal.image
    change_inside = diff[inside].mean()
    if finding in DENSER:
        assert change_inside > 0.01, change_inside
    else:
        assert change_inside < -0.01, change_inside
    # The box holds the whole finding: outside it the image is the normal one (up to the blur's edge).
    margin = np.zeros_like(inside)
    margin[max(0, y0 - 3) : y1 + 3, max(0, x0 - 3) : x1 + 3] = True
    assert np.abs(diff[~margin]).max() < 1e-6


@pytest.mark.parametrize("seed", range(6))
def test_nodule_and_mass_sizes(seed: int) -> None:
    p = chest_phantom(seed, ["Nodule", "Mass"])
    for label, low, high in (("Nodule", 15, 30), ("Mass", 30, 80)):
        [box] = p.boxes_of(label)
        width_mm = (box.x_max - box.x_min) * p.pixel_spacing_mm
        assert low - 2 <= width_mm <= high + 2, (label, width_mm)
        assert p.lung_mask[(box.y_min + box.y_max) // 2, (box.x_min + box.x_max) // 2]


@pytest.mark.parametrize("seed", range(8))
def test_cardiothoracic_ratio(seed: int) -> None:
    normal, big = chest_phantom(seed), chest_phantom(seed, ["Cardiomegaly"])
    assert normal.cardiothoracic_ratio < 0.5 < big.cardiothoracic_ratio
    # Measured on the image: the widest run of heart-dense pixels across the heart's rows.
    for p in (normal, big):
        [row0, row1] = [int(512 * 0.52), int(512 * 0.64)]
        dense = p.image[row0:row1] > 0.58
        widths = []
        for row in dense:
            cols = np.nonzero(row[p.thorax[0] : p.thorax[1]])[0]
            widths.append(cols.max() - cols.min() + 1 if len(cols) else 0)
        measured = max(widths) / (p.thorax[1] - p.thorax[0])
        assert measured == pytest.approx(p.cardiothoracic_ratio, abs=0.03)


@pytest.mark.parametrize("four_class", FOUR_CLASSES)
def test_four_classes(four_class: str) -> None:
    normal, p = chest_phantom(4), chest_phantom(4, four_class=four_class)
    assert p.four_class == four_class
    expected = {
        "normal": (),
        "pneumonia": ("Consolidation", "Pneumonia"),
        "covid19": ("Infiltration",),
        "tuberculosis": ("Infiltration", "Nodule"),
    }[four_class]
    assert p.labels == expected
    if four_class == "covid19":  # bilateral
        centres = sorted((b.x_min + b.x_max) / 2 for b in p.boxes)
        assert centres[0] < 256 < centres[-1]
    for box in p.boxes:
        x0, y0, x1, y1 = box.as_tuple()
        assert np.abs(p.image[y0:y1, x0:x1] - normal.image[y0:y1, x0:x1]).mean() > 0.01


def test_unknown_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="Hernia"):
        chest_phantom(0, ["Hernia"])
    with pytest.raises(ValueError, match="influenza"):
        chest_phantom(0, four_class="influenza")


def test_small_phantoms_keep_their_ground_truth() -> None:
    p = chest_phantom(3, ["Mass", "Pneumothorax"], size=256)
    assert p.image.shape == (256, 256)
    assert all(0 <= b.x_min < b.x_max <= 256 and 0 <= b.y_min < b.y_max <= 256 for b in p.boxes)


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("phantoms")
    paths = []
    for i, findings in enumerate(([], ["Nodule"], ["Cardiomegaly", "Effusion"], ["Pneumothorax"])):
        path = folder / f"phantom{i}.dcm"
        phantom_dataset(chest_phantom(i, findings)).save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_dicom_is_valid_dx_for_presentation(phantom_files: list[Path]) -> None:
    for path in phantom_files:
        assert_dciodvfy_clean(path)
    ds = pydicom.dcmread(phantom_files[1])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1" and ds.ViewPosition == "PA"
    assert (
        [float(v) for v in ds.PixelSpacing]
        == [float(v) for v in ds.ImagerPixelSpacing]
        == pytest.approx([430 / 512] * 2, abs=1e-5)
    )
    expected = np.round(chest_phantom(1, ["Nodule"]).image * 4095)
    np.testing.assert_array_equal(ds.pixel_array, expected)


def test_phantom_is_routed_to_cxr(phantom_files: list[Path]) -> None:
    config = load_routing(repo_root() / "config" / "routing.yaml")
    for path in phantom_files:
        assert route(pydicom.dcmread(path, stop_before_pixels=True), config).pipeline == "cxr"


def test_shipped_view_filter_calls_phantoms_frontal(phantom_files: list[Path]) -> None:
    registry = ModelRegistry.discover(repo_root() / "weights", repo_root() / "config" / "models.yaml")
    view_filter = ViewFilter.from_manifest(registry.require("cxr-view-filter"))
    datasets: list[pydicom.Dataset] = [pydicom.dcmread(p) for p in phantom_files]
    datasets += [phantom_dataset(chest_phantom(seed, four_class=c)) for seed, c in enumerate(FOUR_CLASSES)]
    results = view_filter.predict(datasets)
    assert [r.view for r in results] == ["frontal"] * len(datasets)
    assert min(r.probability for r in results) >= 0.8
    assert not any(r.disagreement for r in results)
