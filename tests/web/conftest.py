"""Fixtures of the admin pages' browser tests: one headless Debian Chromium per module (Playwright).

Without Chromium or Playwright the tests skip, except under CI (``CI`` set), where they fail
(:func:`tests.helpers.browser.require_chromium`): ``bash scripts/dev.sh test`` installs both.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers.browser import chromium_browser as launch
from tests.helpers.browser import require_chromium


@pytest.fixture(scope="module")
def chromium_browser() -> Iterator[Any]:
    """A headless Debian Chromium (a Playwright ``Browser``) for the test module."""
    with launch(require_chromium("admin browser tests")) as browser:
        yield browser
