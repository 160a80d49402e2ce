"""The background worker's webhook events: claimed by one instance each, never waited on for long.

Two instances are two ``Service`` objects (each its own store connection
pool, engine and Stripe client) on one database, SQLite or PostgreSQL, as two
hosts would be. The events are recorded ``received`` and old, as a handler
whose process died after the 2xx leaves them.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import update

from fulfill.config import Settings, load_settings
from fulfill.engine import utcnow
from fulfill.records import MAY_REPLACE, PENDING
from fulfill.service import Service
from fulfill.store import Store
from fulfill.store.inbox import Inbox
from fulfill.store.schema import webhook_events
from fulfill.worker import Worker
from tests.conftest import HOOK_METADATA, TEST_KEY, EmulatorServer, hook_catalog
from tests.servers import Receiver

COMPLETED = "checkout.session.completed"
# Generous against the hour a pass could wait before; a pass now waits about 2 s.
PASS_BOUND = 20.0


def settings_for(tmp_path: Path, shop: EmulatorServer, receiver: Receiver, url: str) -> Settings:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(hook_catalog(receiver.url))
    return load_settings(
        env_file=None,
        STRIPE_SECRET_KEY=TEST_KEY,
        STRIPE_API_BASE=shop.url,
        FULFILL_DATABASE_URL=url,
        FULFILL_CATALOG=str(catalog),
        FULFILL_MAIL="false",
    )


@asynccontextmanager
async def instances(settings: Settings, count: int) -> AsyncIterator[list[Service]]:
    started: list[Service] = []
    try:
        for _ in range(count):
            started.append(await Service.start(settings))
        yield started
    finally:
        for service in started:
            await service.close()


def worker(service: Service) -> Worker:
    # A grace of 30 s, as serve's: the events below were received minutes ago.
    return Worker(service.engine, service.store, interval=0.1, event_grace=30)


def paid_sessions(shop: EmulatorServer, count: int) -> list[str]:
    price = shop.price(product_metadata=HOOK_METADATA)
    sessions = [str(shop.session([(price, 1)]).id) for _ in range(count)]
    for session_id in sessions:
        shop.complete(session_id, "paid")
    return sessions


async def stale_event(store: Store, session_id: str) -> str:
    """A ``checkout.session.completed`` acknowledged five minutes ago and never processed."""
    event_id = "evt_test" + secrets.token_hex(10)
    received = utcnow() - timedelta(minutes=5)
    assert await store.record_event(event_id, COMPLETED, session_id, False, "received", received)
    return event_id


async def event_row(store: Store, event_id: str) -> dict[str, Any]:
    row = await store.event(event_id)
    assert row is not None
    return row


def retrieves(shop: EmulatorServer, session_id: str) -> int:
    return shop.requests_to(f"/v1/checkout/sessions/{session_id}")


def performed(receiver: Receiver) -> Counter[str]:
    return Counter(r.headers["idempotency-key"] for r in receiver.received)


async def test_two_instances_passing_at_once_retrieve_each_stale_events_session_once(
    tmp_path: Path, emulator_server: EmulatorServer, receiver: Receiver, database_url: str
) -> None:
    """Each instance's worker used to process every stale event: a retrieve each, per instance."""
    shop = emulator_server
    sessions = paid_sessions(shop, 12)
    # Slow retrieves: two instances at the same event would both be inside one.
    shop.post(
        "/_emulator/faults",
        {"kind": "latency", "latency_ms": 300, "path": "/v1/checkout/sessions/*", "method": "GET"},
    )
    settings = settings_for(tmp_path, shop, receiver, database_url)
    async with instances(settings, 2) as (first, second):
        events = [await stale_event(first.store, session_id) for session_id in sessions]
        workers = [worker(first), worker(second)]
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 120
        while True:
            await asyncio.gather(*(w.step() for w in workers))
            rows = [await event_row(first.store, e) for e in events]
            if all(row["outcome"] == "processed" for row in rows):
                break
            assert loop.time() < give_up, Counter(row["outcome"] for row in rows)
        for service in (first, second):
            await service.engine.drain()
    assert {session_id: retrieves(shop, session_id) for session_id in sessions} == {
        session_id: 1 for session_id in sessions
    }
    assert len(performed(receiver)) == 12
    assert set(performed(receiver).values()) == {1}
    owners = {first.engine.owner, second.engine.owner}
    assert {row["lease_owner"] for row in rows} <= owners


