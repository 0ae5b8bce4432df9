"""The node's Prometheus metrics, kept and written by ``prometheus-client``.

Each :class:`Metrics` has a registry of its own (never the library's global
default one): tests, and a process that runs several nodes, keep their counts
apart. Counters and histograms count what the node does as it goes (the
library's instruments are thread-safe and take no database work per
instance); the gauges of :class:`StoreGauges` are read from the database and
the file system at each scrape. ``/metrics`` (:mod:`node.http`) writes the
registry in the format the scraper asks for (``Accept``): the Prometheus text
format 0.0.4 by default, OpenMetrics when asked.

The metric names, types and labels are listed in the README ("Monitoring"),
and ``tests/node/test_metrics.py`` checks the exposition against that list.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from core import status as dimse_status

if TYPE_CHECKING:
    from dimse.scp import AssociationEvent
    from node.db import Database

__all__ = ["ANALYSIS_BUCKETS", "DELIVERY_BUCKETS", "Metrics", "StoreGauges", "database_gauges"]

log = logging.getLogger("ainode.metrics")

# No ``<name>_created`` series next to each counter and histogram: the node's exposition stays what it was
# before the library wrote it, and a restart shows as the counters' reset and ainode_start_time_seconds.
disable_created_metrics()

#: Seconds; a radiograph takes well under a second, a CT series minutes.
ANALYSIS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
#: Seconds; includes back-off while a destination is down.
DELIVERY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

_JOBS_HELP = "Jobs in the database by state and pipeline."
_DEAD_HELP = "Deliveries given up after the retry limit (ainode deliveries --failed)."
_PENDING_HELP = "Deliveries waiting to be sent or retried."
_SPOOL_INSTANCES_HELP = "Received instances kept in the spool."
_SPOOL_BYTES_HELP = "Bytes of received instances kept in the spool."
_FREE_HELP = "Free bytes on the data directory's file system."
_UP_HELP = "1 when the database answered this scrape."


class Metrics:
    """The node's instruments on a registry of their own, plus the collectors read at scrape time.

    Counters are named without ``_total``: the library appends it
    (``instances_received`` is exposed as ``ainode_instances_received_total``).
    Labelled instruments are used through ``labels(...)``, e.g.
    ``metrics.deliveries.labels(destination="pacs", outcome="delivered").inc()``.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.instances_received = Counter(
            "ainode_instances_received",
            "C-STORE requests answered with success (instance durable).",
            registry=registry,
        )
        self.instances_rejected = Counter(
            "ainode_instances_rejected",
            "C-STORE requests answered with a failure status.",
            ("status", "reason"),
            registry=registry,
        )
        self.associations = Counter(
            "ainode_associations", "Incoming associations by outcome.", ("outcome",), registry=registry
        )
        for outcome in ("accepted", "rejected", "released", "aborted"):
            self.associations.labels(outcome=outcome)  # shown as 0 before the first one
        self.analysis_seconds = Histogram(
            "ainode_analysis_seconds",
            "Seconds a worker spent on one job (load, infer, write results).",
            ("pipeline",),
            buckets=ANALYSIS_BUCKETS,
            registry=registry,
        )
        self.deliveries = Counter(
            "ainode_deliveries",
            "Delivery attempts of result objects by outcome.",
            ("destination", "outcome"),
            registry=registry,
        )
        self.delivery_seconds = Histogram(
            "ainode_delivery_seconds",
            "Seconds from a result being queued to its delivery being confirmed.",
            ("destination",),
            buckets=DELIVERY_BUCKETS,
            registry=registry,
        )
        self.series_resent = Counter(
            "ainode_series_resent",
            "Series that arrived again unchanged and were not analysed again.",
            ("pipeline",),
            registry=registry,
        )
        self.instances_resent = Counter(
            "ainode_instances_resent",
            "Instances of series re-sent unchanged that were not analysed again.",
            registry=registry,
        )
        self.purged_files = Counter(
            "ainode_purged_files",
            "Spool and outbox files removed by retention, by rule (age, watermark).",
            ("reason",),
            registry=registry,
        )
        self.purged_bytes = Counter(
            "ainode_purged_bytes",
            "Bytes of spool and outbox files removed by retention, by rule.",
            ("reason",),
            registry=registry,
        )
        for reason in ("age", "watermark"):
            self.purged_files.labels(reason=reason)
            self.purged_bytes.labels(reason=reason)
        self.started = time.time()
        Gauge("ainode_start_time_seconds", "Start of the node process, Unix time.", registry=registry).set(self.started)

    def instance(self, code: int) -> None:
        """Count one C-STORE answered with DIMSE status ``code`` (PS3.4 B.2.3)."""
        if dimse_status.is_store_success(code):
            self.instances_received.inc()
        else:
            self.instances_rejected.labels(status=f"0x{code:04X}", reason=dimse_status.describe(code)).inc()

    def association(self, event: AssociationEvent) -> None:
        """Count one association event (``accepted``, ``rejected``, ``released``, ``aborted``)."""
        self.associations.labels(outcome=event.kind).inc()

    def add_collector(self, collector: StoreGauges) -> None:
        """Read ``collector``'s gauges at each scrape, after the instruments."""
        self.registry.register(collector)

    def value(self, name: str, **labels: str) -> float:
        """The current value of one sample (``0`` when it has none yet), as a scrape would show it."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The registry written in the format ``accept`` (an HTTP ``Accept`` header) asks for, and its media type.

        Without one, the Prometheus text format 0.0.4.
        """
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


