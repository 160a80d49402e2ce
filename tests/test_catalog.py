"""The catalog: the SPEC §6 example, every validation message, and matching line items."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fulfill.catalog import (
    Catalog,
    CatalogEntry,
    LineItemFacts,
    ProductMatch,
    is_http_url,
    load_catalog,
    parse_duration,
)
from fulfill.errors import CatalogError, FulfillError
from tests.conftest import EmulatorServer

FIXTURES = Path(__file__).parent / "fixtures"
SPEC_CATALOG = FIXTURES / "catalog" / "catalog.toml"


@pytest.fixture
def clean_imports(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Undo what loading a catalog with ``python`` actions does to sys.path and sys.modules."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith(("my_shop", "merchant_")):
            del sys.modules[name]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(text, encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    """The message of the CatalogError that loading ``text`` raises, without the path prefix."""
    path = write(tmp_path, text)
    with pytest.raises(CatalogError) as info:
        load_catalog(path, environ or {})
    message = info.value.message
    assert message.startswith(f"{path}: "), message
    return message.removeprefix(f"{path}: ")


# --- the SPEC example ---------------------------------------------------------


@pytest.mark.usefixtures("clean_imports")
def test_the_spec_example_catalog_loads_with_normalised_options() -> None:
    catalog = load_catalog(SPEC_CATALOG, {"MERCHANT_HOOK_SECRET": "whsec_merchant"})

    names = [(e.index, e.name, e.action) for e in catalog.products()]
    assert names == [
        (1, "The Python Handbook (e-book)", "download"),
        (2, "Course access", "access"),
        (3, "Editor licence", "license"),
        (4, "T-shirt", "shipment"),
        (5, "Anything my own system fulfills", "webhook"),
        (6, "Custom code", "python"),
    ]
    ebook, course, licence, tshirt, hook, custom = catalog.entries
    assert ebook.match == ProductMatch(price="price_ebook")
    assert ebook.options == {
        "file": (SPEC_CATALOG.parent / "files" / "handbook.pdf").resolve(),
        "link_ttl": 7 * 86400,
        "label": None,
    }
    assert course.match == ProductMatch(product="prod_course")
    assert course.options == {
        "service": "Course platform",
        "url": "https://learn.example.com/login",
        "duration": 365 * 86400,
    }
    assert licence.match == ProductMatch(lookup_key="editor_pro")
    assert licence.options == {"format": "XXXX-XXXX-XXXX-XXXX"}
    assert tshirt.options == {}
    assert hook.match == ProductMatch(metadata={"fulfill": "external"})
    assert hook.options == {
        "url": "https://merchant.example/fulfill",
        "secret": "whsec_merchant",
        "timeout": 10,
    }
    # The module sits next to the catalog file, not on the test's import path.
    assert custom.options == {"callable": "my_shop.fulfillment:deliver"}
    assert str(SPEC_CATALOG.parent.resolve()) in sys.path


def test_the_secret_stays_out_of_an_entrys_repr() -> None:
    entry = CatalogEntry(1, "Hook", ProductMatch(price="price_1"), "webhook", {"secret": "s3cr3t"})
    assert "s3cr3t" not in repr(entry)
    assert entry.label == 'product #1 "Hook"'


def test_defaults_and_lifetime(tmp_path: Path) -> None:
    (tmp_path / "book.pdf").write_bytes(b"%PDF-1.4\n")
    path = write(
        tmp_path,
        """
        [[product]]
        name = "Book"
        match = { price = "price_book" }
        action = "download"
        file = "book.pdf"
        label = "Book (PDF)"

        [[product]]
        name = "Forever"
        match = { product = "prod_forever" }
        action = "access"
        service = "Club"
        url = "http://club.example/"
        duration = "lifetime"

        [[product]]
        name = "Key"
        match = { price = "price_key" }
        action = "license"

        [[product]]
        name = "Hook"
        match = { price = "price_hook" }
        action = "webhook"
        url = "https://merchant.example/hook"
        secret = "literal-secret"
        """,
    )
    book, forever, key, hook = load_catalog(path, {}).entries
    assert book.options == {
        "file": (tmp_path / "book.pdf").resolve(),
        "link_ttl": 7 * 86400,
        "label": "Book (PDF)",
    }
    assert forever.options["duration"] is None
    assert key.options == {"format": "XXXX-XXXX-XXXX-XXXX"}
    assert hook.options == {
        "url": "https://merchant.example/hook",
        "secret": "literal-secret",
        "timeout": 10,
    }


def test_environ_defaults_to_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_CATALOG_HOOK_SECRET", "from-os-environ")
    path = write(
        tmp_path,
        """
        [[product]]
        name = "Hook"
        match = { price = "price_hook" }
        action = "webhook"
        url = "https://merchant.example/hook"
        secret = "env:TEST_CATALOG_HOOK_SECRET"
        """,
    )
    assert load_catalog(path).entries[0].options["secret"] == "from-os-environ"


# --- durations and URLs -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("10m", 600), ("2h", 7200), ("7d", 604800), ("365d", 31536000), ("0s", 0)],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "7", "d", "7 d", " 7d", "7days", "1.5h", "-1s", "7D", "1w"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://merchant.example/hook", True),
        ("http://127.0.0.1:8000/x?y=1", True),
        ("HTTPS://EXAMPLE.COM", True),
        ("ftp://example.com/file", False),
        ("javascript:alert(1)", False),
        (" https://example.com", False),
        ("https://exa mple.com", False),
        ("https:///path-only", False),
        ("example.com/hook", False),
        ("", False),
    ],
)
def test_is_http_url(url: str, ok: bool) -> None:
    assert is_http_url(url) is ok


# --- every validation message -------------------------------------------------


def test_missing_file_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(CatalogError) as info:
        load_catalog(path, {})
    assert info.value.message == (
        f"{path}: catalog file not found; create it (see the catalog section of the README) "
        "or set FULFILL_CATALOG to its path"
    )
    assert info.value.code == "catalog_error"


def test_a_directory_is_not_a_catalog(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read the catalog file"):
        load_catalog(tmp_path, {})


def test_bad_toml_names_the_line(tmp_path: Path) -> None:
    message = error_of(tmp_path, '[[product]]\nname = "A"\nmatch = { price = }\n')
    assert message.startswith("not valid TOML: ")
    assert "line 3" in message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "catalog.toml"
    path.write_bytes(b'[[product]]\nname = "Caf\xe9"\n')
    with pytest.raises(CatalogError, match="not UTF-8 text"):
        load_catalog(path, {})


VALID = """
[[product]]
name = "E-book"
match = { price = "price_ebook" }
action = "shipment"
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "no [[product]] entries; add one per thing you sell"),
        ("product = []", "no [[product]] entries; add one per thing you sell"),
        (
            '[product]\nname = "A"',
            '"product" must be an array of tables: write [[product]]',
        ),
        (
            '[[products]]\nname = "A"',
            'unknown top-level key "products" (did you mean "product"?)',
        ),
        (
            'match = { price = "price_1" }\naction = "shipment"\nname = "A"\n',
            'unknown top-level key "match"',
        ),
    ],
)
def test_file_level_errors(tmp_path: Path, text: str, expected: str) -> None:
    assert error_of(tmp_path, text) == expected


