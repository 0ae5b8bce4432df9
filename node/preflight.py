"""Start-up and command-line checks that turn an unusable environment into one clear line.

Each function raises a :class:`~node.errors.NodeError` whose message names the
problem and the fix in one line (``ainode`` prints it and exits 2), instead of
the ``OSError`` or SQLAlchemy traceback the same problem would otherwise give:

- :func:`prepare_data_dir`: the data directory is a file, cannot be created
  (``/proc/x``) or is not writable (a read-only mount, a folder of another user);
- :func:`open_database`: ``ainode jobs`` before the node ever ran, a database
  server that does not answer;
- :func:`listen_error`: a DICOM or HTTP port in use, a privileged port, an
  address that is not this machine's;
- :func:`http_exposure_warning`: the HTTP server on another address than loopback with an open
  ``/metrics`` or without HTTPS (a warning);
- :func:`exposure_warning`: listening on every interface, a peer not pinned to
  loopback, and no TLS (a warning, not an error);
- :func:`wait_for`, :func:`wait_for_database`: the roles of the distributed executor wait for the
  database and the broker with back-off instead of failing: start-up order does not matter.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from node.errors import ConfigError, NodeError, StorageError

if TYPE_CHECKING:
    from node.db import Database
    from node.settings import Settings

log = logging.getLogger("ainode.preflight")

__all__ = [
    "DATA_DIR_FIX",
    "database_label",
    "exposure_warning",
    "http_exposure_warning",
    "listen_error",
    "open_database",
    "prepare_data_dir",
    "wait_for",
    "wait_for_database",
]

DATA_DIR_FIX = "set data_dir in node.yaml (or AINODE_DATA_DIR) to a folder this user can write"


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def prepare_data_dir(settings: Settings) -> None:
    """Create the data directory readable by its owner only (it holds patient data), and check it is writable.

    The SQLite database is created empty with mode 0600 before SQLite opens it:
    SQLite gives its -wal and -shm files the database file's mode, and would
    otherwise create all three with the process umask (often 0644).

    Raises
    ------
    StorageError
        One line naming the folder, what is wrong and the fix.
    """
    path = settings.data_dir
    if path.exists() and not path.is_dir():
        raise StorageError(f"data directory {path} is a file, not a folder: {DATA_DIR_FIX}")
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StorageError(f"cannot create data directory {path} ({_reason(exc)}): {DATA_DIR_FIX}") from exc
    try:
        os.chmod(path, 0o700)
        # chmod alone passes on a folder of ours that cannot be written (e.g. a read-only bind mount of it).
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
        if settings.database_url is None:
            db_file = path / "ainode.db"
            os.close(os.open(db_file, os.O_CREAT | os.O_WRONLY, 0o600))
            for name in (db_file, db_file.with_name("ainode.db-wal"), db_file.with_name("ainode.db-shm")):
                if name.exists():
                    os.chmod(name, 0o600)
    except OSError as exc:
        raise StorageError(f"data directory {path} is not writable ({_reason(exc)}): {DATA_DIR_FIX}") from exc


def database_label(url: str) -> str:
    """The database URL as it may be shown: the password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(invalid database_url)"


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return lines[0][:300] if lines else type(cause).__name__


def open_database(settings: Settings, *, create: bool) -> Database:
    """Open the node's database, creating its tables (``create``) or only reading one the node made.

    Parameters
    ----------
    settings : Settings
    create : bool
        ``True`` for the node itself; ``False`` for commands that read what the
        node recorded (``jobs``, ``deliveries``, ``audit``): an SQLite database
        that does not exist yet is then an error, not a new empty file.

    Raises
    ------
    StorageError
        No database yet, or the database cannot be opened: one line with the fix.
    """
    from node.db import Database

    if settings.database_url is None and not create:
        db_file = settings.data_dir / "ainode.db"
        if not db_file.is_file():
            raise StorageError(
                f"no database at {db_file}: the node has not run yet with this configuration "
                "(start it with 'ainode serve', or name the node's configuration with --config or AINODE_CONFIG)"
            )
    url = settings.db_url()
    try:
        db = Database(url)
    except (SQLAlchemyError, ImportError) as exc:  # ImportError: the driver (extra 'postgres') is not installed
        raise ConfigError(
            f"database_url {database_label(url)} cannot be used ({_first_line(exc)}): "
            "check database_url in node.yaml (PostgreSQL needs the 'postgres' extra)"
        ) from exc
    try:
        db.create_schema()
    except SQLAlchemyError as exc:
        db.dispose()
        raise StorageError(
            f"database {database_label(url)} cannot be opened ({_first_line(exc)}): "
            "check that it runs and that database_url (or the data directory) is right"
        ) from exc
    return db


