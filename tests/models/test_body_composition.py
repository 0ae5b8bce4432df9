"""Body composition on crafted slices whose tissue areas are known by construction."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from models.body_composition import convex_hull_mask, fill_holes, label_components, measure
from training.phantoms.ct import abdomen_phantom

PIXEL_MM = 0.8
SIZE = 512


def _ellipse(a: float, b: float, cx: float = 256.0, cy: float = 256.0) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    return ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1.0


def _disc(r: float, cx: float, cy: float) -> np.ndarray:
    return _ellipse(r, r, cx, cy)


def crafted_slice(seed: int = 0, *, gap: bool = True) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """An abdomen-like slice: skin, subcutaneous fat, a muscle ring (with a linea-alba gap),
    visceral fat with a free organ and bowel gas, a vertebra with two psoas muscles, and a
    table below the body. Returns HU and the masks of what each tissue is by construction."""
    rng = np.random.default_rng(seed)
    hu = np.full((SIZE, SIZE), -1000.0)
    body = _ellipse(180, 140)
    hu[body] = 30.0  # skin
    under_skin = _ellipse(177, 137)
    hu[under_skin] = -100.0  # subcutaneous fat
    ring_outer, ring_inner = _ellipse(150, 110), _ellipse(135, 95)
    ring = ring_outer & ~ring_inner
    if gap:  # linea alba: fat between the two recti
        yy, xx = np.mgrid[0:SIZE, 0:SIZE]
        ring &= ~((np.abs(xx - 256) <= 3) & (yy < 200))
    hu[ring] = 50.0
    organ = _disc(30, 200, 230)
    gas = _disc(15, 300, 220)
    vertebra = _disc(25, 256, 320)
    psoas = _disc(15, 217, 320) | _disc(15, 295, 320)
    hu[organ] = 45.0
    hu[gas] = -1000.0
    hu[psoas] = 55.0
    hu[vertebra] = 400.0
    table = np.zeros_like(body)
    table[452:462, 40:472] = True
    hu[table] = 60.0  # in the muscle range: counted as muscle if the table were not excluded
    hu += rng.normal(0.0, 5.0, hu.shape)
    muscle = ring | (psoas & ~vertebra)
    fat = under_skin & ~muscle & ~organ & ~gas & ~vertebra & ~psoas
    return hu.astype(np.float32), {
        "muscle": muscle,
        "subcutaneous_fat": fat & ~ring_outer,
        "visceral_fat": fat & ring_outer,
    }


def _cm2(mask: np.ndarray) -> float:
    return float(mask.sum()) * PIXEL_MM * PIXEL_MM / 100.0


@pytest.mark.parametrize("gap", [False, True])
def test_areas_match_the_construction_within_two_percent(gap: bool) -> None:
    hu, truth = crafted_slice(gap=gap)
    result, masks = measure(hu, (PIXEL_MM, PIXEL_MM), 1.70, "1.2.3")
    assert result.sop_instance_uid == "1.2.3"
    measured = {
        "muscle": result.muscle_cm2,
        "subcutaneous_fat": result.subcutaneous_fat_cm2,
        "visceral_fat": result.visceral_fat_cm2,
    }
    for name, mask in truth.items():
        assert measured[name] == pytest.approx(_cm2(mask), rel=0.02), name
        assert masks[name].dtype == bool and masks[name].shape == hu.shape
        overlap = (masks[name] & mask).sum() / mask.sum()
        assert overlap > 0.97, f"{name}: only {overlap:.3f} of the true pixels found"
    # The masks are disjoint: one tissue per pixel.
    assert not (masks["muscle"] & masks["subcutaneous_fat"]).any()
    assert not (masks["subcutaneous_fat"] & masks["visceral_fat"]).any()
    assert result.skeletal_muscle_index == pytest.approx(result.muscle_cm2 / 1.70**2, rel=1e-3)


def test_table_organ_and_gas_are_not_tissue() -> None:
    hu, _ = crafted_slice()
    _, masks = measure(hu, (PIXEL_MM, PIXEL_MM), None, "1.2.3")
    assert not masks["muscle"][452:462].any(), "the table counted as muscle"
    assert not masks["muscle"][_disc(28, 200, 230)].any(), "a free organ counted as muscle"
    assert not masks["visceral_fat"][_disc(13, 300, 220)].any()


def test_anisotropic_pixels_and_optional_height() -> None:
    hu, truth = crafted_slice()
    # The same anatomy sampled at every other column: pixels 0.8 × 1.6 mm, half as many.
    wide, masks = measure(hu[:, ::2], (PIXEL_MM, 2 * PIXEL_MM), None, "a")
    assert wide.skeletal_muscle_index is None and wide.patient_size_m is None
    assert masks["muscle"].shape == (SIZE, SIZE // 2)
    assert wide.muscle_cm2 == pytest.approx(_cm2(truth["muscle"]), rel=0.03)
    assert wide.subcutaneous_fat_cm2 == pytest.approx(_cm2(truth["subcutaneous_fat"]), rel=0.03)
    assert wide.visceral_fat_cm2 == pytest.approx(_cm2(truth["visceral_fat"]), rel=0.03)
    # A PatientSize given in centimetres is not a height in metres: no SMI rather than a wrong one.
    cm, _ = measure(hu, (PIXEL_MM, PIXEL_MM), 175.0, "a")
    assert cm.skeletal_muscle_index is None


def test_a_slice_of_air_is_refused() -> None:
    with pytest.raises(ValueError, match="no body"):
        measure(np.full((64, 64), -1000.0, dtype=np.float32), (1.0, 1.0), None, "x")
    with pytest.raises(ValueError, match="PixelSpacing"):
        measure(np.zeros((64, 64), dtype=np.float32), (0.0, 1.0), None, "x")


def _flood_labels(mask: np.ndarray, connectivity: int) -> int:
    seen = np.zeros_like(mask)
    steps = [(0, 1), (1, 0), (0, -1), (-1, 0)]
    if connectivity == 8:
        steps += [(1, 1), (1, -1), (-1, 1), (-1, -1)]
    count = 0
    for start in zip(*np.nonzero(mask), strict=False):
        if seen[start]:
            continue
        count += 1
        queue = deque([start])
        seen[start] = True
        while queue:
            y, x = queue.popleft()
            for dy, dx in steps:
                ny, nx = y + dy, x + dx
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
    return count


@pytest.mark.parametrize("connectivity", [4, 8])
def test_labelling_agrees_with_a_flood_fill(connectivity: int) -> None:
    rng = np.random.default_rng(connectivity)
    for _ in range(20):
        mask = rng.random((23, 31)) < 0.45
        labels, count = label_components(mask, connectivity)
        assert count == _flood_labels(mask, connectivity)
        assert ((labels > 0) == mask).all()
        # Pixels of one label are one component: relabelling each label alone gives 1.
        for value in range(1, count + 1):
            assert label_components(labels == value, connectivity)[1] == 1


def test_fill_holes_and_hull() -> None:
    ring = _ellipse(40, 30) & ~_ellipse(30, 20)
    filled = fill_holes(ring)
    assert (filled == _ellipse(40, 30)).all()
    corners = np.zeros((50, 50), dtype=bool)
    corners[10, 10] = corners[10, 40] = corners[40, 10] = corners[40, 40] = True
    hull = convex_hull_mask(corners)
    assert hull.sum() == 31 * 31 and hull[10:41, 10:41].all()


@pytest.mark.parametrize("seed", [0, 1])
def test_abdomen_phantom_l3_areas_match_its_truth(seed: int) -> None:
    phantom = abdomen_phantom(seed, slices=95, size=512)
    k = phantom.truth["l3_index"]
    result, masks = measure(
        phantom.volume_hu[k], (phantom.pixel_mm, phantom.pixel_mm), phantom.truth["patient_size_m"], "x"
    )
    truth = phantom.truth["areas_cm2"]
    assert result.muscle_cm2 == pytest.approx(truth["muscle"], rel=0.02)
    assert result.subcutaneous_fat_cm2 == pytest.approx(truth["subcutaneous_fat"], rel=0.02)
    assert result.visceral_fat_cm2 == pytest.approx(truth["visceral_fat"], rel=0.02)
    assert result.skeletal_muscle_index == pytest.approx(phantom.truth["skeletal_muscle_index"], rel=0.02)
    for name, mask in phantom.truth["masks_at_l3"].items():
        assert (masks[name] & mask).sum() / mask.sum() > 0.98, name
