"""Where composed emails go: an SMTP server, or ``.eml`` files in an outbox folder.

``FULFILL_SMTP_URL`` chooses the SMTP server and how it is secured:

- ``smtps://user:pass@host:465``: TLS from the first byte (implicit TLS);
- ``smtp://user:pass@host:587``: STARTTLS, required: a server that does not
  offer it is an error, never a silent fall back to plain text;
- ``smtp://host:25?tls=none``: plain text, for a relay on the same host or
  network; credentials are refused on it.

Without an SMTP URL, each email is written to the outbox folder as
``{session_id}.{kind}.eml`` (the demo, a dry run): written atomically, so a
reader never sees half a file, and a second write of the same email replaces
the first.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib

STARTTLS = "starttls"
IMPLICIT = "implicit"
PLAIN = "none"


class Transport(Protocol):
    description: str

    async def send(self, data: bytes, sender: str, recipient: str, name: str) -> None:
        """Deliver the email ``data`` from ``sender`` to ``recipient``; raise if not accepted."""
        ...


class PermanentFailure(Exception):
    """The server refused for good (a 5xx for the recipient): retrying will not help."""


@dataclass(frozen=True)
class SmtpTarget:
    hostname: str
    port: int
    tls: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 30.0

    @classmethod
    def parse(cls, url: str) -> SmtpTarget:
        """Read ``FULFILL_SMTP_URL``; ``ValueError`` names what is wrong, never the password."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise ValueError(
                "must look like smtp://user:password@host:587 or smtps://host:465"
            ) from None
        if parts.scheme not in ("smtp", "smtps"):
            raise ValueError(
                f"must start with smtp:// (STARTTLS) or smtps:// (implicit TLS), "
                f"not {parts.scheme or 'nothing'}://"
            )
        if not parts.hostname:
            raise ValueError("names no host: use smtp://user:password@host:587")
        query = parse_qs(parts.query)
        unknown = set(query) - {"tls", "timeout"}
        if unknown:
            raise ValueError(f"unknown option {sorted(unknown)[0]!r}; known: tls, timeout")
        tls = IMPLICIT if parts.scheme == "smtps" else STARTTLS
        if "tls" in query:
            wanted = query["tls"][-1]
            if parts.scheme == "smtps" or wanted not in (STARTTLS, PLAIN):
                raise ValueError("tls= may be starttls or none, and only with smtp://")
            tls = wanted
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        if tls == PLAIN and username:
            raise ValueError("refuses to send a password without TLS: drop ?tls=none")
        timeout = 30.0
        if "timeout" in query:
            try:
                timeout = float(query["timeout"][-1])
            except ValueError:
                raise ValueError("timeout= must be a number of seconds") from None
            if not 0 < timeout <= 300:
                raise ValueError("timeout= must be between 0 and 300 seconds")
        return cls(
            hostname=parts.hostname,
            port=port or (465 if tls == IMPLICIT else 587 if tls == STARTTLS else 25),
            tls=tls,
            username=username,
            password=password,
            timeout=timeout,
        )


class SmtpTransport:
    def __init__(self, target: SmtpTarget, *, tls_context: ssl.SSLContext | None = None) -> None:
        self.target = target
        self.tls_context = tls_context
        security = {IMPLICIT: "implicit TLS", STARTTLS: "STARTTLS", PLAIN: "no TLS"}[target.tls]
        self.description = f"SMTP {target.hostname}:{target.port} ({security})"

    def _context(self) -> ssl.SSLContext | None:
        if self.tls_context is None and self.target.tls != PLAIN:
            return ssl.create_default_context()
        return self.tls_context

    async def check(self, sender: str) -> None:
        """Connect, secure, log in and offer ``sender`` as a send would; then reset: send nothing.

        ``MAIL FROM`` is where a server that wants a login, or does not let us
        send as ``sender``, says so.
        """
        target = self.target
        client = aiosmtplib.SMTP(
            hostname=target.hostname,
            port=target.port,
            use_tls=target.tls == IMPLICIT,
            start_tls=target.tls == STARTTLS,
            tls_context=self._context(),
            timeout=target.timeout,
        )
        async with client:
            if target.username:
                await client.login(target.username, target.password or "")
            await client.mail(sender)
            await client.rset()

    async def send(self, data: bytes, sender: str, recipient: str, name: str) -> None:
        target = self.target
        context = self._context()
        try:
            errors, _ = await aiosmtplib.send(
                data,
                sender=sender,
                recipients=[recipient],
                hostname=target.hostname,
                port=target.port,
                username=target.username,
                password=target.password,
                use_tls=target.tls == IMPLICIT,
                start_tls=target.tls == STARTTLS,
                tls_context=context,
                timeout=target.timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [refusal.code for refusal in exc.recipients]
            if codes and all(500 <= code < 600 for code in codes):
                raise PermanentFailure(f"the server refused the recipient: {exc}") from exc
            raise
        if errors:
            # One recipient per message: any error is this one's.
            code, text = next(iter(errors.values()))
            raise aiosmtplib.SMTPResponseException(code, text)


class OutboxTransport:
    """Writes ``{name}.eml`` into a folder instead of sending."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.description = f"outbox folder {folder} (no FULFILL_SMTP_URL: nothing is sent)"

    async def send(self, data: bytes, sender: str, recipient: str, name: str) -> None:
        await asyncio.to_thread(self._write, data, name)

    def _write(self, data: bytes, name: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=self.folder, prefix=".", suffix=".part")
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.folder / f"{name}.eml")
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
