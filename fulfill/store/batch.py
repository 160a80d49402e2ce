"""Group commit: small writes of one kind that arrive together share one transaction.

A fulfillment ends in writes that touch one row each and do not depend on
each other: an event's outcome, an email marked sent, a new event recorded.
Each alone is a transaction (on PostgreSQL a BEGIN and a COMMIT, two round
trips, around a one-row statement; on SQLite a turn of the writer thread).
``GroupCommit`` runs the first such write at once; those that arrive while it
is in flight wait for it to end and then go together, each statement as it
would have run alone, in the next transaction. Nothing waits for a batch to
fill: alone, a write costs what it did; under load, one transaction carries
many.

Each caller still waits for its own write to be committed, and gets its own
statement's result. What a batch shares is its fate: a transaction that
fails (the database went away) fails every write in it, each caller seeing
the error it would have seen alone.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from sqlalchemy.engine import Connection

P = TypeVar("P")
R = TypeVar("R")

# The most writes one transaction carries.
BATCH_LIMIT = 200


class GroupCommit(Generic[P, R]):
    """``await group(params)``: ``each(connection, params)`` in a transaction shared with others."""

    def __init__(
        self,
        write: Callable[[Callable[[Connection], list[R]]], Awaitable[list[R]]],
        each: Callable[[Connection, P], R],
        *,
        limit: int = BATCH_LIMIT,
    ) -> None:
        self._write = write
        self._each = each
        self._limit = limit
        self._queue: list[tuple[P, asyncio.Future[R]]] = []
        self._draining: asyncio.Task[None] | None = None

    async def __call__(self, params: P) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        # A caller that stops waiting leaves its write to be done anyway (as a
        # begun transaction would be); its outcome is then nobody's to read.
        future.add_done_callback(_retrieved)
        self._queue.append((params, future))
        if self._draining is None or self._draining.done():
            self._draining = loop.create_task(self._drain())
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        batch: list[tuple[P, asyncio.Future[R]]] = []
        try:
            while self._queue:
                batch = self._queue[: self._limit]
                del self._queue[: self._limit]
                try:
                    results = await self._write(functools.partial(self._run, batch))
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for (_, future), result in zip(batch, results, strict=True):
                        if not future.done():
                            future.set_result(result)
        finally:
            # Cancelled (the loop is closing): nobody may wait for a write
            # that will not be made, or whose fate is unknown.
            for _, future in [*batch, *self._queue]:
                future.cancel()
            self._queue.clear()

    def _run(self, batch: list[tuple[P, asyncio.Future[R]]], connection: Connection) -> list[R]:
        return [self._each(connection, params) for params, _ in batch]


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
