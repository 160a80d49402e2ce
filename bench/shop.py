"""Playing the merchant's customers against the emulator: sessions, payments, events.

Plain HTTP to the emulator (form bodies for ``/v1``, as Stripe takes them;
JSON for ``/_emulator``) on the bench's lean client: with httpx, preparing
600 paid sessions took 16 s of the run, most of it httpx's connection pool.
No webhook endpoint is registered: the emulator records each
``checkout.session.completed`` event and the bench delivers it itself, on
its own schedule, signed as Stripe signs.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from bench.http import Pool
from fulfill.emulator.delivery import sign

BENCH_METADATA = {"fulfill": "bench"}
SESSIONS_PATH = "/v1/checkout/sessions/"


@dataclass(frozen=True)
class Paid:
    """A paid session and its ``checkout.session.completed`` event, as Stripe sends it."""

    session_id: str
    event_id: str
    payload: bytes


def signed_headers(payload: bytes, secret: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "Stripe-Signature": sign(payload, secret, int(time.time())),
    }


class Shop:
    def __init__(self, url: str, key: str, *, concurrency: int = 64) -> None:
        self.pool = Pool(url)
        self.auth = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
        self.slots = asyncio.Semaphore(concurrency)
        self.prices: list[str] = []

    async def close(self) -> None:
        await self.pool.close()

    async def reset(self) -> None:
        """Forget every object, event and logged request (the API latency stays)."""
        await self._api("POST", "/_emulator/reset")
        self.prices.clear()

    async def _api(
        self,
        method: str,
        path: str,
        *,
        data: dict[str, str] | None = None,
        json_body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        """One call; form ``data`` for ``/v1``, a ``json_body`` for ``/_emulator``."""
        headers = {"Authorization": self.auth}
        body = b""
        if data is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            body = urlencode(data).encode()
        elif json_body is not None:
            headers["Content-Type"] = "application/json"
            body = json.dumps(json_body).encode()
        target = f"{path}?{urlencode(params)}" if params else path
        async with self.slots:
            answer = await self.pool.send(self.pool.build(method, target, headers, body))
        if answer.status != 200:
            raise RuntimeError(f"{method} {path}: {answer.status} {answer.body[:300]!r}")
        return json.loads(answer.body)

    async def ensure_prices(self, count: int) -> list[str]:
        """At least ``count`` prices, each of its own product tagged for the bench catalog."""
        while len(self.prices) < count:
            n = len(self.prices)
            product = await self._api(
                "POST",
                "/v1/products",
                data={"name": f"Bench item {n}", "metadata[fulfill]": BENCH_METADATA["fulfill"]},
            )
            price = await self._api(
                "POST",
                "/v1/prices",
                data={"currency": "eur", "unit_amount": str(100 + n), "product": product["id"]},
            )
            self.prices.append(str(price["id"]))
        return self.prices[:count]

    async def paid_sessions(self, count: int, items: int = 1) -> list[Paid]:
        """``count`` new sessions of ``items`` line items each, paid; with their events."""
        prices = await self.ensure_prices(items)
        since = int(time.time()) - 1
        form = {
            "mode": "payment",
            "success_url": "http://shop.test/done?session_id={CHECKOUT_SESSION_ID}",
        }
        for n, price in enumerate(prices):
            form[f"line_items[{n}][price]"] = price
            form[f"line_items[{n}][quantity]"] = "1"

        async def one() -> str:
            session = await self._api("POST", "/v1/checkout/sessions", data=form)
            await self._api("POST", f"/_emulator/sessions/{session['id']}/complete", json_body={})
            return str(session["id"])

        session_ids = await asyncio.gather(*(one() for _ in range(count)))
        events = await self.completed_events(since, set(session_ids))
        return [Paid(s, events[s][0], events[s][1]) for s in session_ids]

    async def completed_events(
        self, since: int, session_ids: set[str]
    ) -> dict[str, tuple[str, bytes]]:
        """The ``checkout.session.completed`` event of each session: (event ID, raw JSON)."""
        found: dict[str, tuple[str, bytes]] = {}
        params: dict[str, Any] = {
            "type": "checkout.session.completed",
            "limit": 100,
            "created[gte]": since,
        }
        while True:
            page = await self._api("GET", "/v1/events", params=params)
            for event in page["data"]:
                session_id = event["data"]["object"]["id"]
                if session_id in session_ids:
                    found[session_id] = (str(event["id"]), json.dumps(event).encode())
            if not page["has_more"] or not page["data"]:
                break
            params["starting_after"] = page["data"][-1]["id"]
        missing = session_ids - found.keys()
        if missing:
            raise RuntimeError(f"{len(missing)} sessions have no completed event")
        return found

    async def log_position(self) -> int:
        """The sequence number of the last API request the emulator logged."""
        log = await self._api("GET", "/_emulator/requests", params={"since": 1 << 60})
        return int(log["total"])

    async def session_calls(self, since: int) -> Counter[str]:
        """API calls made for each Checkout Session after log position ``since``.

        Retrieves (``GET /v1/checkout/sessions/{id}``) and line-item pages
        (``…/{id}/line_items``): everything the service asks about a session.
        """
        log = await self._api("GET", "/_emulator/requests", params={"since": since})
        calls: Counter[str] = Counter()
        for entry in log["requests"]:
            path = str(entry["path"])
            if entry["method"] == "GET" and path.startswith(SESSIONS_PATH):
                calls[path[len(SESSIONS_PATH) :].split("/")[0]] += 1
        return calls
