"""What the built-in actions deliver: download grants, access grants, licence keys, shipments.

Each table is unique per line item; that constraint is the action's
idempotency record. A write is an ``INSERT … ON CONFLICT DO NOTHING``
followed by a read of the row, so performing an item again (after a crash
between the action and recording it ``done``, or by two workers racing for a
lease) finds what the first attempt wrote: a unique-constraint violation
means "already done", never an error.

Times are naive UTC, as in the rest of the store.
"""

from __future__ import annotations

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from fulfill.store import database
from fulfill.store.deliverables.base import normalize_email
from fulfill.store.deliverables.grants import AccessGrant, DownloadGrant, Grants
from fulfill.store.deliverables.license_keys import (
    LICENSE_ROUNDS,
    KeySpaceExhausted,
    LicenseKey,
    LicenseKeys,
)
from fulfill.store.deliverables.shipments import (
    SHIPMENT_PENDING,
    SHIPMENT_STATUSES,
    Shipment,
    Shipments,
)


class Deliverables(Grants, LicenseKeys, Shipments):
    """Queries for what the ``download``, ``access``, ``license`` and ``shipment`` actions keep.

    One class for the actions; each kind's queries are in its own module.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sqlite = database.is_sqlite(engine)
        self._insert = sqlite_insert if self._sqlite else pg_insert


__all__ = [
    "LICENSE_ROUNDS",
    "SHIPMENT_PENDING",
    "SHIPMENT_STATUSES",
    "AccessGrant",
    "Deliverables",
    "DownloadGrant",
    "KeySpaceExhausted",
    "LicenseKey",
    "Shipment",
    "normalize_email",
]
