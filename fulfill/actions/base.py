"""What every fulfillment action gets and gives.

An action receives an ``ItemContext`` (one line item of one paid session, and
the catalog entry it matched) and returns a JSON-able result that is stored
on the item and shown on the landing page. It raises ``ActionError`` (or any
exception) when the item could not be fulfilled; the engine then records the
session ``failed`` and retries later with backoff.

Every action gets the same idempotency key, ``{session_id}:{line_item_id}``,
so that a side effect outside this service can be deduplicated by its
receiver when a worker dies between performing an action and recording it.

Every action is bounded in time (``TimedAction``, the catalog entry's
``timeout``): one that does not finish fails like any other, so the session
goes ``failed`` and is retried with backoff, instead of staying
``fulfilling`` with its lease renewed for as long as the process lives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from fulfill.errors import FulfillError

if TYPE_CHECKING:
    from fulfill.catalog import CatalogEntry
    from fulfill.records import SessionSnapshot


def utcnow() -> datetime:
    """Naive UTC, as the store keeps times (the engine's clock too)."""
    return datetime.now(UTC).replace(tzinfo=None)


class ActionError(FulfillError):
    """An action could not fulfill its item; the message says why, for the operator."""

    code = "action_failed"


class PermanentActionError(ActionError):
    """The item can never be fulfilled as the session stands: retrying cannot help.

    The session is recorded ``failed`` with no next attempt, at once, for an
    operator (``fulfill retry`` after fixing the cause), instead of being
    retried to the limit over hours.
    """

    code = "action_failed_permanently"


@dataclass(frozen=True)
class ItemContext:
    """One line item of a paid Checkout Session, with what the catalog says about it."""

    session_id: str
    line_item_id: str
    price_id: str
    product_id: str
    description: str
    quantity: int
    currency: str
    amount_total: int
    customer: Mapping[str, Any]  # {"email": …, "name": …}
    shipping: Mapping[str, Any] | None  # {"name": …, "address": {…}} or None
    metadata: Mapping[str, str]  # the session's metadata
    livemode: bool
    options: Mapping[str, Any] = field(default_factory=dict)  # the catalog entry's action options
    entry_name: str = ""

    @property
    def idempotency_key(self) -> str:
        return f"{self.session_id}:{self.line_item_id}"

    @classmethod
    def for_item(
        cls, snapshot: SessionSnapshot, line_item_id: str, entry: CatalogEntry
    ) -> ItemContext:
        """What the action of ``entry`` is given for one line item of ``snapshot``."""
        line = next(i for i in snapshot.items if i.line_item_id == line_item_id)
        return cls(
            session_id=snapshot.session_id,
            line_item_id=line.line_item_id,
            price_id=line.price_id,
            product_id=line.product_id,
            description=line.description,
            quantity=line.quantity,
            currency=line.currency,
            amount_total=line.amount_total,
            customer=dict(snapshot.customer),
            shipping=dict(snapshot.shipping) if snapshot.shipping else None,
            metadata=dict(snapshot.metadata),
            livemode=snapshot.livemode,
            options=entry.options,
            entry_name=entry.name,
        )


class Action(Protocol):
    """A configured action: one per catalog entry, built at start."""

    name: str

    async def perform(self, item: ItemContext) -> dict[str, Any]:
        """Fulfill one line item; return the result to keep (JSON-able)."""
        ...


class TimedAction:
    """An action that fails with ``ActionError`` when it takes longer than ``seconds``.

    The action is cancelled at the deadline: an ``async`` one at its next
    ``await``. What cannot be cancelled (a plain function's thread, see
    ``fulfill.actions.python``) runs on, and its outcome is discarded; the
    retry performs the item again with the same idempotency key.
    """

    def __init__(self, action: Action, seconds: float, what: str) -> None:
        self.action = action
        self.name = action.name
        self.seconds = seconds
        # Names it in the message: 'python action of product #3 "Thing" (my_shop:deliver)'.
        self.what = what

    async def perform(self, item: ItemContext) -> dict[str, Any]:
        """Perform the wrapped action, within ``seconds``."""
        deadline = asyncio.timeout(self.seconds)
        try:
            async with deadline:
                return await self.action.perform(item)
        except TimeoutError:
            if not deadline.expired():
                raise  # the action's own TimeoutError, not ours
            raise ActionError(
                f'{self.what} timed out after {self.seconds:g} s (the catalog entry\'s "timeout")'
            ) from None
