"""Keeping the Stripe API's capacity for fulfillment (SPEC §10.6).

A landing-page visit for a session the service has never seen costs a
Stripe retrieve; a flood of random session IDs could otherwise spend the
account's whole rate limit (25/s test, 100/s live) and starve webhooks and
reconcile. So such lookups are limited per client and in total, and a
session Stripe says does not exist is remembered briefly, so asking again
costs nothing. Sessions the service already knows are never limited here.

``POST /checkout/sessions`` is anonymous and creates a session at Stripe each
time: it is limited the same way (``ClientLimits``), by the same client
address (``client_address``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiolimiter import AsyncLimiter
from cachetools import LRUCache, TTLCache
from starlette.requests import HTTPConnection

from fulfill.errors import FulfillError


class TooManyRequests(FulfillError):
    """A client, or all clients together, asked more often than a ``ClientLimits`` allows."""

    status_code = 429
    code = "too_many_requests"
    title = "Too many requests"
    # The messages for a client over its own allowance, and for everyone over the total.
    per_client_message = "Too many requests from this address"
    total_message = "Too many requests just now"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooManyLookups(TooManyRequests):
    code = "too_many_lookups"
    per_client_message = "Too many order lookups from this address"
    total_message = "Too many order lookups just now"


class TooManyCheckouts(TooManyRequests):
    code = "too_many_checkouts"
    # Shown as is on the page and in the JSON error: plain words, and what to do.
    per_client_message = (
        "You have started several checkouts in a short time. Please wait a moment and try "
        "again; nothing was charged."
    )
    total_message = (
        "We are getting a lot of orders just now. Please wait a moment and try again; "
        "nothing was charged."
    )


def client_address(connection: HTTPConnection) -> str:
    """The address allowances are counted by: the peer, or what a trusted proxy forwarded.

    uvicorn's proxy middleware has already put a trusted proxy's
    X-Forwarded-For here, and only then (``FULFILL_TRUSTED_PROXIES``,
    ``fulfill.app.server_options``).
    """
    return connection.client.host if connection.client else "unknown"


def _bucket(count: float, period: float) -> AsyncLimiter:
    """``count`` per ``period`` seconds, as a bucket that holds at least one.

    aiolimiter admits nothing when its bucket holds less than one: 0.5 a
    minute is kept as 1 per two minutes.
    """
    if count >= 1:
        return AsyncLimiter(count, period)
    return AsyncLimiter(1, period / count)


class ClientLimits:
    """An allowance per client address and one for all clients together.

    The per-client buckets live in a map bounded by ``max_clients``, the least
    recently seen client forgotten first: a flood of addresses costs memory up
    to that bound, and a forgotten client starts again with a full allowance.
    """

    def __init__(
        self,
        *,
        per_client_per_minute: float,
        total_per_second: float,
        max_clients: int = 10_000,
        refused: type[TooManyRequests] = TooManyRequests,
    ) -> None:
        self.per_client = per_client_per_minute
        self.total = _bucket(total_per_second, 1.0)
        self.max_clients = max_clients
        self.refused = refused
        self._clients: LRUCache[str, AsyncLimiter] = LRUCache(maxsize=max_clients)

    def __len__(self) -> int:
        return len(self._clients)

    async def admit(self, client: str) -> None:
        """Take one from the client's and the total allowance, or raise ``refused`` (429)."""
        # A lookup counts as a use: the least recently seen client is forgotten.
        limiter = self._clients.get(client)
        if limiter is None:
            limiter = _bucket(self.per_client, 60.0)
            self._clients[client] = limiter
        if not limiter.has_capacity():
            raise self.refused(self.refused.per_client_message, _one(limiter))
        if not self.total.has_capacity():
            raise self.refused(self.refused.total_message, _one(self.total))
        # Both have capacity, and nothing ran in between: these do not wait.
        await limiter.acquire()
        await self.total.acquire()


def _one(limiter: AsyncLimiter) -> float:
    """Seconds in which a full bucket has room for one more."""
    return limiter.time_period / limiter.max_rate


class LookupGuard:
    """Admits lookups of unknown sessions; remembers the ones Stripe did not find."""

    def __init__(
        self,
        *,
        per_client_per_minute: float = 10,
        total_per_second: float = 10,
        unknown_ttl: float = 60,
        max_clients: int = 10_000,
        max_unknown: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = ClientLimits(
            per_client_per_minute=per_client_per_minute,
            total_per_second=total_per_second,
            max_clients=max_clients,
            refused=TooManyLookups,
        )
        self.unknown_ttl = unknown_ttl
        self.max_unknown = max_unknown
        self.clock = clock
        # Each entry expires ``unknown_ttl`` after it was last remembered; when
        # full, the least recently used goes first.
        self._unknown: TTLCache[str, None] = TTLCache(
            maxsize=max_unknown, ttl=unknown_ttl, timer=clock
        )

    def known_missing(self, session_id: str) -> bool:
        """True if Stripe said this session does not exist a moment ago."""
        return session_id in self._unknown

    def remember_missing(self, session_id: str) -> None:
        self._unknown[session_id] = None

    async def admit(self, client: str) -> None:
        """Take one lookup from the client's and the total allowance, or refuse with 429."""
        await self.limits.admit(client)