def entry(body: str) -> str:
    """A catalog whose second entry is ``body`` (so the index in messages is #2)."""
    return VALID + "\n[[product]]\n" + body


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # name
        (
            'match = { price = "price_1" }\naction = "shipment"',
            'product #2: missing field "name"',
        ),
        (
            'name = 7\nmatch = { price = "p" }\naction = "shipment"',
            'product #2: field "name" must be a string, not a number',
        ),
        (
            'name = 2026-11-27\nmatch = { price = "p" }\naction = "shipment"',
            'product #2: field "name" must be a string, not a date or time',
        ),
        (
            'name = "  "\nmatch = { price = "p" }\naction = "shipment"',
            'product #2: field "name" is empty',
        ),
        # action
        (
            'name = "T-shirt"\nmatch = { price = "price_1" }',
            'product #2 "T-shirt": missing field "action"',
        ),
        (
            'name = "T-shirt"\nmatch = { price = "price_1" }\naction = "shipping"',
            'product #2 "T-shirt": unknown action "shipping" (did you mean "shipment"?); '
            "known actions: download, access, license, shipment, webhook, python",
        ),
        (
            'name = "T-shirt"\nmatch = { price = "price_1" }\naction = "teleport"',
            'product #2 "T-shirt": unknown action "teleport"; '
            "known actions: download, access, license, shipment, webhook, python",
        ),
        # fields
        (
            'name = "Course access"\nmatch = { product = "prod_course" }\naction = "access"\n'
            'service = "S"\nurl = "https://learn.example.com"\nduraton = "365d"',
            'product #2 "Course access": unknown field "duraton" (did you mean "duration"?)',
        ),
        (
            'name = "Course access"\nmatch = { product = "prod_course" }\naction = "access"\n'
            'service = "S"\nurl = "https://learn.example.com"\nduration = "365d"\n'
            'file = "x.pdf"',
            'product #2 "Course access": field "file" does not apply to action "access" '
            '(it is an option of "download"); remove it',
        ),
        (
            'name = "T-shirt"\nmatch = { product = "prod_tshirt" }\naction = "shipment"\n'
            'carrier = "DHL"',
            'product #2 "T-shirt": unknown field "carrier"',
        ),
        (
            'name = "T-shirt"\nmatch = { product = "prod_tshirt" }\naction = "shipment"\n'
            'url = "https://x.example"',
            'product #2 "T-shirt": field "url" does not apply to action "shipment" '
            '(it is an option of "access", "webhook"); remove it',
        ),
        # match
        (
            'name = "T-shirt"\naction = "shipment"',
            'product #2 "T-shirt": missing field "match"; write match = { price = "price_…" } '
            "(or product, lookup_key, metadata)",
        ),
        (
            'name = "T-shirt"\nmatch = {}\naction = "shipment"',
            'product #2 "T-shirt": field "match" is empty, so it would match nothing; '
            'write match = { price = "price_…" } (or product, lookup_key, metadata)',
        ),
        (
            'name = "T-shirt"\nmatch = "price_1"\naction = "shipment"',
            'product #2 "T-shirt": field "match" must be a table, not a string; '
            'write match = { price = "price_…" } (or product, lookup_key, metadata)',
        ),
        (
            'name = "T-shirt"\nmatch = { prise = "price_1" }\naction = "shipment"',
            'product #2 "T-shirt": unknown key "prise" in "match" (did you mean "price"?); '
            "known keys: price, product, lookup_key, metadata",
        ),
        (
            'name = "T-shirt"\nmatch = { price = "" }\naction = "shipment"',
            'product #2 "T-shirt": "match.price" must be a non-empty string',
        ),
        (
            'name = "T-shirt"\nmatch = { lookup_key = 3 }\naction = "shipment"',
            'product #2 "T-shirt": "match.lookup_key" must be a non-empty string',
        ),
        (
            'name = "T-shirt"\nmatch = { price = "prod_tshirt" }\naction = "shipment"',
            'product #2 "T-shirt": "match.price" is \'prod_tshirt\', a product ID; '
            'write product = "…"',
        ),
        (
            'name = "T-shirt"\nmatch = { product = "price_tshirt" }\naction = "shipment"',
            'product #2 "T-shirt": "match.product" is \'price_tshirt\', a price ID; '
            'write price = "…"',
        ),
        (
            'name = "T-shirt"\nmatch = { metadata = {} }\naction = "shipment"',
            'product #2 "T-shirt": "match.metadata" must be a non-empty table, '
            'like { fulfill = "ebook" }',
        ),
        (
            'name = "T-shirt"\nmatch = { metadata = { size = 3 } }\naction = "shipment"',
            'product #2 "T-shirt": "match.metadata.size" must be a string (Stripe metadata '
            "values are strings), not a number",
        ),
    ],
)
def test_entry_errors(tmp_path: Path, body: str, expected: str) -> None:
    assert error_of(tmp_path, entry(body)) == expected


