"""Plausibility guards for CT results (issue 14): an impossible answer is "not determined", never a finding.

Three layers, each with the real thing:

- the guards themselves (``models.plausibility``), one test per reason they give, on level maps
  and lung profiles built here with the geometry of real series (3–5 mm slices);
- the SRs that carry the outcome (``sr_writer.ct_sr``), written, checked with ``dciodvfy`` and
  read back with highdicom as a viewer would;
- the pipelines with the repository's demo weights on phantoms made implausible on purpose (slice
  positions three times too far apart, the images stacked upside down, a model answering "S" for
  everything, an abdomen sent to the PE pipeline): the report says not determined / indeterminate
  and why, and nothing else is sent. The plausible phantom still gets its L3, SEG and KOS
  (``tests/node/test_ct_pipeline_units.py::test_demo_lumbar_model_finds_levels_l3_and_body_composition``
  and the last test here).
"""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from core.findings import LUMBAR_LEVELS, SeriesResult
from models.plausibility import (
    LEVEL_HEIGHT_MM,
    MIN_LUNG_EXTENT_MM,
    check_level_map,
    check_pe_coverage,
    lung_area_cm2,
    superior_mm,
)
from models.registry import ModelRegistry
from node.pipelines.ct_lumbar import CtLumbarPipeline
from node.pipelines.ct_pe import CtPePipeline
from node.settings import DEFAULT_MODELS_DIR, DEFAULT_MODELS_FILE
from sr_writer import SeriesParams, build_lumbar_report, build_pe_report, code
from tests.helpers import assert_dciodvfy_clean
from tests.node import test_ct_pipeline_units
from tests.node.test_ct_pipeline_units import UID_ROOT
from tests.sr_writer.test_ct_objects import _evaluation, _groups, _texts, ct_series, headers, lumbar_result, pe_result
from training.phantoms.ct import CtPhantom, abdomen_phantom, ctpa_phantom

tiny_registry = test_ct_pipeline_units.tiny_registry  # constant-output models, a fixture shared with the units

# --------------------------------------------------------------------------- level maps


def column(mm: dict[str, float], spacing: float = 3.0) -> list[str]:
    """Levels head → feet, each level over about ``mm[level]`` millimetres of ``spacing`` mm slices."""
    return [level for level in LUMBAR_LEVELS for _ in range(int(round(mm.get(level, 0.0) / spacing)))]


ADULT = {"T": 60.0, "L1": 36.0, "L2": 36.0, "L3": 39.0, "L4": 39.0, "L5": 39.0, "S": 90.0}


def feet_first(levels_hf: list[str], spacing: float = 3.0) -> tuple[list[str], list[float]]:
    """The map as a series stored from the feet up (plan index 0 most caudal), with patient z."""
    n = len(levels_hf)
    return levels_hf[::-1], [spacing * k for k in range(n)]


def test_an_adult_spine_is_plausible_however_the_series_is_stored() -> None:
    levels = column(ADULT)
    z_head_first = [-3.0 * k for k in range(len(levels))]
    assert check_level_map(levels, z_head_first) == []
    assert check_level_map(*feet_first(levels)) == []
    # A scan from mid-thorax to the hips: T and S cut by the series' ends may be as long as they are.
    assert check_level_map(*feet_first(column({**ADULT, "T": 240.0, "S": 240.0}))) == []
    # A series that starts within L1: a short L1 run at the cranial end is cut, not too short.
    assert check_level_map(*feet_first(column({**ADULT, "T": 0.0, "L1": 6.0}))) == []


def test_the_issue_14_map_is_not_determined_with_every_reason() -> None:
    # Slices 0-106 "S" and 107-111 "L1" of a 3 mm abdominal CT stored from the feet up.
    levels = ["S"] * 107 + ["L1"] * 5
    reasons = check_level_map(levels, [3.0 * k for k in range(112)])
    assert "L2, L3, L4, L5 missing between L1 and S: the spine cannot skip a level" in reasons
    assert "no L3 in the series (levels found: L1, S)" in reasons
    assert "S spans 321 mm (slices 1-107), more than the 250 mm the sacrum and the pelvis below it can" in reasons


