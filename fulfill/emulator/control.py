"""The ``/_emulator/…`` control endpoints and the hosted checkout page.

Control endpoints take and give JSON; they are for tests and demos and need
no API key. The hosted page is what a customer sees at a session's ``url``:
it completes the session with the chosen payment method and redirects to the
success URL with ``{CHECKOUT_SESSION_ID}`` filled in, as Checkout does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from fulfill.emulator.delivery import MODES, ORDERS
from fulfill.emulator.errors import StripeError, invalid, missing
from fulfill.emulator.faults import KINDS
from fulfill.emulator.state import Obj

TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
)


def emulator_of(request: Request) -> Any:
    return request.app.state.emulator


async def json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise invalid("body", "The body must be a JSON object.", kind="json") from None
    if not isinstance(body, dict):
        raise invalid("body", "The body must be a JSON object.", kind="json")
    return body


def _number(body: dict[str, Any], key: str, default: float, minimum: float = 0) -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise invalid(key, f"{key} must be a number ≥ {minimum:g}", kind="number")
    return float(value)


def _query_number(request: Request, key: str, default: float) -> float:
    """A number from the query string; 400 naming it when it is not one."""
    raw = request.query_params.get(key)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise invalid(key, f"{key} must be a number", kind="number") from None
    if value < 0:
        raise invalid(key, f"{key} must be a number ≥ 0", kind="number")
    return value


# -- sessions -------------------------------------------------------------------


async def complete_session(request: Request) -> Response:
    """``{"outcome": "paid"|"delayed"|"free", "email", "name", "shipping"}``."""
    emulator = emulator_of(request)
    body = await json_body(request)
    shipping = body.get("shipping")
    if shipping is not None and not isinstance(shipping, dict):
        raise invalid("shipping", "shipping must be an object with name and address")
    session = emulator.state.complete(
        request.path_params["id"],
        str(body.get("outcome", "paid")),
        email=body.get("email"),
        name=body.get("name"),
        shipping=shipping,
    )
    emulator.schedule_settlement(session)
    return JSONResponse(emulator.state.render_session(session, []))


async def settle_session(request: Request) -> Response:
    """``{"result": "succeeded"|"failed"}`` for a delayed payment."""
    emulator = emulator_of(request)
    body = await json_body(request)
    result = body.get("result", "succeeded")
    if result not in ("succeeded", "failed"):
        raise invalid("result", "result must be succeeded or failed")
    session = emulator.state.settle(request.path_params["id"], result == "succeeded")
    return JSONResponse(emulator.state.render_session(session, []))


# -- webhooks -------------------------------------------------------------------


async def add_webhook_endpoint(request: Request) -> Response:
    """``{"url", "secret"?, "enabled_events"?, "api_version"?}``; answers with the secret."""
    body = await json_body(request)
    url = body.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise invalid("url", "url must be an http(s) URL")
    secret = body.get("secret")
    if secret is not None and (not isinstance(secret, str) or not secret.startswith("whsec_")):
        raise invalid("secret", "secret must start with whsec_")
    events = body.get("enabled_events") or ["*"]
    if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
        raise invalid("enabled_events", "enabled_events must be a list of event types")
    endpoint = emulator_of(request).deliveries.add_endpoint(
        url, secret=secret, enabled_events=events, api_version=body.get("api_version")
    )
    return JSONResponse(endpoint.as_stripe(with_secret=True))


async def list_webhook_endpoints(request: Request) -> Response:
    endpoints = emulator_of(request).deliveries.endpoints.values()
    return JSONResponse({"data": [e.as_stripe(with_secret=True) for e in endpoints]})


async def webhook_settings(request: Request) -> Response:
    """``{"mode": "live"|"hold"|"off", "copies": n, "retry_delays": [s, …], "timeout": s}``."""
    deliveries = emulator_of(request).deliveries
    if request.method == "POST":
        body = await json_body(request)
        if "mode" in body:
            if body["mode"] not in MODES:
                raise invalid("mode", f"mode must be one of {', '.join(MODES)}")
            deliveries.mode = body["mode"]
        if "copies" in body:
            deliveries.copies = int(_number(body, "copies", 1, minimum=1))
        if "retry_delays" in body:
            delays = body["retry_delays"]
            if not isinstance(delays, list) or not all(
                isinstance(d, int | float) and not isinstance(d, bool) and d >= 0 for d in delays
            ):
                raise invalid("retry_delays", "retry_delays must be a list of seconds")
            deliveries.retry_delays = tuple(float(d) for d in delays)
        if "timeout" in body:
            deliveries.timeout = _number(body, "timeout", 30, minimum=0.1)
    return JSONResponse(
        {
            "mode": deliveries.mode,
            "copies": deliveries.copies,
            "retry_delays": list(deliveries.retry_delays),
            "timeout": deliveries.timeout,
            "held": list(deliveries.held),
        }
    )


async def flush_webhooks(request: Request) -> Response:
    """Deliver held events: ``{"order": "fifo"|"reverse"|"shuffle", "concurrent", "seed"}``."""
    body = await json_body(request)
    order = body.get("order", "fifo")
    if order not in ORDERS:
        raise invalid("order", f"order must be one of {', '.join(ORDERS)}")
    seed = body.get("seed")
    attempts = await emulator_of(request).deliveries.flush(
        order,
        concurrent=bool(body.get("concurrent", False)),
        seed=seed if isinstance(seed, int) else None,
    )
    return JSONResponse({"attempts": attempts})


async def redeliver_event(request: Request) -> Response:
    """Send an event again: ``{"copies": n, "concurrent": true, "endpoint": "we_…"}``."""
    emulator = emulator_of(request)
    event_id = request.path_params["id"]
    if event_id not in emulator.state.events:
        raise missing("event", event_id)
    body = await json_body(request)
    endpoint_id = body.get("endpoint")
    if endpoint_id is not None and endpoint_id not in emulator.deliveries.endpoints:
        raise missing("webhook_endpoint", str(endpoint_id), param="endpoint")
    attempts = await emulator.deliveries.redeliver(
        event_id,
        copies=int(_number(body, "copies", 1, minimum=1)),
        concurrent=bool(body.get("concurrent", True)),
        endpoint_id=endpoint_id,
    )
    return JSONResponse({"attempts": attempts})


async def delivery_log(request: Request) -> Response:
    deliveries = emulator_of(request).deliveries
    event_id = request.query_params.get("event")
    attempts = [a.as_json() for a in deliveries.log if event_id is None or a.event_id == event_id]
    return JSONResponse({"attempts": attempts, "in_flight": len(deliveries._tasks)})


async def wait_idle(request: Request) -> Response:
    """Wait (up to ``?timeout=`` seconds) until no webhook delivery is in flight."""
    timeout = _query_number(request, "timeout", 30)
    idle = await emulator_of(request).deliveries.idle(timeout)
    return JSONResponse({"idle": idle}, status_code=200 if idle else 504)


# -- faults and the request log -------------------------------------------------------


async def add_fault(request: Request) -> Response:
    """``{"kind", "path"?, "method"?, "count"?, "share"?, "latency_ms"?, "status"?,
    "retry_after"?}``."""
    body = await json_body(request)
    kind = body.get("kind")
    if kind not in KINDS:
        raise invalid("kind", f"kind must be one of {', '.join(KINDS)}")
    spec: dict[str, Any] = {"kind": kind}
    if "path" in body:
        if not isinstance(body["path"], str) or not body["path"].startswith("/v1/"):
            raise invalid("path", "path must be a pattern starting with /v1/ (* and ? match)")
        spec["path"] = body["path"]
    if body.get("method") is not None:
        spec["method"] = str(body["method"]).upper()
    if body.get("count") is not None:
        spec["count"] = int(_number(body, "count", 1, minimum=1))
    if "share" in body:
        share = _number(body, "share", 1.0)
        if share > 1:
            raise invalid("share", "share must be between 0 and 1", kind="number")
        spec["share"] = share
    if "latency_ms" in body:
        spec["latency_ms"] = _number(body, "latency_ms", 0)
    if "status" in body:
        status = int(_number(body, "status", 500, minimum=500))
        if status > 599:
            raise invalid("status", "status must be a 5xx code", kind="integer")
        spec["status"] = status
    if "retry_after" in body:
        spec["retry_after"] = _number(body, "retry_after", 1)
    fault = emulator_of(request).faults.add(**spec)
    return JSONResponse(fault.as_json())


async def faults(request: Request) -> Response:
    emulator = emulator_of(request)
    if request.method == "DELETE":
        emulator.faults.rules.clear()
    return JSONResponse({"data": [f.as_json() for f in emulator.faults.rules]})


async def request_log(request: Request) -> Response:
    """Counts per endpoint and the requests; ``?since=seq``, ``?path=`` filter the list."""
    log = emulator_of(request).requests
    if request.method == "DELETE":
        log.clear()
        return JSONResponse({"cleared": True})
    since = _query_number(request, "since", 0)
    path = request.query_params.get("path")
    entries = [
        e.as_json() for e in log.entries if e.seq > since and (path is None or e.path == path)
    ]
    return JSONResponse(
        {"total": sum(log.counts.values()), "counts": dict(log.counts), "requests": entries}
    )


async def reset(request: Request) -> Response:
    """Forget every object, endpoint, fault and logged request."""
    emulator_of(request).reset()
    return JSONResponse({"reset": True})


# -- the hosted checkout page ---------------------------------------------------------


def _hosted_session(request: Request) -> Obj | None:
    state = emulator_of(request).state
    session: Obj | None = state.sessions.get(request.path_params["id"])
    return session


def _message(title: str, message: str, status: int, link: str | None = None) -> Response:
    page = TEMPLATES.get_template("message.html").render(title=title, message=message, link=link)
    return HTMLResponse(page, status_code=status)


def _not_found() -> Response:
    return _message(
        "Checkout session not found",
        "This payment link is not valid. Return to the shop and try again.",
        404,
    )


def _success_target(session: Obj) -> str:
    """Where Checkout sends the customer after paying: the ID filled in."""
    target = str(session.get("success_url") or session.get("return_url") or "/")
    return target.replace("{CHECKOUT_SESSION_ID}", session["id"])


def _closed(session: Obj) -> Response:
    """The page of a session that can no longer be paid."""
    complete = session["status"] == "complete"
    return _message(
        "This checkout is closed",
        f"This checkout session is {session['status']}.",
        200 if complete else 410,
        link=_success_target(session) if complete else None,
    )


async def hosted_page(request: Request) -> Response:
    session = _hosted_session(request)
    if session is None:
        return _not_found()
    if session["status"] != "open":
        return _closed(session)
    state = emulator_of(request).state
    items = state.line_items[session["id"]]
    return HTMLResponse(
        TEMPLATES.get_template("checkout.html").render(
            session=session,
            items=items,
            free=session["amount_total"] == 0 or session["mode"] == "setup",
            shipping=session["shipping_address_collection"] is not None,
            money=format_money,
        )
    )


def _form_shipping(form: Any) -> Obj | None:
    """The shipping name and address entered on the page (None without a street)."""
    address: dict[str, str | None] = {
        key: str(form.get(key)) if form.get(key) else None
        for key in ("line1", "line2", "city", "postal_code", "state", "country")
    }
    if not address["line1"]:
        return None
    name = str(form.get("shipping_name") or form.get("name") or "") or None
    return {"name": name, "address": address}


async def hosted_pay(request: Request) -> Response:
    emulator = emulator_of(request)
    session = _hosted_session(request)
    if session is None:
        return _not_found()
    if session["status"] == "complete":
        # Paid already (a double click, the back button): on to the shop, paying once.
        return RedirectResponse(_success_target(session), status_code=303)
    if session["status"] != "open":
        return _closed(session)
    form = await request.form()
    shipping = _form_shipping(form) if session["shipping_address_collection"] else None
    try:
        session = emulator.state.complete(
            session["id"],
            str(form.get("outcome", "paid")),
            email=str(form.get("email") or "") or None,
            name=str(form.get("name") or "") or None,
            shipping=shipping,
        )
    except StripeError as error:
        return _message("The payment did not go through", error.message, error.status)
    emulator.schedule_settlement(session, str(form.get("settle", "")) or None)
    return RedirectResponse(_success_target(session), status_code=303)


async def hosted_cancel(request: Request) -> Response:
    session = _hosted_session(request)
    if session is None:
        return _not_found()
    return RedirectResponse(session.get("cancel_url") or "/", status_code=303)


def format_money(amount: int, currency: str) -> str:
    zero_decimal = {"jpy", "krw", "vnd", "clp", "xof", "xaf", "ugx", "pyg", "rwf", "kmf", "gnf"}
    if currency.lower() in zero_decimal:
        return f"{amount:,} {currency.upper()}"
    return f"{amount / 100:,.2f} {currency.upper()}"


ROUTES = [
    Route("/_emulator/sessions/{id}/complete", complete_session, methods=["POST"]),
    Route("/_emulator/sessions/{id}/settle", settle_session, methods=["POST"]),
    Route("/_emulator/webhook_endpoints", add_webhook_endpoint, methods=["POST"]),
    Route("/_emulator/webhook_endpoints", list_webhook_endpoints, methods=["GET"]),
    Route("/_emulator/webhooks", webhook_settings, methods=["GET", "POST"]),
    Route("/_emulator/webhooks/flush", flush_webhooks, methods=["POST"]),
    Route("/_emulator/webhooks/idle", wait_idle, methods=["GET"]),
    Route("/_emulator/events/{id}/deliver", redeliver_event, methods=["POST"]),
    Route("/_emulator/deliveries", delivery_log, methods=["GET"]),
    Route("/_emulator/faults", add_fault, methods=["POST"]),
    Route("/_emulator/faults", faults, methods=["GET", "DELETE"]),
    Route("/_emulator/requests", request_log, methods=["GET", "DELETE"]),
    Route("/_emulator/reset", reset, methods=["POST"]),
    Route("/c/pay/{id}", hosted_page, methods=["GET"]),
    Route("/c/pay/{id}", hosted_pay, methods=["POST"]),
    Route("/c/pay/{id}/cancel", hosted_cancel, methods=["GET"]),
]
