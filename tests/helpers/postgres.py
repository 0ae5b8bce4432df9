"""A throw-away PostgreSQL cluster for tests, on a free loopback port.

The cluster lives in a temporary folder, listens on 127.0.0.1 and a Unix
socket inside that folder, and never touches a system-wide cluster. When the
tests run as root the server runs as the ``postgres`` OS user, because
PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from .externals import missing_program_hint, require_integration
from .ports import free_port

__all__ = ["PostgresServer", "find_postgres_bindir"]

_DB = "ainode_test"
_USER = "ainode"


def find_postgres_bindir() -> Path:
    """Return the folder holding ``initdb``, ``pg_ctl`` and ``psql``.

    Debian keeps them out of PATH in ``/usr/lib/postgresql/<version>/bin``;
    the newest version wins. Otherwise ``initdb`` is looked up on PATH.

    Raises
    ------
    FileNotFoundError
        When PostgreSQL (Debian package ``postgresql``) is not installed.
    """
    require_integration("PostgreSQL")
    candidates = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if candidates:
        newest = max(candidates, key=lambda p: int(Path(p).parent.parent.name.split(".")[0]))
        return Path(newest).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise FileNotFoundError(
        f"PostgreSQL's initdb was not found; install the Debian package 'postgresql' ({missing_program_hint()})"
    )


class PostgresServer:
    """A PostgreSQL cluster made by ``initdb`` and run by ``pg_ctl``.

    Attributes
    ----------
    url : str
        SQLAlchemy URL ``postgresql+psycopg://ainode:<password>@127.0.0.1:<port>/ainode_test``.
    port : int
        TCP port on 127.0.0.1.
    """

    def __init__(self) -> None:
        self.bindir = find_postgres_bindir()
        self.port = free_port()
        self.password = secrets.token_hex(12)
        self.database = _DB
        self.user = _USER
        self.url = f"postgresql+psycopg://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"
        # Not under pytest's tmp folder: that is private (0700) to the test
        # user, and the postgres OS user must be able to reach the cluster.
        self.root = Path(tempfile.mkdtemp(prefix="ainode-pg-"))
        self.datadir = self.root / "data"
        self.socketdir = self.root / "socket"
        self.log_path = self.root / "postgres.log"
        self._as_user: list[str] = []
        self._started = False

    def _prepare_owner(self) -> None:
        if os.geteuid() != 0:
            return
        try:
            account = pwd.getpwnam("postgres")
        except KeyError as exc:
            raise RuntimeError("running as root needs the 'postgres' OS user (Debian package postgresql)") from exc
        self.socketdir.mkdir()
        for path in (self.root, self.socketdir):
            os.chown(path, account.pw_uid, account.pw_gid)
        self.root.chmod(0o700)
        self._as_user = [shutil.which("runuser") or "runuser", "-u", "postgres", "--"]

    def _run(self, *args: str, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*self._as_user, *args],
            capture_output=True,
            text=True,
            input=input_text,
            stdin=None if input_text is not None else subprocess.DEVNULL,
            timeout=60,
            check=False,
            cwd=self.root,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} failed with status {proc.returncode}:\n{proc.stdout}{proc.stderr}\n"
                f"--- server log ---\n{self.log_tail()}"
            )
        return proc

    def log_tail(self, chars: int = 4000) -> str:
        """Return the end of the server log, for failure messages."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except (FileNotFoundError, PermissionError):
            return "(no server log)"

    def start(self) -> PostgresServer:
        """Create the cluster, start the server, create the role and database.

        Raises
        ------
        RuntimeError
            When a step fails; the message holds the command's output and the
            server log.
        """
        self._prepare_owner()
        self.socketdir.mkdir(exist_ok=True)
        # Trust on the socket lets the test harness create the role; TCP on
        # loopback asks for the password, as a deployed node would face.
        self._run(
            str(self.bindir / "initdb"),
            "-D", str(self.datadir),
            "-U", "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )  # fmt: skip
        # Durable as a deployed server (fsync, synchronous commits, full page writes: PostgreSQL's
        # defaults): the node's durability tests on PostgreSQL must not pass only because the
        # database skipped the disk.
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.socketdir} "
            "-c fsync=on -c synchronous_commit=on -c full_page_writes=on "
            "-c max_connections=100"
        )
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D", str(self.datadir),
            "-l", str(self.log_path),
            "-o", options,
            "-w", "-t", "60",
            "start",
        )  # fmt: skip
        self._started = True
        self.psql(f"CREATE ROLE {self.user} LOGIN PASSWORD '{self.password}'")
        self.psql(f"CREATE DATABASE {self.database} OWNER {self.user}")
        return self

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser over the Unix socket; return psql's output."""
        proc = self._run(
            str(self.bindir / "psql"),
            "-h", str(self.socketdir),
            "-p", str(self.port),
            "-U", "postgres",
            "-d", database,
            "-v", "ON_ERROR_STOP=1",
            "-X", "-q", "-A", "-t",
            "-c", sql,
        )  # fmt: skip
        return proc.stdout

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete the cluster folder."""
        if self._started:
            self._started = False
            try:
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop")
            except RuntimeError:
                # Last resort so no server outlives the tests.
                pidfile = self.datadir / "postmaster.pid"
                if pidfile.exists():
                    os.kill(int(pidfile.read_text().splitlines()[0]), 9)
        shutil.rmtree(self.root, ignore_errors=True)