DOWNLOAD = 'name = "E-book"\nmatch = { price = "price_ebook" }\naction = "download"\n'
ACCESS = 'name = "Course"\nmatch = { price = "price_c" }\naction = "access"\nservice = "S"\n'
HOOK = 'name = "Hook"\nmatch = { price = "price_h" }\naction = "webhook"\n'
PYTHON = 'name = "Code"\nmatch = { price = "price_p" }\naction = "python"\n'


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # download
        (DOWNLOAD, 'product #2 "E-book": missing field "file"'),
        (
            DOWNLOAD + 'file = "book.pdf"\nlink_ttl = "7 days"',
            'product #2 "E-book": field "link_ttl": \'7 days\' is not a duration; write a '
            'number and a unit, like "30s", "10m", "2h" or "7d"',
        ),
        (
            DOWNLOAD + 'file = "book.pdf"\nlink_ttl = "0s"',
            'product #2 "E-book": field "link_ttl" must be longer than zero',
        ),
        (
            DOWNLOAD + 'file = "book.pdf"\nlink_ttl = 7',
            'product #2 "E-book": field "link_ttl" must be a string, not a number',
        ),
        (DOWNLOAD + 'file = "book.pdf"\nlabel = ""', 'product #2 "E-book": field "label" is empty'),
        # access
        (
            ACCESS + 'url = "learn.example.com"\nduration = "365d"',
            'product #2 "Course": field "url" must be an http:// or https:// URL, '
            "got 'learn.example.com'",
        ),
        (
            ACCESS + 'url = "https://learn.example.com"',
            'product #2 "Course": missing field "duration"',
        ),
        (
            ACCESS + 'url = "https://learn.example.com"\nduration = "forever"',
            'product #2 "Course": field "duration": \'forever\' is not a duration; write a '
            'number and a unit, like "30s", "10m", "2h" or "7d"',
        ),
        (
            'name = "Course"\nmatch = { price = "price_c" }\naction = "access"\n'
            'url = "https://learn.example.com"\nduration = "1d"',
            'product #2 "Course": missing field "service"',
        ),
        # license
        (
            'name = "Key"\nmatch = { price = "price_k" }\naction = "license"\nformat = "1234-5678"',
            'product #2 "Key": field "format" is \'1234-5678\', with no X to fill in; '
            'write something like "XXXX-XXXX-XXXX-XXXX"',
        ),
        # webhook
        (HOOK + 'secret = "s"', 'product #2 "Hook": missing field "url"'),
        (
            HOOK + 'url = "ftp://merchant.example/hook"\nsecret = "s"',
            'product #2 "Hook": field "url" must be an http:// or https:// URL, '
            "got 'ftp://merchant.example/hook'",
        ),
        (HOOK + 'url = "https://m.example/h"', 'product #2 "Hook": missing field "secret"'),
        (
            HOOK + 'url = "https://m.example/h"\nsecret = "env:MERCHANT_HOOK_SECRET"',
            'product #2 "Hook": field "secret": environment variable MERCHANT_HOOK_SECRET '
            "is not set; set it before starting",
        ),
        (
            HOOK + 'url = "https://m.example/h"\nsecret = "env:EMPTY_SECRET"',
            'product #2 "Hook": field "secret": environment variable EMPTY_SECRET '
            "is empty; set it before starting",
        ),
        (
            HOOK + 'url = "https://m.example/h"\nsecret = "env:MY-SECRET"',
            'product #2 "Hook": field "secret": \'MY-SECRET\' is not an environment variable name',
        ),
        (
            HOOK + 'url = "https://m.example/h"\nsecret = "s"\ntimeout = "10"',
            'product #2 "Hook": field "timeout": \'10\' is not a duration; write a number '
            'and a unit, like "30s", "10m", "2h" or "7d"',
        ),
        (
            HOOK + 'url = "https://m.example/h"\nsecret = "s"\ntimeout = "1h"',
            'product #2 "Hook": field "timeout" must be at most 300 s, got \'1h\'',
        ),
        # python
        (PYTHON, 'product #2 "Code": missing field "callable"'),
        (
            PYTHON + 'callable = "tests.python_callables.deliver"',
            'product #2 "Code": field "callable": \'tests.python_callables.deliver\' is not '
            'of the form "package.module:function"',
        ),
        (
            PYTHON + 'callable = "tests.python_callables:"',
            'product #2 "Code": field "callable": \'tests.python_callables:\' is not '
            'of the form "package.module:function"',
        ),
        (
            PYTHON + 'callable = "merchant_nowhere.hooks:deliver"',
            'product #2 "Code": field "callable": cannot import module \'merchant_nowhere.hooks\' '
            "(No module named 'merchant_nowhere'); put it next to the catalog file, install it, "
            "or add its folder to PYTHONPATH",
        ),
        (
            PYTHON + 'callable = "tests.python_callables:delivr"',
            'product #2 "Code": field "callable": module \'tests.python_callables\' has no '
            "attribute 'delivr'",
        ),
        (
            PYTHON + 'callable = "tests.python_callables:NOT_CALLABLE"',
            'product #2 "Code": field "callable": \'tests.python_callables:NOT_CALLABLE\' is '
            "not callable (it is of type int)",
        ),
    ],
)
@pytest.mark.usefixtures("clean_imports")
def test_action_option_errors(tmp_path: Path, body: str, expected: str) -> None:
    (tmp_path / "book.pdf").write_bytes(b"%PDF-1.4\n")
    assert error_of(tmp_path, entry(body), {"EMPTY_SECRET": ""}) == expected


