"""The deliverables store on SQLite and PostgreSQL: one per item; a repeat finds the first."""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import text

from fulfill.store import Store
from fulfill.store.deliverables import KeySpaceExhausted


def random_key() -> str:
    return secrets.token_hex(10).upper()


NOW = datetime(2026, 11, 27, 20, 0, 0)
DAY = timedelta(days=1)
SESSION = "cs_test_deliverables1"


async def rows(store: Store, table: str) -> list[tuple[object, ...]]:
    async with store.engine.connect() as connection:
        result = await connection.execute(text(f"SELECT * FROM {table}"))  # noqa: S608
        return [tuple(row) for row in result]


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    opened = await Store.open(database_url)
    try:
        yield opened
    finally:
        await opened.close()


# -- downloads ---------------------------------------------------------------------------


async def test_a_download_grant_is_made_once_and_keeps_its_first_expiry(store: Store) -> None:
    grants = store.deliverables

    async def grant(expires_at: datetime) -> datetime:
        made = await grants.grant_download(
            session_id=SESSION,
            line_item_id="li_1",
            file_name="handbook.pdf",
            path="/srv/files/handbook.pdf",
            label="E-book (PDF)",
            expires_at=expires_at,
            now=NOW,
        )
        return made.expires_at

    assert await grant(NOW + 7 * DAY) == NOW + 7 * DAY
    # Performed again (a crash before the item was recorded done): the same grant.
    assert await grant(NOW + 9 * DAY) == NOW + 7 * DAY
    found = await grants.download(SESSION, "li_1", "handbook.pdf")
    assert found is not None
    assert (found.path, found.label) == ("/srv/files/handbook.pdf", "E-book (PDF)")
    assert await grants.download(SESSION, "li_2", "handbook.pdf") is None
    assert await grants.download(SESSION, "li_1", "other.pdf") is None


# -- access ------------------------------------------------------------------------------


def access_args(**overrides: object) -> dict[str, object]:
    args: dict[str, object] = {
        "session_id": SESSION,
        "line_item_id": "li_1",
        "email": "Jenny@Example.com",
        "customer_name": "Jenny Rosen",
        "service": "Course platform",
        "url": "https://learn.example.com/login",
        "duration": 365 * 86400,
        "product_id": "prod_course",
        "price_id": "price_course",
        "quantity": 1,
        "livemode": False,
        "now": NOW,
    }
    args.update(overrides)
    return args


async def test_access_is_granted_once_per_item_even_when_asked_at_once(store: Store) -> None:
    grants = await asyncio.gather(
        *(store.deliverables.grant_access(**access_args()) for _ in range(20))  # type: ignore[arg-type]
    )
    assert len({grant.id for grant in grants}) == 1
    grant = grants[0]
    assert grant.email == "jenny@example.com"
    assert (grant.starts_at, grant.ends_at) == (NOW, NOW + 365 * DAY)
    assert len(await rows(store, "access_grants")) == 1


async def test_a_renewal_starts_when_the_current_access_ends(store: Store) -> None:
    first = await store.deliverables.grant_access(**access_args())  # type: ignore[arg-type]
    later = NOW + 100 * DAY
    renewal = await store.deliverables.grant_access(
        **access_args(session_id="cs_test_renewal", email="jenny@example.com", now=later)  # type: ignore[arg-type]
    )
    assert renewal.starts_at == first.ends_at
    assert renewal.ends_at == NOW + 730 * DAY
    # Another service, or an access that has already ended, does not delay a new one.
    other = await store.deliverables.grant_access(
        **access_args(session_id="cs_test_other", service="Forum", now=later)  # type: ignore[arg-type]
    )
    assert other.starts_at == later
    after_all = NOW + 1000 * DAY
    fresh = await store.deliverables.grant_access(
        **access_args(session_id="cs_test_fresh", now=after_all)  # type: ignore[arg-type]
    )
    assert fresh.starts_at == after_all


async def test_purchases_at_the_same_moment_stack_without_overlap(store: Store) -> None:
    grants = await asyncio.gather(
        *(
            store.deliverables.grant_access(
                **access_args(session_id=f"cs_test_s{n}", duration=30 * 86400)  # type: ignore[arg-type]
            )
            for n in range(6)
        )
    )
    periods = sorted((g.starts_at, g.ends_at) for g in grants)
    assert periods[0][0] == NOW
    for (_, end), (start, _) in itertools.pairwise(periods):
        assert start == end
    assert periods[-1][1] == NOW + 180 * DAY


async def test_lifetime_access_has_no_end_and_grants_are_listed_by_email(store: Store) -> None:
    lifetime = await store.deliverables.grant_access(**access_args(duration=None))  # type: ignore[arg-type]
    assert lifetime.lifetime
    assert lifetime.ends_at is None
    assert lifetime.active(NOW + 10_000 * DAY)
    await store.deliverables.grant_access(
        **access_args(session_id="cs_test_b", email="bob@example.com")  # type: ignore[arg-type]
    )
    assert [g.email for g in await store.deliverables.access_grants()] == [
        "bob@example.com",
        "jenny@example.com",
    ]
    mine = await store.deliverables.access_grants(email="JENNY@example.COM")
    assert [g.id for g in mine] == [lifetime.id]
    assert mine[0].as_json()["ends_at"] is None


