"""The ``access`` action (SPEC §6): an entitlement to a service for the customer's email.

The grant is a row (``fulfill access list`` shows them): email, service, URL,
from when and until when, or for life. The merchant's service decides who
may log in by asking for the email's grants; the customer gets a message
and a button to the service's URL.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from fulfill.actions.base import ItemContext, PermanentActionError, utcnow
from fulfill.records import iso
from fulfill.store.deliverables import AccessGrant, Deliverables


def day(moment: datetime) -> str:
    """``27 Nov 2027``."""
    return f"{moment.day} {moment:%b %Y}"


def describe(grant: AccessGrant, now: datetime) -> str:
    """What the customer is told about their access."""
    who = f"with {grant.email}"
    if grant.ends_at is None:
        return f"You have lifetime access to {grant.service} {who}."
    if grant.starts_at > now:
        # A renewal bought before the current period ended: it follows on.
        return (
            f"Your access to {grant.service} {who} is extended: "
            f"from {day(grant.starts_at)} until {day(grant.ends_at)}."
        )
    return f"You have access to {grant.service} {who} until {day(grant.ends_at)}."


class AccessAction:
    """Grants ``options["service"]`` at ``options["url"]`` for ``options["duration"]``."""

    name = "access"

    def __init__(
        self,
        options: Mapping[str, Any],
        deliverables: Deliverables,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.service: str = options["service"]
        self.url: str = options["url"]
        self.duration: int | None = options.get("duration")
        self.deliverables = deliverables
        self.clock = clock

    async def perform(self, item: ItemContext) -> dict[str, Any]:
        """Record the grant (once per item); ``{"message", "links", "access"}``."""
        email = item.customer.get("email")
        if not isinstance(email, str) or not email.strip():
            # Checkout always collects an email; without one nobody could use the grant.
            raise PermanentActionError(
                "the session has no customer email, and an access grant belongs to an email"
            )
        now = self.clock()
        name = item.customer.get("name")
        grant = await self.deliverables.grant_access(
            session_id=item.session_id,
            line_item_id=item.line_item_id,
            email=email,
            customer_name=name if isinstance(name, str) else None,
            service=self.service,
            url=self.url,
            duration=self.duration,
            product_id=item.product_id or None,
            price_id=item.price_id or None,
            quantity=item.quantity,
            livemode=item.livemode,
            now=now,
        )
        return {
            "message": describe(grant, now),
            "links": [{"label": f"Open {grant.service}", "url": grant.url}],
            "access": {
                "service": grant.service,
                "url": grant.url,
                "email": grant.email,
                "starts_at": iso(grant.starts_at),
                "ends_at": iso(grant.ends_at),
                "lifetime": grant.lifetime,
            },
        }
