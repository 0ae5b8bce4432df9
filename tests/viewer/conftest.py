"""Fixtures of the browser tests: one OHIF viewer and one Chromium for the session.

``ohif_browser`` serves the pinned OHIF build (``scripts/ohif.sh``, run by ``bash scripts/dev.sh test``) and
drives Debian's Chromium through Playwright; a test module points it at its own Orthanc with
``ohif_browser.server.point_at(orthanc.dicomweb_url)``. Screenshots are saved under the session's base
temporary folder, in ``viewer-screenshots``. Without the build, Chromium or Playwright the tests skip,
except under CI, where they fail (``tests.helpers.ohif.require_viewer``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.ohif import OhifBrowser, OhifServer, require_viewer


@pytest.fixture(scope="session")
def ohif_browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OhifBrowser]:
    """The OHIF viewer on a free port and a headless Chromium to look at it."""
    dist, chromium = require_viewer()
    server = OhifServer(dist, "http://127.0.0.1:1/dicom-web").start()
    browser = None
    try:
        browser = OhifBrowser(server, chromium, tmp_path_factory.getbasetemp() / "viewer-screenshots")
        yield browser
    finally:
        if browser is not None:
            browser.close()
        server.stop()
