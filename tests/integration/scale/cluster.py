"""The scale-out kit: real PostgreSQL, RabbitMQ, Orthanc (and moto's S3 server), ``ainode serve`` receivers
and ``ainode worker`` processes, all on loopback high ports, for the issue-17 fault and priority tests.

:class:`Services` are shared by a test module (one broker, one database server, one Orthanc); each test makes a
:class:`Cluster` with a database and a broker virtual host of its own, so no job id of one test reaches another's
workers. Every process writes its log into the test's folder; :meth:`Cluster.stop` ends them all, and
:meth:`Cluster.diagnostics` gathers their tails for a failure message.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import func, select

from node.db import Database, Delivery, DeliveryState, Instance, Job, JobState
from tests.helpers import OrthancServer, PostgresServer
from tests.helpers.rabbitmq import RabbitMQServer
from tests.integration.nodeproc import REPO, NodeProcess

FINISHED = (JobState.DONE, JobState.FAILED)


class Services:
    """PostgreSQL, RabbitMQ and Orthanc (the destination, AE title ORTHANC), started and stopped together."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.orthanc = OrthancServer(root / "orthanc", "ORTHANC")
        self.postgres = PostgresServer()
        self.rabbitmq = RabbitMQServer(root)
        self._names = itertools.count(1)

    def start(self) -> Services:
        try:
            self.postgres.start()
            # Kept in the cluster's configuration (postgresql.auto.conf), so a plain `pg_ctl start` after a
            # stop comes back on the same address, port and socket folder.
            for name, value in (
                ("listen_addresses", "127.0.0.1"),
                ("port", str(self.postgres.port)),
                ("unix_socket_directories", str(self.postgres.socketdir)),
            ):
                self.postgres.psql(f"ALTER SYSTEM SET {name} = '{value}'")
            self.rabbitmq.start()
            self.orthanc.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for stop in (self.orthanc.stop, self.rabbitmq.stop, self.postgres.stop):
            try:
                stop()
            except Exception as exc:  # the others must still stop
                print(f"stopping a test service failed: {exc}", file=sys.stderr)

    def fresh_name(self, prefix: str) -> str:
        return f"{prefix}{next(self._names)}"

    def new_database(self, name: str) -> str:
        """A database of its own for one cluster; return its SQLAlchemy URL."""
        self.postgres.psql(f"CREATE DATABASE {name} OWNER {self.postgres.user}")
        base = self.postgres.url.rsplit("/", 1)[0]
        return f"{base}/{name}"

    def pg_ctl(self, *args: str) -> None:
        """Run ``pg_ctl`` on the database server (as its OS user under root), e.g. ``("stop", "-m", "fast")``."""
        self.postgres._run(
            str(self.postgres.bindir / "pg_ctl"),
            "-D",
            str(self.postgres.datadir),
            "-l",
            str(self.postgres.log_path),
            "-w",
            *args,
        )

    def postgres_down(self) -> None:
        """Stop PostgreSQL (fast shutdown: clients' connections are cut, as in a database restart)."""
        self.pg_ctl("-m", "fast", "stop")

    def postgres_up(self) -> None:
        self.pg_ctl("-t", "60", "start")


