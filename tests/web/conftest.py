"""Fixtures of the admin pages' browser tests: Debian's Chromium driven by Playwright.

``chromium_browser`` is one headless Chromium for the module (never a browser Playwright downloads), launched
as the viewer tests launch theirs (:data:`tests.helpers.ohif.CHROMIUM_ARGS`). Without Chromium or Playwright the
tests skip, except under CI (``CI`` set), where they fail: ``bash scripts/dev.sh test`` installs both.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers.externals import require_integration
from tests.helpers.ohif import CHROMIUM_ARGS, chromium_path


@pytest.fixture(scope="module")
def chromium_browser() -> Iterator[Any]:
    """A headless Debian Chromium (a Playwright ``Browser``) for the test module."""
    require_integration("Chromium")
    chromium = chromium_path()
    missing = [] if chromium else ["Debian's chromium (apt-get install chromium)"]
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing.append("the playwright Python package (test extra)")
    if missing:
        message = "admin browser tests need " + ", ".join(missing) + "; bash scripts/dev.sh test installs them"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=chromium, args=list(CHROMIUM_ARGS), headless=True)
        try:
            yield browser
        finally:
            browser.close()
    finally:
        playwright.stop()
