"""The admin web pages of the node's HTTP server: login sessions, CSRF, the access guard, the jobs page.

Served by :class:`node.http.HttpServer` (no second server): :meth:`AdminSite.routes` are added to its
routes and :class:`AdminGuard` wraps the whole application.

Who may see what
    ``/healthz``, ``/readyz`` and ``/login`` are open. The routes that authenticate their callers
    themselves (STOW-RS, ``/api/pull``, ``/metrics``: the ``passthrough`` paths of the guard) keep doing
    so. Everything else needs a login session (a browser) or an ``Authorization`` header (a bearer token of
    ``http_tokens`` or a Basic user of ``http_users``: scripts). A browser without a session is sent to
    ``/login?next=...``; an API caller (``/api/...``, or ``Accept: application/json``) gets ``401`` JSON.

Sessions
    A cookie signed with a secret kept in ``data_dir/web-secret`` (created once, mode 0600: sessions
    survive a restart; deleting the file logs everybody out). It holds the user name, the login time and
    the session's CSRF token, is ``HttpOnly``, ``SameSite=Lax``, ``Secure`` when the server is HTTPS, and
    ends ``web.session_hours`` after the login. A session also ends when its user leaves ``http_users`` or
    gets a new password hash, and at ``POST /logout`` (recorded in ``data_dir/web-logouts.json``: a copy of
    the cookie stays refused after a restart).

CSRF
    A ``POST``/``PUT``/``PATCH``/``DELETE`` authenticated by the session cookie must carry the session's
    token, as the form field ``csrf_token`` or the header ``X-CSRF-Token``, and, when the browser sends an
    ``Origin`` header, come from the node's own origin; otherwise ``403`` and an ``http_refused`` audit row.
    A request with an ``Authorization`` header and no cookie carries no ambient credential and needs none.

Adding pages (``node.web.pages``)
    A page handler is an ``async def handler(request) -> Response``; :func:`caller` is the user it runs for
    (the guard has checked it and the CSRF token before the handler runs), :meth:`AdminSite.render` renders a
    template extending ``base.html`` with the common context (``user``, ``csrf_token``, ``nav``, ``demo``,
    ``viewer_url``), :func:`wants_json` tells an API caller, :meth:`AdminSite.audit` records an action.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Match, Route
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from node import audit as audit_log
from node.db import AuditKind, JobState, Result
from node.errors import ConfigError
from node.priority import level_name
from node.web import queries
from node.web.auth import CHALLENGE, Authenticator, _dummy_hash, verify_password

if TYPE_CHECKING:
    from node.db import Database

__all__ = [
    "NAV",
    "SECRET_FILE",
    "AdminGuard",
    "AdminSite",
    "LoginLimiter",
    "caller",
    "jobs_rows",
    "load_secret",
    "templates_dir",
    "wants_json",
]

log = logging.getLogger("ainode.web")

SECRET_FILE = "web-secret"
#: Sessions ended by a logout before their time (``{session id: end, Unix time}``): refused after a restart too.
REVOKED_FILE = "web-logouts.json"
COOKIE = "ainode_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
#: The pages of the navigation bar: (path, label).
NAV: tuple[tuple[str, str], ...] = (
    ("/jobs", "Jobs"),
    ("/deliveries", "Deliveries"),
    ("/models", "Models"),
    ("/audit", "Audit"),
)
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_OPEN_PATHS = frozenset({"/healthz", "/readyz", "/login"})
#: The largest form body the guard reads to find the CSRF token (admin forms are a few fields).
_MAX_FORM = 64 * 1024
_USER_KEY = "ainode.user"
_SESSION_KEY = "ainode.session"

Endpoint = Callable[[Request], Awaitable[Response]]


def templates_dir() -> Path:
    """The folder of the admin pages' Jinja2 templates (package data of ``node.web``)."""
    return Path(__file__).resolve().parent / "templates"


