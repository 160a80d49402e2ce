"""Keeping the Stripe API's capacity for fulfillment (SPEC §10.6).

A landing-page visit for a session the service has never seen costs a
Stripe retrieve; a flood of random session IDs could otherwise spend the
account's whole rate limit (25/s test, 100/s live) and starve webhooks and
reconcile. So such lookups are limited per client and in total, and a
session Stripe says does not exist is remembered briefly, so asking again
costs nothing. Sessions the service already knows are never limited here.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from aiolimiter import AsyncLimiter

from fulfill.errors import FulfillError


class TooManyLookups(FulfillError):
    status_code = 429
    code = "too_many_lookups"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


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
        self.per_client = per_client_per_minute
        self.total = AsyncLimiter(total_per_second, 1.0)
        self.unknown_ttl = unknown_ttl
        self.max_clients = max_clients
        self.max_unknown = max_unknown
        self.clock = clock
        self._clients: OrderedDict[str, AsyncLimiter] = OrderedDict()
        self._unknown: OrderedDict[str, float] = OrderedDict()

    def known_missing(self, session_id: str) -> bool:
        """True if Stripe said this session does not exist a moment ago."""
        expires = self._unknown.get(session_id)
        if expires is None:
            return False
        if expires < self.clock():
            del self._unknown[session_id]
            return False
        return True

    def remember_missing(self, session_id: str) -> None:
        self._unknown[session_id] = self.clock() + self.unknown_ttl
        self._unknown.move_to_end(session_id)
        while len(self._unknown) > self.max_unknown:
            self._unknown.popitem(last=False)

    async def admit(self, client: str) -> None:
        """Take one lookup from the client's and the total allowance, or refuse with 429."""
        limiter = self._clients.get(client)
        if limiter is None:
            limiter = AsyncLimiter(self.per_client, 60.0)
            self._clients[client] = limiter
            while len(self._clients) > self.max_clients:
                self._clients.popitem(last=False)
        self._clients.move_to_end(client)
        if not limiter.has_capacity():
            raise TooManyLookups("Too many order lookups from this address", 60.0 / self.per_client)
        if not self.total.has_capacity():
            raise TooManyLookups("Too many order lookups just now", 1.0)
        # Both have capacity, and nothing ran in between: these do not wait.
        await limiter.acquire()
        await self.total.acquire()
