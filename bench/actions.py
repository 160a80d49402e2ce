"""The benchmark's catalog action: instant, so that what is measured is the service.

``callable = "bench.actions:deliver"``. With ``BENCH_ACTION_LOG`` set, each
call appends its idempotency key to that file (one short ``O_APPEND`` write,
atomic across processes), so the bench can check that every line item was
performed exactly once.
"""

from __future__ import annotations

import os

from fulfill.actions.base import ItemContext

_LOG = os.environ.get("BENCH_ACTION_LOG")
_fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600) if _LOG else None


async def deliver(item: ItemContext) -> None:
    if _fd is not None:
        os.write(_fd, f"{item.idempotency_key}\n".encode())
