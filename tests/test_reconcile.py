"""Reconcile: paid sessions whose webhooks never came are fulfilled, once, within a rate."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from fulfill.cli import main
from fulfill.config import load_settings
from fulfill.engine import utcnow
from fulfill.reconcile import ReconcileError, parse_since
from fulfill.records import MAY_REPLACE, PENDING
from fulfill.service import Service
from tests import python_callables
from tests.conftest import HOOK_METADATA, TEST_KEY, EmulatorServer, ServiceFactory, hook_catalog
from tests.servers import Receiver
from tests.test_cli import env_for


def paid(shop: EmulatorServer, count: int) -> list[str]:
    price = shop.price(product_metadata=HOOK_METADATA)
    sessions = [str(shop.session([(price, 1)]).id) for _ in range(count)]
    for session_id in sessions:
        shop.complete(session_id)
    return sessions


def reconcile(env: dict[str, str], *args: str) -> dict[str, object]:
    result = CliRunner().invoke(main, ["reconcile", "--json", *args], env=env)
    assert result.exit_code == 0, result.output
    summary: dict[str, object] = json.loads(result.output)
    return summary


def api_requests(shop: EmulatorServer) -> list[dict[str, object]]:
    requests: list[dict[str, object]] = shop.get("/_emulator/requests")["requests"]
    return requests


def peak_per_second(requests: list[dict[str, object]]) -> int:
    times = sorted(float(str(r["at"])) for r in requests)
    peak, start = 0, 0
    for end, moment in enumerate(times):
        while moment - times[start] >= 1.0:
            start += 1
        peak = max(peak, end - start + 1)
    return peak


def test_parse_since() -> None:
    assert parse_since("72h").total_seconds() == 72 * 3600
    assert parse_since("30m").total_seconds() == 1800
    for bad in ("", "72", "1y", "0h", "-1h", "31d"):
        with pytest.raises(ReconcileError):
            parse_since(bad)


def test_missed_webhooks_are_fulfilled_once_within_the_rate(
    tmp_path: Path, emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    shop = emulator_server
    shop.post("/_emulator/webhooks", {"mode": "off"})
    sessions = paid(shop, 200)
    shop.control.delete("/_emulator/requests")
    env = env_for(tmp_path, shop, receiver)

    first = reconcile(env, "--since", "1h", "--rate", "40")
    assert first["listed"] == 200
    assert first["results"] == {"fulfilled": 200}
    counts = Counter(r.headers["idempotency-key"] for r in receiver.received)
    assert len(counts) == 200
    assert set(counts.values()) == {1}
    requests = api_requests(shop)
    assert len(requests) == 2 + 200  # two list pages, one retrieve per session
    assert peak_per_second(requests) <= 41

    shop.control.delete("/_emulator/requests")
    second = reconcile(env, "--since", "1h", "--rate", "40")
    assert second["results"] == {"already": 200}
    endpoints = {str(r["endpoint"]) for r in api_requests(shop)}
    assert endpoints == {"GET /v1/checkout/sessions"}, "a second sweep costs only the list calls"
    assert len(receiver.received) == 200
    listed = CliRunner().invoke(main, ["list", "--json", "--limit", "500"], env=env)
    records = json.loads(listed.output)
    assert {r["session_id"] for r in records} == set(sessions)
    assert {r["status"] for r in records} == {"fulfilled"}
    assert all(r["triggers"] == ["reconcile"] for r in records)


def test_dry_run_changes_nothing(
    tmp_path: Path, emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    shop = emulator_server
    shop.post("/_emulator/webhooks", {"mode": "off"})
    paid(shop, 3)
    env = env_for(tmp_path, shop, receiver)
    summary = reconcile(env, "--since", "1h", "--dry-run")
    assert summary["results"] == {"would_fulfill": 3}
    assert receiver.received == []


def test_setup_sessions_are_recorded_once_and_never_fulfilled(
    tmp_path: Path, emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    shop = emulator_server
    shop.post("/_emulator/webhooks", {"mode": "off"})
    card = shop.stripe().v1.checkout.sessions.create(
        {"mode": "setup", "currency": "eur", "success_url": "http://shop.test/saved"}
    )
    shop.complete(card.id)
    (order,) = paid(shop, 1)
    env = env_for(tmp_path, shop, receiver)
    assert reconcile(env, "--since", "1h", "--dry-run")["results"] == {
        "would_fulfill": 1,
        "not_applicable": 1,
    }
    assert reconcile(env, "--since", "1h")["results"] == {"fulfilled": 1, "not_applicable": 1}
    assert [r.headers["idempotency-key"].split(":")[0] for r in receiver.received] == [order]
    # Final: a later sweep does not ask Stripe about it again.
    shop.control.delete("/_emulator/requests")
    assert reconcile(env, "--since", "1h")["results"] == {"already": 1, "not_applicable": 1}
    endpoints = {str(r["endpoint"]) for r in api_requests(shop)}
    assert endpoints == {"GET /v1/checkout/sessions"}


def test_rate_limit_is_waited_out(
    tmp_path: Path, emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    shop = emulator_server
    shop.post("/_emulator/webhooks", {"mode": "off"})
    paid(shop, 5)
    shop.post(
        "/_emulator/faults",
        {"kind": "rate_limit", "count": 3, "retry_after": 0.3, "path": "/v1/checkout/sessions*"},
    )
    env = env_for(tmp_path, shop, receiver)
    started = time.monotonic()
    summary = reconcile(env, "--since", "1h")
    assert summary["results"] == {"fulfilled": 5}
    assert time.monotonic() - started >= 0.9, "each 429's Retry-After was honoured"
    statuses = Counter(int(str(r["status"])) for r in api_requests(shop))
    assert statuses[429] == 3


def test_an_interrupted_sweep_resumes_where_it_stopped(
    tmp_path: Path, emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    shop = emulator_server
    shop.post("/_emulator/webhooks", {"mode": "off"})
    paid(shop, 120)
    env = env_for(tmp_path, shop, receiver)
    process = subprocess.Popen(
        [sys.executable, "-m", "fulfill", "reconcile", "--since", "1h", "--rate", "30", "--json"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        receiver.wait_for(40, timeout=30)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=10)
    done_before = len(receiver.received)
    assert done_before < 120
    summary = reconcile(env, "--since", "1h", "--rate", "100")
    assert summary["resumed"] is True
    assert int(str(summary["listed"])) <= 120 - done_before + 1
    counts = Counter(r.headers["idempotency-key"] for r in receiver.received)
    assert len(counts) == 120
    # A session in flight at the kill may be sent again with the same key; no other.
    assert sum(n - 1 for n in counts.values()) <= 1


def test_reconcile_racing_webhooks_and_landing_visits_is_exactly_once(
    service_factory: ServiceFactory, receiver: Receiver, tmp_path: Path
) -> None:
    service = service_factory()
    shop = service.shop
    shop.post("/_emulator/webhooks", {"copies": 2})
    price = shop.price(product_metadata=HOOK_METADATA)
    sessions = [str(shop.session([(price, 1)]).id) for _ in range(60)]
    env = {
        **env_for(tmp_path, shop, receiver),
        "FULFILL_DATABASE_URL": service.settings.database_url,
        "FULFILL_CATALOG": str(service.settings.catalog_path),
    }

    def pay_and_visit() -> None:
        for session_id in sessions:
            shop.complete(session_id)
            httpx.get(
                f"{service.url}/checkout/complete", params={"session_id": session_id}, timeout=30
            )

    buyer = threading.Thread(target=pay_and_visit)
    buyer.start()
    while buyer.is_alive():
        reconcile(env, "--since", "1h", "--rate", "100", "--restart")
    buyer.join()
    reconcile(env, "--since", "1h", "--rate", "100", "--restart")
    assert shop.get("/_emulator/webhooks/idle?timeout=30")["idle"]
    counts = Counter(r.headers["idempotency-key"] for r in receiver.received)
    assert len(counts) == 60
    assert set(counts.values()) == {1}


# -- what a sweep leaves alone ----------------------------------------------------------------

LEFT_ALONE_CATALOG = """
[[product]]
name = "T-shirt"
match = { metadata = { fulfill = "tshirt" } }
action = "shipment"

