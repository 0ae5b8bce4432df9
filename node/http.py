"""The node's HTTP endpoint: liveness, readiness and Prometheus metrics.

Served by ``ainode serve`` in a background thread, on ``http_host:http_port``
(127.0.0.1:8080 by default: localhost only; the endpoint has no
authentication and tells no patient data, but the counts are nobody else's
business). The standard library's :class:`~http.server.ThreadingHTTPServer`
is enough for three read-only routes, so the base install gains no dependency.

``GET /healthz``
    ``200 ok`` while the process runs (liveness).
``GET /readyz``
    ``200`` when the DICOM port accepts connections, the database answers,
    the data directory is writable and some pipeline is loaded; otherwise
    ``503``. The body is JSON:
    ``{"status": "ready"|"not ready", "checks": {"dicom": "ok", ...}}``, a
    failing check holding its reason.
``GET /metrics``
    Prometheus text exposition format 0.0.4.

Metrics (prefix ``ainode_``):

=====================================  =========  ===========================================
name                                   type       what
=====================================  =========  ===========================================
instances_received_total               counter    C-STORE answered with success
instances_rejected_total{status,       counter    C-STORE answered with a failure status
reason}
associations_total{outcome}            counter    accepted, rejected, released, aborted
analysis_seconds{pipeline}             histogram  time a worker spent on one job
deliveries_total{destination,outcome}  counter    delivered, failed (retried later), dead
delivery_seconds{destination}          histogram  result queued -> delivery confirmed
jobs{state,pipeline}                   gauge      jobs in the database
dead_letters                           gauge      deliveries given up (``ainode deliveries``)
deliveries_pending                     gauge      deliveries waiting to be sent
spool_instances, spool_bytes           gauge      instances kept in the spool (not yet purged)
purged_files_total{reason},            counter    files removed by retention (``age``,
purged_bytes_total{reason}                        ``watermark``; see ``node.retention``)
data_dir_free_bytes                    gauge      free space where the data directory is
database_up                            gauge      1 when the gauges above could be read
start_time_seconds                     gauge      process start, Unix time
=====================================  =========  ===========================================

Counters and histograms live in memory and are updated under a lock (no
database work per instance); gauges are read from the database and the file
system when ``/metrics`` is scraped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError

from core import status as dimse_status

if TYPE_CHECKING:
    from dimse.scp import AssociationEvent
    from node.db import Database

__all__ = [
    "CONTENT_TYPE_METRICS",
    "Counter",
    "Family",
    "Histogram",
    "HttpServer",
    "Metrics",
    "ReadinessProbe",
    "database_gauges",
]

log = logging.getLogger("ainode.http")

CONTENT_TYPE_METRICS = "text/plain; version=0.0.4; charset=utf-8"
#: Seconds; a radiograph takes well under a second, a CT series minutes.
ANALYSIS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
#: Seconds; includes back-off while a destination is down.
DELIVERY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


# -- exposition ------------------------------------------------------------------------------


@dataclass
class Family:
    """One metric family as exposed: ``# HELP``, ``# TYPE`` and its samples."""

    name: str
    kind: str  # counter, gauge, histogram
    help: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)  # (name, labels, value)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return str(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(float(value))


def render(families: Iterable[Family]) -> str:
    """The Prometheus text format 0.0.4 of ``families``."""
    lines: list[str] = []
    for fam in families:
        lines.append(f"# HELP {fam.name} {fam.help.replace(chr(92), chr(92) * 2).replace(chr(10), ' ')}")
        lines.append(f"# TYPE {fam.name} {fam.kind}")
        for name, labels, value in fam.samples:
            label_text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
            lines.append(f"{name}{{{label_text}}} {_number(value)}" if label_text else f"{name} {_number(value)}")
    return "\n".join(lines) + "\n"


# -- in-process instruments ------------------------------------------------------------------