def listen_error(what: str, host: str, port: int, exc: OSError, key: str) -> ConfigError:
    """A one-line error for a port that cannot be bound; ``key`` is the setting that names it (``port``)."""
    env = "AINODE_" + key.upper().replace(".", "__")
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    if exc.errno == errno.EADDRINUSE:
        problem = f"{what} port {where} is already in use by another process (another ainode?)"
        fix = f"stop that process, or choose another port ({key} in node.yaml or {env})"
    elif exc.errno == errno.EACCES:
        problem = f"{what} port {where} needs root or CAP_NET_BIND_SERVICE (ports below 1024)"
        fix = f"choose a port of 1024 or above ({key} in node.yaml or {env}), or grant the capability"
    elif exc.errno == errno.EADDRNOTAVAIL:
        problem = f"{what} address {host} is not an address of this machine"
        fix = "set the host in node.yaml to one of its addresses, or 0.0.0.0 for all"
    else:
        problem = f"cannot listen for {what} on {where} ({_reason(exc)})"
        fix = f"check {key} and the host in node.yaml"
    if what == "HTTP":
        fix += ", or http_enabled: false to run without monitoring"
    return ConfigError(f"{problem}: {fix}")


def _loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(settings: Settings, bound_port: int | None = None) -> str | None:
    """A warning when anyone on the network could store studies: all interfaces, open peers, plain DICOM.

    ``None`` when the node listens on one address only, every allowed peer is
    pinned to a loopback address, or there is no plain (non-TLS) port.
    ``bound_port`` is the plain port as bound (``port: 0`` picks one).
    """
    if settings.host not in ("0.0.0.0", "::", "") or settings.port is None:
        return None
    open_peers = [p for p in settings.allowed_peers if not _loopback(p.host)]
    if not open_peers:
        return None
    names = ", ".join(f"{p.ae_title}@{p.host or 'any address'}" for p in open_peers)
    tls = "TLS is off" if not settings.tls.enabled else "the plain port is open besides TLS"
    return (
        f"listening on all interfaces ({settings.host}:{bound_port or settings.port}), {tls}, and allowed_peers admits "
        f"{names}: anyone who can reach this port and use that AE title can store studies. Pin each peer's "
        "address (host: in allowed_peers), listen on one address (host:), or use TLS only (tls.enabled, port: null)"
    )


def http_exposure_warning(settings: Settings) -> str | None:
    """A warning when the HTTP server is reachable from other hosts with an open ``/metrics`` or without HTTPS.

    ``None`` when the HTTP server is off or listens on a loopback address, or when ``/metrics`` needs a login
    and HTTPS is configured.
    """
    if not settings.http_enabled or _loopback(settings.http_host):
        return None
    problems = []
    if not settings.http_metrics_auth:
        problems.append("/metrics is open to anyone (http_metrics_auth: false)")
    if settings.http_tls is None:
        problems.append("passwords, tokens and session cookies cross the network in clear (no http_tls)")
    if not problems:
        return None
    return (
        f"the HTTP server listens on {settings.http_host}:{settings.http_port}, reachable from other hosts, and "
        + "; ".join(problems)
        + ": set http_metrics_auth: true and http_tls, or http_host: 127.0.0.1"
    )


#: Longest pause between two tries to reach the database or the broker at start-up (seconds).
MAX_WAIT_PAUSE = 30.0


def wait_for(what: str, where: str, probe: Callable[[], object], stop: threading.Event) -> bool:
    """Call ``probe`` until it returns, pausing 1 s doubling to 30 s; ``False`` when ``stop`` was set first.

    For the roles that may start before their services (``ainode worker``, ``ainode serve`` with
    ``executor: celery``): one log line per wait, naming what is waited for, where (``where`` is
    shown as given: pass it without a password), why, and the pause. A configuration error
    (:class:`ConfigError`, e.g. a database URL whose driver is not installed) is not waited out.
    """
    pause = 1.0
    while not stop.is_set():
        try:
            probe()
            return True
        except ConfigError:
            raise
        except Exception as exc:
            # The cause alone (e.g. "connection refused"): our own errors repeat the address in their message.
            cause = exc.__cause__ if isinstance(exc, NodeError) and exc.__cause__ is not None else exc
            log.warning("waiting for %s at %s (%s); next try in %.0f s", what, where, _first_line(cause), pause)
        if stop.wait(pause):
            break
        pause = min(pause * 2, MAX_WAIT_PAUSE)
    return False


def wait_for_database(settings: Settings, stop: threading.Event) -> Database | None:
    """The node's database (tables created) once it answers; ``None`` when ``stop`` was set first."""
    opened: list[Database] = []
    if not wait_for(
        "the database",
        database_label(settings.db_url()),
        lambda: opened.append(open_database(settings, create=True)),
        stop,
    ):
        return None
    return opened[0]