def test_levels_upside_down_or_going_back_are_out_of_order() -> None:
    levels = column(ADULT)
    # The decoder's direction wrong: S at the head.
    (reason,) = check_level_map(levels, [3.0 * k for k in range(len(levels))])
    assert reason.startswith("levels out of anatomical order: L5 (") and "lies below S" in reason
    # Back to L2 after L3.
    hf = column({"T": 30, "L1": 36, "L2": 36, "L3": 39}) + ["L2"] * 3 + column({"L4": 39, "L5": 39, "S": 30})
    (reason,) = check_level_map(hf, [-3.0 * k for k in range(len(hf))])
    assert "L2 (slices 48-50) lies below L3 (slices 35-47)" in reason


def test_l3_at_an_end_of_the_series_is_cut() -> None:
    hf = column({"L3": 30.0, "L4": 39.0, "L5": 39.0, "S": 60.0})
    assert check_level_map(*feet_first(hf)) == [
        f"L3 (slices {len(hf) - 9}-{len(hf)}) is cut by the cranial end of the series: no L2 above it"
    ]
    hf = column({"T": 60.0, "L1": 36.0, "L2": 36.0, "L3": 20.0})
    assert check_level_map(hf, [-3.0 * k for k in range(len(hf))]) == [
        f"L3 (slices {len(hf) - 6}-{len(hf)}) is cut by the caudal end of the series: no L4 below it"
    ]


def test_a_run_too_short_or_too_long_in_mm() -> None:
    low, high = LEVEL_HEIGHT_MM["L2"]
    assert low is not None and high is not None
    (reason,) = check_level_map(*feet_first(column({**ADULT, "L2": 6.0})))
    assert reason.startswith("L2 spans only 6 mm") and f"less than the {low:.0f} mm" in reason
    (reason,) = check_level_map(*feet_first(column({**ADULT, "L4": 81.0})))
    assert reason.startswith("L4 spans 81 mm") and f"more than the {high:.0f} mm" in reason
    # The same at 5 mm slices: millimetres, not slice counts.
    (reason,) = check_level_map(*feet_first(column({**ADULT, "L4": 80.0}, 5.0), 5.0))
    assert reason.startswith("L4 spans 80 mm")
    assert check_level_map(*feet_first(column(ADULT, 5.0), 5.0)) == []


def test_a_lumbar_spine_too_short_in_total() -> None:
    # Every level 18 mm: each is possible and the five together, 90 mm, are at the limit; 5 × 16.5 mm are not.
    assert check_level_map(*feet_first(column({**ADULT, **{f"L{i}": 18.0 for i in range(1, 6)}}))) == []
    hf = column({**ADULT, **{f"L{i}": 16.5 for i in range(1, 6)}}, 1.5)
    reasons = check_level_map(hf, [-1.5 * k for k in range(len(hf))])
    assert reasons == [
        f"L1 to L5 span 82 mm (slices {hf.index('L1') + 1}-{len(hf) - hf[::-1].index('L5')}); "
        "a lumbar spine spans 90-280 mm"
    ]


def test_boundaries_between_evaluated_slices_give_the_benefit_of_the_doubt() -> None:
    # L2 decoded over 3 slices (9 mm), but the model ran on none of the 10 slices around its middle: its boundaries
    # lie somewhere between the evaluated slices around it, so it may be up to 33 mm: not called too short.
    hf = column({**ADULT, "L2": 9.0})
    start = hf.index("L2")
    evaluated = [i for i in range(len(hf)) if not start - 4 <= i <= start + 6] + [start + 1]
    z = [-3.0 * k for k in range(len(hf))]
    assert check_level_map(hf, z, sorted(evaluated)) == []
    # Every slice evaluated: the 9 mm are what the model said.
    (reason,) = check_level_map(hf, z)
    assert reason.startswith("L2 spans only 9 mm")


def test_maps_that_are_not_maps_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown level"):
        check_level_map(["L6"], [0.0])
    with pytest.raises(ValueError, match="2 levels for 1 slice positions"):
        check_level_map(["L3", "L3"], [0.0])
    with pytest.raises(ValueError, match="share one position"):
        check_level_map(["L3", "L3"], [1.0, 1.0])
    with pytest.raises(ValueError, match="not axial"):
        superior_mm([0.0, 1.0], (1.0, 0.0, 0.0))
    assert superior_mm([0.0, 2.5], (0.0, 0.0, -1.0)) == [0.0, -2.5]


