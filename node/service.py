"""The running node: receiver, assembler, executor and dispatcher wired together.

Start-up order follows the durable hand-offs: recover what a previous process
left in flight (running jobs, deliveries being sent, half-written temporary
files), start the consumers, and only then open the DICOM port.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from core import status
from dimse.scp import AllowedPeer, AssociationEvent, StorageSCP, StoreRequest
from models import errors as model_errors
from models.backends.providers import set_onnx_providers
from models.registry import ModelRegistry
from node import dispatcher as dispatch
from node import executor as execution
from node import preflight, tls
from node.assembler import Assembler
from node.audit import ReceiveAudit
from node.db import Database
from node.errors import ModelUnavailable
from node.http import HttpServer, ReadinessProbe
from node.idempotency import analysis_keys
from node.metrics import Metrics, StoreGauges
from node.pipelines import PIPELINE_MODELS, pipeline_models
from node.pipelines.registry import build_pipeline
from node.priority import PriorityPolicy
from node.pull import Puller, ReceiverIntake, load_puller
from node.receiver import Receiver
from node.retention import RetentionLoop
from node.router import check_references, load_routing, routing_tags
from node.settings import Settings, TlsSettings
from node.spool import Outbox, Spool
from node.storage import open_outbox, open_spool
from node.watcher import OrthancWatcher
from node.web.admin import AdminSite
from node.web.auth import Authenticator
from node.web.pages import AdminPages
from node.web.stow import StowIntake

if TYPE_CHECKING:
    from node.distributed import CeleryExecutor

log = logging.getLogger("ainode.service")

#: How long an A-RELEASE waits for the rows of what its association stored (seconds).
RELEASE_WAIT = 5.0


@dataclass
class ModelPlan:
    """Which pipelines can run, and why the others cannot."""

    registry: ModelRegistry
    enabled: set[str] = field(default_factory=set)
    disabled: dict[str, str] = field(default_factory=dict)


def plan_models(settings: Settings) -> ModelPlan:
    """Verify every model's weights; a changed file stops the node, an absent one disables its pipeline.

    Raises
    ------
    ModelUnavailable
        A weights file whose checksum differs from its manifest, or an invalid manifest.
    """
    try:
        registry = ModelRegistry.discover(settings.models_dir, settings.models_file)
    except model_errors.ModelError as exc:
        raise ModelUnavailable(str(exc)) from exc
    states = {s.name: s for s in registry.verify()}
    broken = [s for s in states.values() if s.state in ("mismatch", "invalid")]
    if broken:
        raise ModelUnavailable(
            "model weights do not match their manifests:\n" + "\n".join(f"  - {s.message}" for s in broken)
        )
    plan = ModelPlan(registry=registry)
    for pipeline, needed in PIPELINE_MODELS.items():
        missing = [
            states[n].message if n in states else f"no manifest for model {n!r}"
            for n in needed
            if n not in states or states[n].state != "ok"
        ]
        if missing:
            plan.disabled[pipeline] = f"pipeline {pipeline!r} disabled: " + "; ".join(missing)
        else:
            plan.enabled.add(pipeline)
    return plan


def allowed_peers(settings: Settings) -> list[AllowedPeer]:
    """The configured peers, plus the node's own AE title from loopback (``ainode echo`` on this host)."""
    peers = [AllowedPeer(p.ae_title, p.host) for p in settings.allowed_peers]
    peers += [AllowedPeer(settings.ae_title, "127.0.0.1"), AllowedPeer(settings.ae_title, "::1")]
    return peers


def prepare_data_dir(settings: Settings) -> None:
    """Create the data directory readable by its owner only; see :func:`node.preflight.prepare_data_dir`."""
    preflight.prepare_data_dir(settings)