class Counter:
    """A monotonically increasing count per label combination; thread-safe."""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        self.name, self.help, self.labelnames = name, help, tuple(labelnames)
        self._values: dict[tuple[str, ...], float] = {} if labelnames else {(): 0.0}
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(str(labels[n]) for n in self.labelnames)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(tuple(str(labels[n]) for n in self.labelnames), 0.0)

    def collect(self) -> Family:
        with self._lock:
            items = sorted(self._values.items())
        return Family(
            self.name,
            "counter",
            self.help,
            [(self.name, dict(zip(self.labelnames, key, strict=False)), value) for key, value in items],
        )


class Histogram:
    """Observations counted into cumulative buckets (``le``), with their sum and count; thread-safe."""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = (), buckets: Sequence[float] = ()) -> None:
        self.name, self.help, self.labelnames = name, help, tuple(labelnames)
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self._series: dict[tuple[str, ...], list[float]] = {}  # per-bucket counts..., sum, count
        self._lock = threading.Lock()

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(str(labels[n]) for n in self.labelnames)
        with self._lock:
            series = self._series.setdefault(key, [0.0] * (len(self.buckets) + 2))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    series[i] += 1
                    break
            series[-2] += value
            series[-1] += 1

    def collect(self) -> Family:
        with self._lock:
            items = sorted((key, list(series)) for key, series in self._series.items())
        fam = Family(self.name, "histogram", self.help)
        for key, series in items:
            labels = dict(zip(self.labelnames, key, strict=False))
            cumulative = 0.0
            for bound, count in zip(self.buckets, series, strict=False):
                cumulative += count
                fam.samples.append((f"{self.name}_bucket", {**labels, "le": _number(bound)}, cumulative))
            fam.samples.append((f"{self.name}_sum", labels, series[-2]))
            fam.samples.append((f"{self.name}_count", labels, series[-1]))
        return fam


class Metrics:
    """The node's instruments, plus collectors called at scrape time for gauges."""

    def __init__(self) -> None:
        self.instances_received = Counter(
            "ainode_instances_received_total", "C-STORE requests answered with success (instance durable)."
        )
        self.instances_rejected = Counter(
            "ainode_instances_rejected_total", "C-STORE requests answered with a failure status.", ("status", "reason")
        )
        self.associations = Counter("ainode_associations_total", "Incoming associations by outcome.", ("outcome",))
        for outcome in ("accepted", "rejected", "released", "aborted"):
            self.associations.inc(0, outcome=outcome)
        self.analysis_seconds = Histogram(
            "ainode_analysis_seconds",
            "Seconds a worker spent on one job (load, infer, write results).",
            ("pipeline",),
            ANALYSIS_BUCKETS,
        )
        self.deliveries = Counter(
            "ainode_deliveries_total", "Delivery attempts of result objects by outcome.", ("destination", "outcome")
        )
        self.delivery_seconds = Histogram(
            "ainode_delivery_seconds",
            "Seconds from a result being queued to its delivery being confirmed.",
            ("destination",),
            DELIVERY_BUCKETS,
        )
        self.series_resent = Counter(
            "ainode_series_resent_total",
            "Series that arrived again unchanged and were not analysed again.",
            ("pipeline",),
        )
        self.instances_resent = Counter(
            "ainode_instances_resent_total", "Instances of series re-sent unchanged that were not analysed again."
        )
        self.purged_files = Counter(
            "ainode_purged_files_total",
            "Spool and outbox files removed by retention, by rule (age, watermark).",
            ("reason",),
        )
        self.purged_bytes = Counter(
            "ainode_purged_bytes_total", "Bytes of spool and outbox files removed by retention, by rule.", ("reason",)
        )
        for reason in ("age", "watermark"):
            self.purged_files.inc(0, reason=reason)
            self.purged_bytes.inc(0, reason=reason)
        self.started = time.time()
        self._collectors: list[Callable[[], list[Family]]] = []

    def instance(self, code: int) -> None:
        """Count one C-STORE answered with DIMSE status ``code`` (PS3.4 B.2.3)."""
        if dimse_status.is_store_success(code):
            self.instances_received.inc()
        else:
            self.instances_rejected.inc(status=f"0x{code:04X}", reason=dimse_status.describe(code))

    def association(self, event: AssociationEvent) -> None:
        self.associations.inc(outcome=event.kind)

    def add_collector(self, collector: Callable[[], list[Family]]) -> None:
        """Add a function returning gauge families, called at each scrape."""
        self._collectors.append(collector)

    def families(self) -> list[Family]:
        families = [
            self.instances_received.collect(),
            self.instances_rejected.collect(),
            self.associations.collect(),
            self.analysis_seconds.collect(),
            self.deliveries.collect(),
            self.delivery_seconds.collect(),
            self.series_resent.collect(),
            self.instances_resent.collect(),
            self.purged_files.collect(),
            self.purged_bytes.collect(),
            Family(
                "ainode_start_time_seconds",
                "gauge",
                "Start of the node process, Unix time.",
                [("ainode_start_time_seconds", {}, self.started)],
            ),
        ]
        for collector in self._collectors:
            try:
                families.extend(collector())
            except Exception:  # a broken collector must not hide the other metrics
                log.exception("metrics collector %r failed", collector)
        return families

    def exposition(self) -> str:
        return render(self.families())


