"""The emulator as an ASGI app: ``create_app()`` wires state, delivery, faults and routes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fulfill.emulator import api, control
from fulfill.emulator.delivery import Deliveries, Endpoint
from fulfill.emulator.errors import StripeError
from fulfill.emulator.faults import ApiGuard, Faults, RequestLog
from fulfill.emulator.state import Obj, State


class Emulator:
    """Everything one emulator holds; ``reset()`` forgets it all."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        auto_settle: float | None = None,
        retry_delays: tuple[float, ...] | None = None,
        latency_ms: float = 0.0,
    ) -> None:
        self.api_key = api_key
        self.auto_settle = auto_settle
        self._retry_delays = retry_delays
        self._latency_ms = latency_ms
        self._background: set[asyncio.Task[None]] = set()
        self._kept_endpoints: list[Endpoint] = []
        self.reset()

    def keep_endpoint(self, url: str, secret: str | None = None) -> Endpoint:
        """Register a webhook endpoint that survives ``reset()`` (``--webhook`` at start)."""
        endpoint = self.deliveries.add_endpoint(url, secret=secret)
        self._kept_endpoints.append(endpoint)
        return endpoint

    def reset(self) -> None:
        old = getattr(self, "deliveries", None)
        # Retries and settlements still pending belong to the forgotten objects:
        # left running they would reach the next test's receiver.
        for task in [*self._background, *(old._tasks if old else ())]:
            task.cancel()
        self.state = State()
        self.deliveries = Deliveries(self.state.events)
        if old is not None:
            self.deliveries._client = old._client
        for endpoint in self._kept_endpoints:
            self.deliveries.endpoints[endpoint.id] = endpoint
        if self._retry_delays is not None:
            self.deliveries.retry_delays = self._retry_delays
        self.state.on_event = self.deliveries.on_event
        self.faults = Faults()
        if self._latency_ms:
            self.faults.add(kind="latency", latency_ms=self._latency_ms)
        self.requests = RequestLog()

    def schedule_settlement(self, session: Obj, result: str | None = None) -> None:
        """Settle a delayed payment by itself after ``auto_settle`` seconds.

        The hosted page lets the customer pick the later result ("succeeded"
        or "failed"); without ``auto_settle`` a test settles it through
        ``/_emulator/sessions/{id}/settle``.
        """
        if self.auto_settle is None or session["payment_status"] != "unpaid":
            return
        succeeded = result != "failed"

        async def settle_later() -> None:
            await asyncio.sleep(self.auto_settle or 0)
            with contextlib.suppress(StripeError):
                self.state.settle(session["id"], succeeded)

        task = asyncio.get_running_loop().create_task(settle_later())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def expire_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.state.expire_due()


async def _stripe_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StripeError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return await api.not_found(request)
    error = StripeError(exc.status_code, str(exc.detail))
    return JSONResponse(error.body(), status_code=exc.status_code)


async def _index(request: Request) -> Response:
    emulator: Emulator = request.app.state.emulator
    return JSONResponse(
        {
            "emulator": "fulfill Stripe emulator",
            "api": "/v1/…",
            "control": "/_emulator/…",
            "sessions": len(emulator.state.sessions),
            "webhook_endpoints": len(emulator.deliveries.endpoints),
        }
    )


def create_app(emulator: Emulator | None = None) -> Starlette:
    """A new emulator app; pass an ``Emulator`` to keep a handle on its state."""
    emulator = emulator or Emulator()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await emulator.deliveries.start()
        expiry = asyncio.get_running_loop().create_task(emulator.expire_loop())
        try:
            yield
        finally:
            expiry.cancel()
            for task in list(emulator._background):
                task.cancel()
            await emulator.deliveries.close()

    app = Starlette(
        routes=[Route("/", _index), *api.ROUTES, *control.ROUTES],
        middleware=[Middleware(ApiGuard, emulator=emulator)],
        exception_handlers={StripeError: _stripe_error, HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.emulator = emulator
    return app
