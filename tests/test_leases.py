"""Leases under faults that are not crashes: hosts whose clocks differ, a heartbeat whose
database write fails.

Two instances share one PostgreSQL database, each a whole ``Service`` (engine,
store, actions) in this process; the webhook-action receiver counts each
line item's performances by ``Idempotency-Key``. Its answer is slow, longer
than a lease, so that a lease which is not kept alive, or is judged by the
wrong clock, is visibly taken over while the first instance still performs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from fulfill.config import load_settings
from fulfill.engine import utcnow
from fulfill.records import FULFILLED, FULFILLING, MAY_REPLACE, PENDING
from fulfill.service import Service
from tests.conftest import (
    HOOK_METADATA,
    TEST_KEY,
    WEBHOOK_SECRET,
    EmulatorServer,
    hook_catalog,
    postgres_database,
)
from tests.servers import Receiver

TEN_MINUTES = timedelta(minutes=10)


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres)])
def pg_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


@contextlib.asynccontextmanager
async def instances(
    database_url: str, shop: EmulatorServer, receiver: Receiver, tmp_path: Path, lease: float
) -> AsyncIterator[tuple[Service, Service]]:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(hook_catalog(receiver.url, timeout="60s"))
    settings = load_settings(
        env_file=None,
        STRIPE_SECRET_KEY=TEST_KEY,
        STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        STRIPE_API_BASE=shop.url,
        FULFILL_DATABASE_URL=database_url,
        FULFILL_CATALOG=str(catalog),
        FULFILL_LEASE_SECONDS=lease,
        FULFILL_MAIL="false",
    )
    first = await Service.start(settings)
    second = await Service.start(settings, migrate=False)
    try:
        yield first, second
    finally:
        for service in (first, second):
            await service.engine.drain(timeout=60)
            await service.close()


def paid_session(shop: EmulatorServer, items: int) -> tuple[str, set[str]]:
    prices = [shop.price(f"Item {n}", product_metadata=HOOK_METADATA) for n in range(items)]
    session = shop.session([(price, 1) for price in prices])
    shop.complete(session.id, "paid")
    keys = {f"{session.id}:{item['id']}" for item in shop.emulator.state.line_items[session.id]}
    return str(session.id), keys


def performances(receiver: Receiver) -> Counter[str]:
    return Counter(r.headers["idempotency-key"] for r in receiver.received)


async def keep_triggering(service: Service, session_id: str, until: Callable[[], bool]) -> int:
    """What a busy second instance does: landing visits and worker passes, every 0.3 s."""
    passes = 0
    while not until():
        await service.engine.fulfill_checkout(session_id, trigger="landing", wait=0.2)
        await service.engine.run_due()
        passes += 1
        await asyncio.sleep(0.3)
    return passes


async def settled(service: Service, session_id: str, timeout: float) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        record = await service.store.get(session_id)
        assert record is not None
        if record.status != FULFILLING or loop.time() > deadline:
            return record.status
        await asyncio.sleep(0.1)


def metric(service: Service, name: str) -> float:
    return service.engine.metrics.registry.get_sample_value(name) or 0.0


def skewed(by: timedelta) -> Callable[[], datetime]:
    return lambda: utcnow() + by


@pytest.mark.parametrize("skew", [TEN_MINUTES, -TEN_MINUTES], ids=["ahead", "behind"])
async def test_a_host_clock_off_by_ten_minutes_takes_over_no_live_lease(
    emulator_server: EmulatorServer,
    receiver: Receiver,
    tmp_path: Path,
    skew: timedelta,
    database_url: str,
) -> None:
    """On PostgreSQL the database's clock judges; on SQLite the process's monotonic one."""
    # Each item takes longer than the lease: only renewals keep it.
    receiver.delay = 5.0
    session_id, keys = paid_session(emulator_server, items=2)
    async with instances(database_url, emulator_server, receiver, tmp_path, lease=3.0) as (a, b):
        b.engine.clock = skewed(skew)
        first = asyncio.create_task(a.engine.fulfill_checkout(session_id, wait=60))
        await asyncio.sleep(0.5)  # a has claimed and is performing the first item
        passes = await keep_triggering(b, session_id, until=first.done)
        record = await first
        assert performances(receiver) == Counter(dict.fromkeys(keys, 1))
        assert record.status == FULFILLED
        assert passes >= 3, "the second instance kept trying while the first performed"
        assert metric(b, "fulfill_lease_takeovers_total") == 0


@pytest.mark.parametrize("skew", [TEN_MINUTES, -TEN_MINUTES], ids=["ahead", "behind"])
async def test_with_clocks_apart_a_dead_workers_lease_is_taken_over_when_it_ends(
    emulator_server: EmulatorServer,
    receiver: Receiver,
    tmp_path: Path,
    skew: timedelta,
    pg_url: str,
) -> None:
    session_id, keys = paid_session(emulator_server, items=2)
    lease = 8.0
    async with instances(pg_url, emulator_server, receiver, tmp_path, lease=lease) as (a, b):
        b.engine.clock = skewed(skew)
        # A worker on a host with a right clock records the session, claims
        # it and dies at once: its lease is never renewed.
        snapshot = await a.stripe.session(session_id)
        await a.store.observe(snapshot, PENDING, MAY_REPLACE[PENDING], utcnow())
        assert await a.store.claim(session_id, "dead-host:1:dead", lease, utcnow())
        # Within its lease, the skewed instance leaves it alone.
        record = await b.engine.fulfill_checkout(session_id, trigger="landing", wait=0)
        assert record.status == FULFILLING
        await b.engine.run_due()
        assert receiver.received == []
        # Once it ends on the database's clock, the skewed instance takes over.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + lease + 60
        while loop.time() < deadline:
            await b.engine.run_due()
            if await settled(b, session_id, timeout=0) == FULFILLED:
                break
            await asyncio.sleep(0.3)
        assert await settled(b, session_id, timeout=0) == FULFILLED
        assert performances(receiver) == Counter(dict.fromkeys(keys, 1))
        assert metric(b, "fulfill_lease_takeovers_total") == 1


class FlakyRenewals:
    """Makes the chosen calls of ``store.renew`` fail as a dropped connection would."""

    def __init__(self, renew: Callable[..., Any], failing: Callable[[int], bool]) -> None:
        self.renew = renew
        self.failing = failing
        self.calls = 0
        self.failed = 0

    async def __call__(self, *args: Any, **kwargs: Any) -> bool:
        self.calls += 1
        if self.failing(self.calls):
            self.failed += 1
            raise OperationalError("UPDATE fulfillments …", None, ConnectionResetError("injected"))
        renewed: bool = await self.renew(*args, **kwargs)
        return renewed


async def test_database_errors_in_the_heartbeat_do_not_let_a_live_lease_expire(
    emulator_server: EmulatorServer, receiver: Receiver, tmp_path: Path, pg_url: str
) -> None:
    receiver.delay = 7.0
    session_id, keys = paid_session(emulator_server, items=2)
    async with instances(pg_url, emulator_server, receiver, tmp_path, lease=4.5) as (a, b):
        # Every other renewal fails, the first among them: each beat must try
        # again, not give up.
        flaky = FlakyRenewals(a.store.renew, failing=lambda n: n % 2 == 1)
        a.store.renew = flaky  # type: ignore[method-assign]
        first = asyncio.create_task(a.engine.fulfill_checkout(session_id, wait=60))
        await asyncio.sleep(0.5)
        await keep_triggering(b, session_id, until=first.done)
        (outcome,) = await asyncio.gather(first, return_exceptions=True)
        assert performances(receiver) == Counter(dict.fromkeys(keys, 1))
        assert flaky.failed >= 3, "the faults were injected while the actions ran"
        assert not isinstance(outcome, BaseException), outcome
        assert outcome.status == FULFILLED
        assert metric(b, "fulfill_lease_takeovers_total") == 0
        assert metric(a, "fulfill_lease_renewal_errors_total") >= flaky.failed - 1