def _gauge(name: str, help: str, value: float, **labels: str) -> Family:
    return Family(name, "gauge", help, [(name, labels, value)])


def database_gauges(db: Database, data_dir: Path) -> list[Family]:
    """Gauges read at scrape time: jobs, dead letters, spool, free disk (a few aggregate queries)."""
    from node.db import Delivery, DeliveryState, Instance, Job

    families = []
    try:
        usage = shutil.disk_usage(data_dir)
        families.append(
            _gauge("ainode_data_dir_free_bytes", "Free bytes on the data directory's file system.", usage.free)
        )
    except OSError as exc:
        log.warning("cannot read free space of %s: %s", data_dir, exc)
    jobs = Family("ainode_jobs", "gauge", "Jobs in the database by state and pipeline.")
    try:
        with db.session() as session:
            for state, pipeline, count in session.execute(
                select(Job.state, Job.pipeline, func.count()).group_by(Job.state, Job.pipeline)
            ).all():
                jobs.samples.append(("ainode_jobs", {"state": state.value, "pipeline": pipeline}, count))
            deliveries = dict(
                session.execute(
                    select(Delivery.state, func.count())
                    .where(Delivery.state.in_([DeliveryState.DEAD, DeliveryState.PENDING]))
                    .group_by(Delivery.state)
                ).all()
            )
            instances, size = session.execute(
                select(func.count(), func.coalesce(func.sum(Instance.size), 0))
                .select_from(Instance)
                .where(Instance.purged_at.is_(None))  # rows of purged files stay for the audit trail
            ).one()
    except SQLAlchemyError as exc:
        log.warning("metrics: database not readable: %s", exc)
        return families + [_gauge("ainode_database_up", "1 when the database answered this scrape.", 0)]
    return families + [
        jobs,
        _gauge(
            "ainode_dead_letters",
            "Deliveries given up after the retry limit (ainode deliveries --failed).",
            deliveries.get(DeliveryState.DEAD, 0),
        ),
        _gauge(
            "ainode_deliveries_pending",
            "Deliveries waiting to be sent or retried.",
            deliveries.get(DeliveryState.PENDING, 0),
        ),
        _gauge("ainode_spool_instances", "Received instances kept in the spool.", instances),
        _gauge("ainode_spool_bytes", "Bytes of received instances kept in the spool.", size),
        _gauge("ainode_database_up", "1 when the database answered this scrape.", 1),
    ]


# -- readiness -------------------------------------------------------------------------------


