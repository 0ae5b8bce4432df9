"""The OHIF v3 viewer for browser tests: ``ainode viewer``'s server (:mod:`node.viewer`) and a browser on it.

``scripts/ohif.sh`` (run by ``bash scripts/dev.sh test``) unpacks the pinned ``@ohif/app`` build into
``.cache/ohif/dist``. :class:`OhifServer` runs the product's :class:`node.viewer.ViewerServer` on a free
loopback port with that build, its ``/dicom-web`` forwarded to a test's DICOMweb server (Orthanc's plugin);
:class:`OhifBrowser` drives Debian's Chromium on it with Playwright.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.settings import ViewerDicomWebSettings
from node.viewer import DEFAULT_OHIF_DIR, STAMP, ViewerServer
from node.web.pages import viewer_link

__all__ = ["OhifBrowser", "OhifServer", "SegView", "SrView", "chromium_path", "ohif_dist", "require_viewer"]


def ohif_dist() -> Path | None:
    """The build ``scripts/ohif.sh`` unpacked (``.cache/ohif/dist`` with its stamp), or None."""
    if (DEFAULT_OHIF_DIR / STAMP).is_file() and (DEFAULT_OHIF_DIR / "index.html").is_file():
        return DEFAULT_OHIF_DIR
    return None


def _png(data: bytes) -> Any:
    """A PNG screenshot as an RGB image (Pillow)."""
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


def chromium_path() -> str | None:
    """Debian's Chromium (package ``chromium``), or None when it is not installed."""
    for candidate in ("/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def require_viewer() -> tuple[Path, str]:
    """The OHIF build and the Chromium binary; skip the test when one is missing, except under CI
    (:func:`tests.helpers.browser.require_chromium`)."""
    from .browser import require_chromium

    dist = ohif_dist()
    chromium = require_chromium("viewer test", [] if dist is not None else ["the OHIF build (bash scripts/ohif.sh)"])
    assert dist is not None
    return dist, chromium


class OhifServer:
    """``ainode viewer``'s server on ``http://127.0.0.1:PORT``, its ``/dicom-web`` forwarded to ``dicomweb_url``.

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
        self._server: ViewerServer | None = None
        self.url = ""

    def start(self) -> OhifServer:
        """Bind a free port and serve in a background thread."""
        self._server = ViewerServer(self.dist, ViewerDicomWebSettings(url=self.dicomweb_url)).start()
        self.url = self._server.url
        return self

    def stop(self) -> None:
        """Stop serving and close the port."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    def point_at(self, dicomweb_url: str) -> None:
        """Forward ``/dicom-web`` to another DICOMweb root from now on (one viewer, one PACS per test module)."""
        self.dicomweb_url = dicomweb_url
        if self._server is not None:
            self._server.proxy.point_at(dicomweb_url)

    def viewer_url(self, study_uid: str) -> str:
        """The viewer route that opens one study: the admin pages' link (:func:`node.web.pages.viewer_link`)."""
        link = viewer_link(self.url, study_uid)
        assert link is not None
        return link


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


#: Records the text of every notification OHIF shows (Sonner toasts come and go within seconds) in
#: ``window.__ainodeToasts``, from the page's first script on.
_RECORD_TOASTS = """(() => {
    window.__ainodeToasts = [];
    const seen = new WeakSet();
    new MutationObserver(() => {
        for (const toast of document.querySelectorAll('[data-sonner-toast]')) {
            if (!seen.has(toast) && toast.innerText.trim()) {
                seen.add(toast);
                window.__ainodeToasts.push(toast.innerText.trim().replace(/\\s*\\n\\s*/g, ': '));
            }
        }
    }).observe(document, {childList: true, subtree: true, characterData: true});
})();"""


@dataclass
class SegView:
    """What OHIF shows once a study's SEG is opened and loaded ("Yes" to its question) in the viewport.

    Attributes
    ----------
    labels : list of str
        The segments the segmentation panel lists, in its order.
    colours : list of tuple of int
        Each listed segment's colour (RGB) as the panel shows it.
    drawn : dict of str to int
        Per segment label, how many pixels of the viewport change when the segment is hidden: what of it
        is drawn over the image.
    slice_label : str
        The viewport's image number overlay ("I:29 (29/60)"): the slice the segmentation is drawn on.
    notifications : list of str
        Every notification OHIF showed from the double-click on (warnings included).
    errors : list of str
        Uncaught page errors.
    screenshots : list of pathlib.Path
        ``NAME-seg.png``, the loaded segmentation with the panel open.
    """

    labels: list[str] = field(default_factory=list)
    colours: list[tuple[int, int, int]] = field(default_factory=list)
    drawn: dict[str, int] = field(default_factory=dict)
    slice_label: str = ""
    notifications: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    screenshots: list[Path] = field(default_factory=list)


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
        from .browser import chromium_browser

        self.server = server
        self.screenshots = screenshots
        screenshots.mkdir(parents=True, exist_ok=True)
        self._stack = contextlib.ExitStack()
        self._browser = self._stack.enter_context(chromium_browser(chromium))

    def close(self) -> None:
        """Close the browser and Playwright's driver."""
        self._stack.close()

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
        never draws its measurements; the same SR opened again draws them (on a loaded machine, once in six
        runs, only at the third opening). A third attempt that draws nothing either is what the test sees.
        """
        view = self._open_sr_once(study_uid, series_description, name, max_steps)
        for attempt in range(2, 4):
            if view.annotations or view.clipped or view.errors:
                break
            again = self._open_sr_once(study_uid, series_description, f"{name}-again{attempt}", max_steps)
            again.screenshots[:0] = view.screenshots
            again.retried = True
            view = again
        return view

    def _open_sr_once(self, study_uid: str, series_description: str, name: str, max_steps: int) -> SrView:
        """Open a study in the viewer, double-click its SR series in the study browser and read the viewport.

        The SR viewport shows the image its first measurement refers to, with the labels of the measurements
        on that image; ``max_steps`` > 1 steps on with the viewport's "next measurement" arrow, up to that
        many measurements in all (the SR of a CT series has them on several slices). A screenshot is saved
        as ``NAME-sr-N.png`` at each step, and ``NAME-study.png`` before the SR is opened.
        """
        view = SrView()
        with self._study_page(study_uid, series_description, view.errors) as (page, entry):
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
        return view

    @contextlib.contextmanager
    def _study_page(self, study_uid: str, series_description: str, errors: list[str]) -> Iterator[tuple[Any, Any]]:
        """A new page on the study (the admin pages' link), once its first image is drawn: the page and the
        study browser's entry of the series ``series_description``. Uncaught page errors go to ``errors``."""
        context = self._browser.new_context(viewport={"width": 1920, "height": 1080})  # a reading-room screen
        context.add_init_script(_NO_TOUR)
        context.add_init_script(_RECORD_TOASTS)
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
        try:
            page.goto(self.server.viewer_url(study_uid))
            entry = page.get_by_text(series_description, exact=False).first
            entry.wait_for(timeout=30_000)
            # The first image is drawn (its window shows in the overlay) before a result replaces it.
            page.locator('[data-cy="viewport-overlay-bottom-left"]').get_by_text("W:").first.wait_for(timeout=30_000)
            yield page, entry
        finally:
            context.close()

    def open_seg(self, study_uid: str, series_description: str, name: str) -> SegView:
        """Open a study, double-click its SEG series, answer "Yes" to loading it, open the segmentation panel.

        Reads the panel's segments (label, colour), then hides each segment in turn and counts the viewport's
        pixels that change: a segment listed but not drawn changes none. Saves ``NAME-seg.png``.
        """
        import numpy as np

        view = SegView()
        with self._study_page(study_uid, series_description, view.errors) as (page, entry):
            entry.dblclick()
            page.get_by_role("button", name="Yes").first.click(timeout=30_000)  # "open this Segmentation?"
            page.locator('[data-cy="panelSegmentation-btn"]').click()
            rows = page.locator('[data-cy="data-row"]')
            rows.first.wait_for(timeout=30_000)
            page.wait_for_timeout(500)  # the overlay's first render
            self._shot(page, view, f"{name}-seg.png")
            viewport = page.locator('[data-cy="viewport-pane"]').first
            view.slice_label = viewport.locator('[data-cy="viewport-overlay-bottom-right"]').inner_text().strip()

            def pixels() -> Any:
                return np.asarray(_png(viewport.screenshot()), dtype=np.int16)

            shown = pixels()
            for index in range(rows.count()):
                row = rows.nth(index)
                label = row.locator('[data-cy="data-row-title"]').inner_text().strip()
                view.labels.append(label)
                colour = row.locator('[data-cy="data-row-colorhex"]').evaluate(
                    "e => getComputedStyle(e).backgroundColor"
                )
                view.colours.append(tuple(int(v) for v in re.findall(r"\d+", colour)[:3]))  # type: ignore[arg-type]
                toggle = row.locator('[data-cy="data-row-visibility-toggle"]')
                row.hover()
                toggle.click()
                page.wait_for_timeout(300)
                view.drawn[label] = int((np.abs(pixels() - shown).sum(axis=2) > 30).sum())
                toggle.click()
                page.wait_for_timeout(300)
            view.notifications = [str(text) for text in page.evaluate("window.__ainodeToasts || []")]
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

    def _shot(self, page: Any, view: SrView | SegView, filename: str) -> None:
        path = self.screenshots / filename
        page.screenshot(path=str(path))
        view.screenshots.append(path)