TIMED = {
    "download": DOWNLOAD + 'file = "book.pdf"\n',
    "access": ACCESS + 'url = "https://learn.example.com"\nduration = "1d"\n',
    "license": 'name = "Key"\nmatch = { price = "price_k" }\naction = "license"\n',
    "shipment": 'name = "Shirt"\nmatch = { price = "price_s" }\naction = "shipment"\n',
    "webhook": HOOK + 'url = "https://m.example/h"\nsecret = "s"\n',
    "python": PYTHON + 'callable = "tests.python_callables:deliver"\n',
}


@pytest.mark.parametrize("action", sorted(TIMED))
@pytest.mark.usefixtures("clean_imports")
def test_every_action_takes_a_timeout(tmp_path: Path, action: str) -> None:
    (tmp_path / "book.pdf").write_bytes(b"%PDF-1.4\n")
    default = load_catalog(write(tmp_path, entry(TIMED[action])), {}).entries[1]
    # A webhook's receiver should answer quickly: 10 s unless told; 30 s for the rest.
    assert default.timeout == (10 if action == "webhook" else 30)
    timed = load_catalog(write(tmp_path, entry(TIMED[action] + 'timeout = "2m"')), {}).entries[1]
    assert timed.timeout == 120
    if action == "webhook":
        assert timed.options["timeout"] == 120  # its HTTP exchange, bounded by the same value
    else:
        assert "timeout" not in timed.options


