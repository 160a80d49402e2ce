"""The ``license`` action (SPEC §6): one licence key per unit of quantity.

A key follows the entry's ``format``: each ``X`` becomes a random character
from an alphabet without look-alikes (no 0/O, 1/I/L), drawn with ``secrets``
so keys cannot be predicted; every other character is kept. With the default
``XXXX-XXXX-XXXX-XXXX`` that is 31¹⁶, about 2⁷⁹, keys. Keys are unique across the
database (a unique index; a colliding key is replaced by a fresh one), and an
item performed again gets the keys it was issued the first time.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from fulfill.actions.base import ActionError, ItemContext, utcnow
from fulfill.store.deliverables import Deliverables, KeySpaceExhausted

# 31 characters: digits and capitals without 0, 1, I, L and O, which are
# misread and mistyped for one another.
ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
PLACEHOLDER = "X"


def generate_key(fmt: str, choice: Callable[[str], str] = secrets.choice) -> str:
    """A key of format ``fmt``: each ``X`` a random character of ``ALPHABET``."""
    return "".join(choice(ALPHABET) if ch == PLACEHOLDER else ch for ch in fmt)


def key_space(fmt: str) -> int:
    """How many different keys ``fmt`` can make."""
    return int(len(ALPHABET) ** fmt.count(PLACEHOLDER))


class LicenseAction:
    """Issues ``quantity`` keys in ``options["format"]`` for each item."""

    name = "license"

    def __init__(
        self,
        options: Mapping[str, Any],
        deliverables: Deliverables,
        *,
        product: str = "",
        clock: Callable[[], datetime] = utcnow,
        generate: Callable[[str], str] = generate_key,
    ) -> None:
        self.format: str = options["format"]
        self.deliverables = deliverables
        self.product = product
        self.clock = clock
        self.generate = generate

    async def perform(self, item: ItemContext) -> dict[str, Any]:
        """Issue the item's keys (once); ``{"keys", "message"}``."""
        if item.quantity < 1:
            raise ActionError(f"quantity {item.quantity}: nothing to issue a licence key for")
        email = item.customer.get("email")
        try:
            issued = await self.deliverables.issue_license_keys(
                session_id=item.session_id,
                line_item_id=item.line_item_id,
                quantity=item.quantity,
                product=self.product or item.entry_name or item.description or None,
                email=email if isinstance(email, str) else None,
                livemode=item.livemode,
                generate=lambda: self.generate(self.format),
                now=self.clock(),
            )
        except KeySpaceExhausted as exc:
            raise ActionError(
                f"{exc.message}; format {self.format!r} allows {key_space(self.format):,} keys: "
                "add X to it"
            ) from exc
        keys = [key.key for key in issued]
        message = "Your licence key:" if len(keys) == 1 else f"Your {len(keys)} licence keys:"
        return {"keys": keys, "message": message}