class WorkerProcess:
    """``ainode worker`` in a process group of its own: :meth:`kill` ends it and its pool's children at once."""

    def __init__(self, workdir: Path, config: dict[str, Any], queues: str, concurrency: int) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "node.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "worker.log"
        self.args = ["--queues", queues, "--concurrency", str(concurrency)]
        self.proc: subprocess.Popen[bytes] | None = None
        self._offset = 0

    def launch(self) -> WorkerProcess:
        """Start the worker process without waiting (see :meth:`wait_ready`)."""
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "node.cli", "worker", *self.args],
                cwd=REPO,
                env={**os.environ, "AINODE_CONFIG": str(self.config_path)},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    def wait_ready(self, timeout: float = 90) -> WorkerProcess:
        """Return once the worker says it is ready (connected to the database and the broker)."""
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ainode worker exited with {self.proc.returncode}:\n{self.log()}")
            with open(self.log_path, "rb") as fh:
                fh.seek(self._offset)
                if re.search(rb"ainode worker \S+ ready", fh.read()):
                    return self
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"ainode worker was not ready within {timeout} s:\n{self.log()}")

    def start(self, timeout: float = 90) -> WorkerProcess:
        """Start the worker; return once it is ready."""
        return self.launch().wait_ready(timeout)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def owns(self, pid: int) -> bool:
        """Whether ``pid`` (a job's ``worker`` is ``host:pid``) is this worker or one of its pool's processes."""
        if not self.alive or self.proc is None:
            return False
        try:
            return os.getpgid(pid) == self.proc.pid
        except ProcessLookupError:
            return False

    def kill(self) -> None:
        """SIGKILL the worker and its children: the machine running it is gone, nothing is acknowledged."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM (Celery's warm shutdown), SIGKILL of the group if it is not gone within ``timeout``."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        self.kill()

    def log(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


class Cluster:
    """Receivers (``ainode serve``, executor celery) and workers sharing one database and one broker vhost.

    Parameters
    ----------
    services : Services
        The module's servers.
    root : Path
        The test's folder: configurations, data folders and logs of every process.
    full_models : bool
        Load every shipped model (CT pipelines with demo weights); otherwise the view filter alone, as
        :class:`NodeProcess` does for the spine's tests.
    settings : Any
        More node settings for every role (e.g. ``priorities={...}``, ``quiet_period={...}``); ``celery``
        is merged into the cluster's own.
    """

    def __init__(self, services: Services, root: Path, *, full_models: bool = False, **settings: Any) -> None:
        self.services = services
        self.root = root
        self.full_models = full_models
        name = services.fresh_name("cluster")
        self.database_url = services.new_database(name)
        self.broker_url = services.rabbitmq.add_vhost(name)
        celery = {"broker_url": self.broker_url, "lease_seconds": 8.0, "heartbeat_seconds": 2.0}
        celery.update(settings.pop("celery", {}))
        self.settings: dict[str, Any] = {
            "executor": "celery",
            "database_url": self.database_url,
            "celery": celery,
            "quiet_period": {"default": 1.0, "CR": 0.5, "DX": 0.5},
            **settings,
        }
        orthanc = services.orthanc
        self.destinations = {
            "orthanc": {"type": "dicom", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}
        }
        self.receivers: list[NodeProcess] = []
        self.workers: list[WorkerProcess] = []
        self.db = Database(self.database_url)

    # ------------------------------------------------------------------ processes
    def add_receiver(self, **settings: Any) -> NodeProcess:
        """Start one ``ainode serve`` with a data folder of its own; return it once it listens."""
        node = NodeProcess(
            self.root / f"receiver{len(self.receivers) + 1}",
            destinations=self.destinations,
            full_models=self.full_models,
            **{**copy.deepcopy(self.settings), **settings},
        )
        self.receivers.append(node)
        node.start(timeout=120)
        return node

    def add_worker(
        self, queues: str = "cpu", concurrency: int = 1, *, start: bool = True, **settings: Any
    ) -> WorkerProcess:
        """An ``ainode worker`` with a data folder of its own and the first receiver's configuration
        (``settings`` override it); started and ready unless ``start`` is False."""
        assert self.receivers, "a worker takes the receivers' configuration: add a receiver first"
        config = yaml.safe_load(self.receivers[0].config_path.read_text())
        workdir = self.root / f"worker{len(self.workers) + 1}"
        config["data_dir"] = str(workdir / "data")
        config.update(settings)
        worker = WorkerProcess(workdir, config, queues, concurrency)
        self.workers.append(worker)
        if start:
            worker.start()
        return worker

    def add_workers(self, count: int, queues: str = "cpu", **settings: Any) -> list[WorkerProcess]:
        """``count`` workers started side by side (each starts in seconds: Python, Celery, the database)."""
        workers = [self.add_worker(queues, start=False, **settings).launch() for _ in range(count)]
        for worker in workers:
            worker.wait_ready()
        return workers

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        for node in self.receivers:
            node.stop()
        self.db.dispose()

    def diagnostics(self) -> str:
        parts = [f"--- receiver {n.workdir.name} ---\n{n.log()}" for n in self.receivers]
        parts += [f"--- {w.workdir.name} ---\n{w.log()}" for w in self.workers]
        return "\n".join(parts)

    # ------------------------------------------------------------------ the database, as a user would look
    def jobs(self) -> list[Job]:
        with self.db.session() as s:
            return list(s.scalars(select(Job).order_by(Job.id)).all())

    def instance_count(self) -> int:
        with self.db.session() as s:
            return int(s.scalar(select(func.count(Instance.id))) or 0)

    def wait(self, what: str, condition: Callable[[], bool], timeout: float) -> None:
        """Poll ``condition`` (database errors count as 'not yet') until true; fail with every log otherwise."""
        deadline = time.monotonic() + timeout
        last_error = ""
        while True:
            try:
                if condition():
                    return
            except Exception as exc:  # the database may be restarting
                last_error = f" (last error: {exc})"
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not within {timeout} s{last_error}\n{self.diagnostics()}")
            time.sleep(0.25)

    def wait_jobs(self, count: int, timeout: float, states: Iterable[JobState] = FINISHED) -> list[Job]:
        """Wait until at least ``count`` jobs are in ``states``; return all jobs."""
        wanted = set(states)
        self.wait(
            f"{count} jobs {sorted(s.value for s in wanted)}",
            lambda: sum(j.state in wanted for j in self.jobs()) >= count,
            timeout,
        )
        return self.jobs()

    def wait_delivered(self, timeout: float) -> None:
        """Wait until every job is finished and no delivery is open; assert none is a dead letter."""
        open_states = (DeliveryState.PENDING, DeliveryState.SENDING, DeliveryState.COMMITTING)

        def settled() -> bool:
            with self.db.session() as s:
                unfinished = s.scalar(select(func.count(Job.id)).where(Job.state.not_in(FINISHED)))
                waiting = s.scalar(select(func.count(Delivery.id)).where(Delivery.state.in_(open_states)))
            return unfinished == 0 and waiting == 0

        self.wait("every job finished and delivered", settled, timeout)
        with self.db.session() as s:
            dead = s.scalar(select(func.count(Delivery.id)).where(Delivery.state == DeliveryState.DEAD))
        assert dead == 0, self.diagnostics()

    def worker_of(self, job: Job) -> WorkerProcess:
        """The worker process whose pool runs ``job`` (its ``worker`` column is ``host:pid``)."""
        assert job.worker, f"job {job.id} has no worker"
        pid = int(job.worker.rsplit(":", 1)[1])
        for worker in self.workers:
            if worker.owns(pid):
                return worker
        raise AssertionError(f"job {job.id} runs on {job.worker}, none of this cluster's workers")


def started_order(jobs: Iterable[Job]) -> list[Job]:
    """Jobs that started, earliest first."""
    started = [j for j in jobs if j.started_at is not None]
    return sorted(started, key=lambda j: (j.started_at or datetime.min, j.id))
