"""The OHIF v3 viewer for browser tests: its static build served with a DICOMweb proxy.

``scripts/ohif.sh`` (run by ``bash scripts/dev.sh test``) unpacks the pinned ``@ohif/app`` build into
``.cache/ohif/dist``. :class:`OhifServer` serves that folder on a free loopback port as OHIF expects
(a single-page app: any path that is not a file is ``index.html``), answers ``/app-config.js`` with a
configuration whose one data source is ``/dicom-web`` on the same origin, and forwards ``/dicom-web/...``
to a DICOMweb server (Orthanc's plugin), so the browser needs no CORS.
"""

from __future__ import annotations

import http.server
import json
import mimetypes
import os
import shutil
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from .externals import require_integration
from .ports import free_port
from .radiographs import repo_root

__all__ = ["OhifBrowser", "OhifServer", "SrView", "app_config", "chromium_path", "ohif_dist", "require_viewer"]

_STAMP = ".ainode-ohif"
#: Headers of a DICOMweb answer passed on to the browser (hop-by-hop headers and the length, which
#: the proxy sets itself, are left out).
_PASSED_HEADERS = ("content-type", "etag", "last-modified", "cache-control")
#: Request headers forwarded to the DICOMweb server.
_FORWARDED_HEADERS = ("accept", "range", "if-none-match", "if-modified-since")

mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("text/javascript", ".mjs")


def ohif_dist() -> Path | None:
    """The unpacked OHIF build (``.cache/ohif/dist`` with the stamp of ``scripts/ohif.sh``), or None."""
    dist = repo_root() / ".cache" / "ohif" / "dist"
    if (dist / _STAMP).is_file() and (dist / "index.html").is_file():
        return dist
    return None


def chromium_path() -> str | None:
    """Debian's Chromium (package ``chromium``), or None when it is not installed."""
    for candidate in ("/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def require_viewer() -> tuple[Path, str]:
    """The OHIF build and the Chromium binary; skip the test when one is missing, except under CI.

    ``bash scripts/dev.sh test`` installs both (and CI runs that command), so under CI (``CI`` set) a
    missing piece fails the test instead of skipping it.
    """
    require_integration("Chromium")
    dist, chromium = ohif_dist(), chromium_path()
    missing = []
    if dist is None:
        missing.append("the OHIF build (bash scripts/ohif.sh)")
    if chromium is None:
        missing.append("Debian's chromium (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright Python package (test extra)")
    if missing:
        message = "viewer test needs " + ", ".join(missing) + "; bash scripts/dev.sh test installs them"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    assert dist is not None and chromium is not None
    return dist, chromium


def app_config(dicomweb_root: str = "/dicom-web") -> str:
    """OHIF's ``app-config.js``: one DICOMweb data source at ``dicomweb_root``, set for Orthanc's plugin.

    Orthanc's DICOMweb plugin has no ``includefield`` in QIDO-RS and no static WADO layout; its multipart
    answers want unquoted types (``omitQuotationForMultipartRequest``).
    """
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "dicomweb",
        "configuration": {
            "friendlyName": "ainode test DICOMweb",
            "name": "dicomweb",
            "wadoUriRoot": dicomweb_root,
            "qidoRoot": dicomweb_root,
            "wadoRoot": dicomweb_root,
            "qidoSupportsIncludeField": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "staticWado": False,
            "singlepart": "bulkdata,video,pdf",
            "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": "dicomweb",
        "dataSources": [source],
    }
    return f"window.config = {json.dumps(config, indent=2)};\n"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        self.server.requests.append(self.requestline)

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
        self._answer(head=True)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._answer(head=False)

    def _send(self, status: int, body: bytes, headers: dict[str, str], head: bool) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _answer(self, head: bool) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path == "/dicom-web" or path.startswith("/dicom-web/"):
            self._proxy(head)
            return
        if path == "/app-config.js":
            self._send(200, self.server.config.encode(), {"Content-Type": "text/javascript"}, head)
            return
        self._static(urllib.parse.unquote(path), head)

    def _static(self, path: str, head: bool) -> None:
        dist = self.server.dist
        target = (dist / path.lstrip("/")).resolve()
        if not target.is_relative_to(dist) or not target.is_file():
            # A route of the single-page app (/viewer, /segmentation...) or a missing file: index.html,
            # except for names with a file extension, which are missing files.
            if "." in path.rsplit("/", 1)[-1]:
                self._send(404, b"not found", {"Content-Type": "text/plain"}, head)
                return
            target = dist / "index.html"
        kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        self._send(200, target.read_bytes(), {"Content-Type": kind, "Cache-Control": "no-cache"}, head)

    def _proxy(self, head: bool) -> None:
        url = self.server.dicomweb_url + self.path[len("/dicom-web") :]
        headers = {k: v for k, v in self.headers.items() if k.lower() in _FORWARDED_HEADERS}
        try:
            answer = self.server.session.request("HEAD" if head else "GET", url, headers=headers, timeout=60)
        except requests.RequestException as error:
            self._send(502, str(error).encode(), {"Content-Type": "text/plain"}, head)
            return
        passed = {k: v for k, v in answer.headers.items() if k.lower() in _PASSED_HEADERS}
        self._send(answer.status_code, answer.content, passed, head)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, dist: Path, dicomweb_url: str, config: str) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.dist = dist.resolve()
        self.dicomweb_url = dicomweb_url.rstrip("/")
        self.config = config
        self.session = requests.Session()
        self.requests: list[str] = []


