"""`ainode-train` (training.cli): the trainers, build-demo and evaluate, moved out of the serving `ainode`."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.helpers import repo_root

REPO = repo_root()


def ainode_train(
    *args: str, config: Path, module: str = "training.cli", timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``python -m training.cli ARGS`` (``ainode-train``) with ``AINODE_CONFIG=config`` and a minimal environment."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": tempfile.gettempdir(),  # caches (Keras, ONNX) stay out of the repo
        "AINODE_CONFIG": str(config),
    }
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    cfg = tmp_path / "node.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "models_dir": str(tmp_path / "models"),
                "destinations": {},
                "default_destinations": [],
            }
        )
    )
    return cfg


def test_console_script_is_registered() -> None:
    from importlib.metadata import entry_points

    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get("ainode-train") == "training.cli:main" and scripts.get("ainode") == "node.cli:main"


def test_trainer_help_is_the_trainers_own(config: Path) -> None:
    trainer = ainode_train("ct-pe", "--help", config=config)
    assert trainer.returncode == 0 and "--lr-schedule" in trainer.stdout and "--steps" in trainer.stdout
    assert "--holdout" in ainode_train("view-filter", "--help", config=config).stdout
    convert = ainode_train("detector", "convert", "--help", config=config)  # a subcommand's own help
    assert convert.returncode == 0 and "--annotations" in convert.stdout
    top = ainode_train("--help", config=config)
    assert top.returncode == 0 and "AINODE_CONFIG" in top.stdout
    assert all(c in top.stdout for c in ("build-demo", "evaluate", "view-filter", "ct-lumbar"))


def test_the_node_command_has_no_training_commands(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from node.cli import build_parser

    parser = build_parser()
    for argv in (["train", "view-filter"], ["models", "build-demo"], ["models", "evaluate", "ct-pe"]):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(argv)
        assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    assert parser.parse_args(["models", "verify"]).action == "verify"


def test_build_demo_defaults_to_the_settings_models_dir(config: Path) -> None:
    """Without --out, build-demo and evaluate use models_dir of the node's configuration."""
    run = ainode_train("build-demo", "--only", "nope", config=config)
    assert run.returncode == 2 and "no demo recipe named 'nope'" in run.stderr
    run = ainode_train("evaluate", "ct-lumbar", config=config)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert f"ainode-train: error: {config.parent / 'models' / 'ct-lumbar'}: no model.json" in run.stderr


def test_invalid_configuration_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text("port: seventy\n")
    run = ainode_train("build-demo", "--only", "nope", config=cfg)
    assert run.returncode == 2 and run.stderr.startswith("ainode-train: error:") and "Traceback" not in run.stderr


@pytest.mark.integration  # trains or exports a model for tens of seconds: not for the fast loop
def test_train_view_filter_command_builds_verified_weights(tmp_path: Path, config: Path) -> None:
    """`ainode-train view-filter` (extra [train]) on a tiny generated data set gives weights the node accepts;
    without --out it writes into the configuration's models_dir."""
    sys.path.insert(0, str(REPO / "tests" / "models"))
    from test_train_view_filter import make_data

    data = make_data(tmp_path / "data-set")
    out = tmp_path / "models" / "cxr-view-filter"
    run = ainode_train("view-filter", "--data", str(data), "--steps", "6", config=config)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert (out / "model.onnx").is_file() and (out / "MODEL_CARD.md").is_file()
    only_view_filter = tmp_path / "models.yaml"
    only_view_filter.write_text("models:\n  - manifest: cxr-view-filter/model.json\n")
    cfg = tmp_path / "trained.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "d2"),
                "models_dir": str(tmp_path / "models"),
                "models_file": str(only_view_filter),
                "destinations": {},
                "default_destinations": [],
            }
        )
    )
    verify = ainode_train("models", "verify", config=cfg, module="node.cli")
    assert verify.returncode == 0, verify.stdout + verify.stderr
