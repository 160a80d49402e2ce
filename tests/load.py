"""A load generator that plays Stripe and the customers against several instances."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from fulfill.emulator.delivery import sign
from tests.conftest import WEBHOOK_SECRET, EmulatorServer


def completed_events(shop: EmulatorServer, session_ids: list[str]) -> dict[str, bytes]:
    """The ``checkout.session.completed`` payload of each session, as Stripe would send it."""
    wanted = set(session_ids)
    payloads: dict[str, bytes] = {}
    for event in list(shop.emulator.state.events.values()):
        session_id = event["data"]["object"]["id"]
        if event["type"] == "checkout.session.completed" and session_id in wanted:
            body = {k: v for k, v in event.items() if not k.startswith("_")}
            payloads[session_id] = json.dumps(body).encode()
    return payloads


@dataclass
class Load:
    """Sends webhooks and landing visits to random live instances, retrying like Stripe."""

    urls: list[str]
    seed: int = 1
    statuses: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def _count(self, key: str) -> None:
        with self.lock:
            self.statuses[key] += 1

    def _pick(self) -> str:
        with self.lock:
            return self.rng.choice(self.urls)

    def webhook(self, payload: bytes, deadline: float = 120.0) -> None:
        """Deliver until a 2xx, each attempt to a random instance (a load balancer)."""
        give_up = time.monotonic() + deadline
        delay = 0.2
        while time.monotonic() < give_up:
            url = self._pick()
            headers = {
                "Content-Type": "application/json",
                "Stripe-Signature": sign(payload, WEBHOOK_SECRET, int(time.time())),
            }
            try:
                answer = httpx.post(
                    f"{url}/webhooks/stripe", content=payload, headers=headers, timeout=30
                )
                self._count(f"webhook {answer.status_code}")
                if answer.is_success:
                    return
            except httpx.HTTPError:
                self._count("webhook connection error")
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        raise AssertionError("a webhook was never acknowledged")

    def visit(self, session_id: str) -> None:
        for _ in range(20):
            try:
                answer = httpx.get(
                    f"{self._pick()}/checkout/complete",
                    params={"session_id": session_id},
                    headers={"Accept": "application/json"},
                    timeout=30,
                )
                self._count(f"landing {answer.status_code}")
                if answer.status_code != 503:
                    return
            except httpx.HTTPError:
                self._count("landing connection error")
            time.sleep(0.2)

    def run(self, payloads: dict[str, bytes], *, webhooks_each: int = 2, threads: int = 48) -> None:
        jobs: list[tuple[str, Any]] = []
        for session_id, payload in payloads.items():
            jobs += [("webhook", payload)] * webhooks_each + [("visit", session_id)]
        self.rng.shuffle(jobs)

        def one(job: tuple[str, Any]) -> None:
            kind, value = job
            if kind == "webhook":
                self.webhook(value)
            else:
                self.visit(value)

        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(one, jobs))
