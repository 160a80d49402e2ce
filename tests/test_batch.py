"""Group commit (fulfill/store/batch.py): writes that arrive together share a transaction.

Each caller gets its own statement's result once the transaction that carried
it committed; a transaction that fails fails each write in it; nothing waits
for a batch to fill.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError

from fulfill.engine import utcnow
from fulfill.store import Store
from fulfill.store.batch import GroupCommit

T = TypeVar("T")


class Transactions:
    """A stand-in for ``Store._write``: counts transactions, can fail the next ones."""

    def __init__(self) -> None:
        self.count = 0
        self.sizes: list[int] = []
        self.fail_next = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, work: Callable[[Any], T]) -> T:
        await self.gate.wait()
        self.count += 1
        if self.fail_next:
            self.fail_next -= 1
            raise OperationalError("COMMIT", None, ConnectionResetError("injected"))
        seen: list[int] = []
        result = work(seen)
        self.sizes.append(len(seen))
        return result


def double(connection: Any, n: int) -> int:
    connection.append(n)
    return n * 2


async def test_alone_a_write_runs_at_once_in_its_own_transaction() -> None:
    transactions = Transactions()
    group: GroupCommit[int, int] = GroupCommit(transactions, double)
    assert await group(3) == 6
    assert await group(4) == 8
    assert transactions.sizes == [1, 1]


async def test_writes_arriving_while_one_is_in_flight_share_the_next_transaction() -> None:
    transactions = Transactions()
    group: GroupCommit[int, int] = GroupCommit(transactions, double)
    transactions.gate.clear()
    first = asyncio.create_task(group(0))
    await asyncio.sleep(0)  # the first write is in flight, held at the gate
    rest = [asyncio.create_task(group(n)) for n in range(1, 50)]
    await asyncio.sleep(0)
    transactions.gate.set()
    assert await first == 0
    assert await asyncio.gather(*rest) == [n * 2 for n in range(1, 50)]
    assert transactions.sizes == [1, 49]


async def test_a_failed_transaction_fails_each_of_its_writes_and_the_next_one_works() -> None:
    transactions = Transactions()
    group: GroupCommit[int, int] = GroupCommit(transactions, double)
    transactions.gate.clear()
    transactions.fail_next = 2
    first = asyncio.create_task(group(0))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(group(n)) for n in range(1, 4)]
    await asyncio.sleep(0)
    transactions.gate.set()
    results = await asyncio.gather(first, *rest, return_exceptions=True)
    assert all(isinstance(r, OperationalError) for r in results)
    assert transactions.count == 2
    assert await group(5) == 10


async def test_a_caller_that_stops_waiting_leaves_its_write_to_be_made() -> None:
    transactions = Transactions()
    group: GroupCommit[int, int] = GroupCommit(transactions, double)
    transactions.gate.clear()
    waiting = asyncio.create_task(group(7))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    transactions.gate.set()
    assert await group(1) == 2
    assert transactions.sizes == [1, 1]


async def test_many_new_events_at_once_are_each_recorded_once_in_fewer_transactions(
    tmp_path: Path,
) -> None:
    store = await Store.open(f"sqlite:///{tmp_path / 'batch.db'}")
    transactions = 0
    real_write = store._write

    async def counting(work: Callable[[Connection], T]) -> T:
        nonlocal transactions
        transactions += 1
        return await real_write(work)

    store._write = counting  # type: ignore[method-assign]
    store._record_events = GroupCommit(counting, store._record_one_event)
    store._event_outcomes = GroupCommit(counting, store._event_outcomes._each)
    try:
        now = utcnow()
        ids = [f"evt_{n}" for n in range(100)]

        async def record(event_id: str) -> bool:
            return await store.record_event(
                event_id, "checkout.session.completed", None, False, "received", now
            )

        # Every new event once, and each of the 100 redeliveries racing them told apart.
        first = await asyncio.gather(*(record(e) for e in ids))
        again = await asyncio.gather(*(record(e) for e in ids))
        assert first == [True] * 100
        assert again == [False] * 100
        assert transactions < 50, "writes that arrived together shared transactions"
        await asyncio.gather(*(store.set_event_outcome(e, "processed", now) for e in ids))
        for event_id in ids:
            event = await store.event(event_id)
            assert event is not None
            assert event["outcome"] == "processed"
    finally:
        await store.close()
