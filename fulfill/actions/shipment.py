"""The ``shipment`` action (SPEC §6): a shipment for the warehouse, to the collected address.

The address is the one Checkout collected: ``collected_information.
shipping_details`` from API version 2025-03-31, the session's top-level
``shipping_details`` before (the engine reads either into
``ItemContext.shipping``). A physical product sold without
``shipping_address_collection`` has nowhere to go: that fails the session
with an error that says how to fix the Checkout Session, rather than
recording a shipment nobody can send.

``fulfill shipments`` lists them for the warehouse (table, CSV or JSON).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from fulfill.actions.base import ItemContext, PermanentActionError, utcnow
from fulfill.store.deliverables import Deliverables

NO_ADDRESS = (
    "no shipping address was collected; enable shipping_address_collection "
    '(e.g. {"allowed_countries": ["US", "DE"]}) on the Checkout Sessions that sell '
    "physical products "
    "(https://docs.stripe.com/payments/checkout/shipping-address-collection)"
)


def shipping_address(shipping: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The postal address of ``{"name", "address": {…}}``, or None when there is none to ship to."""
    if not shipping:
        return None
    address = shipping.get("address")
    if not isinstance(address, Mapping):
        return None
    if not address.get("line1") or not address.get("country"):
        return None
    return {str(k): v for k, v in address.items()}


def one_line(address: Mapping[str, Any]) -> str:
    """``354 Oyster Point Blvd, 94080 South San Francisco, CA, US``."""
    town = " ".join(str(part) for part in (address.get("postal_code"), address.get("city")) if part)
    parts = [address.get("line1"), address.get("line2"), town, address.get("state")]
    parts.append(address.get("country"))
    return ", ".join(str(part) for part in parts if part)


class ShipmentAction:
    """Records a ``pending`` shipment of the item to the session's shipping address."""

    name = "shipment"

    def __init__(
        self,
        options: Mapping[str, Any],
        deliverables: Deliverables,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.deliverables = deliverables
        self.clock = clock

    async def perform(self, item: ItemContext) -> dict[str, Any]:
        """Record the shipment (once per item); ``{"shipment", "message"}``."""
        address = shipping_address(item.shipping)
        if address is None:
            # The session will never gain an address: no retry can help.
            raise PermanentActionError(NO_ADDRESS)
        assert item.shipping is not None
        name = item.shipping.get("name") or item.customer.get("name")
        phone = item.shipping.get("phone") or item.customer.get("phone")
        email = item.customer.get("email")
        shipment = await self.deliverables.create_shipment(
            session_id=item.session_id,
            line_item_id=item.line_item_id,
            email=email if isinstance(email, str) else None,
            name=str(name) if name else None,
            phone=str(phone) if phone else None,
            address=address,
            description=item.description or item.entry_name or None,
            product_id=item.product_id or None,
            price_id=item.price_id or None,
            quantity=item.quantity,
            livemode=item.livemode,
            now=self.clock(),
        )
        what = shipment.description or "your order"
        if shipment.quantity > 1:
            what = f"{shipment.quantity} × {what}"  # noqa: RUF001
        to = ", ".join(p for p in (shipment.name, one_line(shipment.address)) if p)
        return {
            "shipment": {
                "id": shipment.id,
                "status": shipment.status,
                "quantity": shipment.quantity,
                "name": shipment.name,
                "address": shipment.address,
            },
            "message": f"We will ship {what} to {to}.",
        }
