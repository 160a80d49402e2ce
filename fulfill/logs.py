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
import logging.config
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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


class MigrationChatter(logging.Filter):
    """Drops the two lines alembic logs each time it looks at the schema.

    ``/readyz`` asks whether a migration is pending, so every probe of a load
    balancer logged "Context impl …" and "Will assume … DDL"; the lines that
    say a migration ran ("Running upgrade …") stay.
    """

    CHATTER = ("Context impl %s.", "Will assume %s DDL.")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in self.CHATTER


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(
            f"{key}={value}"
            for key in ("session_id", "event_id")
            if (value := getattr(record, key, None))
        )
        return f"{line}  [{context}]" if context else line


# Chatty below WARNING, and nothing an operator needs: every HTTP request of
# the Stripe client (with full session IDs in its URLs), uvicorn's access log
# (the service writes its own, with IDs cut short).
QUIET = ("httpx", "httpcore", "stripe", "uvicorn.access")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def logging_config(level: int = logging.INFO, *, json_lines: bool | None = None) -> dict[str, Any]:
    """What ``configure`` applies, as a ``logging.config.dictConfig`` dictionary.

    ``serve`` gives it to uvicorn as ``log_config`` too: uvicorn applies it in
    every worker process, which ``--workers N`` starts as fresh interpreters
    that inherit no handler from the parent. Decided once, in the parent:
    JSON lines when stderr is not a terminal (or when asked), text otherwise.
    """
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    formatter: dict[str, Any] = (
        {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "{asctime}{levelname}{name}{message}{session_id}{event_id}",
            "style": "{",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        }
        if json_lines
        else {"()": "fulfill.logs.TextFormatter", "fmt": TEXT_FORMAT}
    )
    return {
        "version": 1,
        # Loggers made at import (fulfill.engine, …) must keep logging.
        "disable_existing_loggers": False,
        "filters": {
            "context": {"()": "fulfill.logs.ContextFilter"},
            "migration_chatter": {"()": "fulfill.logs.MigrationChatter"},
        },
        "formatters": {"fulfill": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "filters": ["context"],
                "formatter": "fulfill",
            }
        },
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            **{name: {"level": logging.WARNING} for name in QUIET},
            "alembic.runtime.migration": {"filters": ["migration_chatter"]},
        },
    }


def configure(level: int = logging.INFO, *, json_lines: bool | None = None) -> None:
    """Log to stderr: JSON lines when it is not a terminal (or when asked), text otherwise."""
    logging.config.dictConfig(logging_config(level, json_lines=json_lines))
