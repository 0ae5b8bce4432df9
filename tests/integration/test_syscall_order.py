"""Durability proven by system-call order: the node runs under ``strace -f`` while DCMTK sends.

Each acknowledged instance must be durable before its C-STORE response is written
(data fsynced, renamed, its folder and every new folder's parent fsynced); each result
file before the transaction that records it; each delivery answered before it is
marked done (see ``tests/integration/syscalls.py``). The same run with one fsync
taken out of the node (a mutation of ``os.fsync`` in the node's process, no hook in
the node's code) must fail the check: the test can see a missing fsync.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.helpers import free_port, radiograph_copies, require_tool, storescu, tool_env, wait_for_port
from tests.integration.nodeproc import REPO
from tests.integration.syscalls import STRACE_ARGS, Report, check, parse

pytestmark = pytest.mark.integration

INSTANCES = 4

# Run inside the node's process: ``os.fsync`` skips the fsyncs of one kind, then the node serves.
MUTANT = """
import os, sys
kind, data = sys.argv[1], sys.argv[2]
real = os.fsync

def fsync(fd):
    path = os.readlink(f"/proc/self/fd/{fd}")
    inside = os.path.relpath(path, data).split(os.sep)
    depth = len(inside) - 1 if inside[0] in ("spool", "outbox") else -1
    if kind == "file" and "/.incoming-" in path:
        return None                        # the instance's or result's data
    if kind == "folder" and depth == 2:
        return None                        # the series folder after a rename into it
    if kind == "new-folder" and depth in (0, 1):
        return None                        # the parents of a new study or series folder
    return real(fd)

os.fsync = fsync
from node.cli import main
sys.exit(main(["serve"]))
"""


@pytest.fixture
def destination(tmp_path: Path) -> Iterator[int]:
    """DCMTK's storescp as the PACS the results go to."""
    port = free_port()
    out = tmp_path / "pacs"
    out.mkdir()
    proc = subprocess.Popen(
        [require_tool("storescp"), "-od", str(out), "-aet", "PACS", str(port)],
        env=tool_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for_port(port, timeout=10), "storescp did not start"
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def _traced_node(tmp_path: Path, radiographs: list[Path], destination: int, mutation: str | None) -> Report:
    work = tmp_path / (mutation or "node")
    data = work / "data"
    port = free_port()
    work.mkdir()
    (work / "models.yaml").write_text("models:\n  - manifest: cxr-view-filter/model.json\n")
    (work / "node.yaml").write_text(
        yaml.safe_dump(
            {
                "port": port,
                "host": "127.0.0.1",
                "data_dir": str(data),
                "http_enabled": False,
                "allowed_peers": [{"ae_title": "STORESCU"}],
                "models_file": str(work / "models.yaml"),
                "cxr": {
                    "finding_model": None,
                    "four_class_models": [],
                    "detector_model": None,
                    "presentation_state": False,
                },
                "destinations": {
                    "pacs": {"type": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": destination}
                },
                "default_destinations": ["pacs"],
                "quiet_period": {"default": 0.2},
            }
        )
    )
    trace = work / "strace.log"
    node = (
        [sys.executable, "-c", MUTANT, mutation, str(data.resolve())]
        if mutation
        else [sys.executable, "-m", "node.cli", "serve"]
    )
    with open(work / "node.log", "wb") as log:  # strace has its own copy of the descriptor
        proc = subprocess.Popen(
            [require_tool("strace"), *STRACE_ARGS, "-o", str(trace), *node],
            cwd=REPO,
            env={**os.environ, "AINODE_CONFIG": str(work / "node.yaml")},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        assert wait_for_port(port, timeout=120), (work / "node.log").read_text()[-3000:]
        sent = storescu(radiographs, "127.0.0.1", port, "AINODE")
        assert sent.returncode == 0 and "E: " not in sent.stderr, sent.stderr
        deadline = time.monotonic() + 120
        while len(list((tmp_path / "pacs").iterdir())) < INSTANCES:
            assert time.monotonic() < deadline, (work / "node.log").read_text()[-3000:]
            time.sleep(0.2)
    finally:
        # SIGTERM to the node itself (strace's child); strace ends when it does.
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        for child in children.read_text().split() if children.exists() else []:
            os.kill(int(child), signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return check(parse(trace.read_text(errors="replace")), data.resolve(), port, destination)


def test_every_acknowledged_instance_result_and_delivery_is_durable_in_time(
    tmp_path: Path, rg1_uncr: Path, destination: int
) -> None:
    report = _traced_node(tmp_path, radiograph_copies(rg1_uncr, tmp_path / "in", INSTANCES), destination, None)
    assert report.problems == [], "\n".join(report.problems)
    assert report.acknowledged == report.spooled == INSTANCES, report
    assert report.results == INSTANCES and report.delivered >= INSTANCES, report


@pytest.mark.parametrize("mutation", ["file", "folder", "new-folder"])
def test_the_check_fails_when_one_fsync_is_taken_out(
    tmp_path: Path, rg1_uncr: Path, destination: int, mutation: str
) -> None:
    report = _traced_node(tmp_path, radiograph_copies(rg1_uncr, tmp_path / "in", INSTANCES), destination, mutation)
    assert report.acknowledged == INSTANCES
    expected = {
        "file": "data not fsynced before its rename",
        "folder": "after its rename",
        "new-folder": "parent of the new folder",
    }[mutation]
    spooled = [p for p in report.problems if "/spool/" in p and expected in p]
    results = [p for p in report.problems if "/outbox/" in p and expected in p]
    assert spooled and results, report.problems
