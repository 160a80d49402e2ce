"""Structured logs: JSON lines when not on a terminal, with the session and event on every line.

The session and event being handled are kept in context variables, set where
a fulfillment or a webhook starts; a filter copies them onto every record
logged inside, so one ``grep`` finds a fulfillment's whole story.

A session ID is the customer's key to their order page (anyone holding it
sees the order, its download links and licence keys), and logs travel
further than the database: to aggregators, tickets, chat. So no line carries
one whole. Lines carry the session's *log reference* instead —
``cs_test_a1b2c3d4-9f86d08188``: the ID's first 16 characters (its mode and 8
of its ~58 random ones, which open nothing) and the first 10 hex digits of
the SHA-256 of the whole ID, which tell sessions with the same start apart.
It is stable (the same on every host and release, no key to share or
rotate), ``fulfill show`` accepts it and prints it, and it is computed here,
where each record is rendered, so every call site is covered at once; a
whole ID that a message or a traceback carries anyway (a Stripe error
naming the session) is replaced by its reference too. Access lines cut IDs
in URLs shorter still; keys, secrets and tokens are never logged.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import logging.config
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from json.encoder import encode_basestring_ascii as encode_json_string
from typing import Any

import pythonjsonlogger.json

session_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("session_id", default=None)
event_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("event_id", default=None)

# How much of the ID a reference keeps: "cs_test_" and 8 of the random characters.
REFERENCE_PREFIX = 16
REFERENCE_HASH = 10
REFERENCE_RE = re.compile(
    rf"(cs_(?:test|live)_[A-Za-z0-9]{{0,{REFERENCE_PREFIX - 8}}})-([0-9a-f]{{{REFERENCE_HASH}}})"
)
# A whole session ID inside a message or a traceback: longer than any cut-short
# form the service logs (a reference's prefix, an access line's), so those are left be.
_WHOLE_ID = re.compile(rf"cs_(?:test|live)_[A-Za-z0-9]{{{REFERENCE_PREFIX - 8 + 1},}}")


def log_reference(session_id: str) -> str:
    """``cs_test_a1b2c3d4…`` → ``cs_test_a1b2c3d4-9f86d08188``: a session in the logs.

    Never more than half of the ID is kept, so that a short ID (tests use
    some) is not logged whole either.
    """
    keep = min(REFERENCE_PREFIX, max(8, len(session_id) // 2))
    digest = hashlib.sha256(session_id.encode()).hexdigest()[:REFERENCE_HASH]
    return f"{session_id[:keep]}-{digest}"


def is_log_reference(text: str) -> bool:
    return REFERENCE_RE.fullmatch(text) is not None


def matches_reference(session_id: str, reference: str) -> bool:
    """Whether ``reference`` is ``session_id``'s log reference."""
    return log_reference(session_id) == reference


def scrub(text: str) -> str:
    """Every whole session ID in ``text`` replaced by its log reference."""
    return _WHOLE_ID.sub(lambda m: log_reference(m.group(0)), text)


class ContextFilter(logging.Filter):
    """Adds ``session_ref`` and ``event_id`` from the context to each record.

    Also replaces any whole session ID in the message with its reference.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        session_id = session_var.get()
        record.session_ref = log_reference(session_id) if session_id else None
        record.event_id = event_var.get()
        try:
            message = record.getMessage()
        except Exception:
            return True
        if "cs_" in message and (scrubbed := scrub(message)) != message:
            record.msg, record.args = scrubbed, None
        elif record.args and isinstance(record.msg, str):
            # Kept formatted: the formatter's getMessage() finds it done.
            record.msg, record.args = message, None
        return True


class JsonFormatter(pythonjsonlogger.json.JsonFormatter):
    """JSON lines; a traceback's session IDs replaced by their references.

    A plain record (no exception, stack or extra attribute, every field a
    string or None: every access line, nearly every other) is written
    directly: the fields of ``fmt``, renamed, in order, each string escaped
    by the same function the ``json`` module uses. That is the line
    python-json-logger writes (tests/test_logs.py compares the two) for a
    third of its CPU: its ``format`` makes an encoder and walks the record's
    attributes for extras on every line, and the access log writes a line
    per request (docs/benchmark.md). Anything else takes the library's path.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # '"time": ', '"level": ', … : each field's name as it opens its pair.
        self._keys = tuple(
            (field, encode_json_string(self._get_rename(field)) + ": ")
            for field in self._required_fields
        )
        self._asctime = "asctime" in self._required_fields
        # The time down to the second, kept for the second it names (one tuple:
        # threads replace it whole).
        self._second: tuple[int, str] = (-1, "")
        # Only for the configuration logging_config gives: a line of the fields alone.
        self._direct = (
            self.json_serializer is json.dumps
            and self.json_encoder is pythonjsonlogger.json.JsonEncoder
            and self.json_default is None
            and self.json_indent is None
            and self.json_ensure_ascii
            and not (self.prefix or self.defaults or self.static_fields or self.timestamp)
            and not self.rename_fields_keep_missing
        )

    def format(self, record: logging.LogRecord) -> str:
        attributes = record.__dict__
        if (
            not self._direct
            or record.exc_info
            or record.exc_text
            or record.stack_info
            or isinstance(record.msg, dict)
            or not self._skip_fields.issuperset(attributes)
        ):
            return super().format(record)
        record.message = record.getMessage()
        if self._asctime:
            record.asctime = self.formatTime(record, self.datefmt)
        pairs = []
        for field, key in self._keys:
            value = attributes.get(field)
            if value is None:
                pairs.append(key + "null")
            elif type(value) is str:
                pairs.append(key + encode_json_string(value))
            else:
                return super().format(record)
        return "{" + ", ".join(pairs) + "}"

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """``logging.Formatter``'s, with the part down to the second made once a second."""
        msec_format = self.default_msec_format
        if datefmt is not None or self.converter is not time.localtime or msec_format is None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        kept = self._second
        if kept[0] != second:
            kept = self._second = (
                second,
                time.strftime(self.default_time_format, self.converter(record.created)),
            )
        return msec_format % (kept[1], record.msecs)

    def formatException(self, ei: Any) -> Any:
        text = super().formatException(ei)
        return scrub(text) if isinstance(text, str) else [scrub(line) for line in text]


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
            for key in ("session_ref", "event_id")
            if (value := getattr(record, key, None))
        )
        return f"{line}  [{context}]" if context else line

    def formatException(self, ei: Any) -> str:
        return scrub(super().formatException(ei))


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
            "()": "fulfill.logs.JsonFormatter",
            "fmt": "{asctime}{levelname}{name}{message}{session_ref}{event_id}",
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