def _gauge(name: str, help: str, value: float | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help, value=value)


class StoreGauges:
    """A ``prometheus_client`` collector of the gauges read at scrape time (see :func:`database_gauges`).

    A failure other than the database's or the disk's own (which :func:`database_gauges` reports as
    ``ainode_database_up 0`` or leaves the free space out) is logged and answered with the database
    gauge at 0: the counters are still served.
    """

    def __init__(self, db: Database, data_dir: Path) -> None:
        self.db = db
        self.data_dir = data_dir

    def describe(self) -> Iterable[Metric]:
        """The families this collector writes (the registry refuses a second collector of the same names)."""
        return [
            _gauge("ainode_data_dir_free_bytes", _FREE_HELP),
            GaugeMetricFamily("ainode_jobs", _JOBS_HELP, labels=("state", "pipeline")),
            _gauge("ainode_dead_letters", _DEAD_HELP),
            _gauge("ainode_deliveries_pending", _PENDING_HELP),
            _gauge("ainode_spool_instances", _SPOOL_INSTANCES_HELP),
            _gauge("ainode_spool_bytes", _SPOOL_BYTES_HELP),
            _gauge("ainode_database_up", _UP_HELP),
        ]

    def collect(self) -> Iterator[Metric]:
        try:
            families = database_gauges(self.db, self.data_dir)
        except Exception:  # a bug here must not cost the scrape its counters
            log.exception("metrics: the database and disk gauges could not be read")
            families = [_gauge("ainode_database_up", _UP_HELP, 0)]
        yield from families


def database_gauges(db: Database, data_dir: Path) -> list[Metric]:
    """Gauges read at scrape time: jobs, dead letters, spool, free disk (a few aggregate queries)."""
    from node.db import Delivery, DeliveryState, Instance, Job

    families: list[Metric] = []
    try:
        families.append(_gauge("ainode_data_dir_free_bytes", _FREE_HELP, shutil.disk_usage(data_dir).free))
    except OSError as exc:
        log.warning("cannot read free space of %s: %s", data_dir, exc)
    jobs = GaugeMetricFamily("ainode_jobs", _JOBS_HELP, labels=("state", "pipeline"))
    try:
        with db.session() as session:
            for state, pipeline, count in session.execute(
                select(Job.state, Job.pipeline, func.count()).group_by(Job.state, Job.pipeline)
            ).all():
                jobs.add_metric([state.value, pipeline], count)
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
        return families + [_gauge("ainode_database_up", _UP_HELP, 0)]
    return families + [
        jobs,
        _gauge("ainode_dead_letters", _DEAD_HELP, deliveries.get(DeliveryState.DEAD, 0)),
        _gauge("ainode_deliveries_pending", _PENDING_HELP, deliveries.get(DeliveryState.PENDING, 0)),
        _gauge("ainode_spool_instances", _SPOOL_INSTANCES_HELP, instances),
        _gauge("ainode_spool_bytes", _SPOOL_BYTES_HELP, size),
        _gauge("ainode_database_up", _UP_HELP, 1),
    ]
