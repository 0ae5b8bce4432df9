"""The lumbar-level design's level decoding and search, and the lumbar model on CT series written here.

The model in the series tests is a small ONNX graph built here that reads a marker square
in each slice's corner (its HU encode the level), so every step — plan, HU, windows,
resize, ONNX Runtime, decoding, search, L3, body composition — runs for real.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from core.findings import LUMBAR_LEVELS
from models.errors import ModelError
from models.lumbar import LumbarModel, decode_monotonic, hu_to_unit, level_runs, search_levels
from models.manifest import load_manifest, sha256_file
from models.plausibility import check_level_map
from models.preprocess.ct_series import plan_series
from tests.models.test_body_composition import PIXEL_MM, _cm2, crafted_slice
from tests.models.test_ct_series import ct_slice

L3 = LUMBAR_LEVELS.index("L3")
WINDOW = (400.0, 1800.0)


def _brute_force(probabilities: np.ndarray) -> tuple[int, ...]:
    log_p = np.log(np.clip(probabilities, 1e-7, 1.0))
    best, best_score = (), -np.inf
    for seq in itertools.combinations_with_replacement(range(probabilities.shape[1]), len(probabilities)):
        score = float(log_p[np.arange(len(seq)), list(seq)].sum())
        if score > best_score + 1e-12:
            best, best_score = seq, score
    return best


def test_viterbi_finds_the_best_monotonic_sequence() -> None:
    rng = np.random.default_rng(3)
    for _ in range(40):
        probabilities = rng.dirichlet(np.ones(7) * 0.5, size=6)
        assert tuple(decode_monotonic(probabilities)) == _brute_force(probabilities)


def test_an_isolated_l3_between_l4s_is_decoded_as_l4() -> None:
    truth = [2, 2, 3, 3, 4, 4, 4, 4, 5]
    probabilities = _table(truth, strength=3.0, noise=0.0, seed=0)
    probabilities[6] = np.eye(7)[3] * 0.6 + 0.4 / 7  # the model says L3 in the middle of L4
    assert np.argmax(probabilities, axis=1)[6] == L3
    decoded = decode_monotonic(probabilities)
    assert list(decoded) == truth
    assert np.all(np.diff(decoded) >= 0)


def _table(truth_hf: list[int], *, strength: float, noise: float, seed: int) -> np.ndarray:
    """Softmax probabilities peaked at each slice's true level, with neighbour confusion and noise."""
    rng = np.random.default_rng(seed)
    levels = np.arange(7)
    logits = -strength * np.abs(levels[None, :] - np.array(truth_hf)[:, None]).astype(float)
    logits += rng.normal(0.0, noise, logits.shape)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _truth(counts: list[int]) -> list[int]:
    return [level for level, n in enumerate(counts) for _ in range(n)]


CASES = [
    # slices per level head → feet (T, L1..L5, S), coarse step
    ([40, 31, 33, 35, 36, 37, 88], 10),  # 300 slices of 1.25 mm
    ([10, 12, 13, 11, 14, 12, 8], 4),  # 80 slices of 3 mm
    ([0, 0, 9, 13, 12, 0, 0], 4),  # short series from L2 to L4
    ([0, 0, 0, 7, 20, 20, 10], 5),  # starts inside L3
    ([30, 25, 3, 2, 3, 25, 20], 10),  # L3 thinner than the coarse step
]