@pytest.mark.parametrize(
    ("action", "value", "problem"),
    [
        ("python", '"30"', "'30' is not a duration"),
        ("python", "30", "must be a string, not a number"),
        ("python", '"0s"', "must be longer than zero"),
        ("python", '"2h"', "must be at most 3600 s, got '2h'"),
        ("shipment", '""', "is empty"),
        ("webhook", '"6m"', "must be at most 300 s, got '6m'"),
    ],
)
@pytest.mark.usefixtures("clean_imports")
def test_a_bad_timeout_names_the_file_entry_and_field(
    tmp_path: Path, action: str, value: str, problem: str
) -> None:
    (tmp_path / "book.pdf").write_bytes(b"%PDF-1.4\n")
    message = error_of(tmp_path, entry(TIMED[action] + f"timeout = {value}"))
    name = TIMED[action].split('"')[1]
    assert message.startswith(f'product #2 "{name}": field "timeout"')
    assert problem in message


def test_download_file_must_exist_relative_to_the_catalog(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    message = error_of(tmp_path, entry(DOWNLOAD + 'file = "files/handbok.pdf"'))
    expected_path = (tmp_path / "files" / "handbok.pdf").resolve()
    assert message == (
        f'product #2 "E-book": field "file": {expected_path} does not exist or is not a file '
        "(paths are relative to the catalog file)"
    )
    message = error_of(tmp_path, entry(DOWNLOAD + 'file = "files"'))
    assert "is not a file" in message


@pytest.mark.usefixtures("clean_imports")
def test_a_python_module_that_fails_to_import_is_reported(tmp_path: Path) -> None:
    (tmp_path / "merchant_broken.py").write_text("raise RuntimeError('no database URL')\n")
    message = error_of(tmp_path, entry(PYTHON + 'callable = "merchant_broken:deliver"'))
    assert message == (
        'product #2 "Code": field "callable": importing module \'merchant_broken\' failed: '
        "RuntimeError: no database URL"
    )


@pytest.mark.usefixtures("clean_imports")
def test_a_python_module_next_to_the_catalog_imports(tmp_path: Path) -> None:
    (tmp_path / "merchant_hooks.py").write_text(
        "class Shop:\n    @staticmethod\n    def deliver(item):\n        return None\n"
    )
    catalog = load_catalog(
        write(tmp_path, entry(PYTHON + 'callable = "merchant_hooks:Shop.deliver"'))
    )
    assert catalog.entries[1].options == {"callable": "merchant_hooks:Shop.deliver"}


def test_the_first_bad_entry_is_named_by_its_position(tmp_path: Path) -> None:
    text = VALID * 3 + '\n[[product]]\nname = "Fourth"\nmatch = { price = "p" }\naction = "x"\n'
    assert error_of(tmp_path, text).startswith('product #4 "Fourth": unknown action "x"')


# --- line item facts ----------------------------------------------------------


def line_item(**price_overrides: Any) -> dict[str, Any]:
    item: dict[str, Any] = json.loads((FIXTURES / "checkout_session_line_item.json").read_text())
    item["price"].update(price_overrides)
    return item


def test_facts_from_a_line_item_with_a_product_id() -> None:
    facts = LineItemFacts.from_stripe(line_item())
    assert facts == LineItemFacts(
        price_id="price_1PgafmB7WZ01zgkW02Hf9z6c",
        product_id="prod_QXg1hqf4jFNsqG",
        lookup_key=None,
        price_metadata={},
        product_metadata=None,
    )


def test_facts_from_a_line_item_with_an_expanded_product() -> None:
    product = {"id": "prod_QXg1hqf4jFNsqG", "object": "product", "metadata": {"fulfill": "tee"}}
    item = line_item(product=product, lookup_key="tee_black", metadata={"size": "L"})
    facts = LineItemFacts.from_stripe(item)
    assert facts == LineItemFacts(
        price_id="price_1PgafmB7WZ01zgkW02Hf9z6c",
        product_id="prod_QXg1hqf4jFNsqG",
        lookup_key="tee_black",
        price_metadata={"size": "L"},
        product_metadata={"fulfill": "tee"},
    )


# --- matching -----------------------------------------------------------------


def facts(**overrides: Any) -> LineItemFacts:
    fields: dict[str, Any] = {
        "price_id": "price_1",
        "product_id": "prod_1",
        "lookup_key": "key_1",
        "price_metadata": {},
        "product_metadata": {},
    }
    fields.update(overrides)
    return LineItemFacts(**fields)


def catalog_of(*matches: ProductMatch) -> Catalog:
    entries = tuple(
        CatalogEntry(i, f"Entry {i}", m, "shipment", {}) for i, m in enumerate(matches, start=1)
    )
    return Catalog(Path("catalog.toml"), entries)


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        (ProductMatch(price="price_1"), True),
        (ProductMatch(price="price_2"), False),
        (ProductMatch(product="prod_1"), True),
        (ProductMatch(product="prod_2"), False),
        (ProductMatch(lookup_key="key_1"), True),
        (ProductMatch(lookup_key="key_2"), False),
        (ProductMatch(price="price_1", product="prod_1"), True),
        (ProductMatch(price="price_1", product="prod_2"), False),
    ],
)
def test_match_by_ids(match: ProductMatch, expected: bool) -> None:
    assert match.matches(facts()) is expected


