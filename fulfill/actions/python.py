"""The ``python`` action (SPEC §6): call the merchant's own function with the item.

``callable = "package.module:function"`` is imported when the action is built
(the catalog has already checked that it imports), so a broken module stops
the service at start, not at the first sale. The function gets the
``ItemContext``; a plain function runs in a worker thread so that it may block
(call an API, write a file) without stalling the event loop; an ``async def``
is awaited. It returns ``None`` or a JSON-able dict, kept as the item's result.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping
from typing import Any

import anyio.to_thread

from fulfill.actions.base import ActionError, ItemContext
from fulfill.catalog import resolve_callable
from fulfill.errors import CatalogError


class PythonAction:
    """Calls ``options["callable"]`` with each item."""

    name = "python"

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.spec: str = options["callable"]
        try:
            self.function: Callable[..., Any] = resolve_callable(self.spec)
        except ValueError as exc:
            raise CatalogError(f'python action: field "callable": {exc}') from exc
        self.is_async = _is_async(self.function)

    async def perform(self, item: ItemContext) -> dict[str, Any]:
        """Call the function; its dict (or ``{}`` for None) is the result, anything else fails."""
        try:
            if self.is_async:
                outcome = await self.function(item)
            else:
                outcome = await anyio.to_thread.run_sync(self.function, item)
                if inspect.isawaitable(outcome):
                    # A plain callable that hands back a coroutine (a wrapper
                    # the coroutine check cannot see through).
                    outcome = await outcome
        except ActionError:
            raise
        except Exception as exc:
            raise ActionError(
                f"python callable {self.spec} raised {type(exc).__name__}: {exc}"
            ) from exc
        if outcome is None:
            return {}
        if not isinstance(outcome, dict):
            raise ActionError(
                f"python callable {self.spec} returned {type(outcome).__name__}; "
                "return a dict (the item's result) or None"
            )
        try:
            # The result is stored as JSON: copy it through JSON now, so a
            # value that cannot be stored fails here with a clear message.
            result: dict[str, Any] = json.loads(json.dumps(outcome, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise ActionError(
                f"python callable {self.spec} returned a dict that is not JSON: {exc}"
            ) from exc
        return result


def _is_async(function: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(function):
        return True
    call = getattr(function, "__call__", None)  # noqa: B004 - an instance with async __call__
    return call is not None and inspect.iscoroutinefunction(call)
