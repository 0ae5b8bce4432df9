"""The admin pages of node.web.pages and their JSON API, on the node's own HTTP server.

One node's HTTP server per module, on 127.0.0.1 (the node's loops are not started), with
a database filled through the node's real code paths (tests/node/test_web_queries.fill): a job
done whose SR one destination took and another refused (a dead letter), and a job that failed.
Each page is read with a login session and each API with a token; the retry of a dead letter is
checked with and without the session's CSRF token, and on deliveries that are not dead letters.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from starlette.requests import Request

from node.audit import query
from node.db import Database
from node.service import Node
from node.settings import Settings
from node.web import queries
from node.web.admin import AdminSite
from node.web.auth import hash_password
from node.web.pages import AdminPages
from tests.node.test_web_queries import PHI_TEXTS, Scenario, fill

REPO = Path(__file__).resolve().parents[2]
TOKEN = "pages-test-token-0123456789abcdef"
PASSWORD = "a long and correct password"


class Client(requests.Session):
    """``requests`` on the node's base URL, never following redirects (the tests read them)."""

    def __init__(self, base: str) -> None:
        super().__init__()
        self.base = base

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("allow_redirects", False)
        kwargs.setdefault("timeout", 30)
        return super().request(method, self.base + str(url), *args, **kwargs)


@dataclass
class Served:
    node: Node
    scenario: Scenario
    base: str
    site: AdminSite

    def browser(self) -> Client:
        """A logged-in browser (session cookie)."""
        client = Client(self.base)
        answer = client.post("/login", data={"username": "admin", "password": PASSWORD})
        assert answer.status_code == 303, answer.text
        return client

    def script(self) -> Client:
        """A script with the API token (no cookie)."""
        client = Client(self.base)
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        return client

    def anonymous(self) -> Client:
        return Client(self.base)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("pages")
    (tmp / "token").write_text(TOKEN + "\n")
    models = tmp / "models"
    for name in ("cxr-view-filter", "cxr-four-class-cnn"):
        shutil.copytree(REPO / "weights" / name, models / name)
    settings = Settings(
        port=0,
        host="127.0.0.1",
        http_port=0,
        data_dir=tmp / "data",
        models_dir=models,
        models_file=None,
        destinations={},
        default_destinations=[],
        http_tokens=[{"name": "script", "token_file": tmp / "token"}],
        http_users=[{"name": "admin", "password_hash": hash_password(PASSWORD)}],
    )
    node = Node(settings)
    http = node.http_server()
    (tmp / "filled").mkdir()
    try:
        scenario = fill(node.db, tmp / "filled")
        http.start()
        assert http.admin is not None
        yield Served(node, scenario, f"http://127.0.0.1:{http.port}", http.admin)
    finally:
        http.stop()
        node.db.dispose()


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, "the page has no CSRF token"
    return found.group(1)


def _no_phi(text: str) -> None:
    for phi in PHI_TEXTS:
        assert phi not in text


def test_a_job_in_full_with_the_viewer_link(served: Served) -> None:
    sc = served.scenario
    page = served.browser().get(f"/jobs/{sc.done_job}")
    assert page.status_code == 200, page.text
    viewer = f'href="http://127.0.0.1:8081/viewer?StudyInstanceUIDs={sc.study}"'
    assert viewer in page.text and "Open in the viewer" in page.text
    assert 'id="job-state">done<' in page.text and "Comprehensive SR Storage" in page.text
    assert f'data-delivery-id="{sc.dead}"' in page.text and 'data-kind="dead_letter"' in page.text
    _no_phi(page.text)

    api = served.script().get(f"/api/jobs/{sc.done_job}")
    assert api.status_code == 200
    data = api.json()
    assert data["job"]["id"] == sc.done_job and data["job"]["state"] == "done"
    assert data["viewer_url"] == f"http://127.0.0.1:8081/viewer?StudyInstanceUIDs={sc.study}"
    assert [r["kind"] for r in data["results"]] == ["SR"]
    assert {e["kind"] for e in data["events"]} >= {"received", "job_done", "delivered", "dead_letter"}
    failed = served.script().get(f"/api/jobs/{sc.failed_job}").json()
    assert failed["job"]["error"] == "value '<patient data>' not understood"
    _no_phi(api.text + served.browser().get(f"/jobs/{sc.failed_job}").text)

    missing = served.browser().get("/jobs/999999")
    assert missing.status_code == 404 and "no job 999999" in missing.text and "Traceback" not in missing.text
    assert served.script().get("/api/jobs/999999").json() == {"error": "no job 999999"}


