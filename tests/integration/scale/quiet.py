"""What the logs of a cluster say during a fault: no traceback, a few lines per role (one per outage and loop)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.integration.scale.cluster import Cluster

#: A line of the node's log format at WARNING or above ("<date> <time> WARNING <logger> [<thread>] ...").
LOUD = re.compile(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) ")


def log_paths(kit: Cluster) -> dict[str, Path]:
    """Each process of ``kit`` by name (``receiver1``, ``worker2``): its log file."""
    paths = {node.workdir.name: node.log_path for node in kit.receivers}
    paths.update({worker.workdir.name: worker.log_path for worker in kit.workers})
    return paths


def mark(kit: Cluster) -> dict[str, int]:
    """Where each log ends now: :func:`loud_lines` reads what comes after."""
    return {name: path.stat().st_size if path.exists() else 0 for name, path in log_paths(kit).items()}


def loud_lines(kit: Cluster, since: dict[str, int]) -> dict[str, list[str]]:
    """The WARNING, ERROR and CRITICAL lines each process logged after ``since``."""
    lines: dict[str, list[str]] = {}
    for name, path in log_paths(kit).items():
        with open(path, "rb") as fh:
            fh.seek(since.get(name, 0))
            text = fh.read().decode(errors="replace")
        lines[name] = [line for line in text.splitlines() if LOUD.match(line)]
    return lines


def assert_quiet_fault(kit: Cluster, since: dict[str, int], receiver_at_most: int, worker_at_most: int) -> None:
    """No log of ``kit`` holds a traceback, and the fault since ``since`` was said in a few lines per process."""
    for name, path in log_paths(kit).items():
        text = path.read_text(errors="replace")
        assert "Traceback" not in text, f"{name} logged a traceback:\n{text[text.index('Traceback') - 500 :][:4000]}"
    for name, lines in loud_lines(kit, since).items():
        limit = receiver_at_most if name.startswith("receiver") else worker_at_most
        assert len(lines) <= limit, f"{name} said the fault in {len(lines)} lines (at most {limit}):\n" + "\n".join(
            lines
        )