@pytest.mark.parametrize("counts, step", CASES)
@pytest.mark.parametrize("head_first", [True, False])
def test_search_gives_the_exhaustive_l3_run_with_few_evaluations(
    counts: list[int], step: int, head_first: bool
) -> None:
    truth_hf = _truth(counts)
    n = len(truth_hf)
    table_hf = _table(truth_hf, strength=2.5, noise=0.6, seed=n)
    table_plan = table_hf if head_first else table_hf[::-1]
    calls: list[int] = []

    def evaluate(indices: list[int]) -> np.ndarray:
        calls.extend(indices)
        return table_plan[indices]

    exhaustive, all_evaluated = search_levels(n, lambda i: table_plan[i], head_first=head_first, step=1)
    assert all_evaluated == list(range(n))
    levels, evaluated = search_levels(n, evaluate, head_first=head_first, step=step)
    assert sorted(calls) == evaluated and len(set(calls)) == len(calls), "a slice was evaluated twice"
    runs_search = [r for r in level_runs([LUMBAR_LEVELS[v] for v in levels]) if r.level == "L3"]
    runs_full = [r for r in level_runs([LUMBAR_LEVELS[v] for v in exhaustive]) if r.level == "L3"]
    assert runs_search == runs_full
    plan_truth = truth_hf if head_first else truth_hf[::-1]
    assert exhaustive == plan_truth  # the noise is not enough to fool the exhaustive decode
    # Monotonic in plan order, in the direction of the series.
    steps = np.diff(levels) if head_first else -np.diff(levels)
    assert np.all(steps >= 0)
    # Away from the unrefined boundaries the levels are the truth too.
    assert sum(a != b for a, b in zip(levels, plan_truth, strict=False)) <= 6 * step
    if n == 300:
        assert len(evaluated) <= 42, f"{len(evaluated)} forward passes for 300 slices"


def test_refining_every_level_reproduces_the_exhaustive_decode() -> None:
    truth_hf = _truth([40, 31, 33, 35, 36, 37, 88])
    table = _table(truth_hf, strength=2.5, noise=0.6, seed=1)
    full, _ = search_levels(300, lambda i: table[i], head_first=True, step=1)
    levels, evaluated = search_levels(300, lambda i: table[i], head_first=True, step=10, refine=range(7))
    assert levels == full
    assert len(evaluated) < 70


def test_an_isolated_wrong_sample_does_not_break_the_search() -> None:
    truth_hf = _truth([40, 31, 33, 35, 36, 37, 88])
    table = _table(truth_hf, strength=2.5, noise=0.3, seed=2)
    table[50] = np.eye(7)[5] * 0.9 + 0.1 / 7  # a coarse sample in L1 says L5
    levels, _ = search_levels(300, lambda i: table[i], head_first=True, step=10)
    full, _ = search_levels(300, lambda i: table[i], head_first=True, step=1)
    l3 = [i for i, v in enumerate(levels) if v == L3]
    assert l3 == [i for i, v in enumerate(full) if v == L3] == list(range(104, 139))


def test_a_level_skipped_between_coarse_samples_is_searched_for() -> None:
    # L1 is 8 slices between coarse samples 30 (T) and 40 (L2): the gap is bisected although it holds no L3
    # boundary, so L1 is found and the plausibility guard does not call the column broken (a level missing).
    truth_hf = _truth([31, 8, 30, 30, 30, 30, 30])
    table = _table(truth_hf, strength=2.5, noise=0.3, seed=3)
    levels, evaluated = search_levels(len(truth_hf), lambda i: table[i], head_first=True, step=10)
    assert any(31 <= i <= 38 for i in evaluated) and LUMBAR_LEVELS.index("L1") in levels
    names = [LUMBAR_LEVELS[v] for v in levels]
    reasons = check_level_map(names, [-1.0 * k for k in range(len(names))], evaluated)
    assert not any("missing" in r for r in reasons), reasons


# --- the model on DICOM series ---------------------------------------------------------

MARKER = 64  # the level marker: top-left MARKER × MARKER pixels of a 512 slice


def _level_hu(level: int) -> float:
    """HU whose windowed value is (level + 1) / 8: what the test graph reads as that level."""
    return (level + 1) / 8 * WINDOW[1] + WINDOW[0] - WINDOW[1] / 2