def test_lookup_key_does_not_match_a_price_without_one() -> None:
    assert not ProductMatch(lookup_key="key_1").matches(facts(lookup_key=None))


@pytest.mark.parametrize(
    ("price_metadata", "product_metadata", "expected"),
    [
        ({}, {"fulfill": "external"}, True),
        ({"fulfill": "external"}, {}, True),
        ({"fulfill": "external"}, {"fulfill": "external"}, True),
        ({}, {"fulfill": "external", "other": "x"}, True),
        ({}, {"fulfill": "ebook"}, False),
        ({}, {}, False),
        ({}, {"fulfill": "External"}, False),
        # The price's metadata is more specific: it overrides its product's.
        ({"fulfill": "manual"}, {"fulfill": "external"}, False),
        ({"fulfill": "external"}, {"fulfill": "manual"}, True),
    ],
)
def test_match_by_metadata_on_product_or_price(
    price_metadata: dict[str, str], product_metadata: dict[str, str], expected: bool
) -> None:
    match = ProductMatch(metadata={"fulfill": "external"})
    item = facts(price_metadata=price_metadata, product_metadata=product_metadata)
    assert match.matches(item) is expected


def test_every_metadata_pair_must_hold_across_price_and_product() -> None:
    match = ProductMatch(metadata={"fulfill": "external", "tier": "gold"})
    assert match.matches(
        facts(price_metadata={"tier": "gold"}, product_metadata={"fulfill": "external"})
    )
    assert not match.matches(facts(product_metadata={"fulfill": "external"}))


