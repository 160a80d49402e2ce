"""What every route shares: Stripe-style parameters in, JSON out, lists paginated as Stripe does."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fulfill.emulator import params as p
from fulfill.emulator.errors import invalid, missing
from fulfill.emulator.state import Obj, State, _public

Handler = Callable[[Request, p.Params], Awaitable[Any]]

SESSION_ID_RE = re.compile(r"^cs_(test|live)_[A-Za-z0-9]{1,200}$")
PAGINATION = ("limit", "starting_after", "ending_before", "expand")


def state_of(request: Request) -> State:
    state: State = request.app.state.emulator.state
    return state


async def read_params(request: Request) -> p.Params:
    raw = request.url.query
    if request.method == "POST":
        body = (await request.body()).decode("utf-8", errors="replace")
        raw = f"{raw}&{body}" if raw else body
    return p.decode(raw)


def stripe_route(path: str, methods: list[str]) -> Callable[[Handler], Route]:
    """A route whose handler gets decoded parameters and returns a JSON-able object."""

    def wrap(handler: Handler) -> Route:
        async def endpoint(request: Request) -> Response:
            params = await read_params(request)
            result = await handler(request, params)
            return JSONResponse(result)

        return Route(path, endpoint, methods=methods, name=handler.__name__)

    return wrap


def paginate(
    items: Sequence[Obj], params: p.Params, url: str, *, render: Callable[[Obj], Obj] = _public
) -> Obj:
    """Stripe's cursor pagination over ``items`` (already in list order)."""
    limit = p.get_int(params, "limit", minimum=1, maximum=100) or 10
    after = p.get_str(params, "starting_after")
    before = p.get_str(params, "ending_before")
    if after and before:
        raise invalid(
            "ending_before", "You may only specify one of starting_after and ending_before."
        )
    ids = [item["id"] for item in items]
    if after:
        if after not in ids:
            raise missing("object", after, param="starting_after")
        start = ids.index(after) + 1
        page = list(items[start : start + limit])
        has_more = start + limit < len(items)
    elif before:
        if before not in ids:
            raise missing("object", before, param="ending_before")
        end = ids.index(before)
        start = max(0, end - limit)
        page = list(items[start:end])
        has_more = start > 0
    else:
        page = list(items[:limit])
        has_more = limit < len(items)
    return {"object": "list", "data": [render(i) for i in page], "has_more": has_more, "url": url}


def created_filter(params: p.Params) -> Callable[[Obj], bool]:
    """``created=123`` or ``created[gte|gt|lte|lt]=…``."""
    raw = params.get("created")
    if raw is None or raw == "":
        return lambda obj: True
    if isinstance(raw, str):
        exact = p.get_int(params, "created")
        return lambda obj: bool(obj["created"] == exact)
    if not isinstance(raw, dict):
        raise invalid("created", "Invalid created: must be an integer or a hash", kind="hash")
    p.check_keys(raw, ("gt", "gte", "lt", "lte"), prefix="created")
    bounds = {k: p.get_int(raw, k, "created") for k in raw}

    def keep(obj: Obj) -> bool:
        c = obj["created"]
        return not (
            (bounds.get("gt") is not None and not c > bounds["gt"])
            or (bounds.get("gte") is not None and not c >= bounds["gte"])
            or (bounds.get("lt") is not None and not c < bounds["lt"])
            or (bounds.get("lte") is not None and not c <= bounds["lte"])
        )

    return keep


def newest_first(objects: Any) -> list[Obj]:
    return sorted(objects, key=lambda o: (o["created"], o["_seq"]), reverse=True)


def expansions(params: p.Params, allowed: Sequence[str]) -> list[str]:
    asked = [str(e) for e in p.get_list(params, "expand")]
    for index, path in enumerate(asked):
        if path not in allowed:
            raise invalid(f"expand[{index}]", f"This property cannot be expanded ({path}).")
    return asked


def api_version(request: Request) -> str | None:
    return request.headers.get("stripe-version")