# --------------------------------------------------------------------------- CTPA coverage


def chest_slice(lung_mm: float, *, size: int = 256, pixel: float = 1.5) -> np.ndarray:
    """A 256² slice in HU: air outside a 300 × 220 mm body (40 HU) holding two round lungs of radius ``lung_mm``."""
    c = (np.arange(size) - (size - 1) / 2) * pixel
    x, y = np.meshgrid(c, c)
    hu = np.full((size, size), -1000.0)
    hu[(x / 150.0) ** 2 + (y / 110.0) ** 2 <= 1.0] = 40.0
    for cx in (-65.0, 65.0):
        hu[(x - cx) ** 2 + y**2 <= lung_mm**2] = -850.0
    return hu


def test_lung_area_counts_air_inside_the_body_only() -> None:
    area = lung_area_cm2(chest_slice(50.0), (1.5, 1.5))
    assert area == pytest.approx(2 * np.pi * 5.0**2, rel=0.08)  # two discs of 5 cm radius, sampled at 3 mm
    assert lung_area_cm2(chest_slice(0.0), (1.5, 1.5)) == 0.0  # the air around the body is not lung
    assert lung_area_cm2(np.full((64, 64), -1000.0), (1.0, 1.0)) == 0.0  # no body at all
    with pytest.raises(ValueError, match="one slice"):
        lung_area_cm2(np.zeros((2, 4, 4)), (1.0, 1.0))


def profile(lung_cm2: list[float], spacing: float = 5.0) -> tuple[list[float], dict[int, float]]:
    """Patient z (slice 0 at the head) and the lung area per slice."""
    return [-spacing * k for k in range(len(lung_cm2))], dict(enumerate(lung_cm2))


def test_a_chest_covering_the_lungs_is_readable_and_its_flags_are_inside() -> None:
    areas = [3.0, 12.0] + [150.0] * 44 + [10.0, 4.0] + [0.0] * 6  # apex, lungs over 220 mm, recesses, abdomen
    z, lungs = profile(areas)
    assert check_pe_coverage(z, lungs, flagged=[1, 20, 47]) == []  # apex and recess slices count as lung


def test_a_series_without_lungs_or_with_too_little_of_them() -> None:
    z, lungs = profile([0.0] * 40)
    (reason,) = check_pe_coverage(z, lungs)
    assert reason.startswith("no lung on any of the 40 slices examined")
    # An abdomen with the lung bases: 4 slices of lung, 15 mm.
    z, lungs = profile([60.0, 45.0, 30.0, 26.0] + [5.0] + [0.0] * 35)
    (reason,) = check_pe_coverage(z, lungs)
    assert reason.startswith("lung seen over only 15 mm (slices 1-4)") and f"{MIN_LUNG_EXTENT_MM:.0f} mm" in reason
    # Bowel gas scattered through an abdomen (a few cm² per slice) makes no lungs.
    z, lungs = profile([8.0, 0.0, 6.0, 9.0, 1.0] * 8)
    assert check_pe_coverage(z, lungs)[0].startswith("no lung on any")


def test_flagged_slices_outside_the_lungs() -> None:
    areas = [150.0] * 30 + [0.0] * 20  # lungs over 145 mm, then 100 mm of abdomen
    z, lungs = profile(areas)
    assert check_pe_coverage(z, lungs, flagged=[10, 31]) == []  # 5 mm below the last lung slice: within 10 mm
    (reason,) = check_pe_coverage(z, lungs, flagged=[10, 33, 40])
    assert reason == (
        "2 slice(s) flagged for embolism lie outside the lungs (slices 34, 41; no lung within 10 mm): "
        "no pulmonary artery is there"
    )
    # Measured on every other slice only (a slice stride): the flags are placed by position all the same.
    sparse = {i: a for i, a in lungs.items() if i % 2 == 0}
    assert check_pe_coverage(z, sparse, flagged=[33])[0].startswith("1 slice(s) flagged")


# --------------------------------------------------------------------------- the SRs


