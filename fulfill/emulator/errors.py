"""Errors in Stripe's shape and with Stripe's status codes.

Stripe answers ``{"error": {"type", "code", "message", "param"}}``; the
official library picks the exception class from the status code and ``type``
(see stripe-python ``_api_requestor.py``: 400/404 → InvalidRequestError,
401 → AuthenticationError, 429 → RateLimitError, 5xx → APIError).
"""

from __future__ import annotations

from typing import Any


class StripeError(Exception):
    """An error the emulator answers with, as Stripe would."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "type": self.type,
                "code": self.code,
                "message": self.message,
                "param": self.param,
            }
        }


def missing(kind: str, object_id: str, param: str | None = None) -> StripeError:
    """404 ``resource_missing``, as for ``GET /v1/checkout/sessions/cs_nope``."""
    return StripeError(
        404,
        f"No such {kind}: '{object_id}'",
        code="resource_missing",
        param=param or "id",
    )


def unknown_parameter(param: str) -> StripeError:
    return StripeError(
        400, f"Received unknown parameter: {param}", code="parameter_unknown", param=param
    )


def missing_parameter(param: str) -> StripeError:
    return StripeError(
        400, f"Missing required param: {param}.", code="parameter_missing", param=param
    )


def invalid(param: str, message: str, kind: str = "string") -> StripeError:
    """400 ``parameter_invalid_{kind}`` naming the parameter."""
    return StripeError(400, message, code=f"parameter_invalid_{kind}", param=param)
