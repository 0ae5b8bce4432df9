"""`ainode-train build-demo`: quick recipes into a temporary models directory, cache, --force, errors; the
recipe hash (parameters and phantom generator versions, not source bytes)."""

from __future__ import annotations

import importlib
import io
import json
import sys
from pathlib import Path

import pytest

from models.registry import ModelRegistry
from tests.helpers import repo_root
from training import four_class
from training.demo import RECIPES, Progress, RecipeError, build_demo, demo_recipe, recipe_hash, recipe_identity
from training.phantoms.cxr_datasets import write_four_class_dataset, write_nih_dataset

MINE = ("cxr-findings", "cxr-four-class", "cxr-four-class-cnn")
VERSIONS = {"cxr-findings": "demo-3", "cxr-four-class": "demo-1", "cxr-four-class-cnn": "demo-1"}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("models")
    log = io.StringIO()
    outcomes = build_demo(out, only=MINE, quick=True, stream=log)
    assert [(o.name, o.state) for o in outcomes] == [(n, "built") for n in MINE], log.getvalue()
    return out, log.getvalue()


@pytest.mark.integration  # trains or exports a model for tens of seconds: not for the fast loop
def test_quick_build_writes_valid_demo_manifests(models_dir: tuple[Path, str]) -> None:
    out, log = models_dir
    statuses = ModelRegistry.discover(out).verify()
    assert [(s.name, s.state) for s in statuses] == [(n, "ok") for n in MINE]
    for name in MINE:
        manifest = json.loads((out / name / "model.json").read_text(encoding="utf-8"))
        assert manifest["demo"] is True and manifest["version"] == VERSIONS[name]
        assert "synthetic chest phantoms" in manifest["description"]
        assert manifest["postprocessing"]["recipe_hash"] == recipe_hash(dict((n, t) for n, t, _ in RECIPES)[name], True)
        assert (out / name / "MODEL_CARD.md").read_text(encoding="utf-8").startswith(f"# {name} {VERSIONS[name]} (DEMO")
    findings = json.loads((out / "cxr-findings" / "model.json").read_text(encoding="utf-8"))
    assert [label["key"] for label in findings["labels"]][:3] == ["atelectasis", "cardiomegaly", "consolidation"]
    assert len(findings["labels"]) == 14 and all(0 <= label["threshold"] <= 1 for label in findings["labels"])
    assert findings["postprocessing"]["threshold_method"] == "youden"
    four = json.loads((out / "cxr-four-class" / "model.json").read_text(encoding="utf-8"))
    assert [label["key"] for label in four["labels"]] == ["covid19", "normal", "pneumonia", "tuberculosis"]
    assert four["postprocessing"]["architecture"] == "resnet18"
    assert not list(out.glob(".building-*")), "staging folders must be gone"
    assert "cxr-findings: built in" in log and "epoch 1/1" in log


@pytest.mark.integration  # trains or exports a model for tens of seconds: not for the fast loop
def test_second_run_is_cached_and_force_rebuilds(models_dir: tuple[Path, str]) -> None:
    out, _ = models_dir
    log = io.StringIO()
    assert [o.state for o in build_demo(out, only=MINE, quick=True, stream=log)] == ["cached"] * 3
    assert "up to date, skipped" in log.getvalue()
    before = (out / "cxr-four-class-cnn" / "model.json").stat().st_mtime_ns
    outcomes = build_demo(out, only=["cxr-four-class-cnn"], quick=True, force=True, stream=io.StringIO())
    assert [o.state for o in outcomes] == ["built"]
    assert (out / "cxr-four-class-cnn" / "model.json").stat().st_mtime_ns != before
    # A full (non-quick) build has another hash: the quick weights are not taken for it.
    target = dict((n, t) for n, t, _ in RECIPES)["cxr-four-class-cnn"]
    assert recipe_hash(target, False) != recipe_hash(target, True)
    assert ModelRegistry.discover(out).verify()[1].state == "ok"


@pytest.mark.integration  # trains or exports a model for tens of seconds: not for the fast loop
def test_missing_recipe_module_is_named_and_others_still_build(models_dir: tuple[Path, str]) -> None:
    out, _ = models_dir
    log = io.StringIO()
    recipes = [
        ("ghost", "training.no_such_recipe:build_demo", 1),
        ("cxr-four-class-cnn", dict((n, t) for n, t, _ in RECIPES)["cxr-four-class-cnn"], 1),
    ]
    outcomes = build_demo(out, quick=True, recipes=recipes, stream=log)
    assert [(o.name, o.state) for o in outcomes] == [("ghost", "failed"), ("cxr-four-class-cnn", "cached")]
    assert "training.no_such_recipe" in outcomes[0].message and "not found" in outcomes[0].message
    assert "ghost: FAILED" in log.getvalue()
    with pytest.raises(RecipeError, match="no demo recipe named 'nope'"):
        build_demo(out, only=["nope"], stream=io.StringIO())
    assert "cxr-detector" in [name for name, _, _ in RECIPES]