def test_lumbar_sr_of_an_impossible_map_says_not_determined_and_why(tmp_path: Path) -> None:
    slices = ct_series(14)
    result = lumbar_result(slices, with_l3=False)
    assert result.lumbar is not None
    result.lumbar.not_determined = [
        "no L3 in the series (levels found: T, L1, L2, L4, L5, S)",
        "L3 missing between L2 and L4: the spine cannot skip a level",
    ]
    sr = build_lumbar_report(result, headers(slices), params=SeriesParams(UID_ROOT, 994))
    path = tmp_path / "not_determined.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert_dciodvfy_clean(path)
    groups = _groups(path)
    assert list(groups) == ["vertebral level not determined"]  # no level runs, no L3 group
    group = groups["vertebral level not determined"]
    assert group.finding_type == code("vertebral_level")
    assert _evaluation(group, "vertebral_level") == "Undetermined"
    texts = [t for t in _texts(group) if t.startswith(("Vertebral level", "Reason: "))]
    assert texts[0].startswith("Vertebral level could not be determined")
    assert texts[1:] == [f"Reason: {r}" for r in result.lumbar.not_determined]
    report = hd.sr.srread(path)
    assert not any(g.get_measurements() for g in report.content.get_image_measurement_groups())  # no areas


def test_lumbar_sr_refuses_an_l3_on_a_map_that_was_not_determined() -> None:
    slices = ct_series(14)
    result = lumbar_result(slices)
    assert result.lumbar is not None
    result.lumbar.not_determined = ["S spans 321 mm"]
    with pytest.raises(ValueError, match="cannot have an L3 slice or areas"):
        build_lumbar_report(result, headers(slices), params=SeriesParams(UID_ROOT, 994))


def test_pe_sr_of_an_unreadable_series_is_indeterminate_with_the_reason(tmp_path: Path) -> None:
    slices = ct_series(6)
    result = pe_result(slices, positive=False)
    assert result.pe is not None
    result.pe.exam_labels.update(negative_exam_for_pe=False, indeterminate=True)
    result.pe.indeterminate_reasons = ["lung seen over only 15 mm (slices 1-4); ..."]
    sr = build_pe_report(result, headers(slices), params=SeriesParams(UID_ROOT, 993))
    path = tmp_path / "pe_not_assessable.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert_dciodvfy_clean(path)
    groups = _groups(path)
    assert _evaluation(groups["exam PE"], "pulmonary_embolism") == "Undetermined"
    assert "Not assessable: lung seen over only 15 mm (slices 1-4); ..." in _texts(groups["exam PE"])
    # Indeterminate is no finding of PE: not "acute PE present" (what the SR said before issue 14).
    assert _evaluation(groups["exam acute PE"], "acute_pulmonary_embolism") == "Absent"
    assert "slices with PE" not in groups
    result.pe.positive_slices = [2]
    with pytest.raises(ValueError, match="must be indeterminate, without positive or key slices"):
        build_pe_report(result, headers(slices), params=SeriesParams(UID_ROOT, 993))


def test_the_reasons_survive_the_stored_result() -> None:
    # The job's result is stored as JSON (SeriesResult.to_json) and read back for re-sending and the API.
    slices = ct_series(14)
    lumbar = lumbar_result(slices, with_l3=False)
    assert lumbar.lumbar is not None
    lumbar.lumbar.not_determined = ["no L3 in the series (levels found: T, L1, L2, L4, L5, S)"]
    again = SeriesResult.from_json(json.loads(json.dumps(lumbar.to_json())))
    assert again.lumbar is not None and again.lumbar.not_determined == lumbar.lumbar.not_determined
    pe = pe_result(slices, positive=False)
    assert pe.pe is not None
    pe.pe.indeterminate_reasons = ["no lung on any of the 14 slices examined"]
    again = SeriesResult.from_json(json.loads(json.dumps(pe.to_json())))
    assert again.pe is not None and again.pe.indeterminate_reasons == pe.pe.indeterminate_reasons
    # Results stored before issue 14 have neither key.
    old = lumbar.to_json()
    del old["lumbar"]["not_determined"]
    assert SeriesResult.from_json(old).lumbar.not_determined == []  # type: ignore[union-attr]


