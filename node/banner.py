"""What ``ainode serve`` says once it listens: version, ports, pipelines and models, destinations, data.

The banner is logged at INFO (``ainode.banner``) and printed on standard
output as well, unless standard output is the log itself (the same file as
standard error, with INFO shown) so that a terminal does not see it twice.
Every DICOM destination is checked with a C-ECHO in a background thread with a
short timeout: start-up does not wait for it, and a destination that does not
answer is a warning (results wait for it and are retried), not a stop.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from node.pipelines import PIPELINE_MODELS, pipeline_models
from node.settings import DicomDestinationSettings, DicomWebDestinationSettings, Settings

if TYPE_CHECKING:
    from node.service import Node

__all__ = ["banner_lines", "echo_destinations", "emit", "human_bytes", "version"]

log = logging.getLogger("ainode.banner")

#: Seconds each destination has to answer the start-up C-ECHO.
ECHO_TIMEOUT = 3.0


def version() -> str:
    """The installed package's version (``ainode --version``)."""
    try:
        return metadata.version("ainode")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def human_bytes(size: float) -> str:
    """``1536`` -> ``"1.5 KB"`` (powers of 1024, one decimal)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _model_line(node: Node, name: str) -> str:
    states = {s.name: s for s in node.models.registry.verify()}  # cached per file: no second checksum
    manifests = {m.name: m for m in node.models.registry.manifests()}
    state, manifest = states.get(name), manifests.get(name)
    if manifest is None or state is None or state.state != "ok":
        why = state.message if state is not None else "no manifest"
        return f"{name}: not available ({why})"
    weights = "DEMO weights" if manifest.demo else "real weights"
    licence = f"; licence: {manifest.licence}" if manifest.licence else ""
    return f"{name} {manifest.version} ({weights}{licence})"


def _spool(node: Node) -> str:
    from node.db import Instance

    try:
        with node.db.session() as session:
            count, size = session.execute(
                select(func.count(), func.coalesce(func.sum(Instance.size), 0))
                .select_from(Instance)
                .where(Instance.purged_at.is_(None))
            ).one()  # files retention removed are not in the spool
    except SQLAlchemyError as exc:
        return f"spool size unknown ({type(exc).__name__})"
    return f"spool {count} instance(s), {human_bytes(float(size))}"


def _destination(name: str, dest: DicomDestinationSettings | DicomWebDestinationSettings) -> str:
    if isinstance(dest, DicomDestinationSettings):
        tls = " over TLS" if dest.tls else ""
        return f"destination {name}: C-STORE to {dest.ae_title}@{dest.host}:{dest.port}{tls} (C-ECHO follows)"
    return f"destination {name}: STOW-RS to {dest.url}"


def banner_lines(node: Node, http_port: int | None) -> list[str]:
    """The banner of a started node; ``http_port`` is the bound HTTP port, ``None`` without HTTP."""
    settings = node.settings
    ports = ", ".join(f"{scp.port}{' (TLS)' if scp is node.tls_scp else ''}" for scp in node.scps)
    http = f"; HTTP on {settings.http_host}:{http_port}" if http_port is not None else "; HTTP off"
    lines = [f"ainode {version()}: {settings.ae_title} listening on {settings.host} port {ports}{http}"]
    for pipeline in sorted(PIPELINE_MODELS):
        if pipeline in node.models.enabled:
            models = "; ".join(_model_line(node, name) for name in pipeline_models(settings, pipeline))
            lines.append(f"  pipeline {pipeline}: enabled: {models}")
        else:
            reason = node.models.disabled.get(pipeline, "not enabled")
            lines.append(f"  pipeline {pipeline}: DISABLED ({reason})")
    peers = ", ".join(f"{p.ae_title}@{p.host or 'any address'}" for p in settings.allowed_peers) or "nobody"
    lines.append(f"  allowed peers: {peers} (and {settings.ae_title} from this machine)")
    for name, dest in sorted(settings.destinations.items()):
        lines.append("  " + _destination(name, dest))
    if not settings.destinations:
        lines.append("  destinations: none (results are kept in the outbox, not sent)")
    try:
        free = f"{human_bytes(shutil.disk_usage(settings.data_dir).free)} free"
    except OSError as exc:
        free = f"free space unknown ({exc.strerror})"
    lines.append(f"  data directory {settings.data_dir}: {free}, {_spool(node)}")
    return lines


def _stdout_is_the_log() -> bool:
    try:
        out, err = os.fstat(sys.stdout.fileno()), os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):  # replaced streams (tests) have no file number
        return False
    return (out.st_dev, out.st_ino) == (err.st_dev, err.st_ino)


def emit(lines: Sequence[str], level: int = logging.INFO) -> None:
    """Log ``lines`` and print them on standard output unless that is where the log already shows them."""
    for line in lines:
        log.log(level, "%s", line)
    if not (_stdout_is_the_log() and log.isEnabledFor(level)):
        print("\n".join(lines), flush=True)


def echo_destinations(
    settings: Settings, timeout: float = ECHO_TIMEOUT, report: Callable[[str, bool], None] | None = None
) -> threading.Thread | None:
    """C-ECHO every DICOM destination in a background thread; each result is reported as it comes.

    ``report(line, ok)`` defaults to :func:`emit` at INFO (answered) or WARNING
    (not answered). Returns the started thread, or ``None`` without DICOM destinations.
    """
    dicom = {n: d for n, d in sorted(settings.destinations.items()) if isinstance(d, DicomDestinationSettings)}
    if not dicom:
        return None

    def default_report(line: str, ok: bool) -> None:
        emit([line], logging.INFO if ok else logging.WARNING)

    out = report or default_report

    def run() -> None:
        from dimse.scu import AssociationFailed, echo
        from node import tls
        from node.errors import ConfigError

        for name, dest in dicom.items():
            where = f"{dest.ae_title}@{dest.host}:{dest.port}{' over TLS' if dest.tls else ''}"
            try:
                code = echo(
                    host=dest.host,
                    port=dest.port,
                    called_ae=dest.ae_title,
                    calling_ae=settings.ae_title,
                    timeout=timeout,
                    ssl_context=tls.destination_context(name, dest),
                )
            except (AssociationFailed, ConfigError, OSError) as exc:
                out(
                    f"  destination {name}: C-ECHO {where} failed: {exc}; results for it wait and are retried "
                    f"(check with 'ainode echo {name}')",
                    False,
                )
                continue
            ok = code == 0
            out(f"  destination {name}: C-ECHO {where}: status 0x{code:04X}{' (success)' if ok else ''}", ok)

    thread = threading.Thread(target=run, name="ainode-echo", daemon=True)
    thread.start()
    return thread
