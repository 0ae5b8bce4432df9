"""Shared helpers of the benchmarks: start the node as a subprocess, make test data."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import yaml
from pydicom.uid import generate_uid

from core.table import format_table

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def tool_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def start_node(workdir: Path, port: int, extra: dict | None = None) -> subprocess.Popen:
    """Run ``ainode serve`` with a config written into ``workdir``."""
    config = {
        "port": port,
        "host": "127.0.0.1",
        "data_dir": str(workdir / "data"),
        "allowed_peers": [{"ae_title": "STORESCU"}, {"ae_title": "ORTHANC"}],
        "destinations": {},
        "default_destinations": [],
        "log_level": "WARNING",
        "http_port": 0,
    }
    config.update(extra or {})
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "node.yaml"
    cfg.write_text(yaml.safe_dump(config))
    env = {**os.environ, "AINODE_CONFIG": str(cfg)}
    with open(workdir / "node.log", "wb") as node_log:  # the node writes its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "serve"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=node_log,
        )
    wait_port(port)
    return proc


def wait_idle(pid: int, busy: float = 0.05, window: float = 0.5, timeout: float = 120) -> None:
    """Wait until process ``pid`` uses less than ``busy`` of a core over ``window`` seconds.

    A node loads its models on worker threads after it starts listening; a measurement taken
    meanwhile would share the cores with that.
    """
    ticks = os.sysconf("SC_CLK_TCK")

    def cpu() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime

    deadline = time.monotonic() + timeout
    before = cpu()
    while time.monotonic() < deadline:
        time.sleep(window)
        after = cpu()
        if after - before < busy * window:
            return
        before = after
    raise TimeoutError(f"process {pid} still busy after {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def ct_instances(folder: Path, count: int, rows: int = 512) -> list[Path]:
    """``count`` CT instances of ``rows``×``rows`` 16-bit pixels (about 0.5 MB each), one series."""
    import numpy as np
    from pydicom.data import get_testdata_file

    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    template.Rows = template.Columns = rows
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 2000, size=(rows, rows), dtype=np.int16)
    template.PixelData = pixels.tobytes()
    template.StudyInstanceUID = generate_uid()
    template.SeriesInstanceUID = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        template.SOPInstanceUID = generate_uid()
        template.file_meta.MediaStorageSOPInstanceUID = template.SOPInstanceUID
        template.InstanceNumber = i + 1
        path = folder / f"ct{i:04d}.dcm"
        template.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A benchmark's results as the Markdown table its README row is taken from (:func:`core.table.format_table`)."""
    return format_table(headers, rows, markdown=True)
