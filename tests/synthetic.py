"""Records written straight through the Store, for tests that need many, or one in a given state.

Going through Stripe costs a session, a payment and a webhook per record;
a pagination test over a thousand records, or a record frozen mid-claim,
is better written as the engine itself would write it.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta

from fulfill.catalog import LineItemFacts
from fulfill.engine import utcnow
from fulfill.records import FULFILLING, MAY_REPLACE, LineItemSnapshot, SessionSnapshot
from fulfill.store import Store

BASE_TIME = datetime(2026, 11, 27, 20, 0, 0)


def session_id() -> str:
    """A well-formed test-mode session ID that Stripe (the emulator) does not know."""
    return "cs_test_syn" + secrets.token_hex(12)


def snapshot(
    sid: str, *, payment_status: str = "paid", status: str = "complete"
) -> SessionSnapshot:
    """A paid session with one line item, as the engine would have read it from Stripe."""
    item = LineItemSnapshot(
        line_item_id="li_" + sid[-12:],
        position=0,
        price_id="price_synthetic",
        product_id="prod_synthetic",
        description="Synthetic item",
        quantity=1,
        amount_total=1900,
        currency="eur",
        facts=LineItemFacts(price_id="price_synthetic", product_id="prod_synthetic"),
    )
    return SessionSnapshot(
        session_id=sid,
        status=status,
        payment_status=payment_status,
        livemode=False,
        mode="payment",
        customer={"email": "jenny@example.com", "name": "Jenny Rosen"},
        shipping=None,
        amount_total=1900,
        currency="eur",
        client_reference_id=None,
        metadata={},
        items=(item,),
    )


async def _write(
    database_url: str, records: Sequence[tuple[str, str, datetime]], claimed: Sequence[str]
) -> None:
    store = await Store.open(database_url, migrate=True, pool_size=4)
    try:
        for sid, status, created in records:
            await store.observe(snapshot(sid), status, MAY_REPLACE.get(status, ()), created)
        for sid in claimed:
            # Claimed by a worker whose lease lasts an hour: "fulfilling", and
            # left alone by every background worker for the length of a test.
            took = await store.claim(sid, "test-owner", 3600, utcnow())
            assert took, sid
    finally:
        await store.close()


def write_records(
    database_url: str,
    statuses: Sequence[str],
    *,
    start: datetime = BASE_TIME,
    per_timestamp: int = 1,
) -> list[str]:
    """One record per status in ``statuses`` (``fulfilling`` ones claimed); their session IDs.

    ``per_timestamp`` records share each ``created_at`` (a second apart
    otherwise), so that keyset pagination meets ties.
    """
    ids = [session_id() for _ in statuses]
    rows = []
    claimed = []
    for n, (sid, status) in enumerate(zip(ids, statuses, strict=True)):
        created = start + timedelta(seconds=n // per_timestamp)
        if status == FULFILLING:
            claimed.append(sid)
            status = "pending"
        rows.append((sid, status, created))
    asyncio.run(_write(database_url, rows, claimed))
    return ids
