"""The ``/v1/…`` routes: the part of Stripe's API this product uses.

Each handler reads Stripe-style parameters, checks them as Stripe does
(unknown parameter → 400 ``parameter_unknown``; missing object → 404
``resource_missing``) and answers with objects from ``State``.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fulfill.emulator.api.events import (
    create_webhook_endpoint,
    delete_webhook_endpoint,
    list_events,
    list_webhook_endpoints,
    retrieve_event,
)
from fulfill.emulator.api.products import (
    create_price,
    create_product,
    list_prices,
    list_products,
    retrieve_price,
    retrieve_product,
)
from fulfill.emulator.api.sessions import (
    create_session,
    expire_session,
    list_line_items,
    list_sessions,
    retrieve_session,
)
from fulfill.emulator.errors import StripeError


async def not_found(request: Request) -> Response:
    error = StripeError(
        404,
        f"Unrecognized request URL ({request.method}: {request.url.path}). "
        "This emulator implements the part of Stripe's API that fulfill uses.",
    )
    return JSONResponse(error.body(), status_code=404)


ROUTES: list[Route] = [
    create_product,
    list_products,
    retrieve_product,
    create_price,
    list_prices,
    retrieve_price,
    create_session,
    list_sessions,
    retrieve_session,
    list_line_items,
    expire_session,
    list_events,
    retrieve_event,
    create_webhook_endpoint,
    list_webhook_endpoints,
    delete_webhook_endpoint,
]
