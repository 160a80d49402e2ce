"""The ASGI app factory: routes and wiring, no logic."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fulfill.admin import create_admin_app
from fulfill.config import Settings, load_settings
from fulfill.downloads import DownloadEndpoint
from fulfill.errors import FulfillError
from fulfill.guard import ClientLimits, LookupGuard, TooManyCheckouts
from fulfill.landing import LandingPage
from fulfill.outbox import OutboxViewer
from fulfill.pages import render_error, render_problem
from fulfill.reconcile import Schedule, parse_since
from fulfill.service import Service
from fulfill.storefront import Storefront
from fulfill.webhooks import WebhookEndpoint
from fulfill.worker import Worker

access_log = logging.getLogger("fulfill.access")

# Session IDs and download tokens are keys to a customer's order: access logs
# keep only a prefix (SPEC §10.5).
_SECRET_IN_PATH = re.compile(r"(cs_(?:test|live)_[A-Za-z0-9]{6})[A-Za-z0-9]*|(/downloads/)[^/?\s]+")


# client "method target" status duration
ACCESS_FORMAT = '%s "%s %s" %d %.1fms'


def redact(text: str) -> str:
    if "cs_" not in text and "/downloads/" not in text:
        return text
    return _SECRET_IN_PATH.sub(
        lambda m: (m.group(1) + "…") if m.group(1) else m.group(2) + "…", text
    )


class AccessLog:
    """One line per request, with secrets in the URL cut short."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            if access_log.isEnabledFor(logging.INFO):
                query = scope.get("query_string", b"").decode("latin-1")
                target = scope["path"] + (f"?{query}" if query else "")
                line = (
                    (scope.get("client") or ("-",))[0],
                    scope["method"],
                    redact(target),
                    status["code"],
                    (time.perf_counter() - started) * 1000,
                )
                # Logger.info() less its walk up the stack for the caller, which
                # is always this method: the walk was a sixth of the line's cost.
                record = access_log.makeRecord(
                    access_log.name,
                    logging.INFO,
                    __file__,
                    0,
                    ACCESS_FORMAT,
                    line,
                    None,
                    "AccessLog",
                )
                access_log.handle(record)


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's proxy settings from ``FULFILL_TRUSTED_PROXIES``, for every way the app is served.

    The client address (which the landing page and the checkout limit by, and
    the access log shows) is the connection's peer unless the peer is one of
    the trusted proxies; then uvicorn's ``ProxyHeadersMiddleware`` takes the
    rightmost X-Forwarded-For entry that is not itself a trusted proxy (so a
    client's own forged entries, further left, are never reached).

    Always passed explicitly: left to itself, uvicorn trusts 127.0.0.1 and ::1
    (or the ``FORWARDED_ALLOW_IPS`` variable), so anything on the same host
    could choose its address. Without trusted proxies the headers are not
    read at all.
    """
    trusted = settings.trusted_proxy_list
    return {"proxy_headers": bool(trusted), "forwarded_allow_ips": list(trusted)}


def create_app(
    settings: Settings, *, run_worker: bool = True, show_outbox: bool = False
) -> Starlette:
    """The service's app; everything it needs is opened at startup and closed at shutdown.

    ``show_outbox`` (the demo's alone) serves the outbox of customer emails at /outbox.
    """
    viewer = OutboxViewer(settings.mail_outbox)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service = await Service.start(settings)
        app.state.service = service
        app.state.webhook = WebhookEndpoint(
            service.engine,
            service.store,
            settings.webhook_secrets,
            tolerance=settings.webhook_tolerance,
            inline_budget=settings.inline_budget,
            livemode=settings.livemode,
        )
        app.state.landing = LandingPage(
            service.engine,
            settings.landing_wait,
            LookupGuard(
                per_client_per_minute=settings.lookups_per_client,
                total_per_second=settings.lookups_per_second,
            ),
        )
        app.state.downloads = DownloadEndpoint(service.store.deliverables, service.signing_key)
        app.state.storefront = Storefront(
            service.catalog,
            service.stripe,
            public_url=settings.public_url,
            shipping_countries=settings.shipping_country_list,
            outbox_url="/outbox" if show_outbox else None,
            limits=ClientLimits(
                per_client_per_minute=settings.checkouts_per_client,
                total_per_second=settings.checkouts_per_second,
                refused=TooManyCheckouts,
            ),
        )
        if service.mailer is not None:
            # A live shop whose emails only land in a folder should hear about it.
            level = logging.WARNING if settings.livemode and not settings.smtp_url else logging.INFO
            access_log.log(level, "customer emails: %s", service.mailer.transport.description)
        worker = Worker(
            service.engine,
            service.store,
            interval=settings.worker_interval,
            event_grace=settings.inline_budget + 30,
        )
        app.state.worker = worker
        tasks = []
        if run_worker:
            tasks.append(asyncio.get_running_loop().create_task(worker.run()))
        if run_worker and settings.reconcile_interval > 0:
            schedule = Schedule(
                service.reconciler,
                service.runs,
                owner=service.engine.owner,
                interval=settings.reconcile_interval * 60,
                since=parse_since(settings.reconcile_since),
            )
            tasks.append(asyncio.get_running_loop().create_task(schedule.run()))
        try:
            yield
        finally:
            tasks.extend(admin.state.sweeps)
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await app.state.webhook.close(timeout=5)
            await service.close()

    async def webhook(request: Request) -> Response:
        endpoint: WebhookEndpoint = request.app.state.webhook
        return await endpoint(request)

    async def landing(request: Request) -> Response:
        page: LandingPage = request.app.state.landing
        return await page(request)

    async def shop(request: Request) -> Response:
        storefront: Storefront = request.app.state.storefront
        return await storefront.page(request)

    async def checkout(request: Request) -> Response:
        storefront: Storefront = request.app.state.storefront
        return await storefront.checkout(request)

    async def home(request: Request) -> Response:
        return RedirectResponse("/shop", status_code=303)

    async def not_found(request: Request, exc: Exception) -> Response:
        # A path no route takes. Under /api, even one no mount's pattern
        # matches (a line break in a segment stops its "."), the API's JSON.
        path = request.url.path
        if path == "/api" or path.startswith("/api/"):
            return JSONResponse(
                {"error": {"code": "not_found", "message": "No such endpoint"}},
                status_code=404,
            )
        return render_problem(
            request,
            404,
            "not_found",
            "There is no page here",
            "The address may be mistyped, or the page gone.",
            back=("Back to the shop", "/shop"),
        )

    async def fulfill_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, FulfillError)
        if exc.status_code >= 500:
            access_log.warning("%s %s: %s", request.method, request.url.path, exc.message)
        return render_error(request, exc)

    async def download(request: Request) -> Response:
        endpoint: DownloadEndpoint = request.app.state.downloads
        return await endpoint(request)

    async def metrics(request: Request) -> Response:
        service: Service = request.app.state.service
        body, content_type = service.engine.metrics.render()
        return Response(body, media_type=content_type)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        service: Service = request.app.state.service
        ready, detail = await service.store.ready()
        return JSONResponse(
            {"status": "ready" if ready else "unavailable", "database": detail},
            status_code=200 if ready else 503,
        )

    admin = create_admin_app(
        lambda: app.state.service,
        settings.admin_token.get_secret_value() if settings.admin_token else None,
    )
    app = Starlette(
        routes=[
            Route("/webhooks/stripe", webhook, methods=["POST"]),
            Route("/checkout/complete", landing, methods=["GET"]),
            Route("/downloads/{token}", download, methods=["GET"]),
            Route("/checkout/sessions", checkout, methods=["POST"]),
            Route("/shop", shop, methods=["GET"]),
            Route("/", home, methods=["GET"]),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            Mount("/api", app=admin),
            *(
                [
                    Route("/outbox", viewer.index, methods=["GET"]),
                    Route("/outbox/{name}", viewer.letter, methods=["GET"]),
                ]
                if show_outbox
                else []
            ),
        ],
        middleware=[Middleware(AccessLog)],
        exception_handlers={FulfillError: fulfill_error, 404: not_found},
        lifespan=lifespan,
    )
    # Starlette answers "/shop/" with a 307 to "/shop" on an absolute URL
    # built from the Host header: a forged Host turned POST /checkout/sessions/
    # into a redirect, body and all, to any site. No path here has a second
    # spelling, so there is nothing to redirect.
    app.router.redirect_slashes = False
    return app


def create_app_from_env() -> Starlette:
    """For ``uvicorn --factory`` (``serve --workers N``): settings from the environment."""
    settings = load_settings()
    settings.require_stripe()
    return create_app(settings)