def test_metadata_cannot_be_matched_on_an_unexpanded_product() -> None:
    match = ProductMatch(metadata={"fulfill": "external"})
    with pytest.raises(FulfillError) as info:
        match.matches(facts(product_metadata=None))
    assert info.value.code == "product_not_expanded"
    assert "price price_1, product prod_1" in info.value.message
    # When the price itself answers, the product's metadata is not needed.
    assert match.matches(facts(price_metadata={"fulfill": "external"}, product_metadata=None))
    assert not match.matches(facts(price_metadata={"fulfill": "no"}, product_metadata=None))


def test_the_first_matching_entry_wins() -> None:
    catalog = catalog_of(
        ProductMatch(price="price_other"),
        ProductMatch(product="prod_1"),
        ProductMatch(price="price_1"),
        ProductMatch(metadata={"fulfill": "x"}),
    )
    found = catalog.match(facts(product_metadata={"fulfill": "x"}))
    assert found is not None
    assert found.index == 2
    found = catalog.match(facts(product_id="prod_9", product_metadata={"fulfill": "x"}))
    assert found is not None
    assert found.index == 3
    found = catalog.match(
        facts(price_id="price_9", product_id="prod_9", product_metadata={"fulfill": "x"})
    )
    assert found is not None
    assert found.index == 4
    assert catalog.match(facts(price_id="price_9", product_id="prod_9")) is None


