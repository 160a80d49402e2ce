"""Shipments: a line item to ship, to whom and where, and how far it got."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from fulfill.records import iso
from fulfill.store import database
from fulfill.store.deliverables.base import DeliverablesBase
from fulfill.store.schema import shipments

SHIPMENT_PENDING = "pending"
SHIPMENT_STATUSES = ("pending", "shipped", "delivered", "cancelled")


@dataclass(frozen=True)
class Shipment:
    """A line item to ship: what, how many, to whom and where, and how far it got."""

    id: int
    session_id: str
    line_item_id: str
    status: str
    email: str | None
    name: str | None
    phone: str | None
    address: dict[str, Any]
    description: str | None
    product_id: str | None
    price_id: str | None
    quantity: int
    livemode: bool
    created_at: datetime
    updated_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "session_id": self.session_id,
            "line_item_id": self.line_item_id,
            "description": self.description,
            "product_id": self.product_id,
            "price_id": self.price_id,
            "quantity": self.quantity,
            "email": self.email,
            "name": self.name,
            "phone": self.phone,
            "address": self.address,
            "livemode": self.livemode,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }


class Shipments(DeliverablesBase):
    """``Deliverables``' shipments."""

    # -- shipments ---------------------------------------------------------------------

    async def create_shipment(
        self,
        *,
        session_id: str,
        line_item_id: str,
        email: str | None,
        name: str | None,
        phone: str | None,
        address: Mapping[str, Any],
        description: str | None,
        product_id: str | None,
        price_id: str | None,
        quantity: int,
        livemode: bool,
        now: datetime,
    ) -> Shipment:
        """A ``pending`` shipment for the item; a repeat returns the one already made."""

        def work(connection: Connection) -> Shipment:
            connection.execute(
                self._insert(shipments)
                .values(
                    session_id=session_id,
                    line_item_id=line_item_id,
                    status=SHIPMENT_PENDING,
                    email=email,
                    name=name,
                    phone=phone,
                    address=dict(address),
                    description=description,
                    product_id=product_id,
                    price_id=price_id,
                    quantity=quantity,
                    livemode=livemode,
                    created_at=now,
                    updated_at=now,
                )
                .on_conflict_do_nothing(index_elements=["session_id", "line_item_id"])
            )
            row = (
                connection.execute(
                    select(shipments).where(
                        shipments.c.session_id == session_id,
                        shipments.c.line_item_id == line_item_id,
                    )
                )
            ).one()
            return _shipment(row._mapping)

        return await database.write(self.engine, work)

    async def shipments(
        self, *, status: str | None = None, session_id: str | None = None
    ) -> list[Shipment]:
        """Shipments oldest first, the order a warehouse works through them."""
        query = select(shipments)
        if status is not None:
            query = query.where(shipments.c.status == status)
        if session_id is not None:
            query = query.where(shipments.c.session_id == session_id)
        query = query.order_by(shipments.c.created_at, shipments.c.id)
        async with self.engine.connect() as connection:
            rows = await connection.execute(query)
            return [_shipment(row._mapping) for row in rows]


def _shipment(m: Any) -> Shipment:
    return Shipment(
        id=int(m["id"]),
        session_id=m["session_id"],
        line_item_id=m["line_item_id"],
        status=m["status"],
        email=m["email"],
        name=m["name"],
        phone=m["phone"],
        address=dict(m["address"] or {}),
        description=m["description"],
        product_id=m["product_id"],
        price_id=m["price_id"],
        quantity=int(m["quantity"]),
        livemode=bool(m["livemode"]),
        created_at=m["created_at"],
        updated_at=m["updated_at"],
    )
