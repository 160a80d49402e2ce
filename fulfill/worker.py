"""The background worker every ``serve`` process runs.

It retries ``failed`` sessions whose backoff has passed, resumes sessions
whose worker died (expired lease, or recorded and never claimed), and
processes webhook events that were acknowledged but whose processing never
finished (the process died after the 2xx). The database's conditional claim
makes it safe for every instance to run one.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from fulfill.engine import Engine, utcnow
from fulfill.store import Store
from fulfill.webhooks import event_from_row, process_event

log = logging.getLogger("fulfill.worker")


class Worker:
    def __init__(
        self, engine: Engine, store: Store, *, interval: float, event_grace: float
    ) -> None:
        self.engine = engine
        self.store = store
        self.interval = interval
        # An event younger than this may still be in its handler's hands.
        self.event_grace = event_grace

    async def step(self) -> int:
        """One pass; how many sessions and events it took up."""
        taken = await self.engine.run_due()
        stale = await self.store.unprocessed_events(utcnow() - timedelta(seconds=self.event_grace))
        for row in stale:
            event = event_from_row(row)
            try:
                await process_event(self.engine, self.store, event, f"webhook:{event.id}")
            except Exception as exc:
                log.warning("event %s still not processed: %s", event.id, exc)
        return taken + len(stale)

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The database may be away; the next pass tries again.
                log.warning("worker pass failed: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(self.interval)
