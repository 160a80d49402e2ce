"""The license action: one unguessable, unique key per unit, the same keys on a repeat."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fulfill.actions.base import ActionError
from fulfill.actions.license import ALPHABET, LicenseAction, generate_key, key_space
from fulfill.store import Store
from tests.conftest import ServiceFactory
from tests.items import make_item
from tests.test_engine import wait_status

FORMAT = "XXXX-XXXX-XXXX-XXXX"
CHAR = "[23456789ABCDEFGHJKMNPQRSTUVWXYZ]"
KEY_RE = re.compile(rf"^{CHAR}{{4}}(-{CHAR}{{4}}){{3}}$")


def test_the_alphabet_has_no_look_alikes() -> None:
    assert len(ALPHABET) == len(set(ALPHABET)) == 31
    assert not set(ALPHABET) & set("01IOL")
    assert key_space(FORMAT) == 31**16


def test_keys_follow_the_format_and_ten_thousand_are_all_different() -> None:
    keys = [generate_key(FORMAT) for _ in range(10_000)]
    assert all(KEY_RE.match(key) for key in keys)
    assert len(set(keys)) == 10_000
    # Every character of the alphabet turns up: the draw covers all of it.
    assert set("".join(keys).replace("-", "")) == set(ALPHABET)
    custom = generate_key("PRO-XX/xx")
    assert re.match(r"^PRO-[2-9A-Z]{2}/xx$", custom)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(f"sqlite:///{tmp_path / 'actions.db'}")
    try:
        yield opened
    finally:
        await opened.close()


async def test_one_key_per_unit_and_a_repeat_returns_them(store: Store) -> None:
    action = LicenseAction({"format": FORMAT}, store.deliverables, product="Editor licence")
    result = await action.perform(make_item(quantity=3))
    assert result["message"] == "Your 3 licence keys:"
    assert len(result["keys"]) == 3
    assert all(KEY_RE.match(key) for key in result["keys"])
    assert await action.perform(make_item(quantity=3)) == result
    single = await action.perform(make_item(line_item_id="li_single", quantity=1))
    assert single["message"] == "Your licence key:"
    keys = await store.deliverables.license_keys(session_id="cs_test_a1B2c3")
    assert [k.key for k in keys] == [*result["keys"], *single["keys"]]
    assert keys[0].product == "Editor licence"
    assert keys[0].email == "jenny@example.com"


async def test_a_format_that_runs_out_of_keys_fails_with_advice(store: Store) -> None:
    action = LicenseAction({"format": "KEY-X"}, store.deliverables, generate=lambda fmt: "KEY-A")
    await action.perform(make_item(line_item_id="li_1", quantity=1))
    with pytest.raises(ActionError) as info:
        await action.perform(make_item(line_item_id="li_2", quantity=1))
    assert "format 'KEY-X' allows 31 keys: add X to it" in info.value.message


# -- end to end --------------------------------------------------------------------------

LICENSE_CATALOG = """
[[product]]
name = "Editor licence"
match = { metadata = { fulfill = "editor" } }
action = "license"
format = "EDIT-XXXX-XXXX-XXXX"
"""


def test_bought_licences_show_their_keys_with_copy_buttons(
    service_factory: ServiceFactory,
) -> None:
    service = service_factory(LICENSE_CATALOG)
    price = service.shop.price("Editor Pro", product_metadata={"fulfill": "editor"})
    session_id = service.paid_session([(price, 3)])
    record = wait_status(service, session_id, "fulfilled")
    (item,) = record["items"]
    keys = item["result"]["keys"]
    assert len(set(keys)) == 3
    assert all(re.match(r"^EDIT-[2-9A-Z]{4}-[2-9A-Z]{4}-[2-9A-Z]{4}$", key) for key in keys)
    assert item["result"]["message"] == "Your 3 licence keys:"

    page = service.landing(session_id, as_json=False).text
    for key in keys:
        # Selectable text without JavaScript; the button copies exactly the key.
        assert f'<code class="key" data-testid="license-key">{key}</code>' in page
        assert f'data-copy="{key}"' in page
    assert page.count("<script>") == 1
    assert "navigator.clipboard" in page
    assert "http" not in page.split("<script>")[1].split("</script>")[0]  # nothing fetched
    # Fulfilled again by any trigger, the record keeps the same keys.
    assert service.landing(session_id).json()["items"][0]["licence_keys"] == keys
