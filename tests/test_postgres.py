"""Several instances on one PostgreSQL: exactly once across processes, crashes, and outages."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import text

from fulfill.records import ITEM_DONE
from fulfill.store.database import create_engine
from tests.conftest import (
    HOOK_METADATA,
    WEBHOOK_SECRET,
    EmulatorServer,
    hook_catalog,
    postgres_database,
    table_rows,
)
from tests.load import Load, completed_events
from tests.processes import instances
from tests.proxy import proxy_to
from tests.servers import Received, Receiver
from tests.test_processes import service_env

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def paid_sessions(shop: EmulatorServer, count: int, webhooks: str = "off") -> list[str]:
    """``count`` sessions of one or two items, paid (by default with no webhook sent)."""
    shop.post("/_emulator/webhooks", {"mode": webhooks})
    prices = [shop.price(f"P{n}", product_metadata=HOOK_METADATA) for n in range(2)]
    sessions = [shop.session([(p, 1) for p in prices[: n % 2 + 1]]).id for n in range(count)]
    for session_id in sessions:
        shop.complete(session_id)
    return [str(s) for s in sessions]


def wait_all_fulfilled(database_url: str, expected: int, timeout: float = 120) -> Counter[str]:
    deadline = time.monotonic() + timeout
    statuses: Counter[str] = Counter()
    while time.monotonic() < deadline:
        statuses = Counter(row[1] for row in table_rows(database_url, "fulfillments"))
        if statuses.get("fulfilled", 0) == expected:
            return statuses
        time.sleep(0.5)
    raise AssertionError(f"not all fulfilled: {statuses}")


def expected_keys(count: int) -> int:
    return sum(n % 2 + 1 for n in range(count))


def test_three_instances_fulfill_300_sessions_exactly_once(
    tmp_path: Path, emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    with postgres_database() as database_url:
        env = service_env(tmp_path, emulator_server, receiver, FULFILL_DATABASE_URL=database_url)
        sessions = paid_sessions(emulator_server, 300)
        payloads = completed_events(emulator_server, sessions)
        with instances(env, tmp_path, 3) as servers:
            load = Load([s.url for s in servers])
            load.run(payloads)
            wait_all_fulfilled(database_url, 300)
        assert load.statuses["webhook 200"] == 600
        assert load.statuses["landing 200"] == 300
        counts = Counter(r.headers["idempotency-key"] for r in receiver.received)
        assert len(counts) == expected_keys(300)
        assert set(counts.values()) == {1}


def done_items(database_url: str) -> set[tuple[str, str]]:
    """The line items the database holds recorded ``done``."""

    async def read() -> set[tuple[str, str]]:
        engine = create_engine(database_url)
        try:
            async with engine.connect() as connection:
                rows = await connection.execute(
                    text(
                        "SELECT session_id, line_item_id FROM fulfillment_items"
                        " WHERE status = :done"
                    ),
                    {"done": ITEM_DONE},
                )
                return {(str(row[0]), str(row[1])) for row in rows}
        finally:
            await engine.dispose()

    return asyncio.run(read())


def performances(receiver: Receiver) -> dict[tuple[str, str], list[Received]]:
    """Every request the receiver got, by line item, in the order they came."""
    found: dict[tuple[str, str], list[Received]] = {}
    for request in sorted(receiver.received, key=lambda r: r.at):
        body = json.loads(request.body)
        found.setdefault((body["session_id"], body["line_item_id"]), []).append(request)
    return found


def test_an_instance_killed_mid_load_repeats_only_what_it_was_performing(
    tmp_path: Path, emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    receiver.delay = 0.05
    # The survivors take the dead instance's sessions over once their leases
    # expire: at least two thirds of a lease after the kill (holders renew
    # every third). Time enough to read what it left recorded, however loaded
    # the machine.
    lease = 12
    with postgres_database() as database_url:
        env = service_env(
            tmp_path,
            emulator_server,
            receiver,
            FULFILL_DATABASE_URL=database_url,
            FULFILL_LEASE_SECONDS=str(lease),
        )
        # The victim sends to its own path: each performance says who made it.
        victim_catalog = tmp_path / "victim.toml"
        victim_catalog.write_text(hook_catalog(f"{receiver.url}/victim"))
        sessions = paid_sessions(emulator_server, 300)
        payloads = completed_events(emulator_server, sessions)
        at_kill: dict[str, Any] = {}
        victim_env = {"FULFILL_CATALOG": str(victim_catalog)}
        with instances(env, tmp_path, 3, [victim_env]) as servers:
            load = Load([s.url for s in servers])
            victim = servers[0]

            def kill_when_busy() -> None:
                receiver.wait_for(100, timeout=60)
                victim.kill()
                with load.lock:
                    load.urls.remove(victim.url)
                # What the dead process had recorded done: of what it had
                # performed, the rest was in flight when it died.
                at_kill["done"] = done_items(database_url)
                at_kill["read"] = time.time()

            killer = threading.Thread(target=kill_when_busy)
            killer.start()
            load.run(payloads)
            killer.join()
            assert victim.process.returncode == -9
            wait_all_fulfilled(database_url, 300)
        seen = performances(receiver)
        assert len(seen) == expected_keys(300), "every item performed"
        by_victim = {
            item for item, requests in seen.items() if any(r.sender == "victim" for r in requests)
        }
        in_flight = by_victim - at_kill["done"]
        repeated = {item: requests for item, requests in seen.items() if len(requests) > 1}
        print(f"victim performed {len(by_victim)} items, {len(in_flight)} in flight at its death;")
        print(f"{len(repeated)} repeated")
        # The one repeat the design allows: an item the killed instance was
        # performing and had not recorded done, performed again by the
        # instance that took its session over, with the same Idempotency-Key.
        assert set(repeated) <= in_flight
        for item, (first, again, *more) in repeated.items():
            assert not more, f"{item} performed {len(more) + 2} times"
            assert (first.sender, again.sender) == ("victim", ""), item
            assert again.headers["idempotency-key"] == first.headers["idempotency-key"]
            # Taken over after the read above: what it said was done, the victim recorded.
            assert again.at > at_kill["read"], f"{item} performed again before the lease ran out"


def test_database_outage_gets_503_then_everything_is_fulfilled_once(
    tmp_path: Path, emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    shop = emulator_server
    with postgres_database() as database_url:
        address = urlsplit(database_url)
        host, port = address.hostname or "127.0.0.1", address.port or 5432
        with proxy_to(host, port) as proxy:
            proxied = database_url.replace(f"{host}:{port}", f"127.0.0.1:{proxy.port}")
            env = service_env(tmp_path, shop, receiver, FULFILL_DATABASE_URL=proxied)
            with instances(env, tmp_path, 2) as servers:
                for server in servers:
                    shop.post(
                        "/_emulator/webhook_endpoints",
                        {"url": f"{server.url}/webhooks/stripe", "secret": WEBHOOK_SECRET},
                    )
                shop.post("/_emulator/webhooks", {"retry_delays": [0.5, 1, 2, 3, 4, 5, 5, 5]})
                proxy.down()
                # Paid while the database is away: each event goes to both
                # instances, is refused with 503, and is redelivered.
                sessions = paid_sessions(shop, 30, webhooks="live")
                time.sleep(2)
                readiness = [httpx.get(f"{s.url}/readyz", timeout=10).status_code for s in servers]
                page = httpx.get(
                    f"{servers[0].url}/checkout/complete",
                    params={"session_id": sessions[0]},
                    timeout=30,
                )
                proxy.restore()
                assert shop.get("/_emulator/webhooks/idle?timeout=90")["idle"]
                wait_all_fulfilled(database_url, 30)
                ready_again = [
                    httpx.get(f"{s.url}/readyz", timeout=10).status_code for s in servers
                ]
        assert readiness == [503, 503]
        assert page.status_code == 503
        assert "Please try again in a moment" in page.text
        assert ready_again == [200, 200]
        attempts = shop.get("/_emulator/deliveries")["attempts"]
        assert any(a["status"] == 503 for a in attempts), "refused while the database was away"
        delivered = {(a["event_id"], a["endpoint_id"]) for a in attempts if a["status"] == 200}
        assert len(delivered) == 2 * len(sessions), "every event acknowledged by both instances"
        counts = Counter(r.headers["idempotency-key"] for r in receiver.received)
        assert len(counts) == expected_keys(30)
        assert set(counts.values()) == {1}
