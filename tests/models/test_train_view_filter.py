"""Training of the view filter: patient split (no TF), and a tiny real run (TF, ONNX)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.registry import ModelRegistry
from training.card import wilson_interval
from training.data import image_group, list_samples, patient_groups, split_by_patient


def draw(path: Path, lateral: bool, size: tuple[int, int], seed: int) -> None:
    """A crude radiograph: bright body, two dark lungs (frontal) or one (lateral)."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    image = 200 + rng.normal(0, 10, size)
    centres = [(0.5, 0.5)] if lateral else [(0.5, 0.3), (0.5, 0.7)]
    for cy, cx in centres:
        ry, rx = (0.3, 0.25) if lateral else (0.3, 0.12)
        image[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = 60
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), mode="L").save(path)


def make_data(root: Path, children: int = 0) -> Path:
    for child in range(1, children + 1):  # children's frontals, one image per child
        draw(root / "frontal" / f"peds-normal-IM-{child:04d}-0001.png", False, (70, 90), 300 + child)
    for patient in range(1, 9):  # NIH-style: 8 patients, 2 images each (64 px)
        for follow_up in range(2):
            draw(root / "frontal" / f"nih-{patient:08d}_{follow_up:03d}.png", False, (64, 64), patient * 10 + follow_up)
    for case in range(1, 9):  # paired PA / L images of 8 other patients
        draw(root / "frontal" / f"covid-case-{case}-PA.png", False, (90, 80), 100 + case)
        draw(root / "lateral" / f"covid-case-{case}-L.png", True, (90, 80), 200 + case)
    return root


def test_patient_groups_follow_file_names_and_case_urls(tmp_path: Path) -> None:
    data = make_data(tmp_path / "data")
    draw(data / "frontal" / "covid-0001-a.png", False, (50, 50), 1)
    draw(data / "lateral" / "covid-0002-b.png", True, (50, 50), 2)
    (data / "SOURCES.csv").write_text(
        "view,file,source,licence,url\n"
        "frontal,covid-0001-a.png,x,CC BY,https://example.org/case/7\n"
        "lateral,covid-0002-b.png,x,CC BY,https://example.org/case/7\n"
        + "".join(
            f"frontal,nih-{p:08d}_00{f}.png,NIH,CC0,https://example.org/all\n" for p in range(1, 9) for f in (0, 1)
        )
        + "".join(
            f"x,covid-case-{c}-{v}.png,x,CC BY,https://example.org/repo\n" for c in range(1, 9) for v in ("PA", "L")
        ),
        encoding="utf-8",
    )
    samples = list_samples(data)
    groups = dict(zip((s.name for s in samples), patient_groups(samples, data), strict=False))
    assert groups["nih-00000001_000.png"] == groups["nih-00000001_001.png"] != groups["nih-00000002_000.png"]
    assert groups["covid-case-3-PA.png"] == groups["covid-case-3-L.png"] != groups["covid-case-4-L.png"]
    assert groups["covid-0001-a.png"] == groups["covid-0002-b.png"]  # one case URL
    # A URL shared by more than MAX_CASE_FILES (12) files is a collection, not a patient.
    assert len({groups[f"nih-{p:08d}_000.png"] for p in range(1, 9)}) == 8
    assert len({groups[f"covid-case-{c}-PA.png"] for c in range(1, 9)}) == 8


def test_split_is_by_patient_stratified_and_deterministic(tmp_path: Path) -> None:
    data = make_data(tmp_path / "data")
    samples = list_samples(data)
    groups = patient_groups(samples, data)
    train, held = split_by_patient(samples, groups, 0.25, seed=1)
    assert sorted(train + held) == list(range(len(samples)))
    assert not {groups[i] for i in train} & {groups[i] for i in held}
    assert {samples[i].label for i in held} == {0, 1} and {samples[i].label for i in train} == {0, 1}
    assert split_by_patient(samples, groups, 0.25, seed=1) == (train, held)
    assert split_by_patient(samples, groups, 0.25, seed=2) != (train, held)
    with pytest.raises(ValueError, match="between 0 and 1"):
        split_by_patient(samples, groups, 1.0, seed=1)


def test_image_groups_follow_folder_and_file_name() -> None:
    assert image_group("frontal/peds-viral-person439_virus_890.png") == "pediatric frontal"
    assert image_group("frontal/nih-00000032_058.png") == "adult frontal"
    assert image_group("frontal/covid-peds-x.png") == "adult frontal"  # the prefix must start the name
    assert image_group("lateral/covid-x-L.png") == image_group("lateral/peds-x.png") == "lateral"


