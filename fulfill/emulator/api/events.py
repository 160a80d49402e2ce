"""``/v1/events`` and ``/v1/webhook_endpoints`` (the real API's way of registering one)."""

from __future__ import annotations

from starlette.requests import Request

from fulfill.emulator import params as p
from fulfill.emulator.api.routing import (
    PAGINATION,
    created_filter,
    newest_first,
    paginate,
    state_of,
    stripe_route,
)
from fulfill.emulator.delivery import Deliveries
from fulfill.emulator.errors import invalid, missing, missing_parameter
from fulfill.emulator.state import Obj, _public

# -- events -------------------------------------------------------------------


@stripe_route("/v1/events", ["GET"])
async def list_events(request: Request, params: p.Params) -> Obj:
    state = state_of(request)
    p.check_keys(params, (*PAGINATION, "type", "types", "created", "delivery_success"))
    keep = created_filter(params)
    event_type = p.get_str(params, "type")
    types = [str(t) for t in p.get_list(params, "types")]
    if event_type and types:
        raise invalid("types", "You may only specify one of type and types.")

    def type_matches(event: Obj) -> bool:
        if types:
            return event["type"] in types
        if event_type is None:
            return True
        if event_type.endswith("*"):
            return str(event["type"]).startswith(event_type[:-1])
        return bool(event["type"] == event_type)

    items = [e for e in newest_first(state.events.values()) if keep(e) and type_matches(e)]
    return paginate(items, params, "/v1/events")


@stripe_route("/v1/events/{id}", ["GET"])
async def retrieve_event(request: Request, params: p.Params) -> Obj:
    p.check_keys(params, ("expand",))
    event = state_of(request).events.get(request.path_params["id"])
    if event is None:
        raise missing("event", request.path_params["id"])
    return _public(event)


# -- webhook endpoints (the real API's way of registering one) -------------------


@stripe_route("/v1/webhook_endpoints", ["POST"])
async def create_webhook_endpoint(request: Request, params: p.Params) -> Obj:
    p.check_keys(
        params, ("url", "enabled_events", "api_version", "description", "metadata", "expand")
    )
    url = p.get_str(params, "url", required=True) or ""
    events = [str(e) for e in p.get_list(params, "enabled_events")]
    if not events:
        raise missing_parameter("enabled_events")
    deliveries: Deliveries = request.app.state.emulator.deliveries
    endpoint = deliveries.add_endpoint(
        url, enabled_events=events, api_version=p.get_str(params, "api_version")
    )
    return endpoint.as_stripe(with_secret=True)


@stripe_route("/v1/webhook_endpoints", ["GET"])
async def list_webhook_endpoints(request: Request, params: p.Params) -> Obj:
    p.check_keys(params, PAGINATION)
    endpoints = [
        e.as_stripe(with_secret=False)
        for e in request.app.state.emulator.deliveries.endpoints.values()
    ]
    for index, endpoint in enumerate(endpoints):
        endpoint["_seq"] = index
    return paginate(list(reversed(endpoints)), params, "/v1/webhook_endpoints")


@stripe_route("/v1/webhook_endpoints/{id}", ["DELETE"])
async def delete_webhook_endpoint(request: Request, params: p.Params) -> Obj:
    deliveries = request.app.state.emulator.deliveries
    endpoint_id = request.path_params["id"]
    if endpoint_id not in deliveries.endpoints:
        raise missing("webhook_endpoint", endpoint_id)
    del deliveries.endpoints[endpoint_id]
    return {"id": endpoint_id, "object": "webhook_endpoint", "deleted": True}
