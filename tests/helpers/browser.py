"""Debian's Chromium for browser tests, driven by Playwright (never a browser Playwright downloads).

:func:`require_chromium` checks what a browser test needs and skips the test when something is missing,
except under CI (``CI`` set), where ``bash scripts/dev.sh test`` has installed it all and a missing piece
fails the test. :func:`chromium_browser` launches the headless browser with the switches of
:data:`tests.helpers.ohif.CHROMIUM_ARGS`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest

from .externals import require_integration
from .ohif import CHROMIUM_ARGS, chromium_path

__all__ = ["chromium_browser", "require_chromium"]


def require_chromium(purpose: str, missing: Sequence[str] = ()) -> str:
    """Debian's Chromium binary, with Playwright importable; else skip (fail under CI) saying what is missing.

    ``missing`` names other pieces the caller found missing, for the same message.
    """
    require_integration("Chromium")
    chromium = chromium_path()
    absent = list(missing)
    if chromium is None:
        absent.append("Debian's chromium (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        absent.append("the playwright Python package (test extra)")
    if absent:
        message = f"{purpose} needs " + ", ".join(absent) + "; bash scripts/dev.sh test installs them"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    assert chromium is not None
    return chromium


#: The one Playwright driver of this process and how many browsers use it. Playwright's sync API runs its
#: driver's event loop in this thread: a second ``sync_playwright().start()`` while the first is alive (the
#: viewer tests keep theirs for the session) fails with "using Playwright Sync API inside the asyncio loop".
_driver: list[Any] = []


@contextmanager
def chromium_browser(chromium: str) -> Iterator[Any]:
    """A headless Chromium (a Playwright ``Browser``), closed at the end; the driver is shared while in use."""
    from playwright.sync_api import sync_playwright

    if not _driver:
        _driver[:] = [sync_playwright().start(), 0]
    _driver[1] += 1
    try:
        browser = _driver[0].chromium.launch(executable_path=chromium, args=list(CHROMIUM_ARGS), headless=True)
        try:
            yield browser
        finally:
            browser.close()
    finally:
        _driver[1] -= 1
        if _driver[1] == 0:
            playwright = _driver[0]
            _driver.clear()
            playwright.stop()
