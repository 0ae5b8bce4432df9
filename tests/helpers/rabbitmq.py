"""A throw-away RabbitMQ broker for tests, on free loopback ports.

Debian's ``rabbitmq-server`` is run without systemd: every path and port goes through ``RABBITMQ_*``
variables, so the broker never touches /var/lib/rabbitmq, /etc/rabbitmq or the system's epmd. Its Erlang
port mapper (epmd) listens on a port of its own and is ended with the broker. When the tests run as root
the broker runs as the ``rabbitmq`` OS user (as Debian runs it), so its folder belongs to that user.

``consumer_timeout`` is set explicitly (30 minutes): a worker holding an unacknowledged message (Celery's
``acks_late``) for longer than that would have its channel closed by the broker, so it must stay above the
node's Celery ``time_limit`` (1500 s by default).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .externals import missing_program_hint, require_integration
from .ports import free_port

__all__ = ["CONSUMER_TIMEOUT_MS", "RabbitMQServer", "find_rabbitmq_server"]

#: The broker's consumer_timeout, in milliseconds: above Celery's time_limit (1500 s by default).
CONSUMER_TIMEOUT_MS = 1_800_000

# Debian's wrapper (/usr/sbin/rabbitmq-server) switches to the rabbitmq user through su, which resets the
# environment this helper relies on; the script it wraps takes the RABBITMQ_* variables as they are.
_SERVER_SCRIPTS = ("/usr/lib/rabbitmq/bin/rabbitmq-server",)
_AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


def find_rabbitmq_server() -> Path:
    """Return the ``rabbitmq-server`` start script.

    Raises
    ------
    FileNotFoundError
        When RabbitMQ (Debian package ``rabbitmq-server``) is not installed.
    """
    require_integration("RabbitMQ")
    for candidate in _SERVER_SCRIPTS:
        if os.access(candidate, os.X_OK):
            return Path(candidate)
    raise FileNotFoundError(
        f"RabbitMQ's rabbitmq-server was not found; install the Debian package 'rabbitmq-server' "
        f"({missing_program_hint()})"
    )


def amqp_ready(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    """Return True when an AMQP 0-9-1 broker answers the protocol header with Connection.Start."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(_AMQP_HEADER)
            frame = sock.recv(7)
    except OSError:
        return False
    # A method frame (type 1) on channel 0: the broker has booted and accepts connections.
    return len(frame) == 7 and frame[0] == 1 and frame[1:3] == b"\x00\x00"