class OhifServer:
    """The OHIF build on ``http://127.0.0.1:PORT``, its ``/dicom-web`` forwarded to ``dicomweb_url``.

    Parameters
    ----------
    dist : pathlib.Path
        The unpacked ``dist/`` folder of ``@ohif/app`` (:func:`ohif_dist`).
    dicomweb_url : str
        The DICOMweb root to forward to, e.g. ``http://127.0.0.1:8042/dicom-web``.
    """

    def __init__(self, dist: Path, dicomweb_url: str) -> None:
        self.dist = dist
        self.dicomweb_url = dicomweb_url
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def start(self) -> OhifServer:
        """Bind a free port and serve in a background thread."""
        self._server = _Server(free_port(), self.dist, self.dicomweb_url, app_config())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="ohif-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.session.close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def point_at(self, dicomweb_url: str) -> None:
        """Forward ``/dicom-web`` to another DICOMweb root from now on (one viewer, one PACS per test module)."""
        self.dicomweb_url = dicomweb_url
        if self._server is not None:
            self._server.dicomweb_url = dicomweb_url.rstrip("/")

    @property
    def requests(self) -> list[str]:
        """The request lines served so far (for failure messages)."""
        return list(self._server.requests) if self._server is not None else []

    def viewer_url(self, study_uid: str) -> str:
        """The viewer route that opens one study."""
        return f"{self.url}/viewer?StudyInstanceUIDs={urllib.parse.quote(study_uid)}"


#: Chromium's switches for a headless run on a machine without network: no sandbox (root), none of the
#: browser's own background connections.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
)
#: OHIF's onboarding tour covers the viewport on a first visit; marked as shown in local storage.
_NO_TOUR = "localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));"
#: Each annotation drawn on a viewport: its label lines (SVG tspans of the annotation's text group), each with
#: whether it lies wholly inside the viewport (OHIF puts a label beside its region, which may be off the edge).
_ANNOTATIONS_JS = """() => {
    const found = [];
    for (const svg of document.querySelectorAll('svg.svg-layer')) {
        const box = svg.getBoundingClientRect();
        for (const g of svg.querySelectorAll('g[data-annotation-uid]')) {
            const lines = Array.from(g.querySelectorAll('tspan')).map(t => {
                const r = t.getBoundingClientRect();
                const inside = r.left >= box.left - 1 && r.right <= box.right + 1
                    && r.top >= box.top - 1 && r.bottom <= box.bottom + 1;
                return [t.textContent, inside];
            });
            if (lines.length) found.push(lines);
        }
    }
    return found;
}"""


