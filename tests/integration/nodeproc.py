"""The node as a real process (``python -m node.cli serve``), for integration and crash tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import func, select

from node.db import Database, Delivery, DeliveryState, Job, JobState

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NodeProcess:
    """Start, kill and restart ``ainode serve`` with a config written into ``workdir``."""

    def __init__(
        self, workdir: Path, destinations: dict[str, Any] | None = None, *, full_models: bool = False, **settings: Any
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = settings.pop("port", None) or _free_port()
        self.data_dir = workdir / "data"
        config: dict[str, Any] = {
            "port": self.port,
            "host": "127.0.0.1",
            "data_dir": str(self.data_dir),
            "allowed_peers": [{"ae_title": "ORTHANC"}, {"ae_title": "STORESCU"}],
            "destinations": destinations or {},
            "default_destinations": list(destinations or {}),
            "delivery": {"max_attempts": 50, "backoff_initial": 0.2, "backoff_max": 1.0},
            "log_level": "INFO",
            "http_port": 0,  # parallel nodes must not compete for the default 8080
        }
        if not full_models:
            # The spine's tests (durability, faults, load, crash) run the view filter alone, as a site may: what
            # they check does not depend on the chest and CT models, which would only make 20 restarts slower.
            models_yaml = workdir / "models.yaml"
            models_yaml.write_text("models:\n  - manifest: cxr-view-filter/model.json\n")
            config["models_file"] = str(models_yaml)
            config["cxr"] = {
                "finding_model": None,
                "four_class_models": [],
                "detector_model": None,
                "presentation_state": False,
            }
        # A setting given as None is left out: the node then runs on its shipped default.
        config.update({k: v for k, v in settings.items() if v is not None})
        for key in [k for k, v in settings.items() if v is None]:
            config.pop(key, None)
        self.config_path = workdir / "node.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "node.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "AINODE_CONFIG": str(self.config_path)}

    def start(self, timeout: float = 60) -> NodeProcess:
        """Start ``ainode serve``; return once *this* process listens (its log says so and the port answers).

        The port was free when chosen, but another process may take it before the node binds it: a
        connect alone would then succeed against that process while the node exits on the taken port.
        """
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        mine = f"listening on 127.0.0.1:{self.port}".encode()
        # The node writes to its own copy of the log's descriptor; ours is closed once it is handed over.
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "node.cli", "serve"],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ainode serve exited with {self.proc.returncode}:\n{self.log()}")
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                listening = mine in fh.read()
            with socket.socket() as s:
                if listening and s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"ainode serve did not open port {self.port}:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL: no clean-up at all, as in a power cut of the process."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "node.cli", *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def database(self) -> Database:
        return Database(f"sqlite:///{self.data_dir / 'ainode.db'}")

    def wait_jobs(self, count: int, timeout: float = 60) -> list[Job]:
        """Wait until ``count`` jobs are finished (done or failed); return all jobs."""
        db = self.database()
        try:
            deadline = time.monotonic() + timeout
            while True:
                with db.session() as s:
                    jobs = s.scalars(select(Job).order_by(Job.id)).all()
                finished = [j for j in jobs if j.state in (JobState.DONE, JobState.FAILED)]
                if len(finished) >= count:
                    return list(jobs)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(finished)}/{count} jobs finished:\n{self.log()}")
                time.sleep(0.1)
        finally:
            db.dispose()

    def delivery_attempts(self) -> int:
        db = self.database()
        try:
            with db.session() as s:
                return int(s.scalar(select(func.coalesce(func.sum(Delivery.attempts), 0))) or 0)
        finally:
            db.dispose()

    def wait_delivered(self, timeout: float = 60) -> None:
        """Wait until no delivery is pending, being sent or awaiting commitment; assert none is a dead letter."""
        deadline = time.monotonic() + timeout
        unfinished = (DeliveryState.PENDING, DeliveryState.SENDING, DeliveryState.COMMITTING)
        while sum(self.deliveries(state) for state in unfinished):
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.1)
        assert self.deliveries(DeliveryState.DEAD) == 0, self.log()

    def deliveries(self, state: DeliveryState) -> int:
        db = self.database()
        try:
            with db.session() as s:
                return int(s.scalar(select(func.count()).select_from(Delivery).where(Delivery.state == state)) or 0)
        finally:
            db.dispose()
