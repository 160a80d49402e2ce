"""The python action: sync and async callables, what they may return, how they fail."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from fulfill.actions import FACTORIES, ActionDeps, build_action
from fulfill.actions.base import ActionError
from fulfill.actions.python import PythonAction
from fulfill.catalog import ACTION_FIELDS, CatalogEntry, ProductMatch
from fulfill.errors import CatalogError, FulfillError
from tests import python_callables
from tests.items import make_item


def python_action(name: str) -> PythonAction:
    return PythonAction({"callable": f"tests.python_callables:{name}"})


@pytest.fixture
def loop_flag() -> Iterator[threading.Event]:
    python_callables.loop_may_go_on.clear()
    yield python_callables.loop_may_go_on
    python_callables.loop_may_go_on.clear()


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
    assert isinstance(built, PythonAction)
    assert "links" in await built.perform(make_item())


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
