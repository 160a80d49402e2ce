"""The benchmark's catalog action: instant, so that what is measured is the service.

``callable = "bench.actions:deliver"``. With ``BENCH_ACTION_LOG`` set, each
call appends its idempotency key to that file (one short ``O_APPEND`` write,
atomic across processes), so the bench can check that every line item was
performed exactly once. The guide's peer (``bench.peers.guide``), a plain
WSGI app with no event loop to await ``deliver`` on, calls ``perform`` with
the same key: the same write, counted the same way.
"""

from __future__ import annotations

import os

from fulfill.actions.base import ItemContext

_LOG = os.environ.get("BENCH_ACTION_LOG")
_fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600) if _LOG else None


def perform(idempotency_key: str) -> None:
    """Perform one line item: append its key (``{session_id}:{line_item_id}``) to the log."""
    if _fd is not None:
        os.write(_fd, f"{idempotency_key}\n".encode())


async def deliver(item: ItemContext) -> None:
    perform(item.idempotency_key)
