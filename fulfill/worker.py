"""The background worker every ``serve`` process runs.

It retries ``failed`` sessions whose backoff has passed, resumes sessions
whose worker died (expired lease, or recorded and never claimed), and
processes webhook events that were acknowledged but whose processing never
finished (the process died after the 2xx), and sends the customer emails
that were not sent at once (queued by a process that died, or due again after
a failure). The database's conditional claims make it safe for every
instance to run one: each session, email and event is taken by one of them.

A pass never waits long on any one thing: fulfillments it starts or finds in
flight are waited on for ``event_wait`` seconds in all (``run_due`` not at
all), and go on without it; an event whose session is still being fulfilled
is given back, to be looked at again after a backoff by whichever instance
claims it then. Retries and emails are not held up behind a slow action or
another instance's work.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from fulfill import logs
from fulfill.engine import Engine, utcnow
from fulfill.events import event_from_row, process_event
from fulfill.store import Store
from fulfill.store.inbox import Inbox
from fulfill.stripe_api import StripeUnavailable

log = logging.getLogger("fulfill.worker")

EVENTS_PER_PASS = 50
# Seconds one pass waits, in all, for the fulfillments its events trigger or
# find in flight; what is not done by then is finished without it.
EVENT_WAIT = 2.0
MAX_EVENT_BACKOFF = 300.0  # seconds


class Worker:
    def __init__(
        self,
        engine: Engine,
        store: Store,
        *,
        interval: float,
        event_grace: float,
        event_wait: float = EVENT_WAIT,
        event_lease: float | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.inbox = Inbox(store)
        self.interval = interval
        # An event younger than this may still be in its handler's hands.
        self.event_grace = event_grace
        self.event_wait = event_wait
        # How long a claim on an event keeps other instances off it; a
        # claimant that dies holds it no longer than this.
        self.event_lease = engine.options.lease_seconds if event_lease is None else event_lease

    async def step(self) -> int:
        """One pass; how many sessions, emails and events it took up."""
        taken = await self.engine.run_due()
        if self.engine.mailer is not None:
            taken += await self.engine.mailer.send_due()
        return taken + await self.process_events()

    async def process_events(self) -> int:
        """Claim the stale events no other live instance holds and process them; how many."""
        owner = self.engine.owner
        stale = await self.inbox.stale(
            utcnow() - timedelta(seconds=self.event_grace), limit=EVENTS_PER_PASS
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.event_wait
        taken = 0
        for row in stale:
            event = event_from_row(row)
            attempts = await self.inbox.claim(event.id, owner, self.event_lease)
            if attempts is None:
                continue  # another instance claimed it since the list was read
            taken += 1
            wait = max(0.0, deadline - loop.time())
            # Not done now: given back for a backoff that doubles with each
            # claim, so that no instance spends a pass (or, through a long
            # outage or rate limit, a Stripe call) on the event every pass.
            delay = min(self.interval * 2 ** min(attempts - 1, 20), MAX_EVENT_BACKOFF)
            with logs.bound(event_id=event.id, session_id=event.session_id):
                try:
                    done = await process_event(
                        self.engine, self.store, event, f"webhook:{event.id}", wait=wait
                    )
                except Exception as exc:
                    if isinstance(exc, StripeUnavailable) and exc.retry_after is not None:
                        delay = max(delay, exc.retry_after)
                    await self.inbox.release(event.id, owner, after=delay)
                    log.warning(
                        "event %s still not processed (again in %.0f s): %s", event.id, delay, exc
                    )
                else:
                    if not done:
                        await self.inbox.release(event.id, owner, after=delay)
                        log.info(
                            "event %s: its session is still being fulfilled; again in %.0f s",
                            event.id,
                            delay,
                        )
        return taken

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
