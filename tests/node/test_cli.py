"""The ``ainode`` command as a user runs it: analyze, route, models, start-up checks."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pydicom
import pytest
import yaml

from core.errors import UnreadableDicom
from models.errors import ModelError
from node.errors import ConfigError
from tests.helpers import assert_dciodvfy_clean, lateral_radiograph
from tests.integration.srread import coded_values

REPO = Path(__file__).resolve().parents[2]


def ainode(*args: str, config: Path | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": tempfile.gettempdir()}  # caches (Keras, ONNX) stay out of the repo
    if config:
        env["AINODE_CONFIG"] = str(config)
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def _by_modality(folder: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.glob("*.dcm")):
        found.setdefault(str(pydicom.dcmread(path, stop_before_pixels=True).Modality), []).append(path)
    return found


@pytest.fixture
def config(tmp_path: Path) -> Path:
    cfg = tmp_path / "node.yaml"
    cfg.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "destinations": {}, "default_destinations": []}))
    return cfg


def test_analyze_folder_writes_valid_srs_and_one_bad_file_fails_alone(
    tmp_path: Path, config: Path, rg1_uncr: Path
) -> None:
    inputs = tmp_path / "in" / "nested"
    inputs.mkdir(parents=True)
    shutil.copy(rg1_uncr, inputs / "frontal.dcm")
    lateral_radiograph(inputs)
    (inputs / "notes.txt").write_text("not a DICOM file")
    truncated = (inputs / "frontal.dcm").read_bytes()[:3000]
    (inputs / "truncated.dcm").write_bytes(truncated)
    out = tmp_path / "out"
    run = ainode("analyze", str(tmp_path / "in"), "--out", str(out), config=config)
    assert run.returncode == 1, run.stdout + run.stderr  # some input failed
    assert "Traceback" not in run.stdout + run.stderr
    assert "notes.txt" in run.stdout and "not a readable DICOM file" in run.stdout
    assert "2 series analysed" in run.stdout
    results = _by_modality(out)
    # One SR per radiograph; the frontal one also gets its GSPS (boxes and caption), the lateral one none.
    assert len(results["SR"]) == 2 and len(results["PR"]) == 1, results
    views = set()
    for path in results["SR"]:
        assert_dciodvfy_clean(path)
        views.add(coded_values(pydicom.dcmread(path), "111031")[0].split()[0].lower())
    assert views == {"frontal", "lateral"}


def test_route_explains_each_file(tmp_path: Path, config: Path, rg1_uncr: Path) -> None:
    from pydicom.data import get_testdata_file

    run = ainode("route", str(rg1_uncr), get_testdata_file("CT_small.dcm"), config=config)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert any("RG1_UNCR" in line and "cxr" in line for line in lines), run.stdout
    assert any("CT_small" in line and "no rule matched" in line.lower() for line in lines), run.stdout


def test_models_list_and_verify(config: Path) -> None:
    run = ainode("models", "list", config=config)
    assert run.returncode == 0 and "cxr-view-filter" in run.stdout and "ok" in run.stdout
    assert ainode("models", "verify", config=config).returncode == 0


def test_changed_weights_stop_start_up_and_absent_weights_disable_the_pipeline(tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(REPO / "weights", models)
    cfg = tmp_path / "node.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "models_dir": str(models),
                "port": 0,
                "destinations": {},
                "default_destinations": [],
            }
        )
    )
    weights = models / "cxr-view-filter" / "model.onnx"
    weights.write_bytes(weights.read_bytes() + b"tampered")
    run = ainode("serve", config=cfg, timeout=60)
    assert run.returncode == 2
    assert "cxr-view-filter" in run.stderr and "sha256" in run.stderr.lower()
    assert "Traceback" not in run.stderr
    assert ainode("models", "verify", config=cfg).returncode == 1
    weights.unlink()
    proc = subprocess.Popen(
        [sys.executable, "-m", "node.cli", "serve"],
        cwd=REPO,
        text=True,
        env={"PATH": "/usr/bin:/bin", "AINODE_CONFIG": str(cfg)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        line = proc.stdout.readline()  # printed once listening
        assert "listening" in line
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "pipeline 'cxr' disabled" in err and "ainode-train view-filter" in err


def test_invalid_configuration_is_one_clear_message(tmp_path: Path) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text("port: seventy\n")
    run = ainode("jobs", config=cfg)
    assert run.returncode == 2
    assert "port" in run.stderr and "Example: port: 11112" in run.stderr
    assert "Traceback" not in run.stderr


def test_analyze_reads_jpeg2000_and_old_files_without_preamble(tmp_path: Path, config: Path, rg1_uncr: Path) -> None:
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    inputs = tmp_path / "in"
    inputs.mkdir()
    j2k = Path(get_testdata_file("RG1_J2KR.dcm"))
    shutil.copy(j2k, inputs / "j2k.dcm")
    old = pydicom.dcmread(rg1_uncr)
    old.StudyInstanceUID, old.SeriesInstanceUID, old.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    del old.ImageType
    old.file_meta = pydicom.dataset.FileMetaDataset()
    old.preamble = None
    pydicom.dcmwrite(inputs / "old.dcm", old, implicit_vr=True, little_endian=True, enforce_file_format=False)
    raw = (inputs / "old.dcm").read_bytes()
    assert raw[128:132] != b"DICM" and raw[:4] != b"DICM"  # a pre-PS3.10 data set
    out = tmp_path / "out"
    run = ainode("analyze", str(inputs), "--out", str(out), config=config)
    assert run.returncode == 0, run.stdout + run.stderr
    results = _by_modality(out)
    assert len(results["SR"]) == 2 and len(results["PR"]) == 2, results  # two frontal radiographs
    for path in results["SR"]:
        sr = pydicom.dcmread(path)
        assert coded_values(sr, "111031")[0].lower().startswith("frontal")
        assert_dciodvfy_clean(path)


def test_invalid_manifest_is_listed_with_its_problem(tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(REPO / "weights", models)
    broken = models / "broken-model"
    broken.mkdir()
    (broken / "model.json").write_text('{"name": "broken-model", "version": "1"}')
    cfg = tmp_path / "node.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "models_dir": str(models),
                "models_file": None,
                "destinations": {},
                "default_destinations": [],
            }
        )
    )
    listing = ainode("models", "list", config=cfg)
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if line.startswith("broken-model"))
    assert "invalid" in row
    assert ainode("models", "verify", config=cfg).returncode == 1


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (UnreadableDicom(Path("study") / "x.dcm", "not a DICOM file"), "ainode: error: study/x.dcm: not a DICOM file"),
        (ModelError("no model named 'x'"), "ainode: error: no model named 'x'"),
        (ConfigError("port: expected a number"), "ainode: error: port: expected a number"),
    ],
)
def test_errors_of_every_package_are_one_line_at_the_command_edge(
    error: Exception, line: str, config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from node import cli

    def fail(settings: object, args: object) -> int:
        raise error

    monkeypatch.setattr(cli, "cmd_route", fail)
    monkeypatch.setenv("AINODE_CONFIG", str(config))
    assert cli.main(["route", "x.dcm"]) == 2
    assert capsys.readouterr().err.splitlines() == [line]


def test_a_bug_at_the_command_edge_keeps_its_traceback(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from node import cli

    def fail(settings: object, args: object) -> int:
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "cmd_route", fail)
    monkeypatch.setenv("AINODE_CONFIG", str(config))
    with pytest.raises(KeyError, match="a bug"):
        cli.main(["route", "x.dcm"])
