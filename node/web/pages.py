"""The admin pages beyond the jobs list: a job in full, deliveries and dead letters, models, the audit log.

Each page has a JSON twin under ``/api`` with the same data (:mod:`node.web.queries`, which the
``ainode`` commands read too). The guard of :mod:`node.web.admin` has checked the caller (a login
session, a bearer token or a Basic user) and, for a ``POST`` with a session cookie, its CSRF token
before a handler here runs.

``GET /jobs/{id}``, ``GET /api/jobs/{id}``
    The job's state, pipeline, priority and why, tries, times, summary or error, the models that
    ran (DEMO marked), its result objects with their deliveries, and its history (the audit rows of
    the job and who sent its study). The page links to the study in the viewer
    (``viewer.url`` + ``/viewer?StudyInstanceUIDs=<study>``, OHIF v3's study URL).
``GET /deliveries``, ``GET /api/deliveries``
    Newest first, filtered by ``state`` (``pending``, ``sending``, ``done``, ``dead``,
    ``committing``; repeatable), ``destination`` and ``limit``. Each dead letter has a Retry button.
``POST /deliveries/{id}/retry`` (the page's form), ``POST /api/deliveries/{id}/retry``
    Queue a dead letter again (:func:`node.web.queries.retry_delivery`: tries counted from zero,
    a ``retried`` audit row naming the caller and address, the dispatcher woken). A delivery that
    is not a dead letter is ``409``, an unknown one ``404``; both leave an ``http_refused`` row.
``GET /models``, ``GET /api/models``
    ``ainode models``' list: version, task, backend, DEMO, licence, whether the weights match their
    SHA-256.
``GET /audit``, ``GET /api/audit``
    The audit log, newest first, filtered by ``kind`` (repeatable), ``since`` and ``until`` (ISO
    times, UTC unless they carry an offset), ``caller`` (AE title or HTTP user), ``peer`` (address),
    ``study`` (UID) and ``limit``; ``before`` (an event id) gives the next, older page.

Bad parameters are a ``400`` saying what is expected; no handler lets a traceback reach the caller.
"""

from __future__ import annotations

import functools
import logging
import threading
import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from node.db import AuditKind
from node.web import queries
from node.web.admin import AdminSite, caller, wants_json

if TYPE_CHECKING:
    from models.registry import ModelRegistry
    from node.db import Database
    from node.settings import DeliverySettings

__all__ = ["AdminPages", "viewer_link"]

log = logging.getLogger("ainode.web")

Endpoint = Callable[[Request], Awaitable[Response]]
#: The rows a page shows unless ``limit`` says otherwise.
DEFAULT_LIMIT = 100


class BadRequest(ValueError):
    """A parameter the caller got wrong: ``400`` with this message."""


def viewer_link(viewer_url: str | None, study_uid: str) -> str | None:
    """OHIF v3's URL of a study: ``<viewer>/viewer?StudyInstanceUIDs=<uid>`` (``None`` without a viewer)."""
    if not viewer_url:
        return None
    return f"{viewer_url.rstrip('/')}/viewer?{urllib.parse.urlencode({'StudyInstanceUIDs': study_uid})}"


def _limit(request: Request) -> int:
    text = request.query_params.get("limit") or str(DEFAULT_LIMIT)
    if not text.isdigit() or not 1 <= int(text) <= queries.MAX_LIMIT:
        raise BadRequest(f"limit is a number of rows, 1 to {queries.MAX_LIMIT}")
    return int(text)


