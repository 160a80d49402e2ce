"""What a recorded Stripe event means for its session, whoever processes it.

The webhook endpoint (``fulfill/webhooks.py``) records an event and processes
it at once; the background worker (``fulfill/worker.py``) processes the ones
left ``received``. Both call ``process_event`` from here, so the worker does
not import the HTTP endpoint, and neither knows of the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fulfill.engine import Engine, utcnow
from fulfill.records import FULFILLING, PENDING
from fulfill.store import Store
from fulfill.stripe_api import SessionNotFound

# The event types the service acts on; any other is recorded and acknowledged.
FULFILL = ("checkout.session.completed", "checkout.session.async_payment_succeeded")
PAYMENT_FAILED = "checkout.session.async_payment_failed"
EXPIRED = "checkout.session.expired"
HANDLED = (*FULFILL, PAYMENT_FAILED, EXPIRED)


@dataclass(frozen=True)
class Event:
    id: str
    type: str
    livemode: bool
    session_id: str | None


def event_from_row(row: dict[str, Any]) -> Event:
    return Event(row["event_id"], row["type"], bool(row["livemode"]), row["session_id"])


async def process_event(
    engine: Engine, store: Store, event: Event, trigger: str, *, wait: float
) -> bool:
    """Act on a recorded event, then mark it processed; False if it is left ``received``.

    ``wait`` bounds how long this waits for the session's fulfillment, in
    this process or another. A session still being fulfilled when it runs
    out leaves the event ``received``: whoever looks at it again finds the
    outcome, at no Stripe call while the session is ``fulfilling`` under a
    live lease. If this raises (Stripe unavailable, the database gone), the
    event stays ``received`` too, and the background worker processes it
    again later.
    """
    assert event.session_id is not None
    try:
        if event.type in FULFILL:
            record = await engine.fulfill_checkout(event.session_id, trigger=trigger, wait=wait)
            if record.status in (PENDING, FULFILLING):
                return False
        elif event.type == PAYMENT_FAILED:
            await engine.record_payment_failed(event.session_id, trigger)
        elif event.type == EXPIRED:
            await engine.record_expired(event.session_id, trigger)
        outcome = "processed"
    except SessionNotFound:
        outcome = "session_not_found"
    await store.set_event_outcome(event.id, outcome, utcnow())
    return True