async def test_a_pass_does_not_wait_on_a_session_another_instance_is_fulfilling(
    tmp_path: Path, emulator_server: EmulatorServer, receiver: Receiver, database_url: str
) -> None:
    """The event is given back for a later pass, not waited on for an hour, retries behind it."""
    shop = emulator_server
    (session_id,) = paid_sessions(shop, 1)
    settings = settings_for(tmp_path, shop, receiver, database_url)
    async with instances(settings, 2) as (first, second):
        store = first.store
        snapshot = await first.stripe.session(session_id)
        await store.observe(snapshot, PENDING, MAY_REPLACE[PENDING], utcnow())
        # Another instance holds the session for an hour, renewing its lease as it works.
        assert await store.claim(session_id, "another-instance", 3600, utcnow())
        event_id = await stale_event(store, session_id)
        shop.control.delete("/_emulator/requests")

        workers = [worker(first), worker(second)]
        await asyncio.wait_for(workers[0].step(), PASS_BOUND)
        row = await event_row(store, event_id)
        assert (row["outcome"], row["attempts"]) == ("received", 1)
        # Passes of both instances, at once, while the other one works.
        for _ in range(3):
            await asyncio.wait_for(asyncio.gather(*(w.step() for w in workers)), PASS_BOUND)
        assert (await event_row(store, event_id))["outcome"] == "received"

        # The other instance finishes; a later pass finds it done.
        (item,) = snapshot.items
        done = await store.finish_with_item(
            session_id,
            item.line_item_id,
            "another-instance",
            {"message": "done"},
            utcnow(),
            lease=60,
        )
        assert done == (True, True)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 60
        while (row := await event_row(store, event_id))["outcome"] != "processed":
            assert loop.time() < give_up, row
            await asyncio.wait_for(asyncio.gather(*(w.step() for w in workers)), PASS_BOUND)
    assert retrieves(shop, session_id) == 0, "a session held elsewhere costs no Stripe call"
    assert receiver.received == []


async def test_an_event_whose_claimant_died_is_taken_when_its_lease_runs_out(
    tmp_path: Path, emulator_server: EmulatorServer, receiver: Receiver, database_url: str
) -> None:
    shop = emulator_server
    (session_id,) = paid_sessions(shop, 1)
    settings = settings_for(tmp_path, shop, receiver, database_url)
    async with instances(settings, 1) as (service,):
        store = service.store
        event_id = await stale_event(store, session_id)
        # An instance claimed the event and died before processing it.
        assert await Inbox(store).claim(event_id, "dead-instance", 60) == 1
        await asyncio.wait_for(worker(service).step(), PASS_BOUND)
        row = await event_row(store, event_id)
        assert (row["outcome"], row["lease_owner"]) == ("received", "dead-instance")
        assert retrieves(shop, session_id) == 0

        # Two minutes later, on the clock the lease was written with.
        await shift_lease(store, event_id, timedelta(seconds=-120))
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 60
        while (row := await event_row(store, event_id))["outcome"] != "processed":
            assert loop.time() < give_up, row
            await asyncio.wait_for(worker(service).step(), PASS_BOUND)
        assert (row["lease_owner"], row["attempts"]) == (service.engine.owner, 2)
        record = await store.get(session_id)
        assert record is not None
        assert record.status == "fulfilled"
    assert retrieves(shop, session_id) == 1
    assert list(performed(receiver).values()) == [1]


async def shift_lease(store: Store, event_id: str, by: timedelta) -> None:
    """Move an event's lease as that much time passing would (any backend, any clock)."""
    row = await event_row(store, event_id)
    until: datetime = row["lease_expires_at"]
    async with store.engine.begin() as connection:
        await connection.execute(
            update(webhook_events)
            .where(webhook_events.c.event_id == event_id)
            .values(lease_expires_at=until + by)
        )


async def test_the_claim_on_an_event_has_one_winner_a_lease_and_a_backoff(
    database_url: str,
) -> None:
    """The inbox's statements alone: who may claim, list and release an event, and when."""
    stores = [await Store.open(database_url), await Store.open(database_url, migrate=False)]
    try:
        store = stores[0]
        event_id = await stale_event(store, "cs_test_inbox0001")
        inboxes = [Inbox(s) for s in stores]
        owners = [f"instance-{n}" for n in range(8)]
        claims = await asyncio.gather(
            *(inboxes[n % 2].claim(event_id, owner, 60) for n, owner in enumerate(owners))
        )
        winners = [owner for owner, attempts in zip(owners, claims, strict=True) if attempts]
        assert len(winners) == 1
        (winner,) = winners
        loser = next(owner for owner in owners if owner != winner)
        inbox = inboxes[0]
        before = utcnow() - timedelta(seconds=30)

        async def listed() -> bool:
            return event_id in {r["event_id"] for r in await inbox.stale(before, limit=10)}

        # Held: not listed, and nobody takes it, not even its claimant again.
        assert not await listed()
        assert await inbox.claim(event_id, loser, 60) is None
        assert await inbox.claim(event_id, winner, 60) is None
        # The claimant died: once its lease has run out, anyone may.
        await shift_lease(store, event_id, timedelta(seconds=-120))
        assert await listed()
        assert await inbox.claim(event_id, loser, 60) == 2
        # Given back with a backoff (only by its claimant): nobody takes it meanwhile.
        assert not await inbox.release(event_id, winner, after=3600)
        assert await inbox.release(event_id, loser, after=3600)
        assert not await listed()
        assert await inbox.claim(event_id, winner, 60) is None
        await shift_lease(store, event_id, timedelta(hours=-2))
        assert await inbox.claim(event_id, winner, 60) == 3
        # Processed: nobody's any more.
        await store.set_event_outcome(event_id, "processed", utcnow())
        await shift_lease(store, event_id, timedelta(hours=-2))
        assert not await listed()
        assert await inbox.claim(event_id, loser, 60) is None
    finally:
        for opened in stores:
            await opened.close()
