"""Fault injection and the request log, around every ``/v1/…`` request.

A fault rule matches requests by method and path pattern and applies to the
next ``count`` of them or to a ``share`` of them: ``latency`` delays the
request, ``error`` answers 500 (or another 5xx), ``rate_limit`` answers 429
with ``Retry-After``, ``drop`` closes the connection without an answer. The
log keeps every API request with its endpoint template, so a test can count
how many calls a fulfillment cost.
"""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import json
import random
import re
import secrets
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fulfill.emulator.errors import StripeError

KINDS = ("latency", "error", "rate_limit", "drop")

# Templates for the request log: the ID in a path becomes {id}.
_ID_SEGMENT = re.compile(r"/(cs|li|price|prod|evt|we|pi)_[^/]*")


def endpoint_of(method: str, path: str) -> str:
    return f"{method} {_ID_SEGMENT.sub('/{id}', path)}"


@dataclass
class Fault:
    id: str
    kind: str
    path: str = "/v1/*"
    method: str | None = None
    count: int | None = None  # the next N matching requests; None: no limit
    share: float = 1.0  # the fraction of matching requests
    latency_ms: float = 0.0
    status: int = 500
    retry_after: float = 1.0
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.method and self.method.upper() != method:
            return False
        return fnmatch.fnmatchcase(path, self.path)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "path": self.path,
            "method": self.method,
            "count": self.count,
            "share": self.share,
            "latency_ms": self.latency_ms,
            "status": self.status,
            "retry_after": self.retry_after,
            "hits": self.hits,
        }


@dataclass
class LoggedRequest:
    seq: int
    at: float
    method: str
    path: str
    endpoint: str
    status: int
    fault: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at,
            "method": self.method,
            "path": self.path,
            "endpoint": self.endpoint,
            "status": self.status,
            "fault": self.fault,
        }


@dataclass
class Faults:
    rules: list[Fault] = field(default_factory=list)
    rng: random.Random = field(default_factory=random.Random)

    def add(self, **spec: Any) -> Fault:
        fault = Fault(id="flt_" + secrets.token_hex(6), **spec)
        self.rules.append(fault)
        return fault

    def pick(self, method: str, path: str) -> tuple[float, Fault | None]:
        """The total latency to add and the failing fault (if any) for a request."""
        latency = 0.0
        failing: Fault | None = None
        for fault in self.rules:
            if not fault.matches(method, path):
                continue
            if fault.count is not None and fault.hits >= fault.count:
                continue
            if fault.share < 1.0 and self.rng.random() >= fault.share:
                continue
            if fault.kind == "latency":
                fault.hits += 1
                latency += fault.latency_ms / 1000
            elif failing is None:
                fault.hits += 1
                failing = fault
        self.rules = [f for f in self.rules if f.count is None or f.hits < f.count]
        return latency, failing


@dataclass
class RequestLog:
    entries: deque[LoggedRequest] = field(default_factory=lambda: deque(maxlen=500_000))
    counts: Counter[str] = field(default_factory=Counter)
    seq: int = 0

    def add(self, method: str, path: str, status: int, fault: str | None) -> None:
        self.seq += 1
        endpoint = endpoint_of(method, path)
        self.counts[endpoint] += 1
        self.entries.append(
            LoggedRequest(self.seq, time.time(), method, path, endpoint, status, fault)
        )

    def clear(self) -> None:
        self.entries.clear()
        self.counts.clear()


class ApiGuard:
    """ASGI middleware for ``/v1/…``: authentication, faults, the request log."""

    def __init__(self, app: ASGIApp, emulator: Any) -> None:
        self.app = app
        self.emulator = emulator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        path: str = scope["path"]
        log: RequestLog = self.emulator.requests
        latency, fault = self.emulator.faults.pick(method, path)
        if latency:
            await asyncio.sleep(latency)
        problem = self._authenticate(scope)
        if problem is None and fault is not None:
            if fault.kind == "drop":
                log.add(method, path, 0, fault.id)
                await _drop(send)
                return
            problem = _fault_error(fault)
        if problem is not None:
            log.add(method, path, problem.status, fault.id if fault else None)
            await _send_error(send, problem)
            return

        status_holder = {"status": 0}

        async def send_and_record(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (b"request-id", ("req_" + secrets.token_hex(7)).encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            log.add(method, path, status_holder["status"], None)

    def _authenticate(self, scope: Scope) -> StripeError | None:
        headers = dict(scope["headers"])
        header = headers.get(b"authorization", b"").decode("latin-1")
        key = ""
        if header.lower().startswith("bearer "):
            key = header[7:].strip()
        elif header.lower().startswith("basic "):
            try:
                key = base64.b64decode(header[6:]).decode().split(":", 1)[0]
            except ValueError:
                key = ""
        if not key:
            return StripeError(
                401,
                "You did not provide an API key. Provide it in the Authorization header "
                "(Authorization: Bearer YOUR_SECRET_KEY).",
            )
        expected: str | None = self.emulator.api_key
        valid = key == expected if expected else key.startswith(("sk_test_", "rk_test_"))
        if not valid:
            return StripeError(
                401, f"Invalid API Key provided: {_redact(key)}", code="api_key_invalid"
            )
        return None


def _redact(key: str) -> str:
    return key[:8] + "*" * 8 + key[-4:] if len(key) > 12 else "*" * len(key)


def _fault_error(fault: Fault) -> StripeError:
    if fault.kind == "rate_limit":
        return StripeError(
            429,
            "Request rate limit exceeded. (injected by the emulator)",
            code="rate_limit",
            headers={"Retry-After": f"{fault.retry_after:g}"},
        )
    return StripeError(
        fault.status,
        "An unknown error occurred. (injected by the emulator)",
        type_="api_error",
    )


async def _send_error(send: Send, error: StripeError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"request-id", ("req_" + secrets.token_hex(7)).encode()),
    ]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _drop(send: Send) -> None:
    """Close the connection mid-answer: a promised body that never comes.

    ASGI has no "close without answering"; uvicorn closes the connection when
    the app returns with a response started and not completed, which the
    client sees as a broken connection.
    """
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")],
        }
    )
    await send({"type": "http.response.body", "body": b"{", "more_body": True})
