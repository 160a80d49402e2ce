"""The one exception root of the service, and its subclasses.

Every error that reaches a user (HTTP client, CLI) is a ``FulfillError``; the
HTTP-facing ones carry their status code and a short machine-readable code,
so one handler can render them as JSON or HTML without knowing the cause.
"""

from __future__ import annotations


class FulfillError(Exception):
    """Root of every error this package raises on purpose."""

    status_code: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ConfigError(FulfillError):
    """A missing or malformed setting; the message names the variable."""

    code = "config_error"


class CatalogError(ConfigError):
    """The catalog file is missing or invalid; the message names the entry and field."""

    code = "catalog_error"


def describe(exc: BaseException) -> str:
    """One line for a log or a record: a ``FulfillError``'s message, else its type and text."""
    if isinstance(exc, FulfillError):
        return exc.message
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:1000]