# --------------------------------------------------------------------------- the pipelines, demo weights


@pytest.fixture(scope="module")
def demo_lumbar() -> CtLumbarPipeline:
    registry = ModelRegistry.discover(DEFAULT_MODELS_DIR, DEFAULT_MODELS_FILE)
    return CtLumbarPipeline(registry, uid_root=UID_ROOT)


@pytest.fixture(scope="module")
def abdomen(tmp_path_factory: pytest.TempPathFactory) -> tuple[CtPhantom, list[Path]]:
    phantom = abdomen_phantom(710, slices=60, size=256, spacing_z=5.0)
    return phantom, phantom.write_series(tmp_path_factory.mktemp("abdomen"))


def _restacked(paths: list[Path], folder: Path, *, stretch: float = 1.0, upside_down: bool = False) -> list[Path]:
    """The series with its slice positions multiplied by ``stretch`` or its images stacked in reverse order."""
    folder.mkdir(parents=True, exist_ok=True)
    datasets = [pydicom.dcmread(p) for p in paths]
    z = [float(ds.ImagePositionPatient[2]) for ds in datasets]
    if upside_down:
        z = z[::-1]
    out = []
    for ds, position in zip(datasets, z, strict=False):
        x, y, _ = ds.ImagePositionPatient
        ds.ImagePositionPatient = [x, y, f"{position * stretch:.3f}"]
        ds.SliceLocation = f"{position * stretch:.3f}"
        ds.SliceThickness = f"{float(ds.SliceThickness) * stretch:g}"
        ds.save_as(folder / Path(str(ds.filename)).name, enforce_file_format=True)
        out.append(folder / Path(str(ds.filename)).name)
    return out


def _not_determined(out_objects: list[pydicom.Dataset], folder: Path) -> list[str]:
    """The single SR written, dciodvfy-clean, saying not determined; returns its reasons."""
    assert [str(o.Modality) for o in out_objects] == ["SR"]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sr.dcm"
    out_objects[0].save_as(path, enforce_file_format=True)
    assert_dciodvfy_clean(path)
    groups = _groups(path)
    assert list(groups) == ["vertebral level not determined"]
    texts = [
        t for t in _texts(groups["vertebral level not determined"]) if t.startswith(("Vertebral level", "Reason: "))
    ]
    assert texts[0].startswith("Vertebral level could not be determined")
    return [t.removeprefix("Reason: ") for t in texts[1:]]


