"""Real servers for tests: an ASGI app under uvicorn in a thread, on a free port."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serve_in_thread(app: Any, port: int | None = None, **options: Any) -> Iterator[str]:
    """Run ``app`` under uvicorn in a daemon thread; yields its base URL.

    ``options`` are more of ``uvicorn.Config``'s (a service's ``server_options``).
    """
    port = port or free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", **options
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float
    sender: str = ""  # the last part of the path, when it was POSTed to /hook/{sender}


@dataclass
class Receiver:
    """A webhook receiver that records every request and answers ``status``.

    It answers on ``/hook`` and on ``/hook/{sender}``: give each process its
    own path, and every request says which one sent it.
    """

    status: int = 200
    delay: float = 0.0  # seconds before answering, cut short if the sender has gone
    delays: list[float] = field(default_factory=list)  # the n-th request's, instead of ``delay``
    failures: int = 0  # answer 500 to this many requests first
    received: list[Received] = field(default_factory=list)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            body = await request.body()
            with self.lock:
                n = len(self.received)
                delay = self.delays[n] if n < len(self.delays) else self.delay
                sender = request.path_params.get("sender", "")
                self.received.append(Received(dict(request.headers), body, time.time(), sender))
                failing = self.failures > 0
                self.failures -= failing
            await _hold(request, delay)
            if failing:
                return JSONResponse({"error": "try again"}, status_code=500)
            return JSONResponse(
                {"received": True, "message": "Delivered by the test receiver"},
                status_code=self.status,
            )

        return Starlette(
            routes=[
                Route("/hook", hook, methods=["POST"]),
                Route("/hook/{sender}", hook, methods=["POST"]),
            ]
        )

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.01)
        raise AssertionError(f"expected {count} requests, got {len(self.received)}")


async def _hold(request: Request, seconds: float) -> None:
    """Wait ``seconds`` before answering, or less once the sender has gone.

    A sender that timed out or was killed hears no answer; holding on would
    only keep the server from stopping at the end of the test.
    """
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if await request.is_disconnected():
            return
        await asyncio.sleep(min(left, 0.05))
