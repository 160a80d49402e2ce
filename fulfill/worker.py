"""The background worker every ``serve`` process runs.

It retries ``failed`` sessions whose backoff has passed, resumes sessions
whose worker died (expired lease, or recorded and never claimed), and
processes webhook events that were acknowledged but whose processing never
finished (the process died after the 2xx), and sends the customer emails
that were not sent at once (queued by a process that died, or due again after
a failure). The database's conditional claims make it safe for every
instance to run one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta

from fulfill.engine import Engine, utcnow
from fulfill.store import Store
from fulfill.stripe_api import StripeUnavailable
from fulfill.webhooks import event_from_row, process_event

log = logging.getLogger("fulfill.worker")

EVENTS_PER_PASS = 50
MAX_EVENT_BACKOFF = 300.0  # seconds


class Worker:
    def __init__(
        self, engine: Engine, store: Store, *, interval: float, event_grace: float
    ) -> None:
        self.engine = engine
        self.store = store
        self.interval = interval
        # An event younger than this may still be in its handler's hands.
        self.event_grace = event_grace
        # Events this worker failed to process, with their failures and when
        # to try again: through a long Stripe outage or rate limit it backs
        # off, instead of spending calls on every stuck event every pass.
        self._backoff: dict[str, tuple[int, float]] = {}

    async def step(self) -> int:
        """One pass; how many sessions and events it took up."""
        taken = await self.engine.run_due()
        if self.engine.mailer is not None:
            taken += await self.engine.mailer.send_due()
        limit = EVENTS_PER_PASS + len(self._backoff)  # those backing off don't crowd out others
        stale = await self.store.unprocessed_events(
            utcnow() - timedelta(seconds=self.event_grace), limit=limit
        )
        if len(stale) < limit:
            # Whatever is not listed any more was processed (here or elsewhere).
            listed = {row["event_id"] for row in stale}
            self._backoff = {k: v for k, v in self._backoff.items() if k in listed}
        processed = 0
        for row in stale:
            event = event_from_row(row)
            failures, not_before = self._backoff.get(event.id, (0, 0.0))
            if not_before > time.monotonic():
                continue
            processed += 1
            try:
                await process_event(self.engine, self.store, event, f"webhook:{event.id}")
            except Exception as exc:
                delay = min(self.interval * 2**failures, MAX_EVENT_BACKOFF)
                if isinstance(exc, StripeUnavailable) and exc.retry_after is not None:
                    delay = max(delay, exc.retry_after)
                self._backoff[event.id] = (failures + 1, time.monotonic() + delay)
                log.warning(
                    "event %s still not processed (again in %.0f s): %s", event.id, delay, exc
                )
            else:
                self._backoff.pop(event.id, None)
        return taken + processed

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