def test_deliveries_page_and_api_with_filters(served: Served) -> None:
    sc = served.scenario
    page = served.browser().get("/deliveries")
    assert page.status_code == 200
    rows = dict(re.findall(r'<tr data-delivery-id="(\d+)" data-state="(\w+)">', page.text))
    assert rows[str(sc.delivered)] == "done"
    # Only a dead letter has a Retry button, in a form carrying the session's CSRF token.
    forms = re.findall(r'<form method="post" action="/deliveries/(\d+)/retry">', page.text)
    assert forms == [str(d) for d, state in rows.items() if state == "dead"]
    assert ">Retry</button>" in page.text or not forms

    dead = served.script().get("/api/deliveries", params={"state": "dead"})
    assert dead.status_code == 200
    assert all(d["state"] == "dead" for d in dead.json()["deliveries"])
    archive = served.script().get("/api/deliveries", params={"destination": "archive"}).json()["deliveries"]
    assert [d["id"] for d in archive] == [sc.delivered] and archive[0]["delivered_at"].endswith("Z")
    bad = served.script().get("/api/deliveries", params={"state": "lost"})
    assert bad.status_code == 400 and "unknown delivery state 'lost'" in bad.json()["error"]
    assert served.script().get("/api/deliveries", params={"limit": "0"}).status_code == 400
    assert served.browser().get("/deliveries", params={"state": "lost"}).status_code == 400
    _no_phi(page.text + dead.text)

    anonymous = served.anonymous()
    assert anonymous.get("/api/deliveries").status_code == 401
    login = anonymous.get("/deliveries")  # the login form, or a redirect to it; never the page
    assert login.headers.get("location", "").startswith("/login?next=") or 'id="login-form"' in login.text
    assert "data-delivery-id" not in login.text
    assert anonymous.post(f"/api/deliveries/{sc.dead}/retry").status_code == 401


def test_retry_of_a_dead_letter_needs_the_csrf_token_and_is_audited(served: Served) -> None:
    sc, db = served.scenario, served.node.db
    if queries.get_delivery(db, sc.dead).state != "dead":
        sc.dispatcher.run_once()  # the destination still refuses: a dead letter again
    assert queries.get_delivery(db, sc.dead).state == "dead"
    browser = served.browser()
    page = browser.get("/deliveries", params={"state": "dead"})
    assert f'<tr data-delivery-id="{sc.dead}" data-state="dead">' in page.text

    refused = browser.post(f"/deliveries/{sc.dead}/retry", data={})
    assert refused.status_code == 403 and "CSRF" in refused.text
    wrong = browser.post(f"/deliveries/{sc.dead}/retry", data={"csrf_token": "not-the-token"})
    assert wrong.status_code == 403
    assert queries.get_delivery(db, sc.dead).state == "dead"  # nothing changed

    back = re.search(r'name="back" value="([^"]+)"', page.text)
    assert back is not None and back.group(1) == "/deliveries?state=dead"
    form = {"csrf_token": _csrf(page.text), "back": back.group(1)}
    retried = browser.post(f"/deliveries/{sc.dead}/retry", data=form)
    # Back to the list it was on, its filters kept.
    assert retried.status_code == 303 and retried.headers["location"] == f"/deliveries?state=dead&retried={sc.dead}"
    record = queries.get_delivery(db, sc.dead)
    assert (record.state, record.attempts) == ("pending", 0)
    row = query(db, kinds=["retried"], limit=1)[0]
    assert row.calling_ae == "admin" and row.peer_address == "127.0.0.1"
    assert row.message == f"1 dead letter(s) queued again by hand by admin (deliveries {sc.dead})"
    assert f"Delivery {sc.dead} is queued again." in browser.get(retried.headers["location"]).text

    again = served.script().post(f"/api/deliveries/{sc.dead}/retry")
    assert again.status_code == 409
    assert again.json() == {"error": f"delivery {sc.dead} is pending, not a dead letter: only dead letters are retried"}
    delivered = served.script().post(f"/api/deliveries/{sc.delivered}/retry")
    assert delivered.status_code == 409 and "is done, not a dead letter" in delivered.json()["error"]
    assert served.script().post("/api/deliveries/999999/retry").status_code == 404
    refusals = [e.message for e in query(db, kinds=["http_refused"], caller="script")]
    assert f"409 POST /api/deliveries/{sc.delivered}/retry: delivery {sc.delivered} is done" in " ".join(
        m or "" for m in refusals
    )

    sc.dispatcher.run_once()  # still refused: a dead letter again, and a script retries it without CSRF
    assert queries.get_delivery(db, sc.dead).state == "dead"
    by_token = served.script().post(f"/api/deliveries/{sc.dead}/retry")
    assert by_token.status_code == 200 and by_token.json()["delivery"]["state"] == "pending"
    assert query(db, kinds=["retried"], limit=1)[0].calling_ae == "script"