def test_match_reads_a_stripe_line_item_directly() -> None:
    catalog = catalog_of(ProductMatch(product="prod_QXg1hqf4jFNsqG"))
    found = catalog.match(line_item())
    assert found is not None
    assert found.name == "Entry 1"


def test_require_names_the_unmatched_price_and_product() -> None:
    catalog = catalog_of(ProductMatch(price="price_other"))
    with pytest.raises(CatalogError) as info:
        catalog.require(line_item(lookup_key="tee"))
    assert info.value.code == "no_catalog_entry"
    assert info.value.message == (
        "catalog.toml: no [[product]] entry matches the line item (price "
        "price_1PgafmB7WZ01zgkW02Hf9z6c, product prod_QXg1hqf4jFNsqG, lookup_key tee); "
        "add an entry for it to the catalog"
    )
    assert (
        catalog_of(ProductMatch(lookup_key="tee")).require(line_item(lookup_key="tee")).index == 1
    )


def test_describe_a_match() -> None:
    match = ProductMatch(price="price_1", lookup_key="k", metadata={"a": "1", "b": "2"})
    assert (
        match.describe() == 'price = "price_1", lookup_key = "k", metadata = { a = "1", b = "2" }'
    )


def test_matching_line_items_retrieved_from_the_emulator(
    tmp_path: Path, emulator_server: EmulatorServer
) -> None:
    """Real line items, with the product expanded as the engine retrieves them."""
    client = emulator_server.stripe()
    ebook = client.v1.products.create({"name": "E-book", "metadata": {"fulfill": "ebook"}})
    ebook_price = client.v1.prices.create(
        {"currency": "eur", "unit_amount": 1900, "product": ebook.id}
    )
    course = client.v1.products.create({"name": "Course"})
    course_price = client.v1.prices.create(
        {
            "currency": "eur",
            "unit_amount": 9900,
            "product": course.id,
            "lookup_key": "course_year",
            "metadata": {"fulfill": "course"},
        }
    )
    tee = client.v1.products.create({"name": "T-shirt"})
    tee_price = client.v1.prices.create({"currency": "eur", "unit_amount": 2500, "product": tee.id})
    session = emulator_server.session(
        [(ebook_price.id, 1), (course_price.id, 1), (tee_price.id, 2)]
    )
    path = write(
        tmp_path,
        f"""
        [[product]]
        name = "Yearly course"
        match = {{ lookup_key = "course_year", metadata = {{ fulfill = "course" }} }}
        action = "shipment"

        [[product]]
        name = "E-books"
        match = {{ metadata = {{ fulfill = "ebook" }} }}
        action = "shipment"

        [[product]]
        name = "T-shirt"
        match = {{ product = "{tee.id}" }}
        action = "shipment"
        """,
    )
    catalog = load_catalog(path, {})

    retrieved = client.v1.checkout.sessions.retrieve(
        session.id, {"expand": ["line_items", "line_items.data.price.product"]}
    )
    assert retrieved.line_items is not None
    items = [item.to_dict() for item in retrieved.line_items.data]
    names = [entry.name for entry in map(catalog.require, items)]
    assert names == ["E-books", "Yearly course", "T-shirt"]

    # Without the expansion, the e-book's product metadata is unknown: refused, not guessed.
    plain = client.v1.checkout.sessions.retrieve(session.id, {"expand": ["line_items"]})
    assert plain.line_items is not None
    with pytest.raises(FulfillError, match="not expanded"):
        catalog.match(plain.line_items.data[0].to_dict())