def _time(request: Request, name: str) -> datetime | None:
    text = (request.query_params.get(name) or "").strip()
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise BadRequest(f"{name} {text[:40]!r}: expected a time like 2026-11-22T10:00 (UTC)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _text(request: Request, name: str, limit: int = 64) -> str | None:
    value = (request.query_params.get(name) or "").strip()
    if len(value) > limit:
        raise BadRequest(f"{name} is at most {limit} characters")
    return value or None


def _peer(request: Request) -> str:
    return request.client.host if request.client else ""


async def _back_to_list(request: Request, delivery_id: int) -> str:
    """The deliveries list the Retry form was on (its filters kept: the form's ``back``), saying what was retried."""
    form = await request.form(max_files=0, max_fields=10)
    back = form.get("back")
    params: list[tuple[str, str]] = []
    if isinstance(back, str) and back.startswith("/deliveries?"):
        query = urllib.parse.parse_qsl(urllib.parse.urlsplit(back).query)
        params = [(k, v) for k, v in query if k in ("state", "destination", "limit")]
    return "/deliveries?" + urllib.parse.urlencode([*params, ("retried", str(delivery_id))])


class AdminPages:
    """The pages and API of this module, rendered by ``site`` (its templates, context and audit).

    Parameters
    ----------
    site : AdminSite
        The admin framework: rendering with the common context, the audit, the viewer's URL.
    db : Database
    policy : DeliverySettings, optional
        ``delivery:`` settings: when a failing delivery becomes a dead letter.
    registry : ModelRegistry, optional
        The node's models as it found them at start (its weights already hashed: hashed again only
        when a file's size or time changes); ``None``: no models.
    wake : callable, optional
        The dispatcher's ``notify`` when it runs in this process: a retried delivery goes at once.
    """

    def __init__(
        self,
        site: AdminSite,
        db: Database,
        *,
        policy: DeliverySettings | None = None,
        registry: ModelRegistry | None = None,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self.site = site
        self.db = db
        self.policy = policy
        self.registry = registry
        self.wake = wake
        self._registry_lock = threading.Lock()

    def routes(self) -> list[BaseRoute]:
        guard = self._guarded
        return [
            Route("/jobs/{job_id:int}", guard(self._job_page), methods=["GET"]),
            Route("/api/jobs/{job_id:int}", guard(self._job_api), methods=["GET"]),
            Route("/deliveries", guard(self._deliveries_page), methods=["GET"]),
            Route("/api/deliveries", guard(self._deliveries_api), methods=["GET"]),
            Route("/deliveries/{delivery_id:int}/retry", guard(self._retry), methods=["POST"]),
            Route("/api/deliveries/{delivery_id:int}/retry", guard(self._retry), methods=["POST"]),
            Route("/models", guard(self._models_page), methods=["GET"]),
            Route("/api/models", guard(self._models_api), methods=["GET"]),
            Route("/audit", guard(self._audit_page), methods=["GET"]),
            Route("/api/audit", guard(self._audit_api), methods=["GET"]),
        ]

    # -- responses ------------------------------------------------------------------------------

    def _error(self, request: Request, status: int, message: str) -> Response:
        if wants_json(request):
            return JSONResponse({"error": message}, status_code=status)
        return self.site.render(request, "error.html", {"status": status, "message": message}, status_code=status)

    def _guarded(self, handler: Endpoint) -> Endpoint:
        """``handler``, with a bad parameter answered ``400`` and anything unforeseen ``500`` (log only)."""

        @functools.wraps(handler)
        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except BadRequest as exc:
                return self._error(request, 400, str(exc))
            except Exception:  # never a traceback to the caller; the log has it
                log.exception("HTTP %s %s failed", request.method, request.url.path)
                return self._error(request, 500, "internal error (see the node's log)")

        return guarded

    # -- a job ----------------------------------------------------------------------------------

    async def _job(self, request: Request) -> dict[str, Any] | Response:
        job_id = int(request.path_params["job_id"])
        try:
            detail = await run_in_threadpool(queries.job_detail, self.db, job_id, self.policy)
        except queries.NotFound:
            return self._error(request, 404, f"no job {job_id}")
        data: dict[str, Any] = queries.to_json(detail)
        data["viewer_url"] = viewer_link(self.site.viewer_url, detail.job.study_uid)
        return data

    async def _job_page(self, request: Request) -> Response:
        data = await self._job(request)
        if isinstance(data, Response):
            return data
        return self.site.render(request, "job.html", {"detail": data})

    async def _job_api(self, request: Request) -> Response:
        data = await self._job(request)
        return data if isinstance(data, Response) else JSONResponse(data)

    # -- deliveries -----------------------------------------------------------------------------

    async def _deliveries(self, request: Request) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        states = [s for s in request.query_params.getlist("state") if s]
        destination = _text(request, "destination")
        limit = _limit(request)
        try:
            rows = await run_in_threadpool(
                functools.partial(
                    queries.list_deliveries,
                    self.db,
                    states=states,
                    destination=destination,
                    limit=limit,
                    policy=self.policy,
                )
            )
        except ValueError as exc:  # an unknown state
            raise BadRequest(str(exc)) from None
        filters = {"states": states, "destination": destination or "", "limit": limit}
        return filters, queries.to_json(rows)

    async def _deliveries_page(self, request: Request) -> Response:
        filters, rows = await self._deliveries(request)
        retried = request.query_params.get("retried")
        return self.site.render(
            request,
            "deliveries.html",
            {
                "deliveries": rows,
                "filters": filters,
                "all_states": queries.DELIVERY_STATES,
                "retried": int(retried) if retried and retried.isdigit() else None,
                "back": "/deliveries?"
                + urllib.parse.urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "retried"]),
            },
        )

    async def _deliveries_api(self, request: Request) -> Response:
        _, rows = await self._deliveries(request)
        return JSONResponse({"deliveries": rows})

    async def _retry(self, request: Request) -> Response:
        delivery_id = int(request.path_params["delivery_id"])
        who, host = caller(request), _peer(request)
        action = f"POST {request.url.path}"[:120]
        try:
            record = await run_in_threadpool(
                functools.partial(
                    queries.retry_delivery,
                    self.db,
                    delivery_id,
                    caller=who or None,
                    peer_address=host or None,
                    wake=self.wake,
                    policy=self.policy,
                )
            )
        except (queries.NotFound, queries.NotDead) as exc:
            status = 404 if isinstance(exc, queries.NotFound) else 409
            message = f"no delivery {delivery_id}" if status == 404 else str(exc)
            log.warning("HTTP %s by %s (%s) refused: %s", action, who, host, message)
            await run_in_threadpool(self.site.audit, AuditKind.HTTP_REFUSED, who, host, f"{status} {action}: {message}")
            return self._error(request, status, message)
        log.info("delivery %d to %s queued again by %s (%s)", delivery_id, record.destination, who, host)
        if wants_json(request):
            return JSONResponse({"delivery": queries.to_json(record)})
        return RedirectResponse(await _back_to_list(request, delivery_id), status_code=303)

    # -- models ---------------------------------------------------------------------------------

    def _models(self) -> list[queries.ModelRecord]:
        if self.registry is None:
            return []
        with self._registry_lock:  # the registry's record of hashed weights is not shared between threads
            return queries.list_models(registry=self.registry)

    async def _models_page(self, request: Request) -> Response:
        models = await run_in_threadpool(self._models)
        return self.site.render(request, "models.html", {"models": queries.to_json(models)})

    async def _models_api(self, request: Request) -> Response:
        models = await run_in_threadpool(self._models)
        return JSONResponse({"models": queries.to_json(models)})

    # -- audit ----------------------------------------------------------------------------------

    async def _audit(self, request: Request) -> tuple[dict[str, Any], dict[str, Any]]:
        kinds = [k for k in request.query_params.getlist("kind") if k]
        before_text = request.query_params.get("before") or ""
        if before_text and not before_text.isdigit():
            raise BadRequest("before is an event id (a number)")
        filters: dict[str, Any] = {
            "kinds": kinds,
            "since": _time(request, "since"),
            "until": _time(request, "until"),
            "study": _text(request, "study"),
            "caller": _text(request, "caller"),
            "peer": _text(request, "peer"),
            "before": int(before_text) if before_text else None,
            "limit": _limit(request),
        }
        try:
            page = await run_in_threadpool(functools.partial(queries.audit_page, self.db, **filters))
        except ValueError as exc:  # an unknown kind
            raise BadRequest(str(exc)) from None
        return queries.to_json(filters), queries.to_json(page)

    async def _audit_page(self, request: Request) -> Response:
        filters, page = await self._audit(request)
        older = None
        if page["next_before"] is not None:
            params = [(k, v) for k, v in request.query_params.multi_items() if k != "before"]
            older = "/audit?" + urllib.parse.urlencode([*params, ("before", str(page["next_before"]))])
        return self.site.render(
            request,
            "audit.html",
            {
                "events": page["events"],
                "filters": filters,
                "all_kinds": sorted(k.value for k in AuditKind),
                "older": older,
            },
        )

    async def _audit_api(self, request: Request) -> Response:
        _, page = await self._audit(request)
        return JSONResponse(page)
