"""What every HTML page of the service shares: private headers, JSON or HTML, error pages.

The templates, ``money`` and ``safe_url``, which emails share with pages, are
in ``fulfill/presentation.py``, which knows nothing of HTTP.
"""

from __future__ import annotations

import math

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from fulfill.errors import FulfillError
from fulfill.presentation import TEMPLATES

# A page about an order is the customer's key to it (SPEC §10.5).
PRIVATE_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


def wants_json(request: Request) -> bool:
    """A client that asks for JSON, or sends it, gets JSON answers and errors."""
    accept = request.headers.get("accept", "")
    if "text/html" in accept:
        return False  # a browser, whatever else it takes
    if "application/json" in accept:
        return True
    content_type = request.headers.get("content-type", "")
    return content_type.split(";")[0].strip().lower() == "application/json"


def render_problem(
    request: Request,
    status: int,
    code: str,
    title: str,
    message: str,
    *,
    back: tuple[str, str] | None = None,
    retry_after: int | None = None,
    retry: str | None = None,
) -> Response:
    """An error as ``{"error": {"code", "message"}}`` or as a readable page; never a trace.

    ``back`` is a ``(label, path)`` link on the page, e.g. to the storefront.
    ``retry_after`` (seconds) is sent as ``Retry-After``; ``retry`` is the
    address of a "Try again" button on the page. The page does not reload by
    itself: a ``<meta http-equiv="refresh">`` moves the page under a screen
    reader's or a slow reader's feet (axe-core's ``meta-refresh``, WCAG 2.2.1).
    """
    headers = dict(PRIVATE_HEADERS)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if wants_json(request):
        return JSONResponse(
            {"error": {"code": code, "message": message}}, status_code=status, headers=headers
        )
    html = TEMPLATES.get_template("problem.html").render(
        title=title, message=message, status=status, back=back, retry=retry
    )
    return HTMLResponse(html, status_code=status, headers=headers)


def render_error(request: Request, exc: FulfillError) -> Response:
    """The one rendering of a ``FulfillError`` that reaches HTTP: its status and code.

    Server-side failures (5xx) tell the customer what to do, not what broke;
    the details are for the logs. An error with a ``retry_after`` (a 429) is
    sent with ``Retry-After``; its page does not reload itself, as a form
    post must not be repeated behind the customer's back.
    """
    status = exc.status_code
    if status >= 500:
        title = "We could not do that just now"
        message = "Nothing was charged. Please try again in a minute."
    else:
        title = getattr(exc, "title", "That did not work")
        message = exc.message
    response = render_problem(
        request, status, exc.code, title, message, back=("Back to the shop", "/shop")
    )
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(retry_after, int | float):
        response.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return response
