"""The python action: sync and async callables, what they may return, how they fail."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from fulfill.actions import FACTORIES, ActionDeps, TimedAction, build_action
from fulfill.actions.base import ActionError
from fulfill.actions.python import PythonAction
from fulfill.catalog import ACTION_FIELDS, CatalogEntry, ProductMatch
from fulfill.errors import CatalogError, FulfillError
from fulfill.store.database import create_engine
from fulfill.store.schema import fulfillments
from tests import python_callables
from tests.conftest import ServiceFactory
from tests.items import make_item
from tests.test_engine import wait_status


def python_action(name: str) -> PythonAction:
    return PythonAction({"callable": f"tests.python_callables:{name}"})


@pytest.fixture
def loop_flag() -> Iterator[threading.Event]:
    python_callables.loop_may_go_on.clear()
    yield python_callables.loop_may_go_on
    python_callables.loop_may_go_on.clear()


@pytest.fixture
def hung() -> Iterator[list[str]]:
    """The keys ``hang``/``hang_async`` were called with; their threads let go at the end."""
    python_callables.release_hung.clear()
    python_callables.hung_keys.clear()
    yield python_callables.hung_keys
    python_callables.release_hung.set()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def test_a_plain_function_runs_in_a_worker_thread() -> None:
    result = await python_action("deliver").perform(make_item())
    assert result["message"] == "2 x Consulting hour for jenny@example.com"
    assert result["thread"] != threading.get_ident()


async def test_a_blocking_function_does_not_stall_the_event_loop(
    loop_flag: threading.Event,
) -> None:
    # The function blocks until the loop sets the flag: on the loop's own
    # thread it would wait its full 5 s and report False.
    task = asyncio.create_task(python_action("wait_for_loop").perform(make_item()))
    await asyncio.sleep(0.05)
    loop_flag.set()
    assert await task == {"released": True}


async def test_an_async_function_is_awaited() -> None:
    result = await python_action("deliver_async").perform(make_item(session_id="cs_test_Z9"))
    assert result == {"links": [{"label": "Your order", "url": "https://shop.test/cs_test_Z9"}]}


async def test_an_instance_with_an_async_call_is_awaited() -> None:
    action = python_action("async_instance")
    assert action.is_async
    assert await action.perform(make_item(line_item_id="li_7")) == {
        "message": "async instance for li_7"
    }


async def test_none_means_done_with_an_empty_result() -> None:
    assert await python_action("returns_none").perform(make_item()) == {}


async def test_anything_but_a_dict_or_none_is_a_failure() -> None:
    with pytest.raises(ActionError) as info:
        await python_action("returns_list").perform(make_item())
    assert info.value.message == (
        "python callable tests.python_callables:returns_list returned list; "
        "return a dict (the item's result) or None"
    )


async def test_a_result_that_cannot_be_stored_as_json_is_a_failure() -> None:
    with pytest.raises(ActionError, match=r"returned a dict that is not JSON: .*set"):
        await python_action("returns_unstorable").perform(make_item())


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "raises",
            "python callable tests.python_callables:raises raised ValueError: "
            "out of stock: Consulting hour",
        ),
        (
            "raises_async",
            "python callable tests.python_callables:raises_async raised RuntimeError: "
            "warehouse API down",
        ),
    ],
)
async def test_an_exception_becomes_an_action_error(name: str, expected: str) -> None:
    with pytest.raises(ActionError) as info:
        await python_action(name).perform(make_item())
    assert info.value.message == expected
    assert isinstance(info.value.__cause__, ValueError | RuntimeError)


async def test_an_action_error_raised_by_the_callable_passes_unchanged() -> None:
    with pytest.raises(ActionError) as info:
        await python_action("raises_action_error").perform(make_item())
    assert info.value.message == "the merchant's own words"


def test_the_callable_is_resolved_when_the_action_is_built() -> None:
    with pytest.raises(CatalogError, match="has no attribute 'vanished'"):
        python_action("vanished")


# --- the registry -------------------------------------------------------------


def entry_for(action: str, **options: object) -> CatalogEntry:
    return CatalogEntry(3, "Thing", ProductMatch(price="price_t"), action, options)


async def test_build_action_makes_a_python_action(http: httpx.AsyncClient) -> None:
    built = build_action(
        entry_for("python", callable="tests.python_callables:deliver_async"), ActionDeps(http=http)
    )
    assert built.name == "python"
    assert isinstance(built, TimedAction)
    assert isinstance(built.action, PythonAction)
    assert built.seconds == 30
    assert "links" in await built.perform(make_item())


# --- timeouts -----------------------------------------------------------------


def timed_entry(name: str, timeout: float) -> CatalogEntry:
    options = {"callable": f"tests.python_callables:{name}"}
    return CatalogEntry(3, "Thing", ProductMatch(price="price_t"), "python", options, timeout)


@pytest.mark.parametrize("name", ["hang", "hang_async"])
async def test_a_hung_callable_fails_at_its_timeout_naming_it(
    http: httpx.AsyncClient, hung: list[str], name: str
) -> None:
    built = build_action(timed_entry(name, 0.5), ActionDeps(http=http))
    started = time.monotonic()
    with pytest.raises(ActionError) as info:
        await built.perform(make_item(session_id="cs_test_H1", line_item_id="li_H1"))
    assert time.monotonic() - started < 0.5 + 10
    assert info.value.message == (
        f'python action of product #3 "Thing" (tests.python_callables:{name}) '
        'timed out after 0.5 s (the catalog entry\'s "timeout")'
    )
    assert hung == ["cs_test_H1:li_H1"]


async def test_a_hung_plain_function_runs_on_and_its_result_is_discarded(hung: list[str]) -> None:
    action = python_action("hang")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(action.perform(make_item()), 0.3)
    assert action.threads_running == 1  # abandoned, not killed
    python_callables.release_hung.set()
    await wait_until(lambda: action.threads_running == 0)


async def test_abandoned_threads_are_bounded_and_their_slots_come_back(hung: list[str]) -> None:
    action = PythonAction({"callable": "tests.python_callables:hang"}, max_threads=2)
    for _ in range(2):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(action.perform(make_item()), 0.3)
    assert action.threads_running == 2
    # Both slots are held by calls that never returned: a third call waits
    # for a slot (and times out) without starting a third stuck thread.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(action.perform(make_item()), 0.5)
    assert len(hung) == 2  # never called a third time
    python_callables.release_hung.set()
    await wait_until(lambda: action.threads_running == 0)
    assert await action.perform(make_item()) == {"message": "released"}
    assert len(hung) == 3


async def wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("action", ["download", "access", "license", "shipment"])
async def test_the_built_in_actions_that_keep_records_need_the_database(
    http: httpx.AsyncClient, action: str
) -> None:
    with pytest.raises(FulfillError) as info:
        build_action(entry_for(action), ActionDeps(http=http))
    assert info.value.message == f'product #3 "Thing": action "{action}" needs the database'
    assert info.value.code == "action_unavailable"


async def test_an_unknown_action_cannot_be_built(http: httpx.AsyncClient) -> None:
    with pytest.raises(FulfillError, match='unknown action "teleport"'):
        build_action(entry_for("teleport"), ActionDeps(http=http))


def test_every_action_the_catalog_knows_is_registered() -> None:
    assert set(FACTORIES) == set(ACTION_FIELDS)


# --- through the engine -----------------------------------------------------------


def lease_of(database_url: str, session_id: str) -> tuple[Any, ...]:
    """(status, lease_owner, lease_expires_at) of the session's record."""

    async def read() -> tuple[Any, ...]:
        engine = create_engine(database_url)
        try:
            async with engine.connect() as connection:
                row = (
                    await connection.execute(
                        select(
                            fulfillments.c.status,
                            fulfillments.c.lease_owner,
                            fulfillments.c.lease_expires_at,
                        ).where(fulfillments.c.session_id == session_id)
                    )
                ).one()
                return tuple(row)
        finally:
            await engine.dispose()

    return asyncio.run(read())


