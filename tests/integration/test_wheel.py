"""The wheel as a user installs it: ``pip wheel .``, a fresh virtual environment, ``ainode`` from an unrelated folder.

The installed node must run on the defaults inside the wheel (``config`` and ``weights``, found with
importlib.resources), never on files beside the repository, with the serving dependencies alone (no
``train`` or ``yolo`` extra); and serving must not load the training code nor its frameworks.
The wheel is built and installed once for the module (about a minute; pip may use its cache and
the package index).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.helpers.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]

#: Run in the fresh environment: writes a sample as ``ainode sample`` does, starts the node's service,
#: analyses the sample with the pipelines the node runs, stops, and prints what it loaded.
IN_PROCESS = r"""
import json, sys, sysconfig, tempfile
from pathlib import Path

import node.cli  # the console script's module
from node.analyze import analyze_paths
from node.sample import write_sample
from node.service import Node
from node.settings import load_settings

work = Path(tempfile.mkdtemp(dir="."))
sample = write_sample("cxr", work / "sample")
settings = load_settings(
    environ={"AINODE_HOST": "127.0.0.1", "AINODE_PORT": "0", "AINODE_HTTP_ENABLED": "false",
             "AINODE_DATA_DIR": str(work / "var")}
)
service = Node(settings)
service.start()
try:
    code = analyze_paths(settings, sample.paths, work / "out")
finally:
    service.stop()
print(json.dumps({
    "purelib": sysconfig.get_paths()["purelib"],
    "files": [node.cli.__file__, str(settings.models_dir), str(settings.models_file), str(settings.routing_file)],
    "analysed": code,
    "results": len(list((work / "out").rglob("*.dcm"))),
    "modules": sorted(sys.modules),
}))
"""


def _environment(**ainode: str) -> dict[str, str]:
    """This environment without anything that would reach the repository or the test's own settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP") and not k.startswith("AINODE_")
    }
    return {**env, **ainode}


def _run(args: list[str | Path], cwd: Path, timeout: float = 300, **ainode: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=_environment(**ainode), capture_output=True, text=True, timeout=timeout
    )
    command = " ".join(str(a) for a in args[:4])
    assert done.returncode == 0, (
        f"{command} exited with {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel built from this repository installed, and nothing else of ours."""
    root = tmp_path_factory.mktemp("wheel")
    # The files a checkout of this working tree has (tracked and new, not ignored), built in a copy: an earlier
    # build/ folder in the repository would put modules removed since into the wheel.
    source = root / "source"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():  # a tracked file deleted in the working tree is not built
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    dist = root / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, "."], cwd=source)
    (wheel,) = dist.glob("ainode-*.whl")
    shutil.rmtree(source)
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=root)
    _run([venv / "bin" / "python", "-m", "pip", "install", "-q", wheel], cwd=root, timeout=600)
    return venv


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """An empty folder with no relation to the repository, where the commands run."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    return folder


@pytest.fixture
def serving(venv: Path, elsewhere: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, int]]:
    """``ainode serve`` on the wheel's defaults; only its address and HTTP port come from the environment."""
    port = free_port()
    log = elsewhere / "serve.log"
    env = _environment(AINODE_HOST="127.0.0.1", AINODE_PORT=str(port), AINODE_HTTP_PORT="0")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(venv / "bin" / "ainode"), "serve"],
            cwd=elsewhere,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        yield proc, log, port
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_the_installed_wheel_runs_on_its_embedded_defaults_from_any_folder(
    venv: Path, elsewhere: Path, serving: tuple[subprocess.Popen[bytes], Path, int]
) -> None:
    ainode = venv / "bin" / "ainode"
    assert "serve" in _run([ainode, "--help"], cwd=elsewhere).stdout

    written = _run([ainode, "sample", "cxr", "--out", "sample"], cwd=elsewhere).stdout
    (sample,) = (elsewhere / "sample").glob("*.dcm")
    assert "routes to pipeline cxr" in written
    routed = _run([ainode, "route", sample.relative_to(elsewhere)], cwd=elsewhere).stdout
    assert "cxr" in routed and "matched rule 'chest-radiograph'" in routed, routed

    proc, log, port = serving
    deadline = time.monotonic() + 60
    while f"listening on 127.0.0.1:{port}" not in log.read_text(errors="replace"):
        assert proc.poll() is None, f"ainode serve exited with {proc.returncode}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"ainode serve did not listen on {port}:\n{log.read_text()}"
        time.sleep(0.1)
    ae = AE(ae_title="ORTHANC")  # the peer the shipped node.yaml admits from this machine
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="AINODE")
    assert assoc.is_established
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    assert status.Status == 0x0000

    # The admin pages' templates travel in the wheel: the login page renders, and a page asks for it.
    endpoint = re.compile(r"HTTP endpoint on (http://127\.0\.0\.1:\d+)")
    while not (found := endpoint.search(log.read_text(errors="replace"))):
        assert time.monotonic() < deadline, f"ainode serve printed no HTTP endpoint:\n{log.read_text()}"
        time.sleep(0.1)
    login = requests.get(found.group(1) + "/login", timeout=10)
    assert login.status_code == 200 and 'id="login-form"' in login.text, login.text[:500]
    jobs = requests.get(found.group(1) + "/jobs", timeout=10, allow_redirects=False)
    assert jobs.status_code in (302, 303, 307) and jobs.headers["location"].startswith("/login"), jobs.headers

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    text = log.read_text()
    # The shipped models.yaml names every model and the wheel carries their weights: all three pipelines run.
    for pipeline in ("ct_lumbar", "ct_pe", "cxr"):
        assert f"pipeline {pipeline}: enabled" in text, text
    # data_dir's default, 'var', is in the folder the node runs from.
    assert (elsewhere / "var" / "ainode.db").is_file()


def test_serving_loads_neither_training_code_nor_its_frameworks(venv: Path, elsewhere: Path) -> None:
    done = _run([venv / "bin" / "python", "-c", IN_PROCESS], cwd=elsewhere)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    purelib = Path(report["purelib"]).resolve()
    for path in report["files"]:
        assert Path(path).resolve().is_relative_to(purelib), f"{path} is not from the installed wheel"
    assert report["analysed"] == 0 and report["results"] >= 1
    modules = set(report["modules"])
    assert "training.phantoms" in modules  # written by the sample, as 'ainode sample' does
    training = {m for m in modules if m == "training" or m.startswith("training.")}
    # 'training' itself is there as the parent of training.phantoms, which loads no trainer.
    assert {m for m in training if m != "training" and not m.startswith("training.phantoms")} == set()
    frameworks = {m for m in modules if m.split(".")[0] in ("tensorflow", "torch", "keras", "ultralytics")}
    assert frameworks == set()
