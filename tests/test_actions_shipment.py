"""The shipment action: the collected address, in either API shape, once per item; the CLI."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fulfill.actions.base import ActionError, ItemContext
from fulfill.actions.shipment import NO_ADDRESS, ShipmentAction, one_line, shipping_address
from fulfill.cli import main, spreadsheet_safe
from fulfill.records import SessionSnapshot
from fulfill.store import Store
from tests.conftest import EmulatorServer, ServiceFactory
from tests.items import make_item
from tests.test_engine import wait_status

ADDRESS = {
    "line1": "Unter den Linden 1",
    "line2": None,
    "postal_code": "10117",
    "city": "Berlin",
    "state": None,
    "country": "DE",
}
SHIPPING = {"name": "Jenny Rosen", "address": ADDRESS}
COLLECT = {"allowed_countries": ["US", "DE"]}
TSHIRT = {"fulfill": "tshirt"}

SHIPMENT_CATALOG = """
[[product]]
name = "T-shirt"
match = { metadata = { fulfill = "tshirt" } }
action = "shipment"
"""


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(f"sqlite:///{tmp_path / 'actions.db'}")
    try:
        yield opened
    finally:
        await opened.close()


async def test_a_shipment_is_recorded_once_with_the_address(store: Store) -> None:
    action = ShipmentAction({}, store.deliverables)
    item = make_item(description="T-shirt", quantity=2, shipping=SHIPPING)
    result = await action.perform(item)
    assert result["message"] == (
        "We will ship 2 × T-shirt to Jenny Rosen, Unter den Linden 1, 10117 Berlin, DE."  # noqa: RUF001
    )
    shipment = result["shipment"]
    assert (shipment["status"], shipment["quantity"]) == ("pending", 2)
    assert shipment["address"] == ADDRESS
    assert await action.perform(item) == result
    (stored,) = await store.deliverables.shipments()
    assert stored.id == shipment["id"]
    assert stored.email == "jenny@example.com"
    assert stored.description == "T-shirt"


@pytest.mark.parametrize(
    "shipping",
    [None, {}, {"name": "Jenny"}, {"name": "J", "address": {"country": "DE"}}],
)
async def test_no_address_to_ship_to_fails_with_the_fix(
    store: Store, shipping: dict[str, Any] | None
) -> None:
    with pytest.raises(ActionError) as info:
        await ShipmentAction({}, store.deliverables).perform(make_item(shipping=shipping))
    assert info.value.message == NO_ADDRESS
    assert await store.deliverables.shipments() == []


def test_addresses_read_as_one_line() -> None:
    assert shipping_address(SHIPPING) == ADDRESS
    assert one_line({**ADDRESS, "line2": "Hof 2", "state": "BE"}) == (
        "Unter den Linden 1, Hof 2, 10117 Berlin, BE, DE"
    )


# -- both shapes of a session ------------------------------------------------------------


def context(snapshot: SessionSnapshot) -> ItemContext:
    (line,) = snapshot.items
    return make_item(
        session_id=snapshot.session_id,
        line_item_id=line.line_item_id,
        description=line.description,
        quantity=line.quantity,
        customer=dict(snapshot.customer),
        shipping=dict(snapshot.shipping) if snapshot.shipping else None,
    )


async def test_the_address_is_read_from_the_new_and_the_older_session_shape(
    store: Store, emulator_server: EmulatorServer
) -> None:
    price = emulator_server.price("T-shirt")
    session = emulator_server.session([(price, 1)], shipping_address_collection=COLLECT)
    emulator_server.complete(session.id, "paid", shipping=SHIPPING)
    shapes = {}
    for version in ("2025-03-31.basil", "2024-06-20"):
        client = emulator_server.stripe(stripe_version=version)
        retrieved = client.v1.checkout.sessions.retrieve(
            session.id, {"expand": ["line_items", "line_items.data.price.product"]}
        ).to_dict()
        items = retrieved["line_items"]["data"]
        shapes[version] = retrieved
        snapshot = SessionSnapshot.from_stripe(retrieved, items)
        assert snapshot.shipping == SHIPPING, version
        result = await ShipmentAction({}, store.deliverables).perform(context(snapshot))
        assert result["shipment"]["address"] == ADDRESS
    # The two API versions really differ in where they put it.
    assert shapes["2025-03-31.basil"]["collected_information"]["shipping_details"]
    assert "shipping_details" not in shapes["2025-03-31.basil"]
    assert shapes["2024-06-20"]["shipping_details"]["address"] == ADDRESS
    assert len(await store.deliverables.shipments()) == 1  # one item, one shipment


def test_the_older_top_level_shipping_details_alone_are_enough() -> None:
    session = {
        "id": "cs_test_old",
        "status": "complete",
        "payment_status": "paid",
        "shipping_details": SHIPPING,
        "customer_details": {"email": "jenny@example.com", "name": "Jenny Rosen"},
    }
    assert SessionSnapshot.from_stripe(session, []).shipping == SHIPPING
    newer = {**session, "collected_information": {"shipping_details": SHIPPING}}
    del newer["shipping_details"]
    assert SessionSnapshot.from_stripe(newer, []).shipping == SHIPPING


# -- end to end --------------------------------------------------------------------------


def test_a_bought_tshirt_is_a_pending_shipment_shown_per_item(
    service_factory: ServiceFactory,
) -> None:
    service = service_factory(SHIPMENT_CATALOG)
    price = service.shop.price("T-shirt", 2500, product_metadata=TSHIRT)
    session = service.shop.session([(price, 2)], shipping_address_collection=COLLECT)
    service.shop.complete(session.id, "paid", shipping=SHIPPING)
    record = wait_status(service, session.id, "fulfilled")
    assert record["shipping"] == SHIPPING
    (item,) = record["items"]
    assert item["action"] == "shipment"
    assert item["result"]["shipment"]["status"] == "pending"
    assert item["result"]["shipment"]["address"] == ADDRESS
    assert item["result"]["shipment"]["quantity"] == 2

    page = service.landing(session.id, as_json=False).text
    assert 'data-testid="shipment-status" data-status="pending">Preparing your shipment<' in page
    assert "We will ship 2 × T-shirt to Jenny Rosen" in page  # noqa: RUF001
    assert "Unter den Linden 1" in page


def test_a_physical_item_without_an_address_fails_the_session_clearly(
    service_factory: ServiceFactory,
) -> None:
    # Retries every 0.2 s, up to 10 attempts: none of them could ever find an address.
    service = service_factory(SHIPMENT_CATALOG, FULFILL_RETRY_BASE=0.2)
    price = service.shop.price("T-shirt", 2500, product_metadata=TSHIRT)
    session_id = service.paid_session([(price, 1)])
    record = wait_status(service, session_id, "failed")
    assert "no shipping address was collected" in record["last_error"]
    assert "enable shipping_address_collection" in record["last_error"]
    (item,) = record["items"]
    assert item["status"] == "failed"
    assert item["error"] == NO_ADDRESS
    # Failed for good at once: no next attempt, and none made by the worker.
    assert record["next_attempt_at"] is None
    time.sleep(1.0)
    record = service.record(session_id)
    assert (record["status"], record["attempts"]) == ("failed", 1)


# -- fulfill shipments -------------------------------------------------------------------


async def fill_shipments(database_url: str) -> None:
    from fulfill.actions.base import utcnow

    store = await Store.open(database_url)
    try:
        now = utcnow()
        rows = [
            ("li_1", "Jenny Rosen", ADDRESS, 1),
            ("li_2", '=HYPERLINK("http://evil")', {**ADDRESS, "line1": "@SUM(1+1)"}, 3),
        ]
        for n, (line_item_id, name, address, quantity) in enumerate(rows):
            await store.deliverables.create_shipment(
                session_id="cs_test_cli",
                line_item_id=line_item_id,
                email="jenny@example.com",
                name=name,
                phone="+49 30 1234-56",
                address=address,
                description="T-shirt",
                product_id="prod_tshirt",
                price_id="price_tshirt",
                quantity=quantity,
                livemode=False,
                now=now.replace(microsecond=0) + timedelta(seconds=n),
            )
    finally:
        await store.close()


def cli(database_url: str, *args: str) -> tuple[int, str]:
    env = {"FULFILL_DATABASE_URL": database_url, "COLUMNS": "200"}
    outcome = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    return outcome.exit_code, outcome.output


def test_shipments_as_a_table_csv_and_json(database_url: str) -> None:
    asyncio.run(fill_shipments(database_url))
    code, out = cli(database_url, "shipments")
    assert code == 0, out
    lines = out.splitlines()
    first = next(line for line in lines if "Jenny Rosen" in line)
    assert "pending" in first
    assert "Unter den Linden 1, 10117 Berlin, DE" in first
    assert "2 shipments" in out

    code, out = cli(database_url, "shipments", "--csv")
    assert code == 0, out
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [row["line_item_id"] for row in rows] == ["li_1", "li_2"]  # oldest first
    assert rows[0]["name"] == "Jenny Rosen"
    assert rows[0]["city"] == "Berlin"
    assert rows[0]["country"] == "DE"
    assert rows[0]["quantity"] == "1"
    assert rows[0]["phone"] == "+49 30 1234-56"  # a phone number stays as it is
    # What a customer typed never runs as a spreadsheet formula.
    assert rows[1]["name"] == '\'=HYPERLINK("http://evil")'
    assert rows[1]["line1"] == "'@SUM(1+1)"
    assert rows[1]["line2"] == ""

    code, out = cli(database_url, "shipments", "--json", "--status", "pending")
    assert code == 0, out
    found = json.loads(out)
    assert [s["quantity"] for s in found] == [1, 3]
    assert found[0]["address"] == ADDRESS
    assert found[0]["status"] == "pending"

    code, out = cli(database_url, "shipments", "--status", "shipped", "--json")
    assert (code, json.loads(out)) == (0, [])
    code, out = cli(database_url, "shipments", "--csv", "--json")
    assert code == 2
    assert "choose one of --csv and --json" in out
    code, out = cli(database_url, "shipments", "--status", "lost")
    assert code == 2


def test_spreadsheet_safe_cells() -> None:
    assert spreadsheet_safe("=1+1") == "'=1+1"
    assert spreadsheet_safe("-cmd|' /C calc'!A0") == "'-cmd|' /C calc'!A0"
    assert spreadsheet_safe("+1 (555) 010-9999") == "+1 (555) 010-9999"
    assert spreadsheet_safe("Berlin") == "Berlin"
    assert spreadsheet_safe(None) == ""
    assert spreadsheet_safe(3) == "3"
