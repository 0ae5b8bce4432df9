"""The admin pages' framework (node.web.admin) on the node's real HTTP server: login, sessions, guard, CSRF, jobs.

One node with its HTTP server on 127.0.0.1 per module; every test logs in with its own ``requests.Session``.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.resources
import stat
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

import node.web.admin as admin_module
from node.audit import query
from node.db import AuditKind, Job, JobState, Result
from node.http import HttpServer
from node.service import Node
from node.settings import Settings
from node.web.admin import COOKIE, REVOKED_FILE, SECRET_FILE, AdminSite, LoginLimiter, _local_target
from node.web.auth import Authenticator, hash_password

TOKEN = "admin-test-token-0123456789abcdef"
PASSWORD = "a long and correct password"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, HttpServer, str]]:
    tmp = tmp_path_factory.mktemp("admin")
    (tmp / "token").write_text(TOKEN + "\n")
    settings = Settings(
        port=0,
        host="127.0.0.1",
        data_dir=tmp / "data",
        http_port=0,
        destinations={},
        default_destinations=[],
        allowed_peers=[{"ae_title": "STORESCU"}],
        http_tokens=[{"name": "script", "token_file": tmp / "token"}],
        http_users=[{"name": "admin", "password_hash": hash_password(PASSWORD)}],
    )
    node = Node(settings)
    node.start()
    http = node.http_server()
    http.start()
    try:
        yield node, http, f"http://127.0.0.1:{http.port}"
    finally:
        http.stop()
        node.stop()


def _site(http: HttpServer) -> AdminSite:
    assert http.admin is not None
    return http.admin


def _login(base: str, user: str = "admin", password: str = PASSWORD, **extra: str) -> tuple[requests.Session, Any]:
    session = requests.Session()
    answer = session.post(
        base + "/login", data={"username": user, "password": password, **extra}, allow_redirects=False, timeout=30
    )
    return session, answer


def _csrf(site: AdminSite, session: requests.Session) -> str:
    found = site.read_session(session.cookies.get(COOKIE))
    assert found is not None
    return found.csrf_token


def _refusals(node: Node, needle: str) -> list[str]:
    return [
        e.message or "" for e in query(node.db, kinds=[AuditKind.HTTP_REFUSED.value]) if needle in (e.message or "")
    ]


def test_login_sets_a_session_cookie_with_its_flags_and_opens_the_pages(served: tuple[Node, HttpServer, str]) -> None:
    _, _, base = served
    session, answer = _login(base, next="/jobs?state=done")
    assert answer.status_code == 303 and answer.headers["location"] == "/jobs?state=done"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(COOKIE + "=")
    flags = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")[1:]}
    assert "httponly" in flags and flags["samesite"].lower() == "samesite=lax" and "secure" not in flags
    assert flags["max-age"] == "Max-Age=28800"  # web.session_hours: 8
    page = session.get(base + "/jobs", timeout=30)
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    assert (
        page.headers["x-frame-options"] == "DENY"
        and "frame-ancestors 'none'" in page.headers["content-security-policy"]
    )
    assert requests.get(base + "/login", timeout=30).headers["x-frame-options"] == "DENY"
    assert '<span id="user">admin</span>' in page.text and 'action="/logout"' in page.text
    assert session.get(base + "/api/jobs", timeout=30).json() == {"jobs": []}
    assert session.get(base + "/", allow_redirects=False, timeout=30).headers["location"] == "/jobs"
    again = session.get(base + "/login?next=/audit", allow_redirects=False, timeout=30)  # logged in already
    assert again.status_code == 303 and again.headers["location"] == "/audit"


@pytest.mark.parametrize(("user", "password"), [("admin", "wrong password"), ("nobody", PASSWORD)])
def test_a_wrong_password_or_user_is_refused_without_a_session_and_audited(
    served: tuple[Node, HttpServer, str], user: str, password: str
) -> None:
    node, _, base = served
    before = len(_refusals(node, "POST /login"))
    session, answer = _login(base, user, password)
    assert answer.status_code == 401
    assert "wrong user name or password" in answer.text and 'id="login-form"' in answer.text
    assert "set-cookie" not in answer.headers and not session.cookies
    assert len(_refusals(node, "401 POST /login: unknown user or wrong password")) == before + 1
    assert session.get(base + "/api/jobs", timeout=30).status_code == 401


def test_without_a_session_a_browser_goes_to_the_login_and_a_script_gets_401_json(
    served: tuple[Node, HttpServer, str],
) -> None:
    node, _, base = served
    answer = requests.get(base + "/jobs?state=failed", allow_redirects=False, timeout=30)
    assert answer.status_code == 303 and answer.headers["location"] == "/login?next=%2Fjobs%3Fstate%3Dfailed"
    form = requests.get(base + answer.headers["location"], timeout=30)
    assert form.status_code == 200 and 'name="next" value="/jobs?state=failed"' in form.text
    for url, headers in [("/api/jobs", {}), ("/jobs", {"Accept": "application/json"})]:
        refused = requests.get(base + url, headers=headers, allow_redirects=False, timeout=30)
        assert refused.status_code == 401 and "log in first" in refused.json()["error"]
        assert "Bearer" in refused.headers["www-authenticate"]
    assert (
        requests.get(base + "/api/jobs", headers={"Authorization": "Bearer wrong-token"}, timeout=30).status_code == 401
    )
    assert _refusals(node, "401 GET /api/jobs: authentication required: unknown token")
    # A forged cookie is no session.
    forged = requests.get(
        base + "/jobs", cookies={COOKIE: "eyJ1IjoiYWRtaW4ifQ.forged.sig"}, allow_redirects=False, timeout=30
    )
    assert forged.status_code == 303 and forged.headers["location"].startswith("/login")
    # The open routes stay open; an unknown path is a 404 with or without a login.
    assert requests.get(base + "/healthz", timeout=30).status_code == 200
    missing = requests.get(base + "/nothing", timeout=30)
    assert missing.status_code == 404 and "/jobs" in missing.text


@pytest.mark.parametrize(
    "target", ["//evil.example/x", "https://evil.example/", "/\\evil.example", "jobs", "javascript:alert(1)", ""]
)
def test_the_page_after_login_is_only_a_path_of_this_server(served: tuple[Node, HttpServer, str], target: str) -> None:
    _, _, base = served
    _, answer = _login(base, next=target)
    assert answer.status_code == 303 and answer.headers["location"] == "/jobs"


def test_local_target_keeps_paths_and_queries() -> None:
    assert _local_target("/deliveries?state=dead") == "/deliveries?state=dead"
    assert _local_target("/jobs/12") == "/jobs/12"
    assert _local_target("/%2F/evil") == "/%2F/evil"  # a path of ours, whatever it names
    assert _local_target("/x\r\nSet-Cookie: a=b") == "/jobs"


def test_an_action_needs_the_sessions_csrf_token(served: tuple[Node, HttpServer, str]) -> None:
    node, http, base = served
    session, _ = _login(base)
    token = _csrf(_site(http), session)
    for data, headers in [({}, {}), ({"csrf_token": "wrong"}, {}), ({}, {"X-CSRF-Token": "wrong"})]:
        refused = session.post(base + "/logout", data=data, headers=headers, allow_redirects=False, timeout=30)
        assert refused.status_code == 403 and "CSRF token is missing or wrong" in refused.text
        assert "Traceback" not in refused.text
    api = session.post(base + "/logout", headers={"Accept": "application/json"}, allow_redirects=False, timeout=30)
    assert api.status_code == 403 and "CSRF" in api.json()["error"]
    assert len(_refusals(node, "403 POST /logout: the CSRF token is missing or wrong")) >= 4
    # The right token from another site's page is refused too; the form's many fields are no way around it.
    crowded = session.post(
        base + "/logout", data={**{f"f{i}": "1" for i in range(60)}, "csrf_token": token}, allow_redirects=False,
        timeout=30,
    )  # fmt: skip
    assert crowded.status_code == 403
    other = session.post(
        base + "/logout",
        data={"csrf_token": token},
        headers={"Origin": "http://evil.example"},
        allow_redirects=False,
        timeout=30,
    )
    assert other.status_code == 403 and "another site" in other.text
    assert session.get(base + "/api/jobs", timeout=30).status_code == 200  # still logged in


def test_posts_from_another_sites_page_are_refused_whatever_the_credentials(
    served: tuple[Node, HttpServer, str],
) -> None:
    node, _, base = served
    evil = {"Origin": "http://evil.example"}
    login = requests.post(
        base + "/login", data={"username": "admin", "password": PASSWORD}, headers=evil, allow_redirects=False,
        timeout=30,
    )  # fmt: skip
    assert login.status_code == 403 and "set-cookie" not in login.headers
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/logout", "/api/pull"):  # a remembered Basic user or token is no excuse either
        answer = requests.post(base + path, headers={**bearer, **evil}, allow_redirects=False, timeout=30)
        assert answer.status_code == 403 and "another site" in answer.text
    referer = {"Referer": "http://evil.example/page.html"}
    assert requests.post(base + "/logout", headers={**bearer, **referer}, timeout=30).status_code == 403
    same = {"Origin": base}
    assert (
        requests.post(base + "/logout", headers={**bearer, **same}, allow_redirects=False, timeout=30).status_code
        == 303
    )
    assert _refusals(node, "403 POST /login: the request came from another site")


def test_a_login_body_beyond_a_form_is_refused(served: tuple[Node, HttpServer, str]) -> None:
    _, _, base = served
    big = requests.post(base + "/login", data={"username": "admin", "password": "x" * 70_000}, timeout=30)
    assert big.status_code == 413 and "Traceback" not in big.text
    many = requests.post(base + "/login", data={f"f{i}": "1" for i in range(30)}, timeout=30)
    assert many.status_code == 413


def test_logout_with_the_token_ends_the_session_even_for_a_copied_cookie(served: tuple[Node, HttpServer, str]) -> None:
    node, http, base = served
    session, _ = _login(base)
    copied = session.cookies.get(COOKIE)
    token = _csrf(_site(http), session)
    out = session.post(base + "/logout", data={"csrf_token": token}, allow_redirects=False, timeout=30)
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert COOKIE + '=""' in out.headers["set-cookie"] or "Max-Age=0" in out.headers["set-cookie"]
    again = requests.get(base + "/jobs", cookies={COOKIE: copied}, allow_redirects=False, timeout=30)
    assert again.status_code == 303 and again.headers["location"].startswith("/login")
    site = _site(http)
    restarted = AdminSite(site.auth, site.users, node.settings.data_dir)  # the logout outlives a restart
    assert restarted.read_session(copied) is None
    assert stat.S_IMODE((node.settings.data_dir / REVOKED_FILE).stat().st_mode) == 0o600
    # The header form of the token works as well.
    session, _ = _login(base)
    token = _csrf(_site(http), session)
    out = session.post(base + "/logout", headers={"X-CSRF-Token": token}, allow_redirects=False, timeout=30)
    assert out.status_code == 303


def test_a_token_caller_without_a_cookie_needs_no_csrf_token(served: tuple[Node, HttpServer, str]) -> None:
    _, _, base = served
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert requests.get(base + "/api/jobs", headers=bearer, timeout=30).json() == {"jobs": []}
    assert requests.post(base + "/logout", headers=bearer, allow_redirects=False, timeout=30).status_code == 303
    basic = {"Authorization": "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()}
    assert requests.get(base + "/api/jobs", headers=basic, timeout=30).status_code == 200
    # STOW-RS and pull keep their own authentication (and its message) for a caller without credentials.
    pull = requests.post(base + "/api/pull", json={}, timeout=30)
    assert pull.status_code == 401 and "no credentials" in pull.json()["error"]


def test_refused_logins_from_one_address_are_limited(served: tuple[Node, HttpServer, str]) -> None:
    node, http, base = served
    site = _site(http)
    kept = site.limiter
    site.limiter = LoginLimiter(limit=2, window=600)
    try:
        assert _login(base, password="wrong 1")[1].status_code == 401
        assert _login(base, password="wrong 2")[1].status_code == 401
        session, answer = _login(base)  # the right password, too late
        assert answer.status_code == 429 and int(answer.headers["retry-after"]) > 0
        assert "too many refused logins from 127.0.0.1" in answer.text and not session.cookies
        assert _refusals(node, "429 POST /login: too many refused logins")
    finally:
        site.limiter = kept


def test_login_limiter_forgets_after_its_window_and_after_a_success() -> None:
    limiter = LoginLimiter(limit=2, window=0.2)
    limiter.refused("10.0.0.1")
    assert limiter.blocked_for("10.0.0.1") == 0
    limiter.refused("10.0.0.1")
    assert limiter.blocked_for("10.0.0.1") > 0 and limiter.blocked_for("10.0.0.2") == 0
    limiter.succeeded("10.0.0.1")
    assert limiter.blocked_for("10.0.0.1") == 0


def test_the_session_secret_is_kept_private_and_survives_a_restart(served: tuple[Node, HttpServer, str]) -> None:
    node, http, base = served
    secret = node.settings.data_dir / SECRET_FILE
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and len(secret.read_bytes().strip()) >= 32
    session, _ = _login(base)
    cookie = session.cookies.get(COOKIE)
    site = _site(http)
    restarted = AdminSite(site.auth, site.users, node.settings.data_dir)
    assert restarted.read_session(cookie) is not None
    # A new password hash for the user ends their sessions.
    assert AdminSite(site.auth, {"admin": hash_password("new")}, node.settings.data_dir).read_session(cookie) is None


def test_a_deleted_secret_logs_everybody_out(tmp_path: Path) -> None:
    users = {"admin": hash_password(PASSWORD)}
    site = AdminSite(Authenticator([], users), users, tmp_path)
    _, cookie = site.new_session("admin")
    assert site.read_session(cookie) is not None
    (tmp_path / SECRET_FILE).unlink()
    assert AdminSite(Authenticator([], users), users, tmp_path).read_session(cookie) is None
    (tmp_path / SECRET_FILE).write_text("short\n")
    with pytest.raises(Exception, match="shorter than 32 characters: delete it"):
        AdminSite(Authenticator([], users), users, tmp_path)


def test_a_session_ends_session_hours_after_its_login_and_with_its_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    users = {"admin": hash_password(PASSWORD), "other": hash_password(PASSWORD)}
    site = AdminSite(Authenticator([], users), users, tmp_path, session_hours=2)
    _, cookie = site.new_session("admin")
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 2 * 3600 - 60)  # the signer's clock
    assert site.read_session(cookie) is not None
    monkeypatch.setattr(time, "time", lambda: now + 2 * 3600 + 60)
    assert site.read_session(cookie) is None
    monkeypatch.undo()
    gone = AdminSite(Authenticator([], users), {"other": users["other"]}, tmp_path)  # admin left http_users
    assert gone.read_session(cookie) is None and site.read_session(cookie) is not None


@contextlib.contextmanager
def _other_server(http: HttpServer, site: AdminSite) -> Iterator[str]:
    """A second HTTP server of the module's node, with ``site`` as its admin pages."""
    other = HttpServer("127.0.0.1", 0, http.metrics, http.readiness, auth=site.auth, admin=site)
    other.start()
    try:
        yield f"http://127.0.0.1:{other.port}"
    finally:
        other.stop()


