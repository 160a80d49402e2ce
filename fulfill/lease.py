"""Keeping a fulfillment's lease while its actions run, and knowing when it may be lost.

The claim (``store.claim``) gives one process a session's lease on the
database's clock. While that process performs the items it keeps the lease
alive (the heartbeat) and, before each item, makes sure it still holds it
(``still_ours``): the engine calls these; this module knows nothing of what
is performed. Why each step is needed is in docs/claims.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import stamina

from fulfill.errors import describe
from fulfill.metrics import Metrics
from fulfill.store import Store

log = logging.getLogger("fulfill.engine")


class LeaseKeeper:
    """The leases one process holds: when each was last known to be ours, and their renewal."""

    def __init__(self, store: Store, owner: str, lease_seconds: float, metrics: Metrics) -> None:
        self.store = store
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.metrics = metrics
        # When this process last knew it held each session's lease (monotonic
        # seconds, taken *before* the write that proved it): a claim, a
        # heartbeat, an item recorded under it.
        self._confirmed: dict[str, float] = {}
        self.monotonic: Callable[[], float] = time.monotonic

    def confirm(self, session_id: str, asked: float) -> None:
        """The lease was ours as of ``asked`` (a ``monotonic`` reading before the write)."""
        self._confirmed[session_id] = asked

    def forget(self, session_id: str) -> None:
        self._confirmed.pop(session_id, None)

    async def still_ours(self, session_id: str) -> bool:
        """Before an item: is the lease still ours? Asked only when not known lately.

        The heartbeat keeps the lease while the process runs; a process that
        stalled (a paused VM, a blocked loop) past half the lease since it last
        knew may have lost it to another worker, which may be performing the
        same items: renew (conditionally on still owning it) before going on.
        """
        if self.monotonic() - self._confirmed.get(session_id, 0.0) < self.lease_seconds / 2:
            return True
        return await self.renew(session_id)

    async def renew(self, session_id: str) -> bool:
        """Extend our lease; when it was, note it confirmed as of before the write."""
        asked = self.monotonic()
        renewed = await self.store.renew(session_id, self.owner, self.lease_seconds)
        if renewed:
            self.confirm(session_id, asked)
        return renewed

    async def heartbeat(self, session_id: str) -> None:
        """Keep the lease while actions run; a slow action must not look like a dead worker.

        Renews every third of a lease. A renewal that fails (a dropped
        connection, a lock timeout, a failover) is tried again at once, with
        a short jittered backoff, until the next beat is due: one database
        error must not end the heartbeat, or the lease runs out under a slow
        action and another instance performs the same item again. Only the
        database saying the lease is another's ends it. If every renewal
        fails for longer than the lease, the next item is not begun without
        a renewal (``still_ours``); what was in flight may then be performed
        again by whoever takes over, with the same Idempotency-Key.
        """
        beat = self.lease_seconds / 3
        while True:
            await asyncio.sleep(beat)
            try:
                async for attempt in stamina.retry_context(
                    on=Exception,
                    attempts=None,
                    timeout=beat,
                    wait_initial=min(0.05, beat / 10),
                    wait_max=max(beat / 4, 0.05),
                ):
                    with attempt:
                        if attempt.num > 1:
                            self.metrics.lease_renewal_errors.inc()
                        renewed = await self.renew(session_id)
            except Exception as exc:
                self.metrics.lease_renewal_errors.inc()
                log.warning(
                    "could not renew the lease on %s… for %.1f s (still trying): %s",
                    session_id[:16],
                    beat,
                    describe(exc),
                )
                continue
            if not renewed:
                return