def test_split_holds_out_every_image_group_and_each_child_alone(tmp_path: Path) -> None:
    data = make_data(tmp_path / "data", children=10)
    samples = list_samples(data)
    groups = patient_groups(samples, data)
    children = [i for i, s in enumerate(samples) if s.group == "pediatric frontal"]
    assert len(children) == 10 and len({groups[i] for i in children}) == 10
    for seed in range(5):
        train, held = split_by_patient(samples, groups, 0.2, seed)
        by_group = {g: sum(1 for i in held if samples[i].group == g) for g in ("pediatric frontal", "lateral")}
        assert by_group == {"pediatric frontal": 2, "lateral": 2}, seed  # 20 % of 10 children, of 8 laterals
        assert any(samples[i].group == "pediatric frontal" for i in train)
        assert not {groups[i] for i in train} & {groups[i] for i in held}


def test_wilson_interval() -> None:
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)  # the textbook example
    low, high = wilson_interval(7, 7)
    assert round(low, 3) == 0.646 and high == 1.0
    assert wilson_interval(0, 5)[0] == 0.0
    with pytest.raises(ValueError, match="total > 0"):
        wilson_interval(0, 0)


def test_tiny_training_exports_a_working_onnx_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import onnxruntime as ort

    from training.view_filter import EXPECTED_PARAMETERS, build_model, main

    assert EXPECTED_PARAMETERS == 105_473 and build_model().count_params() == 105_473
    data, out = make_data(tmp_path / "data"), tmp_path / "out"
    assert (
        main(
            [
                "--data",
                str(data),
                "--out",
                str(out),
                "--steps",
                "6",
                "--batch-size",
                "8",
                "--seed",
                "3",
                "--threads",
                "2",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "holding out" in printed and "ONNX vs Keras" in printed and "held-out lateral" in printed

    assert {p.name for p in out.iterdir()} == {"model.onnx", "model.json", "MODEL_CARD.md", "holdout.txt"}
    registry = ModelRegistry.discover(out.parent)
    assert [(s.name, s.state) for s in registry.verify()] == [("cxr-view-filter", "ok")]
    manifest = json.loads((out / "model.json").read_text(encoding="utf-8"))
    assert manifest["input"]["layout"] == "NHWC" and manifest["demo"] is False

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    [graph_input] = session.get_inputs()
    assert graph_input.name == "image" and graph_input.shape[1:] == [64, 64, 1]
    result = session.run(None, {"image": np.random.default_rng(0).random((5, 64, 64, 1), dtype=np.float32)})[0]
    assert result.shape == (5, 1) and np.all((result >= 0) & (result <= 1))

    listed = [line.split(",")[0] for line in (out / "holdout.txt").read_text().splitlines() if not line.startswith("#")]
    assert listed and all((data / path).is_file() for path in listed)
    assert any(p.startswith("lateral/") for p in listed) and any(p.startswith("frontal/") for p in listed)
    card = (out / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "non-commercial" in card and "105,473" in card and "| lateral |" in card
    assert "group-balanced sampling" in card and "Images these weights saw" in card


@pytest.mark.integration  # trains or exports a model for tens of seconds: not for the fast loop
def test_tiny_training_with_children_and_group_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.view_filter import main

    data, out = make_data(tmp_path / "data", children=10), tmp_path / "out"
    assert (
        main(
            [
                "--data",
                str(data),
                "--out",
                str(out),
                "--steps",
                "4",
                "--batch-size",
                "8",
                "--seed",
                "3",
                "--threads",
                "2",
                "--balance",
                "weights",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "held-out pediatric frontal: " in printed and "held-out adult frontal: " in printed
    card = (out / "MODEL_CARD.md").read_text(encoding="utf-8")
    # 32 training images: 18 adult frontal (6 held out: 2 beside held-out laterals, 2 NIH patients),
    # 8 children, 6 laterals; weight n / (3 n_group) each.
    assert "18 adult frontal, 8 pediatric frontal, 6 lateral images" in card
    assert "loss weights n / (k × n_group)" in card
    assert "adult frontal 0.59, pediatric frontal 1.33, lateral 1.78" in card
    assert "| pediatric frontal | 2 |" in card and "--balance weights" in card


def test_missing_data_folder_is_a_clean_exit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.view_filter import main

    assert main(["--data", str(tmp_path / "absent"), "--out", str(tmp_path / "out"), "--steps", "1"]) == 2
    assert "no PNG images" in capsys.readouterr().err