def test_with_no_user_configured_the_login_page_says_how_to_add_one(
    served: tuple[Node, HttpServer, str], tmp_path: Path
) -> None:
    _, http, _ = served
    with _other_server(http, AdminSite(Authenticator([], {}), {}, tmp_path)) as base:
        page = requests.get(base + "/login", timeout=30)
        assert page.status_code == 200 and "ainode hash-password" in page.text and "http_users" in page.text
        session, refused = _login(base, password="x")
        assert refused.status_code == 401 and "set-cookie" not in refused.headers
    users = {"admin": hash_password(PASSWORD)}
    with _other_server(http, AdminSite(Authenticator([], users), users, tmp_path, secure=True)) as base:
        _, answer = _login(base)  # secure: the server is HTTPS (http_tls); the flag is what is checked here
        assert answer.status_code == 303 and "; secure" in answer.headers["set-cookie"].lower()


def test_the_jobs_page_and_api_list_jobs_with_times_triage_and_findings(served: tuple[Node, HttpServer, str]) -> None:
    node, _, base = served
    from datetime import UTC, datetime, timedelta

    start = datetime(2026, 12, 6, 8, 0, 0, tzinfo=UTC)
    with node.db.session() as s:
        done = Job(
            series_uid="1.2.3.4.1", study_uid="1.2.3.4", pipeline="cxr", state=JobState.DONE, attempts=1,
            summary="<b>nodule</b> 0.91", created_at=start, started_at=start,
            finished_at=start + timedelta(seconds=2.5),
        )  # fmt: skip
        failed = Job(series_uid="1.2.3.5.1", study_uid="1.2.3.5", pipeline="ct", state=JobState.FAILED, error="bad")
        s.add_all([done, failed])
        s.flush()
        s.add(Result(job_id=done.id, series_uid="1.2.3.4.1", study_uid="1.2.3.4", sop_uid="1.2.3.4.9",
                     sop_class_uid="1.2.840.10008.5.1.4.1.1.88.22", kind="SR", path="x", priority=0))  # fmt: skip
    session, _ = _login(base)
    jobs = session.get(base + "/api/jobs", timeout=30).json()["jobs"]
    first = next(j for j in jobs if j["study_uid"] == "1.2.3.4")
    assert first["state"] == "done" and first["triage"] == "urgent" and first["duration_seconds"] == 2.5
    assert first["created_at"] == "2026-12-06T08:00:00Z" and first["summary"] == "<b>nodule</b> 0.91"
    only_failed = session.get(base + "/api/jobs?state=failed&limit=5", timeout=30).json()["jobs"]
    assert [j["study_uid"] for j in only_failed] == ["1.2.3.5"] and only_failed[0]["error"] == "bad"
    page = session.get(base + "/jobs", timeout=30).text
    assert "&lt;b&gt;nodule&lt;/b&gt; 0.91" in page and "<b>nodule" not in page  # autoescaped
    assert 'class="triage-urgent">urgent<' in page and "2.5 s" in page
    for bad in ("state=bogus", "limit=0", "limit=x"):
        assert session.get(base + f"/api/jobs?{bad}", timeout=30).status_code == 400
        assert session.get(base + f"/jobs?{bad}", timeout=30).status_code == 400


def test_a_failing_page_answers_500_without_a_traceback(
    served: tuple[Node, HttpServer, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, base = served

    def broken(*_args: object, **_kwargs: object) -> list[dict[str, Any]]:
        raise RuntimeError("secret internals\nline two")

    monkeypatch.setattr(admin_module, "jobs_rows", broken)
    session, _ = _login(base)
    for path in ("/api/jobs", "/jobs"):
        answer = session.get(base + path, timeout=30)
        assert answer.status_code == 500 and "Traceback" not in answer.text and "secret internals" not in answer.text


def test_the_templates_ship_in_the_package() -> None:
    folder = importlib.resources.files("node.web") / "templates"
    for name in ("base.html", "login.html", "jobs.html", "error.html"):
        assert (folder / name).is_file(), name
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert "templates/*.html" in pyproject["tool"]["setuptools"]["package-data"]["node.web"]