class Node:
    """One node process. ``start()`` returns once the DICOM port is open."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        prepare_data_dir(settings)
        self.db: Database = preflight.open_database(settings, create=True)
        self.metrics = Metrics()
        self.metrics.add_collector(StoreGauges(self.db, settings.data_dir))
        self.received = ReceiveAudit(self.db)
        self.spool: Spool = open_spool(settings)
        self.outbox: Outbox = open_outbox(settings)
        self.routing = load_routing(settings.routing_file)
        check_references(self.routing, pipelines=PIPELINE_MODELS, destinations=settings.destinations)
        self.models = plan_models(settings)
        for reason in self.models.disabled.values():
            log.warning("%s", reason)
        self.executor: execution.LocalExecutor | CeleryExecutor
        if settings.executor == "celery":  # analysis by `ainode worker` processes; this one publishes the jobs
            from node.distributed import CeleryExecutor

            self.executor = CeleryExecutor(settings, self.db)
        else:
            # The local pool's sessions (built by its workers) run on the providers of `device`.
            set_onnx_providers(settings.providers_for())
            self.executor = execution.LocalExecutor(
                self.db,
                self.outbox,
                {name: partial(build_pipeline, name, settings, self.models.registry) for name in self.models.enabled},
                workers=settings.workers,
                promote_after=settings.priorities.promote_after,
            )
        self.dispatcher = dispatch.Dispatcher(settings, self.db, dispatch.build_senders(settings))
        self.executor.on_job_done = self.dispatcher.notify
        self.executor.metrics = self.dispatcher.metrics = self.metrics
        self.retention = RetentionLoop(settings, self.db, self.metrics)
        self.assembler = Assembler(
            self.db,
            self.routing,
            self.models.enabled,
            self.models.disabled,
            settings.default_destinations,
            on_queued=self.executor.notify,
            analysis_keys=analysis_keys(settings, self.models.registry, PIPELINE_MODELS),
            reanalyse_on_change=settings.reanalyse_on_change,
            on_resent=self._on_resent,
            priorities=PriorityPolicy.from_settings(settings.priorities),
        )
        self.receiver = Receiver(
            settings,
            self.db,
            self.spool,
            on_stored=self.assembler.notify,
            on_instance=self._on_instance,
            header_tags=routing_tags(self.routing),
        )
        self.assembler.unrecorded = self.receiver.unrecorded_series  # rows follow acknowledgements in batches
        self.assembler.files = self.spool.files  # instances by ref: in place (posix) or fetched (object storage)
        # Pulled instances (C-GET, WADO-RS) take the receiver's path too; C-MOVE ones arrive through the SCP.
        self.puller: Puller = load_puller(settings, self.db, ReceiverIntake(self.receiver, self.receiver.flush))
        watch = settings.orthanc_watch
        self.watcher = (
            OrthancWatcher(watch, self.puller, settings.data_dir) if watch is not None and watch.enabled else None
        )
        # A plain port, a TLS port (PS3.15 B.1; 2762 by custom), or both, sharing one receiver.
        scp = partial(
            StorageSCP,
            ae_title=settings.ae_title,
            host=settings.host,
            sink=self.receiver,
            allowed_peers=allowed_peers(settings),
            max_pdu=settings.max_pdu,
            max_associations=settings.max_associations,
            on_association=self._on_association,
            incoming_dir=self.spool.tmp_dir,  # the spool's file system: a received file is kept by a rename
            **settings.dicom_limits.model_dump(),
        )
        self.tls_scp: StorageSCP | None = None
        if settings.tls.enabled:
            self.tls_scp = scp(port=settings.tls.port, ssl_context=tls.server_context(settings.tls))
        self.plain_scp = scp(port=settings.port) if settings.port is not None else None
        self.scps = [s for s in (self.plain_scp, self.tls_scp) if s is not None]
        self.scp: StorageSCP = self.scps[0]  # the plain one when there is one
        self._stopped = threading.Event()
        self._started = threading.Event()  # recovery done, ports open: STOW-RS may store

    @property
    def port(self) -> int:
        return self.scp.port

    @property
    def tls_port(self) -> int | None:
        """The bound TLS port, or ``None`` without TLS."""
        return self.tls_scp.port if self.tls_scp is not None else None

    def _on_instance(self, request: StoreRequest, study_uid: str | None, code: int) -> None:
        self.metrics.instance(code)
        if code == status.OUT_OF_RESOURCES and self.settings.retention.enabled:  # purge now, not at the next pass
            self.retention.notify()
        self.received.instance(request, study_uid, stored=status.is_store_success(code))

    def _on_resent(self, pipeline: str, instances: int) -> None:
        self.metrics.series_resent.labels(pipeline=pipeline).inc()
        self.metrics.instances_resent.inc(instances)

    def _on_association(self, event: AssociationEvent) -> None:
        if event.kind == "released":
            # Reported before the release is answered: a sender that has released its association finds
            # what it stored recorded (status, metrics, audit), though each C-STORE was answered before
            # its row. Bounded: with the database down, the rows keep waiting and the release goes on.
            self.receiver.flush(RELEASE_WAIT)
        self.metrics.association(event)
        self.received.association(event)

    def http_server(self) -> HttpServer:
        """The HTTP server (not started) on ``http_host:http_port``: health, readiness, metrics, STOW-RS, pull.

        Raises
        ------
        ConfigError
            When the address cannot be bound (e.g. the port is taken), a token's variable or file
            cannot be read, or the ``http_tls`` certificate or key is unusable: one line with the fix.
        """
        tls_scp = self.tls_scp
        tls_port = (lambda: tls_scp.port, tls.probe_context(self.settings.tls)) if tls_scp is not None else None
        probe = ReadinessProbe(
            self.settings.host,
            lambda: [self.plain_scp.port] if self.plain_scp else [],
            self.db,
            self.settings.tmp_dir,
            tls_port=tls_port,
            pipelines=self.pipelines_check,
        )
        settings = self.settings
        auth = Authenticator(
            [(t.name, t.secret()) for t in settings.http_tokens], {u.name: u.password_hash for u in settings.http_users}
        )
        if settings.http_tls is not None:  # the same TLS policy as the DICOM TLS port (BCP 195)
            ssl_context = tls.server_context(
                TlsSettings(
                    enabled=True, certificate=settings.http_tls.certificate, private_key=settings.http_tls.private_key
                ),
                key_prefix="http_tls.",
            )
        else:
            ssl_context = None
        stow = StowIntake(
            self.receiver,
            settings.tmp_dir,
            settings.stow_max_request_size,
            on_refused=self.metrics.instance,
            association=self.received.association,
        )
        try:
            return HttpServer(
                settings.http_host,
                settings.http_port,
                self.metrics,
                probe,
                auth=auth,
                db=self.db,
                stow=stow,
                accepting=self._started.is_set,
                puller=self.puller,
                ssl_context=ssl_context,
                metrics_auth=settings.http_metrics_auth,
                admin=self.admin_site(auth, secure=ssl_context is not None),
            )
        except OSError as exc:  # a node nobody can watch is not started: the port is fixed or HTTP switched off
            raise preflight.listen_error(
                "HTTP", self.settings.http_host, self.settings.http_port, exc, "http_port"
            ) from exc

    def admin_site(self, auth: Authenticator, *, secure: bool) -> AdminSite:
        """The admin pages of the HTTP server (sessions of ``http_users``, DEMO banner of the loaded models)."""
        settings = self.settings
        loaded = {name for pipeline in self.models.enabled for name in pipeline_models(settings, pipeline)}
        demo = sorted(m.name for m in self.models.registry.manifests() if m.demo and m.name in loaded)
        from node.viewer import base_url

        # ainode viewer serves HTTPS with the node's http_tls certificate: its links then say https.
        viewer = base_url(settings.viewer, "https" if settings.http_tls is not None else "http")
        site = AdminSite(
            auth,
            {u.name: u.password_hash for u in settings.http_users},
            settings.data_dir,
            db=self.db,
            session_hours=settings.web.session_hours,
            secure=secure,
            demo_models=demo,
            viewer_url=viewer,
        )
        # A job in full, deliveries with the retry of dead letters (the dispatcher woken), models, audit.
        site.extra_routes += AdminPages(
            site, self.db, policy=settings.delivery, registry=self.models.registry, wake=self.dispatcher.notify
        ).routes()
        return site

    def pipelines_check(self) -> str:
        """``"ok"`` when some pipeline is loaded, else ``"no pipeline loaded: ..."`` with each reason (``/readyz``)."""
        if self.models.enabled:
            return "ok"
        return "no pipeline loaded: " + ("; ".join(self.models.disabled.values()) or "none is configured")

    def start(self) -> None:
        removed = self.spool.clean_tmp()
        instances = self.receiver.recover_spool()
        # With Celery, workers elsewhere may hold running jobs: the sweeper requeues those whose lease ran out.
        jobs = execution.recover(self.db, self.settings.job_max_restarts) if self.settings.executor == "local" else 0
        deliveries = dispatch.recover(self.db)
        if removed or instances or jobs or deliveries:
            log.info(
                "recovered after restart: %d jobs requeued, %d deliveries resumed, %d partial files removed, "
                "%d spool files recorded again",
                jobs,
                deliveries,
                removed,
                instances,
            )
        self.receiver.start()  # from now on rows are committed in batches, off the acknowledgement path
        self.executor.start()
        self.dispatcher.start()
        self.assembler.start()
        if self.settings.retention.enabled:
            self.retention.start()
        for scp in self.scps:
            try:
                scp.start()
            except OSError as exc:  # port in use, privileged, not our address: one line, not a traceback
                tls_port = scp is self.tls_scp
                raise preflight.listen_error(
                    "DICOM TLS" if tls_port else "DICOM",
                    self.settings.host,
                    self.settings.tls.port if tls_port else (self.settings.port or 0),
                    exc,
                    "tls.port" if tls_port else "port",
                ) from exc
        warning = preflight.exposure_warning(self.settings, self.plain_scp.port if self.plain_scp else None)
        if warning:
            log.warning("%s", warning)
        self._started.set()
        if self.watcher is not None:  # after the ports: a C-MOVE it asks for comes back to the SCP
            self.watcher.start()
        ports = [f"{s.port}{' (TLS)' if s is self.tls_scp else ''}" for s in self.scps]
        log.info(
            "ainode %s listening on %s:%s (pipelines: %s)",
            self.settings.ae_title,
            self.settings.host,
            ", ".join(ports),
            ", ".join(sorted(self.models.enabled)) or "none",
        )

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self.watcher is not None:
            self.watcher.stop()
        for scp in self.scps:
            scp.stop()
        self.receiver.stop()  # the rows of what was acknowledged (or, database down, left to recover_spool)
        self.received.flush()
        self.assembler.stop()
        self.executor.stop()
        self.dispatcher.stop()
        self.retention.stop()
        self.db.dispose()
        log.info("ainode stopped")