@pytest.mark.parametrize("case", ["stretched", "upside_down", "all_sacrum"])
def test_demo_lumbar_on_a_phantom_made_implausible_says_not_determined(
    demo_lumbar: CtLumbarPipeline,
    abdomen: tuple[CtPhantom, list[Path]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
) -> None:
    phantom, paths = abdomen
    if case == "stretched":  # the same images said to lie 15 mm apart: every vertebra three times too tall
        paths = _restacked(paths, tmp_path / "series", stretch=3.0)
    elif case == "upside_down":  # the images stacked feet-up: the model sees the sacrum at the head
        paths = _restacked(paths, tmp_path / "series", upside_down=True)
    else:  # a model calling every slice sacrum, like the demo weights on a real abdomen (issue 14)
        sacrum = np.eye(len(LUMBAR_LEVELS), dtype=np.float32)[LUMBAR_LEVELS.index("S")]
        monkeypatch.setattr(demo_lumbar.model, "level_probabilities", lambda hu: np.tile(sacrum, (len(hu), 1)))
    out = demo_lumbar.analyse(phantom.truth["study_uid"], phantom.truth["series_uid"], paths)
    lumbar = out.result.lumbar
    assert lumbar is not None and lumbar.not_determined, out.summary
    assert lumbar.l3_index is None and lumbar.composition is None
    assert out.summary.startswith("level not determined: " + lumbar.not_determined[0]), out.summary
    reasons = _not_determined(out.objects, tmp_path / "out")
    assert reasons == lumbar.not_determined
    if case == "stretched":
        assert any(r.startswith("L3 spans ") and "more than the 60 mm" in r for r in reasons), reasons
    elif case == "all_sacrum":
        assert reasons[0].startswith("no L3 in the series (levels found: S)"), reasons
        assert reasons[1].startswith("S spans 300 mm (slices 1-60), more than the 250 mm"), reasons
    else:  # decoded head to feet, the stack's sacrum at the head leaves no room for L3
        assert reasons[0].startswith("no L3 in the series"), reasons


def test_demo_lumbar_on_the_plausible_phantom_still_finds_l3_with_seg(
    demo_lumbar: CtLumbarPipeline,
    abdomen: tuple[CtPhantom, list[Path]],
) -> None:
    phantom, paths = abdomen
    out = demo_lumbar.analyse(phantom.truth["study_uid"], phantom.truth["series_uid"], paths)
    lumbar = out.result.lumbar
    assert lumbar is not None and lumbar.not_determined == [] and lumbar.l3_index is not None, out.summary
    assert [str(o.Modality) for o in out.objects] == ["SR", "PR", "KO", "SEG"]
    assert out.summary.startswith("levels "), out.summary


def test_demo_pe_on_a_chest_cut_to_its_lower_third_is_indeterminate(tmp_path: Path) -> None:
    # The last 32 slices of an 80-slice CTPA phantom (3 mm): the lung bases over about 80 mm, not the hila.
    phantom = ctpa_phantom(503, slices=80, size=256, embolus="right")
    paths = phantom.write_series(tmp_path / "series")
    assert [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths] == phantom.truth["sop_uids"]
    registry = ModelRegistry.discover(DEFAULT_MODELS_DIR, DEFAULT_MODELS_FILE)
    out = CtPePipeline(registry, uid_root=UID_ROOT).analyse(
        phantom.truth["study_uid"], phantom.truth["series_uid"], paths[48:]
    )
    pe = out.result.pe
    assert pe is not None and pe.exam_labels["indeterminate"] and pe.positive_slices == [], out.summary
    (reason,) = pe.indeterminate_reasons
    assert reason.startswith("lung seen over only ") and "at least 100 mm" in reason, reason
    assert out.summary.startswith(f"PE indeterminate: {reason}"), out.summary
    assert [str(o.Modality) for o in out.objects] == ["SR"]
    # The whole series covers the lungs: read as usual.
    whole = CtPePipeline(registry, uid_root=UID_ROOT).analyse(
        phantom.truth["study_uid"], phantom.truth["series_uid"], paths
    )
    assert whole.result.pe is not None and whole.result.pe.indeterminate_reasons == [], whole.summary


def test_an_abdomen_sent_to_the_pe_pipeline_is_indeterminate(
    tiny_registry: ModelRegistry,
    abdomen: tuple[CtPhantom, list[Path]],
    tmp_path: Path,
) -> None:
    # The tiny PE model flags every slice: on an abdomen, that is impossible (this phantom's lung bases hold less
    # than 25 cm² of lung per slice: no lungs at all for the check).
    phantom, paths = abdomen
    out = CtPePipeline(tiny_registry, uid_root=UID_ROOT).analyse(
        phantom.truth["study_uid"], phantom.truth["series_uid"], paths
    )
    pe = out.result.pe
    assert pe is not None and pe.exam_labels["indeterminate"] and not pe.exam_labels["negative_exam_for_pe"]
    assert pe.positive_slices == [] == pe.key_slices
    assert pe.indeterminate_reasons[0].startswith("no lung on any of the 60 slices"), pe.indeterminate_reasons
    assert pe.indeterminate_reasons[1].startswith(
        "60 slice(s) flagged for embolism lie outside the lungs (slices 1, 2, 3, 4, 5, 6, 7, 8, ...;"
    ), pe.indeterminate_reasons
    assert out.summary.startswith("PE indeterminate: no lung on any"), out.summary
    assert [str(o.Modality) for o in out.objects] == ["SR"]  # no KOS or GSPS of key slices
    path = tmp_path / "sr.dcm"
    out.objects[0].save_as(path, enforce_file_format=True)
    assert_dciodvfy_clean(path)
    group = _groups(path)["exam PE"]
    assert _evaluation(group, "pulmonary_embolism") == "Undetermined"
    assert f"Not assessable: {pe.indeterminate_reasons[1]}" in _texts(group)
