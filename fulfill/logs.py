"""Structured logs: JSON lines when not on a terminal, with the session and event on every line.

The session and event being handled are kept in context variables, set where
a fulfillment or a webhook starts; a filter copies them onto every record
logged inside, so one ``grep cs_test_…`` finds a fulfillment's whole story.
Secrets never reach a log: session IDs in URLs are cut short by the access
log, keys and signatures are never passed to a logger.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from pythonjsonlogger.json import JsonFormatter

session_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("session_id", default=None)
event_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("event_id", default=None)


class ContextFilter(logging.Filter):
    """Adds ``session_id`` and ``event_id`` from the context to each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.session_id = session_var.get()
        record.event_id = event_var.get()
        return True


@contextmanager
def bound(*, session_id: str | None = None, event_id: str | None = None) -> Iterator[None]:
    """Log lines inside carry this session and event."""
    tokens = []
    if session_id is not None:
        tokens.append((session_var, session_var.set(session_id)))
    if event_id is not None:
        tokens.append((event_var, event_var.set(event_id)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(
            f"{key}={value}"
            for key in ("session_id", "event_id")
            if (value := getattr(record, key, None))
        )
        return f"{line}  [{context}]" if context else line


def configure(level: int = logging.INFO, *, json_lines: bool | None = None) -> None:
    """Log to stderr: JSON lines when it is not a terminal (or when asked), text otherwise."""
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    if json_lines:
        handler.setFormatter(
            JsonFormatter(
                "{asctime}{levelname}{name}{message}{session_id}{event_id}",
                style="{",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "stripe", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
