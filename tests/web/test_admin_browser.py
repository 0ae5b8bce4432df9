"""The admin pages in Debian's Chromium, on one ``ainode serve`` process: log in, see a C-STORE become a job,
refused logins and actions, retry a dead letter and see it delivered.

The node's one destination is an Orthanc that is not running at first (its port chosen, nobody listening), with
two delivery attempts: the radiograph's results become dead letters. The retry test starts that Orthanc and
retries from the deliveries page. The node serves HTTPS (``http_tls``, a self-signed certificate the browser is
told to accept), as the README asks of admin pages reachable from other hosts. Screenshots of each page go to
``admin-screenshots`` in pytest's base temporary folder.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from node.db import DeliveryState
from node.web.admin import COOKIE
from node.web.auth import hash_password
from tests.helpers import OrthancServer, rg1_uncr_path
from tests.helpers.certs import self_signed_certificate
from tests.helpers.dicom_tools import storescu
from tests.helpers.ports import free_port
from tests.integration.nodeproc import NodeProcess

pytestmark = pytest.mark.integration

PASSWORD = "browser test password 42"


@dataclass
class Site:
    node: NodeProcess
    base: str
    orthanc: OrthancServer
    shots: Path
    store_radiograph: Callable[[], None]

    def shot(self, page: Any, name: str) -> None:
        page.screenshot(path=str(self.shots / name), full_page=True)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("admin-browser")
    orthanc = OrthancServer(work / "orthanc")  # its ports chosen now; started by the retry test
    http_port = free_port()
    certificate, key = self_signed_certificate(work)
    node = NodeProcess(
        work / "node",
        full_models=True,
        destinations={
            "pacs": {"type": "dicom", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}
        },
        delivery={"max_attempts": 2, "backoff_initial": 0.2, "backoff_max": 0.5},
        quiet_period={"default": 0.5, "CR": 0.5, "DX": 0.5},
        http_port=http_port,
        http_users=[{"name": "admin", "password_hash": hash_password(PASSWORD)}],
        http_tls={"certificate": str(certificate), "private_key": str(key)},
    ).start()
    stored: list[bool] = []

    def store_radiograph() -> None:
        if not stored:
            sent = storescu([rg1_uncr_path()], "127.0.0.1", node.port, "AINODE")
            assert sent.returncode == 0, sent.stderr
            stored.append(True)

    shots = tmp_path_factory.getbasetemp() / "admin-screenshots"
    shots.mkdir(exist_ok=True)
    try:
        yield Site(node, f"https://127.0.0.1:{http_port}", orthanc, shots, store_radiograph)
    finally:
        node.stop()
        orthanc.stop()
    assert "Traceback" not in node.log_path.read_text(), node.log()


def _log_in(browser: Any, site: Site, password: str = PASSWORD, next_path: str = "/jobs") -> tuple[Any, Any]:
    """A new browser context on ``next_path``, through the login form; (context, page)."""
    context = browser.new_context(ignore_https_errors=True)
    page = context.new_page()
    page.goto(site.base + next_path)
    assert page.url.startswith(site.base + "/login?next=")  # no session: the guard sends the browser to the form
    page.fill("#username", "admin")
    page.fill("#password", password)
    page.click("#login")
    page.wait_for_load_state()
    return context, page


def test_log_in_and_see_a_stored_radiograph_become_a_done_job(chromium_browser: Any, site: Site) -> None:
    context, page = _log_in(chromium_browser, site)
    try:
        assert page.url == site.base + "/jobs"
        assert page.inner_text("#user") == "admin"
        site.shot(page, "jobs-before.png")
        site.store_radiograph()
        # The page refreshes its table every 5 s: the job appears and ends done, without a reload.
        row = page.wait_for_selector("#jobs tr[data-state='done']", timeout=120_000)
        assert row is not None
        cells = row.inner_text()
        assert "cxr" in cells and "view:" in cells and "top:" in cells and "triage" in cells, cells
        assert re.search(r"\d+\.\d s", cells), cells  # its duration
        site.shot(page, "jobs.png")
    finally:
        context.close()


def test_a_wrong_password_is_refused_and_gives_no_session(chromium_browser: Any, site: Site) -> None:
    context, page = _log_in(chromium_browser, site, password="not the password")
    try:
        assert page.url.startswith(site.base + "/login")
        assert "wrong user name or password" in page.inner_text("#login-error")
        assert not [c for c in context.cookies() if c["name"] == COOKIE]
        site.shot(page, "login-refused.png")
        page.goto(site.base + "/jobs")
        assert page.url.startswith(site.base + "/login?next=")
    finally:
        context.close()


def test_an_action_without_the_csrf_token_is_refused(chromium_browser: Any, site: Site) -> None:
    context, page = _log_in(chromium_browser, site)
    try:
        cookie = next(c for c in context.cookies() if c["name"] == COOKIE)
        assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["secure"]  # HTTPS: http_tls
        # A script of the page posting without the token (as a forged form would): refused, still logged in.
        status = page.evaluate("async () => (await fetch('/logout', {method: 'POST'})).status")
        assert status == 403
        wrong = page.evaluate(
            "async () => (await fetch('/logout', {method: 'POST', headers: {'X-CSRF-Token': 'forged'}})).status"
        )
        assert wrong == 403
        page.goto(site.base + "/jobs")
        assert page.url == site.base + "/jobs" and page.inner_text("#user") == "admin"
        # The logout button carries the token: it works.
        page.click("#logout")
        page.wait_for_load_state()
        assert page.url == site.base + "/login"
        page.goto(site.base + "/jobs")
        assert page.url.startswith(site.base + "/login?next=")
    finally:
        context.close()


def test_retry_a_dead_letter_from_the_deliveries_page_and_see_it_delivered(chromium_browser: Any, site: Site) -> None:
    site.store_radiograph()
    deadline = time.monotonic() + 120
    while site.node.deliveries(DeliveryState.DEAD) == 0:
        assert time.monotonic() < deadline, site.node.log()
        time.sleep(0.2)
    dead = site.node.deliveries(DeliveryState.DEAD)
    context, page = _log_in(chromium_browser, site, next_path="/deliveries?state=dead")
    try:
        assert page.url == site.base + "/deliveries?state=dead"
        site.shot(page, "deliveries-dead.png")
        site.orthanc.start()  # the destination is back
        buttons = page.query_selector_all("button.retry")
        assert len(buttons) == dead, page.content()
        for _ in range(dead):
            page.click("button.retry >> nth=0")
            page.wait_for_load_state()
        srs = site.orthanc.wait_for_instances(modality="SR", timeout=60)
        assert srs
        deadline = time.monotonic() + 60
        while site.node.deliveries(DeliveryState.DONE) < dead:
            assert time.monotonic() < deadline, site.node.log()
            time.sleep(0.2)
        page.goto(site.base + "/deliveries")
        assert not page.query_selector_all("tr[data-state='dead']")
        assert len(page.query_selector_all("tr[data-state='done']")) >= dead
        site.shot(page, "deliveries-delivered.png")
    finally:
        context.close()


def test_every_page_opens_from_the_navigation_with_the_demo_banner(chromium_browser: Any, site: Site) -> None:
    site.store_radiograph()
    site.node.wait_jobs(1, timeout=120)
    context = chromium_browser.new_context(ignore_https_errors=True)
    page = context.new_page()
    try:
        page.goto(site.base + "/login")
        site.shot(page, "login.png")
        page.fill("#username", "admin")
        page.fill("#password", PASSWORD)
        page.click("#login")
        page.wait_for_load_state()
        # The full models include demonstration models (the chest findings, the CT ones): every page names them.
        assert "cxr-findings" in page.inner_text("#demo-banner") and "ct-pe" in page.inner_text("#demo-banner")
        page.click("#jobs a[href^='/jobs/']")
        page.wait_for_load_state()
        assert page.inner_text("h1").startswith("Job ")
        site.shot(page, "job.png")
        for label, heading, name in [("Models", "Models", "models.png"), ("Audit", "Audit log", "audit.png")]:
            page.click(f"header nav >> text={label}")
            page.wait_for_load_state()
            assert page.inner_text("h1") == heading and "DEMO" in page.inner_text("#demo-banner")
            site.shot(page, name)
    finally:
        context.close()
