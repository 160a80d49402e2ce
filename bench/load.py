"""Open- and closed-loop load, and the latency statistics of what it measured.

Open loop: requests start on a fixed schedule (``rate`` per second) whatever
the answers do, and each latency is counted from the *scheduled* start, so a
server that falls behind shows it in the percentiles instead of slowing the
generator down (no coordinated omission). Closed loop: ``concurrency``
clients each send the next request as soon as the last one is answered, for
a fixed time; it measures the most the server (and this client) can do.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bench.http import ClientError

# Sends request number ``n``; returns the HTTP status (raises ClientError: no answer).
Send = Callable[[int], Awaitable[int]]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0 to 100) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Run:
    """What one load run measured."""

    latencies: list[float] = field(default_factory=list)  # seconds, answered requests
    statuses: Counter[int] = field(default_factory=Counter)
    scheduled: list[float] = field(default_factory=list)  # wall-clock start of each request
    elapsed: float = 0.0  # seconds from the first start to the last answer
    send_span: float = 0.0  # seconds from the first start to the last start

    @property
    def count(self) -> int:
        return sum(self.statuses.values())

    @property
    def ok(self) -> int:
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    @property
    def throughput(self) -> float:
        """Answered 2xx requests per second."""
        return self.ok / self.elapsed if self.elapsed else 0.0

    def p(self, q: float) -> float:
        return percentile(self.latencies, q)


async def _timed(send: Send, n: int, due: float, run: Run) -> None:
    try:
        status = await send(n)
    except ClientError:
        status = 0
    run.statuses[status] += 1
    if status:
        run.latencies.append(asyncio.get_running_loop().time() - due)


async def open_loop(send: Send, rate: float, count: int) -> Run:
    """``count`` requests at ``rate`` per second, latencies from their scheduled starts."""
    loop = asyncio.get_running_loop()
    run = Run()
    start = loop.time() + 0.05
    wall = time.time() + 0.05
    tasks: list[asyncio.Task[None]] = []
    last_start = start
    for n in range(count):
        due = start + n / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        last_start = loop.time()
        run.scheduled.append(wall + n / rate)
        tasks.append(asyncio.create_task(_timed(send, n, due, run)))
    await asyncio.gather(*tasks)
    run.elapsed = loop.time() - start
    run.send_span = last_start - start
    return run


async def closed_loop(send: Send, concurrency: int, seconds: float) -> Run:
    """``concurrency`` clients sending back to back for ``seconds``."""
    loop = asyncio.get_running_loop()
    run = Run()
    start = loop.time()
    stop = start + seconds
    counter = iter(range(1 << 62))

    async def client() -> None:
        while loop.time() < stop:
            await _timed(send, next(counter), loop.time(), run)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    run.elapsed = loop.time() - start
    run.send_span = run.elapsed
    return run