[[product]]
name = "Never deliverable"
match = { metadata = { fulfill = "refuse" } }
action = "python"
callable = "tests.python_callables:refuses_for_good"

[[product]]
name = "Licence"
match = { metadata = { fulfill = "licence" } }
action = "license"
"""


async def test_a_sweep_fulfills_lost_webhooks_and_leaves_failed_and_running_sessions_alone(
    tmp_path: Path, emulator_server: EmulatorServer, receiver: Receiver, database_url: str
) -> None:
    """Only a session never seen paid is the sweep's; the rest are the worker's or an operator's.

    Every sweep (every 15 minutes for 72 hours) used to force a retry of every
    failed record: a failure no retry can cure was attempted again and again,
    FULFILL_MAX_ATTEMPTS meant nothing, and each retry that happened to
    succeed was counted ``fulfilled``, the count of lost webhooks.
    """
    shop = emulator_server
    shop.post("/_emulator/webhooks", {"mode": "off"})
    receiver.status = 500  # the merchant's system fails every hook
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(LEFT_ALONE_CATALOG + hook_catalog(receiver.url))
    settings = load_settings(
        env_file=None,
        STRIPE_SECRET_KEY=TEST_KEY,
        STRIPE_API_BASE=shop.url,
        FULFILL_DATABASE_URL=database_url,
        FULFILL_CATALOG=str(catalog),
        FULFILL_MAX_ATTEMPTS=2,
        FULFILL_RETRY_BASE=3600,  # a scheduled retry stays in the future for the whole test
        FULFILL_MAIL="false",
    )

    def bought(tag: str, outcome: str = "paid") -> str:
        session = shop.session([(shop.price(tag, product_metadata={"fulfill": tag}), 1)])
        shop.complete(session.id, outcome)
        return str(session.id)

    no_address = bought("tshirt")  # a physical item, and Checkout collected no address
    refused = bought("refuse")  # PermanentActionError
    out_of_attempts = bought("hook")
    retry_scheduled = bought("hook")
    running = bought("licence")  # claimed by another instance, which is at work
    never_seen = bought("licence")  # its webhook was lost
    not_seen_settle = bought("licence", "delayed")  # seen unpaid; the settlement was lost
    python_callables.refused.clear()

    async def left_alone_before_the_sweeps(service: Service) -> None:
        engine, store = service.engine, service.store
        for session_id in (no_address, refused, out_of_attempts, retry_scheduled):
            assert (await engine.fulfill_checkout(session_id, trigger="cli")).status == "failed"
        # The second of FULFILL_MAX_ATTEMPTS: it now waits for an operator.
        await engine.fulfill_checkout(out_of_attempts, trigger="cli", force=True)
        assert (await engine.fulfill_checkout(not_seen_settle)).status == "awaiting_payment"
        snapshot = await service.stripe.session(running)
        await store.observe(snapshot, PENDING, MAY_REPLACE[PENDING], utcnow())
        assert await store.claim(running, "another-instance", 3600, utcnow())

    async def attempts(service: Service) -> dict[str, tuple[str, int]]:
        records = [await service.store.get(s) for s in (no_address, refused, out_of_attempts)]
        records += [await service.store.get(s) for s in (retry_scheduled, running)]
        return {r.session_id: (r.status, r.attempts) for r in records if r is not None}

    service = await Service.start(settings)
    try:
        await left_alone_before_the_sweeps(service)
        shop.post(f"/_emulator/sessions/{not_seen_settle}/settle", {"result": "succeeded"})
        before = await attempts(service)
        assert before == {
            no_address: ("failed", 1),
            refused: ("failed", 1),
            out_of_attempts: ("failed", 2),
            retry_scheduled: ("failed", 1),
            running: ("fulfilling", 1),
        }
        hooks_before = len(receiver.received)
        shop.control.delete("/_emulator/requests")

        first = await service.reconciler.sweep(timedelta(hours=1), restart=True)
        second = await service.reconciler.sweep(timedelta(hours=1), restart=True)

        left = {"waiting_for_operator": 3, "retry_scheduled": 1, "in_progress": 1}
        assert first.results == {**left, "fulfilled": 2}
        assert second.results == {**left, "already": 2}
        assert await attempts(service) == before, "no attempt was made by a sweep"
        assert python_callables.refused == [refused], "the action was not performed again"
        assert len(receiver.received) == hooks_before
        retrieved = {str(r["path"]) for r in api_requests(shop) if r["method"] == "GET"}
        assert retrieved == {
            "/v1/checkout/sessions",
            f"/v1/checkout/sessions/{never_seen}",
            f"/v1/checkout/sessions/{not_seen_settle}",
        }, "sessions left alone cost no call beyond the list"
        for session_id in (never_seen, not_seen_settle):
            record = await service.store.get(session_id)
            assert record is not None
            assert (record.status, record.attempts) == ("fulfilled", 1)

        def counted(result: str) -> float | None:
            return service.engine.metrics.registry.get_sample_value(
                "fulfill_reconcile_sessions_total", {"result": result}
            )

        # WebhooksLost fires on "fulfilled": the two lost webhooks, nothing else.
        assert counted("fulfilled") == 2
        assert counted("waiting_for_operator") == 6
        assert counted("retry_scheduled") == 2
        assert counted("in_progress") == 2
        assert counted("failed") is None
    finally:
        await service.close()
