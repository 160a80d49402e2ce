"""A lean HTTP/1.1 client for the load: keep-alive connections and requests built once.

httpx costs about 0.7 ms of CPU per request, six times what a bare Starlette
endpoint costs to answer one: with it, the "ceiling" measured the load
generator, not the server. This client writes prebuilt request bytes on a
kept-alive asyncio connection and reads the status, the headers it needs and
the body (``Content-Length`` or chunked), a few tens of microseconds a
request, so that on two cores the server is what saturates.

It speaks just enough HTTP for the bench's own servers on loopback; the
bench still uses httpx for everything it does not time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

# uvicorn closes a connection idle for 5 s; one idle longer than this is
# dropped here first, so that a request is never written to a closing socket.
IDLE_LIMIT = 2.0
TIMEOUT = 60.0


class ClientError(Exception):
    """No answer: the connection failed or closed before the response was read."""


@dataclass(slots=True)
class Response:
    status: int
    body: bytes


def build(
    method: str,
    target: str,
    *,
    host: str,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
) -> bytes:
    """The bytes of one request, ready to write again and again."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Connection:
    __slots__ = ("last_used", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.last_used = time.monotonic()

    async def exchange(self, request: bytes) -> tuple[Response, bool]:
        """Send ``request``, read its response; also whether the connection stays open."""
        self.writer.write(request)
        reader = self.reader
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        keep = b"\r\nconnection: close" not in lower
        at = lower.find(b"\r\ncontent-length:")
        if at >= 0:
            end = lower.index(b"\r\n", at + 2)
            body = await reader.readexactly(int(lower[at + 17 : end]))
        elif b"\r\ntransfer-encoding: chunked" in lower:
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await reader.readexactly(size + 2)
                if not size:
                    break
                parts.append(chunk[:-2])
            body = b"".join(parts)
        else:  # no length: the body runs to the end of the connection
            body, keep = await reader.read(), False
        self.last_used = time.monotonic()
        return Response(status, body), keep

    def close(self) -> None:
        self.writer.close()


class Pool:
    """Kept-alive connections to one server; a new one whenever all are busy."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.authority = parts.netloc
        self.idle: list[Connection] = []
        self.opened = 0

    def build(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> bytes:
        return build(method, target, host=self.authority, headers=headers, body=body)

    async def _connection(self) -> Connection:
        now = time.monotonic()
        while self.idle:
            connection = self.idle.pop()
            if now - connection.last_used < IDLE_LIMIT:
                return connection
            connection.close()
        reader, writer = await asyncio.open_connection(self.host, self.port)
        self.opened += 1
        return Connection(reader, writer)

    async def send(self, request: bytes) -> Response:
        """One request on a free connection; ``ClientError`` when no answer came."""
        try:
            async with asyncio.timeout(TIMEOUT):
                connection = await self._connection()
                try:
                    response, keep = await connection.exchange(request)
                except BaseException:
                    connection.close()
                    raise
        except (OSError, EOFError, ValueError, asyncio.LimitOverrunError, TimeoutError) as exc:
            raise ClientError(f"{type(exc).__name__}: {exc}") from exc
        if keep:
            self.idle.append(connection)
        else:
            connection.close()
        return response

    async def close(self) -> None:
        while self.idle:
            self.idle.pop().close()

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
