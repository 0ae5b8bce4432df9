"""Running ``ainode`` as a user would: a subprocess with only the configuration and a minimal environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def ainode(
    *args: str, config: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m node.cli ARGS`` with ``AINODE_CONFIG=config``, PATH and HOME only (plus ``env``)."""
    environ = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(config.parent),
        "AINODE_CONFIG": str(config),
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *args],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