def load_secret(data_dir: Path) -> bytes:
    """The session-signing secret in ``data_dir/web-secret``, created (32 random bytes, mode 0600) if absent.

    Raises
    ------
    ConfigError
        The file cannot be read or created, or is too short: one line saying which and what to do.
    """
    path = data_dir / SECRET_FILE
    for _ in range(2):
        try:
            secret = path.read_bytes().strip()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ConfigError(f"cannot read the web session secret {path}: {exc.strerror or exc}") from exc
        else:
            if len(secret) < 32:
                raise ConfigError(
                    f"the web session secret {path} is shorter than 32 characters: delete it and restart "
                    "(a new one is made; everybody logs in again)"
                )
            return secret
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: read theirs
            continue
        except OSError as exc:
            raise ConfigError(f"cannot create the web session secret {path}: {exc.strerror or exc}") from exc
        try:
            secret = secrets.token_hex(32).encode()
            os.write(fd, secret + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        log.info("made a new web session secret in %s", path)
        return secret
    raise ConfigError(f"cannot read the web session secret {path}")


def wants_json(request: Request) -> bool:
    """Whether the caller is a script (a path under ``/api/``, or JSON preferred to HTML)."""
    if request.url.path.startswith("/api/"):
        return True
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def caller(request: Request) -> str:
    """The user or token name a guarded request runs for (set by :class:`AdminGuard`)."""
    return str(request.scope.get(_USER_KEY) or "")


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


def _local_target(target: str | None) -> str:
    """``target`` if it is a path of this server (no scheme, no host, no ``//``), else ``/jobs``."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/jobs"
    parts = urllib.parse.urlsplit(target)
    if parts.scheme or parts.netloc or any(ord(c) < 32 for c in target):
        return "/jobs"
    return target


def _fingerprint(password_hash: str) -> str:
    """A short digest of a user's password hash: a session ends when the hash changes."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


class LoginLimiter:
    """Refused logins per peer address: after ``limit`` refusals within ``window`` seconds, no more tries."""

    def __init__(self, limit: int = 10, window: float = 600.0) -> None:
        self.limit, self.window = limit, window
        self._refusals: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, host: str, now: float) -> deque[float]:
        times = self._refusals.setdefault(host, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def blocked_for(self, host: str) -> float:
        """Seconds until ``host`` may try again (0: it may now)."""
        now = time.monotonic()
        with self._lock:
            times = self._recent(host, now)
            if len(times) < self.limit:
                return 0.0
            return max(1.0, times[0] + self.window - now)

    def refused(self, host: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._recent(host, now).append(now)
            if len(self._refusals) > 10_000:  # many addresses: forget those with nothing recent
                for key in [k for k, v in self._refusals.items() if not v or v[-1] <= now - self.window]:
                    del self._refusals[key]

    def succeeded(self, host: str) -> None:
        with self._lock:
            self._refusals.pop(host, None)


@dataclass(frozen=True)
class Session:
    user: str
    login_time: float
    csrf_token: str
    sid: str


def _triage(db: Database, job_ids: Sequence[int]) -> dict[int, tuple[int, int | None]]:
    """Per job: how many result objects it made and their most urgent triage level (``Result.priority``)."""
    if not job_ids:
        return {}
    with db.session() as session:
        rows = session.execute(
            select(Result.job_id, func.count(), func.min(Result.priority))
            .where(Result.job_id.in_(job_ids))
            .group_by(Result.job_id)
        ).all()
    return {job_id: (count, level) for job_id, count, level in rows}


def jobs_rows(db: Database, state: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """The most recent jobs (newest first), as ``ainode jobs`` lists them (:func:`node.web.queries.recent_jobs`:
    UIDs, no patient data), with the number of result objects and the job's triage, as JSON values."""
    records = queries.recent_jobs(db, state=state, limit=limit)
    made = _triage(db, [r.id for r in records])
    rows = []
    for record in records:
        count, level = made.get(record.id, (0, None))
        rows.append(
            {**queries.to_json(record), "results": count, "triage": None if level is None else level_name(level)}
        )
    return rows


class AdminSite:
    """The admin pages: sessions of the ``http_users``, the guard's checks, page rendering, the jobs page.

    Parameters
    ----------
    auth : Authenticator
        Bearer tokens and Basic users of API callers.
    users : mapping of name to password hash
        The ``http_users`` who may log in with the form.
    data_dir : Path
        Where the session secret is kept (``web-secret``).
    db : Database, optional
        The jobs, and where refusals and actions are audited.
    session_hours : float
        ``web.session_hours``.
    secure : bool
        The server is HTTPS: cookies are ``Secure``.
    demo_models : sequence of str
        Loaded models with demonstration weights: every page shows a DEMO banner naming them.
    viewer_url : str, optional
        Where the viewer is (``viewer.url``), for links to a study.
    login_limiter : LoginLimiter, optional
    """

    def __init__(
        self,
        auth: Authenticator,
        users: Mapping[str, str],
        data_dir: Path,
        *,
        db: Database | None = None,
        session_hours: float = 8.0,
        secure: bool = False,
        demo_models: Sequence[str] = (),
        viewer_url: str | None = None,
        login_limiter: LoginLimiter | None = None,
    ) -> None:
        self.auth = auth
        self.users = dict(users)
        self.db = db
        self.max_age = int(session_hours * 3600)
        self.secure = secure
        self.demo_models = list(demo_models)
        self.viewer_url = viewer_url
        self.limiter = login_limiter or LoginLimiter()
        self._serializer = URLSafeTimedSerializer(load_secret(data_dir), salt="ainode-session")
        self._revoked_path = data_dir / REVOKED_FILE
        self._revoked = self._load_revoked()  # session id -> when it would have ended anyway (Unix time)
        self._lock = threading.Lock()
        self.templates = Jinja2Templates(
            env=jinja2.Environment(loader=jinja2.FileSystemLoader(templates_dir()), autoescape=True)
        )
        self.extra_routes: list[BaseRoute] = []

    # -- sessions -------------------------------------------------------------------------------

    def new_session(self, user: str) -> tuple[Session, str]:
        """A fresh session of ``user`` and its cookie value."""
        session = Session(user, time.time(), secrets.token_urlsafe(32), secrets.token_urlsafe(12))
        value = self._serializer.dumps(
            {"u": user, "t": session.login_time, "c": session.csrf_token, "s": session.sid,
             "h": _fingerprint(self.users.get(user, ""))}
        )  # fmt: skip
        return session, value

    def read_session(self, cookie: str | None) -> Session | None:
        """The session of a cookie value, or None (absent, forged, expired, logged out, user gone)."""
        if not cookie:
            return None
        try:
            data = self._serializer.loads(cookie, max_age=self.max_age)
        except BadSignature:  # SignatureExpired is one
            return None
        if not isinstance(data, dict):
            return None
        user, sid = data.get("u"), data.get("s")
        stored = self.users.get(user) if isinstance(user, str) else None
        if stored is None or not hmac.compare_digest(str(data.get("h", "")), _fingerprint(stored)):
            return None
        with self._lock:
            if sid in self._revoked:
                return None
        return Session(user, float(data.get("t", 0)), str(data.get("c", "")), str(sid))  # type: ignore[arg-type]

    def revoke(self, session: Session) -> None:
        """End ``session`` before its time (logout), also after a restart (recorded in the data directory)."""
        now = time.time()
        with self._lock:
            self._revoked = {k: v for k, v in self._revoked.items() if v > now}
            self._revoked[session.sid] = session.login_time + self.max_age
            revoked = dict(self._revoked)
        tmp = self._revoked_path.with_name(self._revoked_path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(revoked, fh)
            os.replace(tmp, self._revoked_path)
        except OSError as exc:  # the logout still holds until a restart
            log.warning("cannot record the logout in %s: %s", self._revoked_path, exc.strerror or exc)

    def _load_revoked(self) -> dict[str, float]:
        try:
            data = json.loads(self._revoked_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning(
                "cannot read the logouts in %s (%s): sessions logged out before are valid again",
                self._revoked_path,
                exc,
            )
            return {}
        now = time.time()
        if not isinstance(data, dict):
            return {}
        return {str(k): float(v) for k, v in data.items() if isinstance(v, int | float) and v > now}

    def set_cookie(self, response: Response, value: str) -> None:
        response.set_cookie(
            COOKIE, value, max_age=self.max_age, path="/", httponly=True, samesite="lax", secure=self.secure
        )

    def clear_cookie(self, response: Response) -> None:
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="lax", secure=self.secure)

    # -- helpers for pages ----------------------------------------------------------------------

    def audit(self, kind: AuditKind, who: str | None, host: str, message: str, **fields: Any) -> None:
        """Record an audit row (blocking: call it in a thread pool from a handler)."""
        if self.db is not None:
            audit_log.record(self.db, kind, calling_ae=who, peer_address=host, message=message[:1000], **fields)

    def context(self, request: Request) -> dict[str, Any]:
        """What every page's template gets: user, CSRF token, navigation, DEMO models, viewer URL."""
        session = request.scope.get(_SESSION_KEY)
        return {
            "user": caller(request),
            "csrf_token": session.csrf_token if isinstance(session, Session) else "",
            "nav": NAV,
            "path": request.url.path,
            "demo": self.demo_models,
            "viewer_url": self.viewer_url,
        }

    def render(
        self, request: Request, template: str, context: Mapping[str, Any] | None = None, status_code: int = 200
    ) -> Response:
        """``template`` rendered with the common :meth:`context` and ``context``; never cached."""
        response = self.templates.TemplateResponse(
            request, template, {**self.context(request), **(context or {})}, status_code=status_code
        )
        _page_headers(response)
        return response

    def routes(self, wrap: Callable[[Endpoint], Endpoint] = lambda handler: handler) -> list[BaseRoute]:
        """The admin routes (``wrap`` turns a handler's exception into a ``500`` without a traceback)."""
        return [
            Route("/", wrap(self._root), methods=["GET"]),
            Route("/login", wrap(self._login), methods=["GET", "POST"]),
            Route("/logout", wrap(self._logout), methods=["POST"]),
            Route("/jobs", wrap(self._jobs_page), methods=["GET"]),
            Route("/api/jobs", wrap(self._jobs_api), methods=["GET"]),
            *self.extra_routes,
        ]

    # -- handlers -------------------------------------------------------------------------------

    async def _root(self, request: Request) -> Response:
        return RedirectResponse("/jobs", status_code=303)

    async def _login(self, request: Request) -> Response:
        target = _local_target(request.query_params.get("next"))
        if request.method == "GET":
            if self.read_session(request.cookies.get(COOKIE)) is not None:  # logged in already: on to the page
                return RedirectResponse(target, status_code=303)
            return self._login_form(request, target)
        host = _peer(request.scope)
        wait = self.limiter.blocked_for(host)
        if wait:
            message = f"too many refused logins from {host}: try again in {int(wait // 60) + 1} minute(s)"
            await run_in_threadpool(self.audit, AuditKind.HTTP_REFUSED, None, host, f"429 POST /login: {message}")
            return self._login_form(
                request, target, error=message, status_code=429, headers={"Retry-After": str(int(wait))}
            )
        form = await _small_form(request)
        if form is None:
            return self._login_form(request, target, error="the login form is a few short fields", status_code=413)
        user, password = form.get("username", ""), form.get("password", "")
        target = _local_target(form.get("next") or request.query_params.get("next"))
        stored = self.users.get(user)
        ok = await run_in_threadpool(verify_password, password, stored or _dummy_hash())
        if not ok or stored is None:
            self.limiter.refused(host)
            log.warning("login of %r from %s refused: unknown user or wrong password", user[:32], host)
            await run_in_threadpool(
                self.audit, AuditKind.HTTP_REFUSED, user[:16] or None, host,
                "401 POST /login: unknown user or wrong password",
            )  # fmt: skip
            return self._login_form(request, target, error="wrong user name or password", status_code=401, user=user)
        self.limiter.succeeded(host)
        _, value = self.new_session(user)
        log.info("%s logged in from %s", user, host)
        await run_in_threadpool(self.audit, AuditKind.HTTP_REQUEST, user, host, "200 POST /login: logged in")
        response = RedirectResponse(target, status_code=303)
        self.set_cookie(response, value)
        return response

    def _login_form(
        self,
        request: Request,
        target: str,
        *,
        error: str | None = None,
        status_code: int = 200,
        user: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        response = self.templates.TemplateResponse(
            request,
            "login.html",
            {
                "next": target,
                "error": error,
                "username": user,
                "configured": bool(self.users),
                "demo": self.demo_models,
            },
            status_code=status_code,
        )
        _page_headers(response)
        for key, value in (headers or {}).items():
            response.headers[key] = value
        return response

    async def _logout(self, request: Request) -> Response:
        session = request.scope.get(_SESSION_KEY)
        if isinstance(session, Session):
            self.revoke(session)
            log.info("%s logged out", session.user)
        response = RedirectResponse("/login", status_code=303)
        self.clear_cookie(response)
        return response

    def _jobs_query(self, request: Request) -> tuple[str | None, int] | str:
        state = request.query_params.get("state") or None
        if state is not None and state not in {s.value for s in JobState}:
            return f"unknown state {state[:20]!r}: one of " + ", ".join(s.value for s in JobState)
        try:
            limit = int(request.query_params.get("limit", "50"))
        except ValueError:
            return "limit is a number of jobs (1 to 500)"
        if not 1 <= limit <= 500:
            return "limit is a number of jobs (1 to 500)"
        return state, limit

    async def _jobs_page(self, request: Request) -> Response:
        query = self._jobs_query(request)
        if isinstance(query, str):
            return self.render(request, "jobs.html", {"error": query, "jobs": [], "states": _STATES}, status_code=400)
        state, limit = query
        rows = await run_in_threadpool(jobs_rows, self._db(), state, limit)
        return self.render(
            request, "jobs.html", {"jobs": rows, "state": state or "", "limit": limit, "states": _STATES}
        )

    async def _jobs_api(self, request: Request) -> Response:
        query = self._jobs_query(request)
        if isinstance(query, str):
            return JSONResponse({"error": query}, status_code=400)
        rows = await run_in_threadpool(jobs_rows, self._db(), *query)
        return JSONResponse({"jobs": rows})

    def _db(self) -> Database:
        if self.db is None:
            raise RuntimeError("the admin pages have no database")
        return self.db


_STATES = tuple(s.value for s in JobState)


async def _small_form(request: Request) -> dict[str, str] | None:
    """The first value of each field of a URL-encoded form body of at most 64 KiB; None when it is larger."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM:
            return None
    try:
        fields = urllib.parse.parse_qs(body.decode("utf-8", "replace"), max_num_fields=20)
    except ValueError:  # more fields than a login form has
        return None
    return {name: values[0] for name, values in fields.items() if values}


# -- the guard -------------------------------------------------------------------------------


#: Headers of every admin page: never cached (patient UIDs, a CSRF token), never framed by another site (a Retry
#: button under a decoy), forms only to this server, no guessing of content types, no page address to other sites.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def _page_headers(response: Response) -> None:
    for key, value in PAGE_HEADERS.items():
        response.headers[key] = value


def _json(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=dict(headers or {}))


class AdminGuard:
    """ASGI middleware: every request but the open and passthrough paths needs a session or credentials.

    Parameters
    ----------
    app : ASGI application
    site : AdminSite
    passthrough : iterable of str
        Paths (and their sub-paths) whose routes authenticate their callers themselves (STOW-RS,
        ``/api/pull``, ``/metrics``): let through untouched.
    routes : sequence of routes, optional
        The application's routes: a path none of them serves is answered ``404`` by the application
        without a login (a 404 tells nothing a login would protect).
    """

    def __init__(
        self, app: ASGIApp, site: AdminSite, passthrough: Iterable[str] = (), routes: Sequence[BaseRoute] = ()
    ) -> None:
        self.app = app
        self.site = site
        self.passthrough = tuple(p.rstrip("/") for p in passthrough)
        self.routes = tuple(routes)

    def _passes(self, scope: Scope) -> bool:
        path = scope["path"]
        if path in _OPEN_PATHS or any(path == p or path.startswith(p + "/") for p in self.passthrough):
            return True
        return bool(self.routes) and all(route.matches(scope)[0] == Match.NONE for route in self.routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        request = Request(scope)
        if method not in _SAFE_METHODS and not self._same_origin(request):
            # A page of another site making the browser post here (with its cookie, or Basic credentials the
            # browser remembers): refused whatever the credentials; scripts send no Origin.
            await self._refuse(
                scope, receive, send, 403, None, "the request came from another site (Origin or Referer)"
            )
            return
        if self._passes(scope):
            await self.app(scope, receive, send)
            return
        authorization = request.headers.get("authorization")
        if authorization:  # a script: its credentials, no cookie, no CSRF token needed
            outcome = await run_in_threadpool(self.site.auth.check, authorization)
            if outcome.name is None:
                refusal = outcome.refusal or "refused"
                await self._refuse(scope, receive, send, 401, outcome.claimed, f"authentication required: {refusal}")
                return
            scope[_USER_KEY] = outcome.name
            await self.app(scope, receive, send)
            return
        session = self.site.read_session(request.cookies.get(COOKIE))
        if session is None:
            if method in ("GET", "HEAD") and not wants_json(request):
                target = path + (f"?{scope['query_string'].decode('latin-1')}" if scope.get("query_string") else "")
                response: Response = RedirectResponse(
                    "/login?" + urllib.parse.urlencode({"next": target}), status_code=303
                )
                if request.cookies.get(COOKIE):  # expired or revoked: drop it
                    self.site.clear_cookie(response)
                await response(scope, receive, send)
                return
            await self._refuse(scope, receive, send, 401, None, "log in first (/login), or send a token")
            return
        scope[_USER_KEY] = session.user
        scope[_SESSION_KEY] = session
        if method not in _SAFE_METHODS:
            ok, receive = await self._csrf_ok(scope, receive, session)
            if not ok:
                await self._refuse(
                    scope, receive, send, 403, session.user,
                    "the CSRF token is missing or wrong (reload the page and try again)",
                )  # fmt: skip
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _same_origin(request: Request) -> bool:
        """False when the browser says the request came from another origin (``Origin``, else ``Referer``)."""
        origin = request.headers.get("origin") or request.headers.get("referer")
        if origin is None:
            return True
        host = request.headers.get("host", "")
        parts = urllib.parse.urlsplit(origin)
        return bool(parts.netloc) and parts.netloc.lower() == host.lower()

    async def _csrf_ok(self, scope: Scope, receive: Receive, session: Session) -> tuple[bool, Receive]:
        """Whether the request carries the session's CSRF token; the ``receive`` that replays a body read."""
        expected = session.csrf_token.encode()
        offered = Request(scope).headers.get(CSRF_HEADER)
        if offered is not None:
            return hmac.compare_digest(offered.encode(), expected), receive
        content_type = Request(scope).headers.get("content-type", "")
        if not content_type.startswith("application/x-www-form-urlencoded"):
            return False, receive
        messages: list[Message] = []
        body = b""
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if len(body) > _MAX_FORM:
                return False, receive
            if not message.get("more_body", False):
                break
        try:
            values = urllib.parse.parse_qs(body.decode("latin-1"), max_num_fields=50).get(CSRF_FIELD, [])
        except ValueError:  # more fields than an admin form has
            values = []

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        return bool(values) and hmac.compare_digest(values[0].encode(), expected), replay

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, status: int, who: str | None, message: str
    ) -> None:
        host = _peer(scope)
        action = f"{scope['method']} {scope['path']}"[:120]
        log.warning("HTTP %s from %s refused: %s", action, host, message)
        await run_in_threadpool(self.site.audit, AuditKind.HTTP_REFUSED, who, host, f"{status} {action}: {message}")
        headers = {"WWW-Authenticate": CHALLENGE} if status == 401 else {}
        request = Request(scope)
        if wants_json(request) or scope["method"] not in ("GET", "HEAD", "POST"):
            response: Response = _json(status, message, headers)
        else:
            response = self.site.templates.TemplateResponse(
                request, "error.html", {"status": status, "message": message, "demo": self.site.demo_models},
                status_code=status, headers=headers,
            )  # fmt: skip
            _page_headers(response)
        await response(scope, receive, send)
