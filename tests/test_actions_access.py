"""The access action: an entitlement for the customer's email, once per item; ``fulfill access``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from fulfill.actions.access import AccessAction, describe
from fulfill.actions.base import ActionError, utcnow
from fulfill.cli import main
from fulfill.store import Store
from tests.conftest import ServiceFactory
from tests.items import make_item
from tests.test_engine import wait_status

NOW = datetime(2026, 11, 27, 20, 0, 0)
COURSE = {"service": "Course platform", "url": "https://learn.example.com/login"}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(f"sqlite:///{tmp_path / 'actions.db'}")
    try:
        yield opened
    finally:
        await opened.close()


async def test_access_is_granted_to_the_email_and_a_repeat_returns_it(store: Store) -> None:
    action = AccessAction(
        {**COURSE, "duration": 365 * 86400}, store.deliverables, clock=lambda: NOW
    )
    item = make_item(quantity=1)
    result = await action.perform(item)
    assert result == {
        "message": "You have access to Course platform with jenny@example.com until 27 Nov 2027.",
        "links": [{"label": "Open Course platform", "url": "https://learn.example.com/login"}],
        "access": {
            "service": "Course platform",
            "url": "https://learn.example.com/login",
            "email": "jenny@example.com",
            "starts_at": "2026-11-27T20:00:00Z",
            "ends_at": "2027-11-27T20:00:00Z",
            "lifetime": False,
        },
    }
    assert await action.perform(item) == result
    assert len(await store.deliverables.access_grants()) == 1


async def test_lifetime_and_renewal_messages(store: Store) -> None:
    lifetime = AccessAction({**COURSE, "duration": None}, store.deliverables, clock=lambda: NOW)
    result = await lifetime.perform(make_item())
    assert (
        result["message"] == "You have lifetime access to Course platform with jenny@example.com."
    )
    assert result["access"]["lifetime"] is True
    assert result["access"]["ends_at"] is None

    monthly = AccessAction(
        {"service": "Forum", "url": "https://forum.example.com", "duration": 30 * 86400},
        store.deliverables,
        clock=lambda: NOW,
    )
    await monthly.perform(make_item(line_item_id="li_m1"))
    renewed = await monthly.perform(make_item(session_id="cs_test_renew", line_item_id="li_m2"))
    assert renewed["message"] == (
        "Your access to Forum with jenny@example.com is extended: "
        "from 27 Dec 2026 until 26 Jan 2027."
    )


async def test_a_session_without_an_email_fails_the_item(store: Store) -> None:
    action = AccessAction({**COURSE, "duration": None}, store.deliverables)
    with pytest.raises(ActionError, match="no customer email"):
        await action.perform(make_item(customer={"email": None, "name": "Jenny"}))


def test_describe_an_access_that_starts_now() -> None:
    from fulfill.store.deliverables import AccessGrant

    grant = AccessGrant(
        1, "cs", "li", "a@b.c", None, "S", "https://s", None, None, 1, False, NOW, None, NOW
    )
    assert describe(grant, NOW) == "You have lifetime access to S with a@b.c."


# -- end to end --------------------------------------------------------------------------

ACCESS_CATALOG = """
[[product]]
name = "Course access"
match = { metadata = { fulfill = "course" } }
action = "access"
service = "Course platform"
url = "https://learn.example.com/login"
duration = "365d"

[[product]]
name = "Lifetime forum"
match = { metadata = { fulfill = "forum" } }
action = "access"
service = "Forum <beta>"
url = "https://forum.example.com/"
duration = "lifetime"
"""


def test_a_bought_course_is_an_access_grant_shown_on_the_landing_page(
    service_factory: ServiceFactory,
) -> None:
    service = service_factory(ACCESS_CATALOG)
    course = service.shop.price("Course", product_metadata={"fulfill": "course"})
    forum = service.shop.price("Forum", product_metadata={"fulfill": "forum"})
    session = service.shop.session([(course, 1), (forum, 1)])
    service.shop.complete(session.id, "paid", email="Ada@Example.com", name="Ada Lovelace")
    record = wait_status(service, session.id, "fulfilled")
    course_result, forum_result = (item["result"] for item in record["items"])
    assert course_result["access"]["email"] == "ada@example.com"
    assert course_result["access"]["lifetime"] is False
    starts = datetime.fromisoformat(course_result["access"]["starts_at"])
    ends = datetime.fromisoformat(course_result["access"]["ends_at"])
    assert ends - starts == timedelta(days=365)
    assert forum_result["access"]["lifetime"] is True
    assert forum_result["links"] == [
        {"label": "Open Forum <beta>", "url": "https://forum.example.com/"}
    ]

    page = service.landing(session.id, as_json=False).text
    assert 'href="https://learn.example.com/login"' in page
    assert "Open Course platform" in page
    assert "You have lifetime access to Forum &lt;beta&gt; with ada@example.com." in page
    assert "<beta>" not in page


# -- fulfill access list -----------------------------------------------------------------


async def fill_access(database_url: str) -> None:
    store = await Store.open(database_url)
    try:
        now = utcnow()
        grants = store.deliverables
        for n, (email, duration) in enumerate(
            [("jenny@example.com", 365 * 86400), ("bob@example.com", None)]
        ):
            await grants.grant_access(
                session_id=f"cs_test_cli{n}",
                line_item_id=f"li_{n}",
                email=email,
                customer_name=None,
                service="Course platform",
                url="https://learn.example.com/login",
                duration=duration,
                product_id="prod_course",
                price_id="price_course",
                quantity=1,
                livemode=False,
                now=now + timedelta(seconds=n),
            )
    finally:
        await store.close()


def cli(database_url: str, *args: str) -> tuple[int, str]:
    runner = CliRunner()
    env = {"FULFILL_DATABASE_URL": database_url, "COLUMNS": "200"}
    outcome = runner.invoke(main, list(args), env=env, catch_exceptions=False)
    return outcome.exit_code, outcome.output


def test_access_list_prints_a_table_and_json(database_url: str) -> None:
    asyncio.run(fill_access(database_url))
    code, out = cli(database_url, "access", "list")
    assert code == 0, out
    lines = out.splitlines()
    bob = next(line for line in lines if "bob@example.com" in line)
    jenny = next(line for line in lines if "jenny@example.com" in line)
    assert lines.index(bob) < lines.index(jenny)  # newest first
    assert "lifetime" in bob
    assert "yes" in jenny
    assert "cs_test_cli0" in jenny
    assert "2 grants" in out

    code, out = cli(database_url, "access", "list", "--email", "JENNY@example.com", "--json")
    assert code == 0, out
    (grant,) = json.loads(out)
    assert grant["email"] == "jenny@example.com"
    assert grant["service"] == "Course platform"
    assert grant["lifetime"] is False
    assert grant["session_id"] == "cs_test_cli0"

    code, out = cli(database_url, "access", "list", "--email", "nobody@example.com", "--json")
    assert (code, json.loads(out)) == (0, [])


def test_access_list_on_a_database_never_migrated_says_what_to_do(tmp_path: Path) -> None:
    code, out = cli(f"sqlite:///{tmp_path / 'empty.db'}", "access", "list")
    assert code == 2
    assert "run `fulfill migrate` first" in out