# -- licence keys ------------------------------------------------------------------------


async def test_one_key_per_unit_and_a_repeat_returns_the_same_keys(store: Store) -> None:
    first = await store.deliverables.issue_license_keys(
        session_id=SESSION,
        line_item_id="li_1",
        quantity=3,
        product="Editor licence",
        email="Jenny@example.com",
        livemode=False,
        generate=lambda: random_key(),
        now=NOW,
    )
    assert [k.unit for k in first] == [0, 1, 2]
    assert len({k.key for k in first}) == 3
    assert first[0].email == "jenny@example.com"
    again = await asyncio.gather(
        *(
            store.deliverables.issue_license_keys(
                session_id=SESSION,
                line_item_id="li_1",
                quantity=3,
                product="Editor licence",
                email="jenny@example.com",
                livemode=False,
                generate=lambda: random_key(),
                now=NOW,
            )
            for _ in range(10)
        )
    )
    assert all([k.key for k in keys] == [k.key for k in first] for keys in again)
    assert await store.deliverables.count_license_keys() == 3


async def test_concurrent_first_issues_of_one_item_agree_on_its_keys(store: Store) -> None:
    issued = await asyncio.gather(
        *(
            store.deliverables.issue_license_keys(
                session_id=SESSION,
                line_item_id="li_race",
                quantity=5,
                product=None,
                email=None,
                livemode=False,
                generate=lambda: random_key(),
                now=NOW,
            )
            for _ in range(10)
        )
    )
    assert len({tuple(k.key for k in keys) for keys in issued}) == 1
    assert await store.deliverables.count_license_keys() == 5


async def test_a_key_already_issued_is_replaced_by_a_fresh_one(store: Store) -> None:
    taken = await store.deliverables.issue_license_keys(
        session_id=SESSION,
        line_item_id="li_1",
        quantity=1,
        product=None,
        email=None,
        livemode=False,
        generate=lambda: "AAAA-BBBB",
        now=NOW,
    )
    # The generator offers the taken key first, twice, then fresh ones.
    offers = iter(["AAAA-BBBB", "AAAA-BBBB", "CCCC-DDDD", "EEEE-FFFF"])
    issued = await store.deliverables.issue_license_keys(
        session_id=SESSION,
        line_item_id="li_2",
        quantity=2,
        product=None,
        email=None,
        livemode=False,
        generate=lambda: next(offers),
        now=NOW,
    )
    assert [k.key for k in taken] == ["AAAA-BBBB"]
    assert [k.key for k in issued] == ["CCCC-DDDD", "EEEE-FFFF"]


async def test_a_format_with_too_few_keys_left_fails_clearly(store: Store) -> None:
    await store.deliverables.issue_license_keys(
        session_id=SESSION,
        line_item_id="li_1",
        quantity=1,
        product=None,
        email=None,
        livemode=False,
        generate=lambda: "ONLY",
        now=NOW,
    )
    with pytest.raises(KeySpaceExhausted, match="too few X"):
        await store.deliverables.issue_license_keys(
            session_id=SESSION,
            line_item_id="li_2",
            quantity=1,
            product=None,
            email=None,
            livemode=False,
            generate=lambda: "ONLY",
            now=NOW,
        )
    # Nothing half-issued is left behind.
    assert await store.deliverables.count_license_keys() == 1


async def test_ten_thousand_keys_are_unique_in_the_database(store: Store) -> None:
    # 20 items of 500 units: batches larger than one INSERT may carry on SQLite.
    for n in range(20):
        await store.deliverables.issue_license_keys(
            session_id=f"cs_test_bulk{n}",
            line_item_id="li_bulk",
            quantity=500,
            product=None,
            email=None,
            livemode=False,
            generate=lambda: random_key(),
            now=NOW,
        )
    keys = [row[1] for row in await rows(store, "license_keys")]
    assert len(keys) == 10_000
    assert len(set(keys)) == 10_000


# -- shipments ---------------------------------------------------------------------------


async def test_a_shipment_is_made_once_per_item_and_listed_oldest_first(store: Store) -> None:
    address = {"line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"}

    async def ship(line_item_id: str, now: datetime) -> int:
        shipment = await store.deliverables.create_shipment(
            session_id=SESSION,
            line_item_id=line_item_id,
            email="jenny@example.com",
            name="Jenny Rosen",
            phone=None,
            address=address,
            description="T-shirt",
            product_id="prod_tshirt",
            price_id="price_tshirt",
            quantity=2,
            livemode=False,
            now=now,
        )
        return shipment.id

    first = await ship("li_1", NOW)
    assert await ship("li_1", NOW + DAY) == first
    second = await ship("li_2", NOW + DAY)
    found = await store.deliverables.shipments(status="pending")
    assert [s.id for s in found] == [first, second]
    assert found[0].address == address
    assert found[0].status == "pending"
    assert found[0].as_json()["created_at"] == "2026-11-27T20:00:00Z"
    assert await store.deliverables.shipments(status="shipped") == []