@dataclass
class SrView:
    """What OHIF shows once a study's SR is opened in the viewport.

    Attributes
    ----------
    annotations : list of list of str
        Per measurement shown on the image(s), the lines of its label that can be read (wholly inside the
        viewport), for every measurement the viewport stepped through (the SR viewport's arrows), in order.
    clipped : list of str
        Label lines drawn partly or wholly outside the viewport: in the page, not readable on the screen.
    errors : list of str
        Error notifications and uncaught page errors.
    screenshots : list of pathlib.Path
        The screenshots taken (one per measurement stepped to).
    nudged : bool
        Whether the measurements were drawn only after a step to the next one and back.
    retried : bool
        Whether the SR was opened a second time because the first drew nothing.
    """

    annotations: list[list[str]] = field(default_factory=list)
    clipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    screenshots: list[Path] = field(default_factory=list)
    nudged: bool = False
    retried: bool = False

    def labels(self) -> list[str]:
        """Every annotation's label as one line (lines joined with ' | ')."""
        return [" | ".join(lines) for lines in self.annotations]


class OhifBrowser:
    """Debian's Chromium, driven by Playwright, on an :class:`OhifServer`.

    Parameters
    ----------
    server : OhifServer
        The viewer.
    chromium : str
        The browser binary (never a browser Playwright downloads).
    screenshots : pathlib.Path
        Folder for the screenshots (test artefacts).
    """

    def __init__(self, server: OhifServer, chromium: str, screenshots: Path) -> None:
        from playwright.sync_api import sync_playwright

        self.server = server
        self.screenshots = screenshots
        screenshots.mkdir(parents=True, exist_ok=True)
        self._playwright = sync_playwright().start()
        self._browser = self._playwright.chromium.launch(
            executable_path=chromium, args=list(CHROMIUM_ARGS), headless=True
        )

    def close(self) -> None:
        """Close the browser and Playwright's driver."""
        self._browser.close()
        self._playwright.stop()

    def study_list(self, name: str) -> str:
        """The study list's text (OHIF's start page, a query of the DICOMweb server); saves ``NAME.png``."""
        context = self._browser.new_context(viewport={"width": 1920, "height": 1080})
        context.add_init_script(_NO_TOUR)
        page = context.new_page()
        try:
            page.goto(self.server.url + "/")
            page.get_by_text("Study List").first.wait_for(timeout=30_000)
            page.wait_for_timeout(2_000)  # the rows of the first query
            page.screenshot(path=str(self.screenshots / f"{name}.png"))
            return str(page.inner_text("body"))
        finally:
            context.close()

    def open_sr(self, study_uid: str, series_description: str, name: str, max_steps: int = 1) -> SrView:
        """Open a study's SR as :meth:`_open_sr_once` does; once more in a new page when OHIF drew nothing.

        Now and then (seen in about one run of three with a large radiograph) OHIF shows the SR's image and
        never draws its measurements; the same SR opened again draws them. A second attempt that draws
        nothing either is what the test sees.
        """
        view = self._open_sr_once(study_uid, series_description, name, max_steps)
        if view.annotations or view.clipped or view.errors:
            return view
        again = self._open_sr_once(study_uid, series_description, f"{name}-again", max_steps)
        again.screenshots[:0] = view.screenshots
        again.retried = True
        return again

    def _open_sr_once(self, study_uid: str, series_description: str, name: str, max_steps: int) -> SrView:
        """Open a study in the viewer, double-click its SR series in the study browser and read the viewport.

        The SR viewport shows the image its first measurement refers to, with the labels of the measurements
        on that image; ``max_steps`` > 1 steps on with the viewport's "next measurement" arrow, up to that
        many measurements in all (the SR of a CT series has them on several slices). A screenshot is saved
        as ``NAME-sr-N.png`` at each step, and ``NAME-study.png`` before the SR is opened.
        """
        view = SrView()
        context = self._browser.new_context(viewport={"width": 1920, "height": 1080})  # a reading-room screen
        context.add_init_script(_NO_TOUR)
        page = context.new_page()
        page.on("pageerror", lambda error: view.errors.append(f"page error: {error}"))
        try:
            page.goto(self.server.viewer_url(study_uid))
            entry = page.get_by_text(series_description, exact=False).first
            entry.wait_for(timeout=30_000)
            # The first image is drawn (its window shows in the overlay) before the SR replaces it.
            page.locator('[data-cy="viewport-overlay-bottom-left"]').get_by_text("W:").first.wait_for(timeout=30_000)
            page.wait_for_timeout(1_000)
            self._shot(page, view, f"{name}-study.png")
            entry.dblclick()
            seen: set[tuple[tuple[str, bool], ...]] = set()
            for step in range(max_steps):
                annotations = self._wait_annotations(page, view)
                self._decline_tracking(page)
                self._shot(page, view, f"{name}-sr-{step + 1}.png")
                for lines in annotations:
                    if tuple(lines) not in seen:
                        seen.add(tuple(lines))
                        view.annotations.append([text for text, inside in lines if inside])
                        view.clipped.extend(text for text, inside in lines if not inside)
                arrow = page.locator('[data-cy="viewport-action-arrows-right"]')
                if step + 1 == max_steps or not annotations or arrow.count() == 0:
                    break
                arrow.first.click()
                page.wait_for_timeout(800)
            view.errors.extend(self._notifications(page))
        finally:
            context.close()
        return view

    @staticmethod
    def _decline_tracking(page: Any) -> None:
        """Answer "No" to OHIF's "continue tracking measurements?" banner, which covers the viewport's top
        (the SR stays displayed, read-only)."""
        banner = page.get_by_text("Do you want to continue tracking measurements")
        if banner.count():
            page.get_by_role("button", name="No").first.click()
            page.wait_for_timeout(300)

    def _wait_annotations(self, page: Any, view: SrView, timeout: float = 20.0) -> list[list[tuple[str, bool]]]:
        """The annotations' labels once some are drawn (or an error shows, or ``timeout`` seconds pass).

        Now and then OHIF shows the SR's image without drawing its measurements until the viewport renders
        again; half-way through the wait, a step to the next measurement and back makes it render.
        """
        start = time.monotonic()
        nudged = False
        while True:
            annotations: list[list[tuple[str, bool]]] = page.evaluate(_ANNOTATIONS_JS)
            waited = time.monotonic() - start
            if annotations or waited > timeout or view.errors or self._notifications(page):
                page.wait_for_timeout(500)  # labels of the other measurements on the same image
                return [
                    [(str(text), bool(inside)) for text, inside in lines] for lines in page.evaluate(_ANNOTATIONS_JS)
                ]
            arrows = page.locator('[data-cy="viewport-action-arrows"]')
            if not nudged and waited > timeout / 2 and arrows.count():
                nudged = True
                view.nudged = True
                page.locator('[data-cy="viewport-action-arrows-right"]').first.click()
                page.wait_for_timeout(500)
                page.locator('[data-cy="viewport-action-arrows-left"]').first.click()
            page.wait_for_timeout(250)

    @staticmethod
    def _notifications(page: Any) -> list[str]:
        found = page.get_by_text("Something went wrong").all()
        return [f"notification: {item.inner_text()}" for item in found]

    def _shot(self, page: Any, view: SrView, filename: str) -> None:
        path = self.screenshots / filename
        page.screenshot(path=str(path))
        view.screenshots.append(path)
