"""Webhook delivery, signed as Stripe signs, with Stripe's retry behaviour.

Stripe signs ``"{t}.{payload}"`` with HMAC-SHA256 and the endpoint's secret,
sending ``Stripe-Signature: t=…,v1=…`` (https://docs.stripe.com/webhooks#verify-manually);
it retries non-2xx answers with exponential backoff for up to three days; here
the schedule is shortened and configurable. For tests the delivery can be
switched off, held and flushed in another order, and any event can be sent
again, several copies at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import httpx

from fulfill.emulator.state import API_VERSION, Obj, new_id, render_for_version

DEFAULT_RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
MODES = ("live", "hold", "off")
ORDERS = ("fifo", "reverse", "shuffle")


def sign(payload: bytes, secret: str, timestamp: int) -> str:
    """The ``Stripe-Signature`` header value for ``payload``."""
    signed = f"{timestamp}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


@dataclass
class Endpoint:
    id: str
    url: str
    secret: str
    enabled_events: list[str]
    api_version: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    def wants(self, event_type: str) -> bool:
        return any(
            e == "*" or e == event_type or (e.endswith(".*") and event_type.startswith(e[:-1]))
            for e in self.enabled_events
        )

    def as_stripe(self, *, with_secret: bool) -> Obj:
        body: Obj = {
            "id": self.id,
            "object": "webhook_endpoint",
            "api_version": self.api_version,
            "created": self.created,
            "enabled_events": self.enabled_events,
            "livemode": False,
            "status": "enabled",
            "url": self.url,
        }
        if with_secret:
            body["secret"] = self.secret
        return body


@dataclass
class Attempt:
    event_id: str
    event_type: str
    endpoint_id: str
    attempt: int
    status: int | None
    error: str | None
    at: float
    duration_ms: float
    kind: str  # "live", "retry", "redeliver", "flush"

    def as_json(self) -> Obj:
        return {
            "event_id": self.event_id,
            "type": self.event_type,
            "endpoint_id": self.endpoint_id,
            "attempt": self.attempt,
            "status": self.status,
            "error": self.error,
            "at": self.at,
            "duration_ms": round(self.duration_ms, 2),
            "kind": self.kind,
        }


class Deliveries:
    """Endpoints, the delivery settings, and the attempts made."""

    def __init__(self, events: dict[str, Obj]) -> None:
        self.events = events
        self.endpoints: dict[str, Endpoint] = {}
        self.mode = "live"
        self.copies = 1
        self.retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS
        self.timeout = 30.0
        self.held: list[str] = []
        self.log: deque[Attempt] = deque(maxlen=200_000)
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None

    # -- endpoints ------------------------------------------------------------

    def add_endpoint(
        self,
        url: str,
        *,
        secret: str | None = None,
        enabled_events: list[str] | None = None,
        api_version: str | None = None,
    ) -> Endpoint:
        endpoint = Endpoint(
            id=new_id("we_"),
            url=url,
            secret=secret or "whsec_" + secrets.token_hex(16),
            enabled_events=enabled_events or ["*"],
            api_version=api_version,
        )
        self.endpoints[endpoint.id] = endpoint
        return endpoint

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        self._client = httpx.AsyncClient(
            timeout=self.timeout, limits=httpx.Limits(max_connections=200)
        )

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    async def idle(self, timeout: float = 30.0) -> bool:
        """Wait until no delivery is in flight (for tests); True if it got there."""
        deadline = time.monotonic() + timeout
        # A delivery may spawn others (a flush spawns retries): wait until none is left.
        while self._tasks:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            await asyncio.wait(set(self._tasks), timeout=remaining)
        return True

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- delivery -------------------------------------------------------------

    def on_event(self, event: Obj) -> None:
        """Called by ``State`` for each new event, in the event loop's thread."""
        targets = [e for e in self.endpoints.values() if e.wants(event["type"])]
        event["pending_webhooks"] = len(targets)
        if not targets or self.mode == "off":
            return
        if self.mode == "hold":
            self.held.append(event["id"])
            return
        for endpoint in targets:
            for _ in range(self.copies):
                self._spawn(self._deliver_with_retries(event["id"], endpoint, "live"))

    async def flush(
        self, order: str = "fifo", *, concurrent: bool = False, seed: int | None = None
    ) -> list[Obj]:
        """Deliver the held events in the chosen order; the attempts made."""
        held, self.held = self.held, []
        if order == "reverse":
            held.reverse()
        elif order == "shuffle":
            random.Random(seed).shuffle(held)
        jobs = [
            (event_id, endpoint)
            for event_id in held
            for endpoint in self.endpoints.values()
            if endpoint.wants(self.events[event_id]["type"])
        ]
        if concurrent:
            attempts = await asyncio.gather(*(self.attempt(e, ep, 1, "flush") for e, ep in jobs))
        else:
            attempts = [await self.attempt(e, ep, 1, "flush") for e, ep in jobs]
        for attempt, (event_id, endpoint) in zip(attempts, jobs, strict=True):
            if not _ok(attempt.status):
                self._spawn(self._retry_from(event_id, endpoint, 2))
        return [a.as_json() for a in attempts]

    async def redeliver(
        self,
        event_id: str,
        *,
        copies: int = 1,
        concurrent: bool = True,
        endpoint_id: str | None = None,
    ) -> list[Obj]:
        """Send an event again, ``copies`` times, at once or one after another."""
        endpoints = [
            e
            for e in self.endpoints.values()
            if (endpoint_id is None or e.id == endpoint_id)
            and e.wants(self.events[event_id]["type"])
        ]
        jobs = [endpoint for endpoint in endpoints for _ in range(copies)]
        if concurrent:
            attempts = await asyncio.gather(
                *(self.attempt(event_id, ep, 1, "redeliver") for ep in jobs)
            )
        else:
            attempts = [await self.attempt(event_id, ep, 1, "redeliver") for ep in jobs]
        return [a.as_json() for a in attempts]

    async def _deliver_with_retries(self, event_id: str, endpoint: Endpoint, kind: str) -> None:
        attempt = await self.attempt(event_id, endpoint, 1, kind)
        if not _ok(attempt.status):
            await self._retry_from(event_id, endpoint, 2)

    async def _retry_from(self, event_id: str, endpoint: Endpoint, number: int) -> None:
        for delay in self.retry_delays[number - 2 :]:
            await asyncio.sleep(delay)
            if endpoint.id not in self.endpoints:
                return
            attempt = await self.attempt(event_id, endpoint, number, "retry")
            if _ok(attempt.status):
                return
            number += 1

    async def attempt(self, event_id: str, endpoint: Endpoint, number: int, kind: str) -> Attempt:
        """One signed POST of the event to the endpoint."""
        event = self.events[event_id]
        body = {k: v for k, v in event.items() if not k.startswith("_")}
        version = endpoint.api_version or API_VERSION
        body["api_version"] = version
        body["data"] = {"object": render_for_version(dict(body["data"]["object"]), version)}
        payload = json.dumps(body).encode()
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            "Stripe-Signature": sign(payload, endpoint.secret, int(time.time())),
        }
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        assert self._client is not None, "Deliveries.start() was not called"
        try:
            response = await self._client.post(endpoint.url, content=payload, headers=headers)
            status = response.status_code
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        attempt = Attempt(
            event_id=event_id,
            event_type=event["type"],
            endpoint_id=endpoint.id,
            attempt=number,
            status=status,
            error=error,
            at=time.time(),
            duration_ms=(time.monotonic() - started) * 1000,
            kind=kind,
        )
        self.log.append(attempt)
        return attempt


def _ok(status: int | None) -> bool:
    return status is not None and 200 <= status < 300