class RabbitMQServer:
    """One RabbitMQ node in a temporary folder; ``start``, ``stop``, ``restart`` keep its data.

    Parameters
    ----------
    root : Path, optional
        A folder of the test (e.g. ``tmp_path``) that receives a copy of the broker's logs when it stops.
        The broker's own folder is made by :func:`tempfile.mkdtemp`: pytest's tmp folder is private to
        the test user, and the ``rabbitmq`` user must reach the broker's folder.

    Attributes
    ----------
    url : str
        ``amqp://guest:guest@127.0.0.1:<port>//`` (guest may log in from loopback).
    port : int
        The AMQP port on 127.0.0.1.
    """

    def __init__(self, root: Path | None = None) -> None:
        self.script = find_rabbitmq_server()
        self.keep_logs_in = root
        self.port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        while len({self.port, self.dist_port, self.epmd_port}) < 3:
            self.dist_port, self.epmd_port = free_port(), free_port()
        self.nodename = f"ainode-test-{self.port}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.dir = Path(tempfile.mkdtemp(prefix="ainode-rabbitmq-"))
        self.log_path = self.dir / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._account: pwd.struct_passwd | None = None
        self._prepare()

    def _prepare(self) -> None:
        for sub in ("mnesia", "log", "home"):
            (self.dir / sub).mkdir()
        (self.dir / "rabbitmq.conf").write_text(
            f"consumer_timeout = {CONSUMER_TIMEOUT_MS}\n"
            # A test machine's disk may be small: the default 50 MB alarm would block publishers.
            "disk_free_limit.absolute = 10MB\n"
            "loopback_users.guest = true\n"
        )
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq-env.conf").write_text("")
        if os.geteuid() == 0:
            try:
                self._account = pwd.getpwnam("rabbitmq")
            except KeyError as exc:
                raise RuntimeError(
                    "running as root needs the 'rabbitmq' OS user (Debian package rabbitmq-server)"
                ) from exc
            for path in [self.dir, *self.dir.rglob("*")]:
                os.chown(path, self._account.pw_uid, self._account.pw_gid)
        self.dir.chmod(0o700)

    @property
    def env(self) -> dict[str, str]:
        """The broker's environment: every path under its folder, every port of its own."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(self.dir / "home"),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_USE_LONGNAME="false",
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.dir / "log"),
            RABBITMQ_PID_FILE=str(self.dir / "rabbitmq.pid"),
            RABBITMQ_CONFIG_FILE=str(self.dir / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.dir / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(self.dir / "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
            RABBITMQ_PLUGINS_EXPAND_DIR=str(self.dir / "plugins-expand"),
            RABBITMQ_LOGS="-",  # to the console log below
        )
        return env

    def start(self, timeout: float = 60) -> RabbitMQServer:
        """Start the broker; return once it answers the AMQP protocol header.

        Raises
        ------
        RuntimeError
            When the broker exits or does not answer within ``timeout``; the message holds its log.
        """
        if self.proc is not None and self.proc.poll() is None:
            return self
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.script)],
                cwd=self.dir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: stop() ends the shell, erl and their children
                user=self._account.pw_uid if self._account else None,
                group=self._account.pw_gid if self._account else None,
                extra_groups=[] if self._account else None,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited with {self.proc.returncode}:\n{self.log_tail()}")
            if amqp_ready(self.port):
                return self
            time.sleep(0.2)
        self._halt()
        raise RuntimeError(f"RabbitMQ did not accept AMQP on port {self.port} within {timeout} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        """Return the end of the broker's console log, for failure messages."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return "(no broker log)"

    def _halt(self, timeout: float = 30) -> None:
        """End the broker: SIGTERM (RabbitMQ stops gracefully, flushing its queues), SIGKILL on time-out."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything of its group still alive
        proc.wait(10)
        self._stop_epmd()

    def _stop_epmd(self) -> None:
        """End the epmd that the broker's Erlang VM started on this broker's own port (it daemonizes)."""
        epmd = shutil.which("epmd")
        if epmd:
            subprocess.run(
                [epmd, "-port", str(self.epmd_port), "-kill"],
                env={**os.environ, "ERL_EPMD_PORT": str(self.epmd_port)},
                capture_output=True,
                timeout=10,
                check=False,
            )

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """Run ``rabbitmqctl`` against this broker; return its output.

        Raises
        ------
        RuntimeError
            When it exits non-zero; the message holds its output.
        """
        ctl = self.script.with_name("rabbitmqctl")
        proc = subprocess.run(
            [str(ctl), "-n", self.nodename, *args],
            cwd=self.dir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
            user=self._account.pw_uid if self._account else None,
            group=self._account.pw_gid if self._account else None,
            extra_groups=[] if self._account else None,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return proc.stdout

    def add_vhost(self, name: str) -> str:
        """Create a virtual host that guest may use; return its URL. Tests sharing one broker each get their own."""
        self.ctl("add_vhost", name)
        self.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{name}"

    def kill(self) -> None:
        """SIGKILL the broker (no graceful stop); its data folder stays for :meth:`start`."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._halt()

    def restart(self, down_seconds: float = 0.0, timeout: float = 60) -> RabbitMQServer:
        """Stop the broker gracefully, stay down ``down_seconds``, start it again on the same ports and data.

        Durable queues and persistent messages survive, as across a real broker restart.
        """
        self._halt()
        time.sleep(down_seconds)
        return self.start(timeout)

    def stop(self) -> None:
        """Stop the broker and its epmd; copy the logs into ``root`` (if given); delete the broker's folder."""
        self._halt()
        if self.keep_logs_in is not None:
            target = self.keep_logs_in / "rabbitmq-logs"
            target.mkdir(parents=True, exist_ok=True)
            for log in [self.log_path, *(self.dir / "log").glob("*.log")]:
                if log.exists():
                    shutil.copyfile(log, target / log.name)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RabbitMQServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
