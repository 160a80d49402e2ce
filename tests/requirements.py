"""Tests that need an outside service skip without it locally, and fail in CI.

CI sets ``FULFILL_REQUIRE_SERVICES=1`` (see .ci/run): a PostgreSQL or browser
test that silently skipped there would prove nothing.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def services_required() -> bool:
    return os.environ.get("FULFILL_REQUIRE_SERVICES", "") not in ("", "0")


def missing_service(reason: str) -> NoReturn:
    """Skip (locally) or fail (in CI) a test whose service is absent."""
    if services_required():
        pytest.fail(f"{reason} (FULFILL_REQUIRE_SERVICES is set, so this is a failure)")
    pytest.skip(reason)
