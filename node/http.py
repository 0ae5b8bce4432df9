"""The node's HTTP server: liveness, readiness, Prometheus metrics, STOW-RS intake, pull.

Served by ``ainode serve`` in a background thread, on ``http_host:http_port``
(127.0.0.1:8080 by default: localhost only), with Starlette served by uvicorn;
HTTPS when ``http_tls`` names a certificate and its key. ``/healthz`` and
``/readyz`` need no login; every other route, ``/metrics`` included, needs an
API token or a user (:mod:`node.web.auth`; Prometheus sends a bearer token),
unless ``http_metrics_auth: false`` opens ``/metrics`` (only for a port on
loopback, where any local account could read it); refusals and actions are audited
(``ainode audit --kind http_refused --kind http_request``). No traceback
reaches a client: a failing handler answers ``500`` with a one-line JSON error
and the log has the traceback.

``GET /healthz``
    ``200 ok`` while the process runs (liveness).
``GET /readyz``
    ``200`` when the DICOM port accepts connections, the database answers,
    the data directory is writable and some pipeline is loaded; otherwise
    ``503``. The body is JSON:
    ``{"status": "ready"|"not ready", "checks": {"dicom": "ok", ...}}``, a
    failing check holding its reason.
``GET /metrics``
    Prometheus text exposition format 0.0.4, or OpenMetrics when the ``Accept`` header asks for it.
``POST /dicomweb/studies``, ``POST /dicomweb/studies/{study}``
    STOW-RS intake (:mod:`node.web.stow`).
``POST /api/pull``
    Pull a study or series from a configured source (:mod:`node.web.pull`).
``/``, ``/login``, ``/jobs``, ``/deliveries``, ``/models``, ``/audit``, ``/api/...``
    The admin pages and their JSON API (:mod:`node.web.admin`, :mod:`node.web.pages`): a login
    session of the ``http_users`` (CSRF-checked actions) or a token or user per request.

The metrics (:mod:`node.metrics`, written by ``prometheus-client``) are listed
in the README ("Monitoring"); a test checks the exposition against that list.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import socket
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from node import audit
from node.db import AuditKind
from node.errors import NodeError
from node.metrics import Metrics
from node.pull import NothingFound, PullArgumentError, UnknownSource
from node.serving import UvicornThread
from node.web.admin import COOKIE as SESSION_COOKIE
from node.web.admin import AdminGuard, AdminSite
from node.web.auth import CHALLENGE, Authenticator
from node.web.pull import MAX_BODY, Puller, PullRequestError, parse_pull_request, result_json
from node.web.stow import DICOM_JSON, StowError, StowIntake, drain

if TYPE_CHECKING:
    from node.db import Database

__all__ = ["HttpServer", "ReadinessProbe"]

log = logging.getLogger("ainode.http")


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


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


Endpoint = Callable[[Request], Awaitable[Response]]


def _guarded(handler: Endpoint) -> Endpoint:
    """``handler``, answering ``500`` with a one-line JSON error (traceback in the log) when it raises."""

    @functools.wraps(handler)
    async def guarded(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception:  # never a traceback to the client; the log has it
            log.exception("HTTP %s %s failed", request.method, request.url.path)
            return _error(500, "internal error (see the node's log)")

    return guarded


def _peer(request: Request) -> tuple[str, int]:
    return (request.client.host, request.client.port) if request.client else ("", 0)


def _pull_status(exc: NodeError) -> int:
    """The HTTP status of a failed pull: the caller's mistake (400, 404) or the source's (502)."""
    if isinstance(exc, PullArgumentError):
        return 400
    if isinstance(exc, (UnknownSource, NothingFound)):
        return 404
    return 502  # SourceUnavailable, a source's unreadable secret, a refused retrieval


_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


class HttpServer:
    """The node's HTTP server: Starlette served by uvicorn on a background thread.

    Parameters
    ----------
    host, port : str, int
        Where to listen; ``port=0`` picks a free port (see :attr:`port`). Bound at
        construction, so a taken port is an ``OSError`` of the caller, not of a thread.
    metrics : Metrics
    readiness : ReadinessProbe
    auth : Authenticator, optional
        Who may call the authenticated routes; without it (or with nobody configured) every
        such call is refused.
    db : Database, optional
        Where refused and accepted actions are audited.
    stow : StowIntake, optional
        STOW-RS intake (``POST /dicomweb/studies``); ``None``: the route answers 503.
    accepting : callable, optional
        False until the node has started (recovery done): STOW-RS answers 503 until then.
    puller : Puller, optional
        ``POST /api/pull``: the node's :class:`node.pull.Puller`; ``None``: the route answers 404.
    ssl_context : ssl.SSLContext, optional
        Serve HTTPS (``http_tls``).
    metrics_auth : bool
        ``/metrics`` needs credentials like the other routes (``http_metrics_auth``, default true);
        false opens it.
    admin : AdminSite, optional
        The admin pages (:mod:`node.web.admin`): their routes, and the guard that asks for a login
        session or credentials on every route but ``/healthz``, ``/readyz`` and ``/login``.
    """

    def __init__(
        self,
        host: str,
        port: int,
        metrics: Metrics,
        readiness: ReadinessProbe,
        *,
        auth: Authenticator | None = None,
        db: Database | None = None,
        stow: StowIntake | None = None,
        accepting: Callable[[], bool] = lambda: True,
        puller: Puller | None = None,
        ssl_context: ssl.SSLContext | None = None,
        metrics_auth: bool = True,
        admin: AdminSite | None = None,
    ) -> None:
        self.host = host
        self.metrics = metrics
        self.readiness = readiness
        self.auth = auth or Authenticator([], {})
        self.db = db
        self.stow = stow
        self.accepting = accepting
        self.puller = puller
        self.ssl_context = ssl_context
        self.metrics_auth = metrics_auth
        self.admin = admin
        self.app = self._app()
        self._serving = UvicornThread(self.app, host, port, ssl_context=ssl_context, name="ainode-http")

    @property
    def port(self) -> int:
        return self._serving.port

    @property
    def scheme(self) -> str:
        return self._serving.scheme

    def start(self) -> None:
        """Serve on a background thread; returns once the server accepts requests."""
        try:
            self._serving.start()
        except OSError:
            raise OSError(f"the HTTP server did not start on {self.host}:{self.port} (see the log)") from None
        log.info(
            "HTTP endpoint on %s://%s:%d (/healthz, /readyz, /metrics, STOW-RS /dicomweb/studies, /api/pull%s)",
            self.scheme,
            self.host,
            self.port,
            ", admin pages /jobs" if self.admin is not None else "",
        )

    def stop(self) -> None:
        self._serving.stop()

    # -- routes ---------------------------------------------------------------------------------

    def _app(self) -> Starlette:
        routes: list[BaseRoute] = [
            Route("/healthz", _guarded(self._healthz), methods=["GET"]),
            Route("/readyz", _guarded(self._readyz), methods=["GET"]),
            Route("/metrics", _guarded(self._metrics), methods=["GET"]),
            Route("/dicomweb/studies", _guarded(self._stow), methods=["POST"]),
            Route("/dicomweb/studies/{study}", _guarded(self._stow), methods=["POST"]),
            Route("/api/pull", _guarded(self._pull), methods=["POST"]),
        ]
        middleware: list[Middleware] = []
        if self.admin is not None:  # the admin pages, and a session or credentials for all but the open routes
            routes += self.admin.routes(_guarded)
            # These routes authenticate their callers themselves (a token or user, audited refusals).
            passthrough = ["/metrics", "/dicomweb/studies", "/api/pull"]
            middleware.append(Middleware(AdminGuard, site=self.admin, passthrough=passthrough, routes=routes))
        pages = "/jobs, /deliveries, /models, /audit (log in at /login), " if self.admin is not None else ""

        async def not_found(request: Request, exc: Exception) -> Response:
            if getattr(exc, "status_code", 404) == 405:
                return PlainTextResponse("method not allowed\n", status_code=405)
            return PlainTextResponse(f"not found: try {pages}/healthz, /readyz or /metrics\n", status_code=404)

        return Starlette(routes=routes, middleware=middleware, exception_handlers={404: not_found, 405: not_found})

    async def _healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def _readyz(self, request: Request) -> Response:
        checks = await run_in_threadpool(self.readiness.checks)
        ready = all(v == "ok" for v in checks.values())
        body = json.dumps({"status": "ready" if ready else "not ready", "checks": checks}).encode() + b"\n"
        return Response(body, status_code=200 if ready else 503, media_type="application/json")

    async def _metrics(self, request: Request) -> Response:
        if self.metrics_auth and not self._logged_in(request):
            refused = await self._authenticate(request, "GET /metrics")
            if isinstance(refused, Response):
                return refused
        # In the thread pool: the gauges are read from the database and the disk.
        body, content_type = await run_in_threadpool(self.metrics.exposition, request.headers.get("accept"))
        return Response(body, headers={"Content-Type": content_type})

    def _logged_in(self, request: Request) -> bool:
        """A browser logged in to the admin pages: a valid session cookie and no credentials of its own."""
        return (
            self.admin is not None
            and "authorization" not in request.headers
            and self.admin.read_session(request.cookies.get(SESSION_COOKIE)) is not None
        )

    async def _authenticate(self, request: Request, action: str) -> str | Response:
        """The caller's name, or the 401 to answer (the refusal audited)."""
        outcome = await run_in_threadpool(self.auth.check, request.headers.get("authorization"))
        if outcome.name is not None:
            return outcome.name
        refusal = outcome.refusal or "refused"
        if not self.auth.configured:
            refusal += "; no http_tokens or http_users are configured"
        host = _peer(request)[0]
        log.warning("HTTP %s from %s refused: %s", action, host, refusal)
        await run_in_threadpool(self._audit, AuditKind.HTTP_REFUSED, outcome.claimed, host, f"401 {action}: {refusal}")
        return _error(401, f"authentication required: {refusal}", {"WWW-Authenticate": CHALLENGE})

    def _audit(self, kind: AuditKind, caller: str | None, host: str, message: str, **fields: Any) -> None:
        if self.db is not None:
            audit.record(self.db, kind, calling_ae=caller, peer_address=host, message=message[:1000], **fields)

    async def _stow(self, request: Request) -> Response:
        study = request.path_params.get("study")
        action = f"STOW-RS POST {request.url.path}"[:120]
        caller = await self._authenticate(request, action)
        if isinstance(caller, Response):
            await drain(request.stream())
            return caller
        host, port = _peer(request)
        if self.stow is None or not self.accepting():
            await drain(request.stream())
            return _error(503, "the node is starting: try again in a few seconds", {"Retry-After": "5"})
        if study is not None and (len(study) > 64 or not _UID.match(study)):
            await drain(request.stream())
            return _error(400, f"study {study[:70]!r} in the URL is not a UID")
        try:
            parts = await self.stow.receive(
                request.headers.get("content-type"), request.headers.get("content-length"), request.stream()
            )
        except StowError as exc:
            log.warning("%s from %s (%s) refused: %s", action, caller, host, exc.message)
            await run_in_threadpool(
                self._audit, AuditKind.HTTP_REQUEST, caller, host, f"{exc.status} {action}: {exc.message}",
                study_uid=study, instance_count=0,
            )  # fmt: skip
            return _error(exc.status, exc.message)
        except ClientDisconnect:
            log.warning("%s from %s (%s): the client went away before the end of its request", action, caller, host)
            return Response(status_code=400)  # nobody reads it
        result = await run_in_threadpool(self.stow.store, parts, study, caller, (host, port))
        summary = f"{result.stored} stored, {result.failed} failed" + (
            f" ({'; '.join(result.reasons)})" if result.reasons else ""
        )
        log.info("%s from %s (%s): %d %s", action, caller, host, result.status, summary)
        await run_in_threadpool(
            self._audit, AuditKind.HTTP_REQUEST, caller, host, f"{result.status} {action}: {summary}",
            study_uid=study, instance_count=result.stored,
        )  # fmt: skip
        return JSONResponse(result.body, status_code=result.status, media_type=DICOM_JSON)

    async def _pull(self, request: Request) -> Response:
        action = "POST /api/pull"
        caller = await self._authenticate(request, action)
        if isinstance(caller, Response):
            await drain(request.stream())
            return caller
        host = _peer(request)[0]
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return _error(413, f"a pull request is a small JSON object (at most {MAX_BODY} bytes)")
        try:
            args = parse_pull_request(body)
            if self.puller is None:
                raise PullRequestError(404, "pulling is not available: no source is configured")
        except PullRequestError as exc:
            await run_in_threadpool(self._audit, AuditKind.HTTP_REFUSED, caller, host, f"{exc.status} {action}: {exc}")
            return _error(exc.status, exc.message)
        what = f"{'study ' + args.study_uid if args.study_uid else 'accession'}" + (
            f" series {args.series_uid}" if args.series_uid else ""
        )
        puller = self.puller
        try:
            result = await run_in_threadpool(
                functools.partial(
                    puller.pull,
                    args.source,
                    accession=args.accession,
                    study_uid=args.study_uid,
                    series_uid=args.series_uid,
                )
            )
        except NodeError as exc:  # node.pull.PullError (or a source's unreadable secret: ConfigError)
            message, code = _one_line(exc), _pull_status(exc)
            log.warning(
                "%s from %s (%s): pull of %s from %s failed: %s", action, caller, host, what, args.source, message
            )
            await run_in_threadpool(
                self._audit, AuditKind.HTTP_REQUEST, caller, host, f"{code} {action} {args.source} {what}: {message}",
                study_uid=args.study_uid,
            )  # fmt: skip
            return _error(code, message)
        answer = result_json(result)
        await run_in_threadpool(
            self._audit, AuditKind.HTTP_REQUEST, caller, host,
            f"200 {action} {args.source} {what}: {answer.get('message', '')}",
            study_uid=args.study_uid, instance_count=answer.get("instances_received"),
        )  # fmt: skip
        return JSONResponse(answer)