class ReadinessProbe:
    """Checks that the node can take a study now: DICOM port, database, data directory, pipelines.

    Parameters
    ----------
    dicom_host : str
        The address the SCP listens on (a wildcard is probed on loopback).
    dicom_port : callable
        Returns the SCP's bound port, or the bound ports (plain and TLS); each must accept connections.
    db : Database
    tmp_dir : Path
        Where a probe file is written and removed (the data directory's ``tmp``).
    tls_port : (callable, ssl.SSLContext), optional
        The TLS SCP's bound port and a client context; the probe completes a
        TLS handshake (a bare connect would be logged as a failed handshake).
    pipelines : callable, optional
        Returns ``"ok"`` or why no pipeline is loaded (a node that stores
        studies but analyses none is not ready); the check ``"pipelines"``.
    """

    def __init__(
        self,
        dicom_host: str,
        dicom_port: Callable[[], int | Sequence[int]],
        db: Database,
        tmp_dir: Path,
        tls_port: tuple[Callable[[], int], ssl.SSLContext] | None = None,
        pipelines: Callable[[], str] | None = None,
    ) -> None:
        wildcard = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}
        self.dicom_host = wildcard.get(dicom_host, dicom_host)
        self.dicom_port = dicom_port
        self.db = db
        self.tmp_dir = tmp_dir
        self.tls_port = tls_port
        self.pipelines = pipelines

    def checks(self) -> dict[str, str]:
        """``{"dicom": ..., "database": ..., "data_dir": ..., "pipelines": ...}``, each ``"ok"`` or why it fails."""
        checks = {"dicom": self._dicom(), "database": self._database(), "data_dir": self._data_dir()}
        if self.pipelines is not None:
            checks["pipelines"] = self.pipelines()
        return checks

    def _dicom(self) -> str:
        ports = self.dicom_port()
        for port in [ports] if isinstance(ports, int) else ports:
            try:
                # A bare connect and close: the SCP drops it without an association (no audit, no count).
                with socket.create_connection((self.dicom_host, port), timeout=2):
                    pass
            except OSError as exc:
                return f"DICOM port {self.dicom_host}:{port} not accepting connections: {exc}"
        if self.tls_port is not None:
            port_of, context = self.tls_port
            port = port_of()
            try:
                with socket.create_connection((self.dicom_host, port), timeout=2) as raw, context.wrap_socket(raw):
                    pass
            except OSError as exc:  # ssl.SSLError is an OSError
                return f"DICOM TLS port {self.dicom_host}:{port} not completing a TLS handshake: {exc}"
        return "ok"

    def _database(self) -> str:
        try:
            with self.db.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return "ok"
        except SQLAlchemyError as exc:
            return f"database not answering: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"

    def _data_dir(self) -> str:
        try:
            fd, name = tempfile.mkstemp(prefix=".ready-", dir=self.tmp_dir)
            try:
                os.write(fd, b"ready")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(name)
            return "ok"
        except OSError as exc:
            return f"data directory not writable: {exc}"


# -- server ----------------------------------------------------------------------------------


class HttpServer:
    """``/healthz``, ``/readyz`` and ``/metrics`` on a background thread.

    Parameters
    ----------
    host, port : str, int
        Where to listen; ``port=0`` picks a free port (see :attr:`port`).
    metrics : Metrics
    readiness : ReadinessProbe
    """

    def __init__(self, host: str, port: int, metrics: Metrics, readiness: ReadinessProbe) -> None:
        self.host = host
        self.metrics = metrics
        self.readiness = readiness
        handler = type("Handler", (_Handler,), {"endpoint": self})
        server_class = type(
            "Server", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET}
        )
        # Binds now, so a taken port is an error of the caller, not of a thread.
        self._server = server_class((host, port), handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.5}, name="ainode-http", daemon=True
        )
        self._thread.start()
        log.info("HTTP endpoint on http://%s:%d (/healthz, /readyz, /metrics)", self.host, self.port)

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
            self._thread = None
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    endpoint: HttpServer
    server_version = "ainode"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        path = self.path.split("?", 1)[0]
        try:
            if path == "/healthz":
                self._send(200, "text/plain; charset=utf-8", b"ok\n")
            elif path == "/readyz":
                checks = self.endpoint.readiness.checks()
                ready = all(v == "ok" for v in checks.values())
                body = {"status": "ready" if ready else "not ready", "checks": checks}
                self._send(200 if ready else 503, "application/json", json.dumps(body).encode() + b"\n")
            elif path == "/metrics":
                self._send(200, CONTENT_TYPE_METRICS, self.endpoint.metrics.exposition().encode())
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found: try /healthz, /readyz or /metrics\n")
        except Exception:  # never a traceback to the client; the log has it
            log.exception("HTTP %s failed", path)
            self._send(500, "text/plain; charset=utf-8", b"internal error (see the node's log)\n")

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the standard library's name)
        log.debug("%s %s", self.address_string(), format % args)
