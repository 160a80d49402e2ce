"""Merchant-style callables for the ``python`` action's tests (``tests.python_callables:…``)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from fulfill.actions.base import ActionError, ItemContext, PermanentActionError

NOT_CALLABLE = 42

# Set by a test from the event loop while ``wait_for_loop`` blocks in its thread.
loop_may_go_on = threading.Event()


def deliver(item: ItemContext) -> dict[str, Any]:
    """A plain function: runs in a worker thread; says which one."""
    return {
        "message": f"{item.quantity} x {item.description} for {item.customer['email']}",
        "thread": threading.get_ident(),
    }


async def deliver_async(item: ItemContext) -> dict[str, Any]:
    await asyncio.sleep(0)
    return {"links": [{"label": "Your order", "url": f"https://shop.test/{item.session_id}"}]}


class AsyncDeliverer:
    async def __call__(self, item: ItemContext) -> dict[str, Any]:
        return {"message": f"async instance for {item.line_item_id}"}


async_instance = AsyncDeliverer()


def returns_none(item: ItemContext) -> None:
    return None


def returns_list(item: ItemContext) -> list[str]:
    return ["not", "a", "dict"]


def returns_unstorable(item: ItemContext) -> dict[str, Any]:
    return {"tags": {"a", "b"}}


def raises(item: ItemContext) -> dict[str, Any]:
    raise ValueError(f"out of stock: {item.description}")


async def raises_async(item: ItemContext) -> dict[str, Any]:
    raise RuntimeError("warehouse API down")


def raises_action_error(item: ItemContext) -> dict[str, Any]:
    raise ActionError("the merchant's own words")


def wait_for_loop(item: ItemContext) -> dict[str, Any]:
    """Blocks until the event loop sets the flag: deadlocks (times out) if run on the loop."""
    return {"released": loop_may_go_on.wait(timeout=5)}


# The sessions ``refuses_for_good`` was called for, in order (a test clears it first).
refused: list[str] = []


def refuses_for_good(item: ItemContext) -> dict[str, Any]:
    """An item no retry can deliver: counts each call, then fails for good."""
    refused.append(item.session_id)
    raise PermanentActionError("this item can never be delivered")


# Set by a test to let the calls of ``hang`` return; each call records its key first.
release_hung = threading.Event()
hung_keys: list[str] = []


def hang(item: ItemContext) -> dict[str, Any]:
    """A plain function stuck (on an API that never answers) until the test releases it."""
    hung_keys.append(item.idempotency_key)
    release_hung.wait(timeout=120)
    return {"message": "released"}


async def hang_async(item: ItemContext) -> dict[str, Any]:
    """An async function awaiting something that never comes."""
    hung_keys.append(item.idempotency_key)
    await asyncio.Event().wait()
    return {"message": "never"}