def _tiny_onnx(path: Path, size: int) -> None:
    """ONNX graph: mean of the corner marker → softmax(−k·(mean − centre_level)²) over 7 levels."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    corner = MARKER * size // 512
    centres = np.array([(k + 1) / 8 for k in range(7)], dtype=np.float32)
    nodes = [
        helper.make_node("Slice", ["image", "starts", "ends", "axes"], ["corner"]),
        helper.make_node("ReduceMean", ["corner"], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean", "shape"], ["m"]),
        helper.make_node("Sub", ["m", "centres"], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["d2"]),
        helper.make_node("Mul", ["d2", "neg_k"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["scores"], axis=1),
    ]
    inits = [
        numpy_helper.from_array(np.array([0, 0], dtype=np.int64), "starts"),
        numpy_helper.from_array(np.array([corner, corner], dtype=np.int64), "ends"),
        numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes"),
        numpy_helper.from_array(np.array([-1, 1], dtype=np.int64), "shape"),
        numpy_helper.from_array(centres[None, :], "centres"),
        numpy_helper.from_array(np.array([-300.0], dtype=np.float32), "neg_k"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_lumbar",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", size, size, 1])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 7])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def tiny_manifest(folder: Path, *, size: int = 32, refine: list[str] | None = None, **changes: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    _tiny_onnx(folder / "model.onnx", size)
    manifest = {
        "name": "ct-lumbar",
        "version": "test-1",
        "task": "slice-classification",
        "backend": "onnx",
        "weights": "model.onnx",
        "sha256": sha256_file(folder / "model.onnx"),
        "labels": [{"key": k, "display": k} for k in LUMBAR_LEVELS],
        "input": {
            "height": size,
            "width": size,
            "channels": 1,
            "layout": "NHWC",
            "dtype": "float32",
            "preprocessing": {"kind": "ct_windows", "windows": [list(WINDOW)]},
        },
        "postprocessing": {"coarse_step_mm": 12.0, "max_coarse_samples": 32, "refine_levels": refine or ["L3"]},
    }
    manifest.update(changes)
    (folder / "model.json").write_text(json.dumps(manifest), encoding="utf-8")
    return folder / "model.json"


def write_abdomen(folder: Path, truth_hf: list[int], *, head_first_iop: bool, spacing: float = 2.5) -> dict[str, Path]:
    """Slices with the crafted abdomen and a corner marker of each slice's level; z rises to the head."""
    folder.mkdir(parents=True, exist_ok=True)
    base, _ = crafted_slice()
    # IOP with the column direction flipped makes the normal −z: the plan then starts at the head.
    orientation = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0) if head_first_iop else (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    paths = {}
    n = len(truth_hf)
    for k, level in enumerate(truth_hf):  # k = 0 is the most cranial slice
        hu = base.copy()
        hu[:MARKER, :MARKER] = _level_hu(level)
        ds = ct_slice(
            np.round(hu + 1024).astype(np.int16),
            (-200.0, -200.0, spacing * (n - 1 - k)),
            orientation=orientation,
            instance_number=k + 1,
            pixel_spacing=(PIXEL_MM, PIXEL_MM),
        )
        ds.PatientSize = "1.64"
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths[str(ds.SOPInstanceUID)] = path
    return paths


@pytest.mark.parametrize("head_first_iop", [False, True])
def test_lumbar_model_on_a_series(tmp_path: Path, head_first_iop: bool) -> None:
    truth_hf = _truth([6, 7, 8, 9, 8, 7, 5])  # 50 slices of 2.5 mm
    paths = write_abdomen(tmp_path / "series", truth_hf, head_first_iop=head_first_iop)
    plan = plan_series([pydicom.dcmread(p, stop_before_pixels=True) for p in paths.values()])
    model = LumbarModel.from_manifest(load_manifest(tiny_manifest(tmp_path / "model")))
    assert model.algorithm.name == "ct-lumbar" and model.coarse_step(plan) == 5

    result, masks = model.analyse(plan, paths)
    plan_truth = [LUMBAR_LEVELS[v] for v in (truth_hf if head_first_iop else truth_hf[::-1])]
    full, _ = model.analyse(plan, paths, exhaustive=True)
    assert full.levels == plan_truth and len(full.evaluated) == 50
    assert len(result.evaluated) < 25
    l3 = next(r for r in result.runs if r.level == "L3")
    assert [r for r in full.runs if r.level == "L3"] == [l3]
    assert l3.last - l3.first + 1 == 9
    assert result.l3_index == (l3.first + l3.last) // 2 == full.l3_index
    assert result.slice_uids == list(plan.sop_instance_uids)
    # Body composition on the L3 slice, with the height read from PatientSize.
    _, truth_masks = crafted_slice()
    assert masks is not None and set(masks) == {"muscle", "subcutaneous_fat", "visceral_fat"}
    c = result.composition
    assert c is not None and c.sop_instance_uid == plan.sop_instance_uids[result.l3_index]
    assert c.muscle_cm2 == pytest.approx(_cm2(truth_masks["muscle"]), rel=0.02)
    assert c.visceral_fat_cm2 == pytest.approx(_cm2(truth_masks["visceral_fat"]), rel=0.02)
    assert c.skeletal_muscle_index == pytest.approx(c.muscle_cm2 / 1.64**2, rel=1e-3)


def test_patient_size_is_read_from_any_dicom_file_and_unreadable_files_give_none(tmp_path: Path) -> None:
    from models.lumbar import _patient_size

    [path] = write_abdomen(tmp_path / "series", [LUMBAR_LEVELS.index("L3")], head_first_iop=False).values()
    assert _patient_size(path) == pytest.approx(1.64)
    bare = tmp_path / "no-preamble.dcm"  # starts with DICM: the 128-byte preamble left out
    bare.write_bytes(path.read_bytes()[128:])
    assert _patient_size(bare) == pytest.approx(1.64)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a DICOM file, " * 20)
    assert _patient_size(junk) is None
    assert _patient_size(tmp_path / "absent.dcm") is None


def test_a_series_without_l3_has_no_l3_slice(tmp_path: Path) -> None:
    paths = write_abdomen(tmp_path / "series", _truth([10, 6, 0, 0, 0, 0, 0]), head_first_iop=False)
    plan = plan_series([pydicom.dcmread(p, stop_before_pixels=True) for p in paths.values()])
    model = LumbarModel.from_manifest(load_manifest(tiny_manifest(tmp_path / "model")))
    result, masks = model.analyse(plan, paths)
    assert result.l3_index is None and result.composition is None and masks is None
    assert set(result.levels) == {"T", "L1"}
    assert result.not_determined == ["no L3 in the series (levels found: T, L1)"]


def test_manifest_errors_name_the_problem(tmp_path: Path) -> None:
    bad_labels = tiny_manifest(tmp_path / "a", labels=[{"key": k, "display": k} for k in reversed(LUMBAR_LEVELS)])
    with pytest.raises(ModelError, match="labels"):
        LumbarModel.from_manifest(load_manifest(bad_labels))
    with pytest.raises(ModelError, match="unknown levels"):
        LumbarModel.from_manifest(load_manifest(tiny_manifest(tmp_path / "b", refine=["L6"])))


def test_windows_quantise_like_an_8_bit_png() -> None:
    hu = np.array([[-1000.0, -500.0, 400.0, 1300.0, 3000.0]])
    unit = hu_to_unit(hu, [WINDOW])[..., 0]
    np.testing.assert_array_equal(unit, np.array([[0, 0, 128, 255, 255]], dtype=np.float32) / np.float32(255))
    assert np.all(np.round(unit * 255) == unit * 255)


def test_default_search_needs_about_25_passes_on_300_slices(tmp_path: Path) -> None:
    from models.preprocess.ct_series import SeriesPlan, SpacingStats

    spacing = 280.0 / 300
    plan = SeriesPlan(
        sop_instance_uids=tuple(f"1.2.{i}" for i in range(300)),
        positions=tuple(i * spacing for i in range(300)),
        normal=(0.0, 0.0, 1.0),
        orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        rows=512,
        columns=512,
        pixel_spacing=(0.8, 0.8),
        spacing=SpacingStats(spacing, spacing, spacing, 0, False),
        tilt_degrees=0.0,
        warnings=(),
        dropped=(),
    )
    manifest = json.loads(tiny_manifest(tmp_path / "m").read_text())
    del manifest["postprocessing"]  # the defaults
    (tmp_path / "m" / "model.json").write_text(json.dumps(manifest))
    model = LumbarModel.from_manifest(load_manifest(tmp_path / "m" / "model.json"))
    step = model.coarse_step(plan)
    assert step == 21  # 20 mm, at most 16 coarse samples
    table = _table(_truth([40, 31, 33, 35, 36, 37, 88]), strength=2.5, noise=0.6, seed=5)[::-1]
    _, evaluated = search_levels(300, lambda i: table[i], head_first=False, step=step)
    assert len(evaluated) <= 27
