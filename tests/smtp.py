"""A real SMTP server for the tests (aiosmtpd), that keeps what it receives."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from fulfill.mail.compose import parse_email
from tests.servers import free_port


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        return parse_email(self.data)


@dataclass
class Sink:
    """What the server received; ``refuse`` makes it answer 451 to the next N messages."""

    port: int
    received: list[Received] = field(default_factory=list)
    refused: int = 0
    refuse: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            if self.refuse > 0:
                self.refuse -= 1
                self.refused += 1
                return "451 4.3.0 Mailbox temporarily unavailable, try again later"
            self.received.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.content))
            )
        return "250 2.0.0 Message accepted for delivery"

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.05)
        raise AssertionError(f"expected {count} emails, got {len(self.received)}")


def _authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
        b"shop",
        b"s3cret:p@ss",
    )
    # handled=False: aiosmtpd answers 535 itself (True would mean "already answered").
    return AuthResult(success=ok, handled=False)


@contextmanager
def smtp_server(
    *,
    starttls: ssl.SSLContext | None = None,
    implicit: ssl.SSLContext | None = None,
    auth: bool = False,
) -> Iterator[Sink]:
    """An SMTP server on 127.0.0.1: plain, with STARTTLS (required), or implicit TLS."""
    sink = Sink(port=free_port())
    options: dict[str, Any] = {}
    if starttls is not None:
        options.update(tls_context=starttls, require_starttls=True)
    if auth:
        options.update(authenticator=_authenticate, auth_required=True)
        if starttls is None:
            # aiosmtpd knows TLS only from its own STARTTLS: on implicit TLS
            # (or plain, for the tests of refusals) it must be told to offer AUTH.
            options["auth_require_tls"] = False
    controller = Controller(
        sink,
        hostname="127.0.0.1",
        port=sink.port,
        ssl_context=implicit,
        server_hostname="localhost",
        **options,
    )
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()