@pytest.mark.integration  # trains or exports a model for tens of seconds: not for the fast loop
def test_cli_builds_into_out_and_reports_cache(
    models_dir: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    from training.cli import TRAINERS, main

    out, _ = models_dir
    assert main(["build-demo", "--out", str(out), "--quick", "--only", "cxr-four-class-cnn"]) == 0
    printed = capsys.readouterr().out
    assert "cxr-four-class-cnn: up to date, skipped" in printed
    # The summary is core.table's plain table: header, rule, one row per recipe.
    assert printed.splitlines()[-3:] == [
        "model               state   time  note",
        "------------------  ------  ----  -----------------------------",
        "cxr-four-class-cnn  cached  0 s   up to date (recipe unchanged)",
    ]
    assert main(["build-demo", "--out", str(out), "--only", "nope"]) == 2
    assert "no demo recipe named 'nope'" in capsys.readouterr().err
    assert TRAINERS["detector"] == ("training.detector:main", None)


def test_progress_bar_on_a_terminal_and_lines_otherwise() -> None:
    tty = io.StringIO()
    progress = Progress("cxr-x", tty, tty=True)
    for done in range(1, 11):
        progress.step(done, 10, "training")
    progress.note("epoch 1/1")
    text = tty.getvalue()
    assert text.count("\r") == 10 and "[" + "#" * 30 + "] 100%" in text and "\ncxr-x: epoch 1/1\n" in text
    plain = io.StringIO()
    progress = Progress("cxr-x", plain, tty=False)
    for done in range(1, 101):
        progress.step(done, 100, "training, loss 0.5")
    lines = plain.getvalue().splitlines()
    assert "\r" not in plain.getvalue() and 5 <= len(lines) <= 11 and lines[-1].startswith("cxr-x: training")


def test_evaluate_commands_print_seed_tables(
    models_dir: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training import finding_classifier, four_class

    out, _ = models_dir
    write_nih_dataset(tmp_path / "nih", patients=4, images_per_patient=(1, 2), size=128, seed=9)
    model = ["--data", str(tmp_path / "nih"), "--out", str(out / "cxr-findings"), "--evaluate"]
    assert finding_classifier.main(model + ["--eval-split", "all"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "on all images (" in lines[0] and len(lines) == 17 and lines[-1].startswith("mean")
    assert finding_classifier.main(model) == 0  # the demo keeps no split.csv (its data are gone): all images
    assert "on all images (no test split of them in split.csv) (" in capsys.readouterr().out.splitlines()[0]
    (out / "cxr-findings" / "split.csv").write_text(
        "image,split\n00000001_000.png,test\n00000002_000.png,test\n00000003_000.png,train\n", encoding="utf-8"
    )
    assert finding_classifier.main(model) == 0
    assert "on test split (2 images)" in capsys.readouterr().out.splitlines()[0]
    write_four_class_dataset(tmp_path / "fc", per_class=2, fractions=(0.5, 0.0, 0.5), size=128, seed=9)
    assert four_class.main(["--data", str(tmp_path / "fc"), "--out", str(out / "cxr-four-class"), "--evaluate"]) == 0
    report = capsys.readouterr().out
    assert "on test/ (4 images)" in report and "confusion matrix" in report and "macro F1" in report
    assert (
        four_class.main(["--data", str(tmp_path / "missing"), "--out", str(out / "cxr-four-class"), "--evaluate"]) == 2
    )
    assert "no images in" in capsys.readouterr().err


def test_shipped_demo_weights_are_up_to_date_with_their_recipes(capsys: pytest.CaptureFixture[str]) -> None:
    """`ainode-train build-demo --out weights` on a fresh clone rebuilds nothing: every shipped demo
    model carries the hash of the recipe parameters and phantom generator versions that made it (a change
    to any of them must come with rebuilt weights), and its weights match their checksum."""
    from training.cli import main

    weights = repo_root() / "weights"
    for name, target, _ in RECIPES:
        manifest = json.loads((weights / name / "model.json").read_text(encoding="utf-8"))
        assert manifest["demo"] is True, name
        assert manifest["postprocessing"].get("recipe_hash") == recipe_hash(target, False), (
            f"{name}: stale demo weights"
        )
    assert main(["build-demo", "--out", str(weights)]) == 0
    printed = capsys.readouterr().out
    assert all(f"{name}: up to date, skipped" in printed for name, _, _ in RECIPES), printed


# --- the recipe hash: parameters and generator versions, not source bytes ---------------------------------------

CNN = dict((n, t) for n, t, _ in RECIPES)["cxr-four-class-cnn"]


def test_reformatting_a_recipe_source_keeps_its_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy of the recipe module with comments, blank lines and its code re-wrapped hashes the same."""
    source = Path(four_class.__file__).read_text(encoding="utf-8")
    edited = "# reformatted copy\n\n" + source.replace(
        "def _build(arch: str,", "# a comment before the build\n\n\ndef _build(  # re-wrapped\n    arch: str,"
    )
    assert edited != source and "re-wrapped" in edited
    (tmp_path / "h5_reformatted_recipe.py").write_text(edited + "\n\n# trailing comment\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    try:
        assert recipe_hash("h5_reformatted_recipe:build_demo_cnn", False) == recipe_hash(CNN, False)
        assert recipe_hash("h5_reformatted_recipe:build_demo_cnn", True) == recipe_hash(CNN, True)
    finally:
        sys.modules.pop("h5_reformatted_recipe", None)


def test_a_parameter_or_a_generator_version_changes_the_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    from training.phantoms import chest, cxr_datasets

    before = recipe_hash(CNN, False)
    assert recipe_identity(CNN, False)["generators"] == {
        "training.phantoms.chest": chest.GENERATOR_VERSION,
        "training.phantoms.cxr_datasets": cxr_datasets.GENERATOR_VERSION,
    }
    with monkeypatch.context() as m:
        m.setitem(four_class.DEMO, "epochs", four_class.DEMO["epochs"] + 1)
        assert recipe_hash(CNN, False) != before
        assert recipe_hash(CNN, True) == recipe_hash(CNN, True)  # the quick run's parameters are another dict
    with monkeypatch.context() as m:
        m.setattr(four_class, "DEMO_SEED", four_class.DEMO_SEED + 1)
        assert recipe_hash(CNN, False) != before
    with monkeypatch.context() as m:
        m.setattr(chest, "GENERATOR_VERSION", chest.GENERATOR_VERSION + 1)
        assert recipe_hash(CNN, False) != before
    with monkeypatch.context() as m:
        m.setattr(cxr_datasets, "GENERATOR_VERSION", cxr_datasets.GENERATOR_VERSION + 1)
        assert recipe_hash(CNN, False) != before
    assert recipe_hash(CNN, False) == before
    # The two four-class recipes share a module and a data set, not a hash.
    assert recipe_hash(dict((n, t) for n, t, _ in RECIPES)["cxr-four-class"], False) != before


def test_every_recipe_names_its_model_parameters_and_generators() -> None:
    for name, target, _ in RECIPES:
        identity = recipe_identity(target, False)
        assert identity["recipe"] == name and identity["quick"] is False
        assert identity["parameters"]["name"] == name and identity["parameters"]["version"].startswith("demo-")
        assert identity["generators"] and all(v >= 1 for v in identity["generators"].values()), name
        assert identity["parameters"] != recipe_identity(target, True)["parameters"], name


def test_a_recipe_without_parameters_or_generator_version_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "h5_bare_recipes.py").write_text(
        "def build_demo(out_dir, work_dir, progress, quick):\n    pass\n", encoding="utf-8"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    try:
        with pytest.raises(RecipeError, match="not marked with training.demo.demo_recipe"):
            recipe_hash("h5_bare_recipes:build_demo", False)
        module = importlib.import_module("h5_bare_recipes")
        marked = demo_recipe("bare", parameters=lambda quick: {"q": quick}, generators=["h5_bare_recipes"])
        monkeypatch.setattr(module, "build_demo", marked(module.build_demo))
        with pytest.raises(RecipeError, match="'h5_bare_recipes' has no integer GENERATOR_VERSION"):
            recipe_hash("h5_bare_recipes:build_demo", False)
        monkeypatch.setattr(module, "GENERATOR_VERSION", 1, raising=False)
        assert recipe_identity("h5_bare_recipes:build_demo", True) == {
            "recipe": "bare",
            "parameters": {"q": True},
            "generators": {"h5_bare_recipes": 1},
            "quick": True,
        }
        outcomes = build_demo(
            tmp_path / "out", recipes=[("other", "h5_bare_recipes:build_demo", 1)], stream=io.StringIO()
        )
        assert [(o.state, o.message) for o in outcomes] == [
            ("failed", "recipe 'h5_bare_recipes:build_demo' builds 'bare', not 'other'")
        ]
    finally:
        sys.modules.pop("h5_bare_recipes", None)