def test_models_page_and_api(served: Served) -> None:
    page = served.browser().get("/models")
    assert page.status_code == 200
    assert 'data-model="cxr-view-filter" data-weights="ok"' in page.text
    models = {m["name"]: m for m in served.script().get("/api/models").json()["models"]}
    assert set(models) == {"cxr-view-filter", "cxr-four-class-cnn"}
    for name, m in models.items():
        assert m["weights"] == "ok" and len(m["sha256"]) == 64 and m["version"] and m["licence"], name
        assert m["sha256"] in page.text
        assert isinstance(m["demo"], bool)


def test_audit_page_and_api_with_filters(served: Served) -> None:
    sc = served.scenario
    script = served.script()
    every = script.get("/api/audit", params={"limit": "1000"}).json()["events"]
    assert len(every) >= 5 and [e["id"] for e in every] == sorted((e["id"] for e in every), reverse=True)
    done = script.get("/api/audit", params=[("kind", "job_done"), ("kind", "job_failed")]).json()["events"]
    assert sorted(e["job_id"] for e in done) == sorted([sc.done_job, sc.failed_job])
    assert {e["kind"] for e in script.get("/api/audit", params={"caller": "STORESCU"}).json()["events"]} == {"received"}
    logins = script.get("/api/audit", params={"caller": "admin", "kind": "http_request"}).json()["events"]
    assert logins and all(e["calling_ae"] == "admin" for e in logins)
    assert script.get("/api/audit", params={"study": sc.study}).json()["events"]
    assert script.get("/api/audit", params={"since": "2999-01-01T00:00"}).json()["events"] == []
    assert script.get("/api/audit", params={"until": "2000-01-01T00:00Z"}).json()["events"] == []
    first = script.get("/api/audit", params={"limit": "2"}).json()
    older = script.get("/api/audit", params={"limit": "2", "before": str(first["next_before"])}).json()
    assert [e["id"] for e in first["events"] + older["events"]] == [e["id"] for e in every[:4]]
    for params, message in (
        ({"kind": "login"}, "unknown audit kind 'login'"),
        ({"since": "yesterday"}, "since 'yesterday': expected a time like 2026-11-22T10:00 (UTC)"),
        ({"before": "x"}, "before is an event id"),
    ):
        answer = script.get("/api/audit", params=params)
        assert answer.status_code == 400 and message in answer.json()["error"]

    page = served.browser().get("/audit", params={"kind": "dead_letter", "limit": "1"})
    assert page.status_code == 200
    kinds = set(re.findall(r'data-kind="(\w+)"', page.text))
    assert kinds == {"dead_letter"} and '<option value="dead_letter" selected>' in page.text
    paged = served.browser().get("/audit", params={"limit": "1"})
    link = re.search(r'<a href="(/audit\?[^"]+)" id="older">', paged.text)
    assert link is not None and "before=" in link.group(1)
    assert served.browser().get("/audit", params={"since": "nonsense"}).status_code == 400
    _no_phi(page.text + paged.text + str(every))


@pytest.mark.parametrize(("path", "json"), [("/api/deliveries", True), ("/deliveries", False)])
def test_a_failing_handler_answers_500_without_a_traceback(
    served: Served, tmp_path: Path, caplog: pytest.LogCaptureFixture, path: str, json: bool
) -> None:
    broken = Database(f"sqlite:///{tmp_path / 'no-tables.db'}")  # a database without the node's tables
    pages = AdminPages(served.site, broken)
    [route] = [r for r in pages.routes() if getattr(r, "path", None) == path]
    scope = {
        "type": "http", "method": "GET", "path": path, "query_string": b"", "headers": [],
        "server": ("127.0.0.1", 8080), "scheme": "http", "root_path": "",
    }  # fmt: skip
    try:
        answer = asyncio.run(route.endpoint(Request(scope)))  # type: ignore[attr-defined]
    finally:
        broken.dispose()
    body = bytes(answer.body).decode()
    assert answer.status_code == 500 and "Traceback" not in body and "no such table" not in body
    assert (body == '{"error":"internal error (see the node\'s log)"}') if json else ("internal error" in body)
    assert "Traceback" in caplog.text or any(r.exc_info for r in caplog.records)  # the log has it