@pytest.mark.parametrize("name", ["hang", "hang_async"])
def test_a_hung_callable_fails_the_session_at_its_timeout_and_lets_go_of_the_lease(
    service_factory: ServiceFactory, hung: list[str], name: str
) -> None:
    catalog = f"""
[[product]]
name = "Made to order"
match = {{ metadata = {{ fulfill = "hook" }} }}
action = "python"
callable = "tests.python_callables:{name}"
timeout = "1s"
"""
    # A short lease, so that a heartbeat still renewing it would show within
    # seconds; a long backoff, so that no retry claims it again meanwhile.
    service = service_factory(catalog, FULFILL_LEASE_SECONDS=3, FULFILL_RETRY_BASE=600)
    started = time.monotonic()
    session_id = service.paid_session()
    record = wait_status(service, session_id, "failed", timeout=1 + 30)
    assert time.monotonic() - started < 1 + 30
    assert (
        f'python action of product #1 "Made to order" (tests.python_callables:{name}) '
        "timed out after 1 s" in record["last_error"]
    )
    assert record["attempts"] == 1
    assert record["next_attempt_at"] is not None  # retried with backoff, like any failure
    assert record["items"][0]["status"] == "failed"
    assert len(hung) == 1
    assert hung[0].startswith(f"{session_id}:li_")
    # The lease was given back with the failure, and no heartbeat renews it:
    # three heartbeats' time later it is still nobody's.
    database_url = service.settings.database_url
    assert lease_of(database_url, session_id) == ("failed", None, None)
    time.sleep(3)
    assert lease_of(database_url, session_id) == ("failed", None, None)
