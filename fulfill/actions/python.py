"""The ``python`` action (SPEC §6): call the merchant's own function with the item.

``callable = "package.module:function"`` is imported when the action is built
(the catalog has already checked that it imports), so a broken module stops
the service at start, not at the first sale. The function gets the
``ItemContext``; a plain function runs in a thread of its own so that it may
block (call an API, write a file) without stalling the event loop; an
``async def`` is awaited. It returns ``None`` or a JSON-able dict, kept as the
item's result.

Timeouts. ``build_action`` bounds every call by the entry's ``timeout``
(30 s by default); a call that takes longer fails the item like an exception
would, and the session is retried with backoff. An ``async def`` is
cancelled at the deadline (at its next ``await``; one that blocks the loop
without awaiting cannot be interrupted, and stalls the whole service). A
plain function's thread cannot be killed: it runs on until the function
returns, and what it returns or raises then is discarded. The retry performs
the item again, with the same ``ItemContext.idempotency_key``, possibly while
the abandoned call is still running, so the function must be idempotent on
that key (or make its side effect at most once by it, e.g. a unique
constraint on it). Threads are daemons: one still running when the process
exits is stopped with it, in the middle of whatever it was doing.

At most ``max_threads`` (16) calls of one entry's function run at once in a
process, abandoned ones included: while all are taken (by calls that hang),
a new call waits for one to end, and times out if none does, instead of
piling up a new stuck thread every retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from fulfill.actions.base import ActionError, ItemContext
from fulfill.catalog import resolve_callable
from fulfill.errors import CatalogError

log = logging.getLogger("fulfill.actions.python")

MAX_THREADS = 16  # plain-function calls of one entry running at once, in one process
SLOT_POLL_SECONDS = 0.05


class PythonAction:
    """Calls ``options["callable"]`` with each item."""

    name = "python"

    def __init__(self, options: Mapping[str, Any], *, max_threads: int = MAX_THREADS) -> None:
        self.spec: str = options["callable"]
        try:
            self.function: Callable[..., Any] = resolve_callable(self.spec)
        except ValueError as exc:
            raise CatalogError(f'python action: field "callable": {exc}') from exc
        self.is_async = _is_async(self.function)
        self.max_threads = max_threads
        # Threads running the function now, abandoned ones included; changed
        # by the threads themselves, so under a lock rather than on the loop.
        self._running = 0
        self._lock = threading.Lock()

    @property
    def threads_running(self) -> int:
        """Calls of a plain function whose thread has not returned yet."""
        with self._lock:
            return self._running

    async def perform(self, item: ItemContext) -> dict[str, Any]:
        """Call the function; its dict (or ``{}`` for None) is the result, anything else fails."""
        try:
            if self.is_async:
                outcome = await self.function(item)
            else:
                outcome = await self._in_thread(item)
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

    async def _in_thread(self, item: ItemContext) -> Any:
        """Run the plain function in a daemon thread; its outcome, unless we stopped waiting.

        Cancelled (the timeout), this returns at once and the thread runs on:
        its slot is freed, and its outcome dropped, only when it returns.
        """
        waited = False
        while not self._take_slot():
            if not waited:
                waited = True
                log.warning(
                    "python callable %s: all %d threads are busy with calls that have not "
                    "returned; waiting for one",
                    self.spec,
                    self.max_threads,
                )
            await asyncio.sleep(SLOT_POLL_SECONDS)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        # As anyio.to_thread does: the function sees the caller's context
        # (the log lines' session_id).
        context = contextvars.copy_context()

        def settle(result: Any, error: BaseException | None) -> None:
            if future.done():  # cancelled: nobody waits for it any more
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        def run() -> None:
            result: Any = None
            error: BaseException | None = None
            try:
                result = context.run(self.function, item)
            except BaseException as exc:  # handed to the awaiting task, as it was raised
                error = exc
            finally:
                with self._lock:
                    self._running -= 1
            # RuntimeError: the loop is closed (the service stopped while the call ran).
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, result, error)

        try:
            threading.Thread(target=run, name=f"python action {self.spec}", daemon=True).start()
        except BaseException:
            with self._lock:
                self._running -= 1
            raise
        return await future

    def _take_slot(self) -> bool:
        with self._lock:
            if self._running >= self.max_threads:
                return False
            self._running += 1
            return True


def _is_async(function: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(function):
        return True
    call = getattr(function, "__call__", None)  # noqa: B004 - an instance with async __call__
    return call is not None and inspect.iscoroutinefunction(call)
