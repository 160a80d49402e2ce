"""A flood of unknown session IDs cannot spend the Stripe API's capacity (SPEC §10.6)."""

from __future__ import annotations

import secrets
import string

import pytest

from fulfill.guard import (
    ClientLimits,
    LookupGuard,
    TooManyCheckouts,
    TooManyLookups,
    TooManyRequests,
)
from tests.conftest import ServiceFactory
from tests.test_engine import wait_status


def random_id() -> str:
    alphabet = string.ascii_letters + string.digits
    return "cs_test_" + "".join(secrets.choice(alphabet) for _ in range(58))


async def test_per_client_and_total_allowances() -> None:
    guard = LookupGuard(per_client_per_minute=3, total_per_second=4)
    for _ in range(3):
        await guard.admit("10.0.0.1")
    with pytest.raises(TooManyLookups) as refused:
        await guard.admit("10.0.0.1")
    assert refused.value.retry_after == pytest.approx(20)
    await guard.admit("10.0.0.2")
    with pytest.raises(TooManyLookups, match="just now"):
        await guard.admit("10.0.0.3")


async def test_allowances_under_one_still_admit_one() -> None:
    """Half a checkout a minute is one per two minutes, not none (aiolimiter's bucket < 1)."""
    limits = ClientLimits(per_client_per_minute=0.5, total_per_second=0.1, refused=TooManyCheckouts)
    await limits.admit("10.0.0.1")
    with pytest.raises(TooManyCheckouts, match="several checkouts") as refused:
        await limits.admit("10.0.0.1")
    assert refused.value.retry_after == pytest.approx(120)
    with pytest.raises(TooManyCheckouts, match="a lot of orders") as everyone:
        await limits.admit("10.0.0.2")
    assert everyone.value.retry_after == pytest.approx(10)


async def test_the_map_of_clients_stays_bounded() -> None:
    limits = ClientLimits(per_client_per_minute=1, total_per_second=1e9, max_clients=100)
    for n in range(1000):
        await limits.admit(f"10.0.{n // 256}.{n % 256}")
    assert len(limits) == 100
    # The most recent are remembered (refused), the first forgotten (a fresh allowance).
    with pytest.raises(TooManyRequests):
        await limits.admit("10.0.3.231")
    await limits.admit("10.0.0.0")


def test_missing_sessions_are_remembered_briefly() -> None:
    now = [100.0]
    guard = LookupGuard(unknown_ttl=60, clock=lambda: now[0])
    guard.remember_missing("cs_test_gone")
    assert guard.known_missing("cs_test_gone")
    now[0] += 61
    assert not guard.known_missing("cs_test_gone")


def test_a_flood_of_unknown_ids_costs_a_bounded_number_of_api_calls(
    service_factory: ServiceFactory,
) -> None:
    service = service_factory(FULFILL_LOOKUPS_PER_CLIENT=5, FULFILL_LOOKUPS_PER_SECOND=1000)
    paid = service.paid_session()
    assert service.shop.get("/_emulator/webhooks/idle")["idle"]  # known before any visit
    wait_status(service, paid, "fulfilled")
    service.shop.control.delete("/_emulator/requests")
    statuses = [service.landing(random_id()).status_code for _ in range(30)]
    assert statuses.count(404) == 5
    assert statuses.count(429) == 25
    refused = service.landing(random_id(), as_json=False)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert "Too many requests" in refused.text
    retrieves = [
        r for r in service.shop.get("/_emulator/requests")["requests"] if r["method"] == "GET"
    ]
    assert len(retrieves) == 5
    # A known session is never limited, and an ID Stripe did not find is answered from memory.
    assert service.landing(paid).json()["status"] == "fulfilled"
    service.shop.control.delete("/_emulator/requests")
    assert service.landing(random_id()).status_code == 429  # this client's budget is spent
    assert service.shop.get("/_emulator/requests")["total"] == 0


def test_unknown_id_answers_are_cached(service_factory: ServiceFactory) -> None:
    service = service_factory()
    gone = random_id()
    assert service.landing(gone).status_code == 404
    before = service.shop.get("/_emulator/requests")["total"]
    for _ in range(10):
        assert service.landing(gone).status_code == 404
    assert service.shop.get("/_emulator/requests")["total"] == before
