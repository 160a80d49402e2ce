"""Tests that need an outside service skip without it locally, and fail in CI.

CI sets ``FULFILL_REQUIRE_SERVICES=1`` (see .ci/run): a PostgreSQL or browser
test that silently skipped there would prove nothing.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from typing import NoReturn

import pytest


def services_required() -> bool:
    return os.environ.get("FULFILL_REQUIRE_SERVICES", "") not in ("", "0")


def missing_service(reason: str) -> NoReturn:
    """Skip (locally) or fail (in CI) a test whose service is absent."""
    if services_required():
        pytest.fail(f"{reason} (FULFILL_REQUIRE_SERVICES is set, so this is a failure)")
    pytest.skip(reason)


CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


@dataclass(frozen=True)
class Chromium:
    browser: str
    driver: str


def require_chromium() -> Chromium:
    """Debian's Chromium and ChromeDriver, and the selenium library; skip or fail without."""
    browser = next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)
    if browser is None:
        missing_service("Chromium is not installed (apt-get install chromium chromium-driver)")
    driver = shutil.which("chromedriver")
    if driver is None:
        missing_service("ChromeDriver is not installed (apt-get install chromium-driver)")
    if importlib.util.find_spec("selenium") is None:
        missing_service("the selenium library is not installed in this environment")
    return Chromium(browser, driver)
