"""The catalog (SPEC §6): parsing and validating the TOML file, and matching line items.

``load_catalog`` reads the file once at start and checks every field of every
entry, so that a typo stops the program with one line naming the file, the
entry and the field instead of failing the first customer who pays. The
options of each entry are normalised here (durations in seconds, files as
absolute paths, ``env:`` secrets resolved), so actions get typed values.

Matching is a pure function of a line item's facts: the first entry whose
``match`` holds wins.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from fulfill.errors import CatalogError, FulfillError

# The fields every entry has (``timeout`` optional), and the options of each action.
COMMON_FIELDS = ("name", "match", "action", "timeout")
ACTION_FIELDS: Mapping[str, tuple[str, ...]] = {
    "download": ("file", "link_ttl", "label"),
    "access": ("service", "url", "duration"),
    "license": ("format",),
    "shipment": (),
    "webhook": ("url", "secret"),
    "python": ("callable",),
}
MATCH_KEYS = ("price", "product", "lookup_key", "metadata")

DEFAULT_LINK_TTL = "7d"
DEFAULT_LICENSE_FORMAT = "XXXX-XXXX-XXXX-XXXX"
# How long one line item's action may take before it counts as failed (the
# entry's ``timeout``). Without a bound, a hung callable would keep its
# session ``fulfilling`` (its lease renewed by the heartbeat) until a restart.
DEFAULT_ACTION_TIMEOUT = "30s"
MAX_ACTION_TIMEOUT = 3600
# A webhook's receiver should answer quickly and do slow work in the
# background: a shorter default, and a lower limit, for its HTTP exchange.
DEFAULT_WEBHOOK_TIMEOUT = "10s"
MAX_WEBHOOK_TIMEOUT = 300

_DURATION_RE = re.compile(r"^([0-9]+)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_CALLABLE_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_duration(text: str) -> int:
    """``"30s"``, ``"10m"``, ``"2h"``, ``"7d"`` → seconds; ``ValueError`` for anything else."""
    found = _DURATION_RE.match(text)
    if found is None:
        raise ValueError(
            f"{text!r} is not a duration; write a number and a unit, "
            'like "30s", "10m", "2h" or "7d"'
        )
    return int(found.group(1)) * _UNIT_SECONDS[found.group(2)]


def is_http_url(url: str) -> bool:
    """True for an absolute ``http://`` or ``https://`` URL with a host and no whitespace."""
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


def resolve_callable(spec: str) -> Callable[..., Any]:
    """Import ``"package.module:attr"`` (attr may be dotted); ``ValueError`` if unusable."""
    if not _CALLABLE_RE.match(spec):
        raise ValueError(f'{spec!r} is not of the form "package.module:function"')
    module_name, _, attr_path = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"cannot import module {module_name!r} ({exc}); "
            "put it next to the catalog file, install it, or add its folder to PYTHONPATH"
        ) from exc
    except Exception as exc:
        # Importing runs the merchant's module code; any failure there is theirs to see.
        raise ValueError(
            f"importing module {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attr_path!r}") from None
    if not callable(target):
        raise ValueError(f"{spec!r} is not callable (it is of type {type(target).__name__})")
    return target  # type: ignore[no-any-return]


@dataclass(frozen=True)
class LineItemFacts:
    """What matching needs to know about one line item.

    ``product_metadata`` is ``None`` when the line item's ``price.product`` was
    not expanded: the product's metadata is then unknown, not empty.
    """

    price_id: str
    product_id: str
    lookup_key: str | None = None
    price_metadata: Mapping[str, str] = field(default_factory=dict)
    product_metadata: Mapping[str, str] | None = field(default_factory=dict)

    @classmethod
    def from_stripe(cls, item: Mapping[str, Any]) -> LineItemFacts:
        """Read a Stripe line item (``price.product`` an ID or an expanded product)."""
        price = item.get("price") or {}
        product = price.get("product")
        product_metadata: Mapping[str, str] | None
        if isinstance(product, Mapping):
            product_id = str(product.get("id") or "")
            product_metadata = _str_dict(product.get("metadata"))
        else:
            product_id = str(product or "")
            product_metadata = None
        lookup_key = price.get("lookup_key")
        return cls(
            price_id=str(price.get("id") or ""),
            product_id=product_id,
            lookup_key=str(lookup_key) if lookup_key is not None else None,
            price_metadata=_str_dict(price.get("metadata")),
            product_metadata=product_metadata,
        )

    def describe(self) -> str:
        """``price price_…, product prod_…`` for error messages."""
        text = f"price {self.price_id or '(none)'}, product {self.product_id or '(none)'}"
        if self.lookup_key:
            text += f", lookup_key {self.lookup_key}"
        return text


def _str_dict(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): str(v) for k, v in value.items()}


@dataclass(frozen=True)
class ProductMatch:
    """An entry's ``match``: every given condition must hold."""

    price: str | None = None
    product: str | None = None
    lookup_key: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    def matches(self, facts: LineItemFacts) -> bool:
        """Whether the line item satisfies every condition of this match.

        A metadata key is looked up on the price first and on the product only
        when the price does not have it: a price's metadata is the more
        specific, so it can override what its product says.
        """
        if self.price is not None and facts.price_id != self.price:
            return False
        if self.product is not None and facts.product_id != self.product:
            return False
        if self.lookup_key is not None and facts.lookup_key != self.lookup_key:
            return False
        for key, wanted in self.metadata.items():
            if key in facts.price_metadata:
                if facts.price_metadata[key] != wanted:
                    return False
            elif facts.product_metadata is None:
                # Guessing "no match" here could hand the item to a later entry
                # and fulfill the wrong thing: refuse instead.
                raise FulfillError(
                    f"cannot match metadata {key!r} for {facts.describe()}: the product was not "
                    "expanded; retrieve the session with expand line_items.data.price.product",
                    code="product_not_expanded",
                )
            elif facts.product_metadata.get(key) != wanted:
                return False
        return True

    def describe(self) -> str:
        """The match as TOML-ish text, e.g. ``price = "price_ebook"``."""
        parts = [
            f'{key} = "{value}"'
            for key, value in (
                ("price", self.price),
                ("product", self.product),
                ("lookup_key", self.lookup_key),
            )
            if value is not None
        ]
        if self.metadata:
            pairs = ", ".join(f'{k} = "{v}"' for k, v in self.metadata.items())
            parts.append(f"metadata = {{ {pairs} }}")
        return ", ".join(parts)


@dataclass(frozen=True)
class CatalogEntry:
    """One ``[[product]]`` entry: what it matches and the action with its checked options.

    ``index`` counts from 1, as the error messages do. ``options`` holds only
    the action's own fields, normalised (see ``load_catalog``); it is left
    out of ``repr`` because it may hold a webhook secret. ``timeout`` is how
    many seconds the action may take for one line item (``build_action``
    enforces it); a ``webhook`` also bounds its HTTP exchange by it.
    """

    index: int
    name: str
    match: ProductMatch
    action: str
    options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    timeout: float = float(parse_duration(DEFAULT_ACTION_TIMEOUT))

    @property
    def label(self) -> str:
        """``product #3 "T-shirt"``, as error messages name the entry."""
        return f"product #{self.index} {_quote(self.name)}"


@dataclass(frozen=True)
class Catalog:
    """The parsed catalog: entries in file order."""

    path: Path
    entries: tuple[CatalogEntry, ...]

    def match(self, line_item: LineItemFacts | Mapping[str, Any]) -> CatalogEntry | None:
        """The first entry matching the line item (facts or a Stripe line item dict), or None."""
        facts = (
            line_item
            if isinstance(line_item, LineItemFacts)
            else LineItemFacts.from_stripe(line_item)
        )
        for entry in self.entries:
            if entry.match.matches(facts):
                return entry
        return None

    def require(self, line_item: LineItemFacts | Mapping[str, Any]) -> CatalogEntry:
        """Like ``match``, but an item no entry matches is a ``CatalogError`` naming it."""
        facts = (
            line_item
            if isinstance(line_item, LineItemFacts)
            else LineItemFacts.from_stripe(line_item)
        )
        entry = self.match(facts)
        if entry is None:
            raise CatalogError(
                f"{self.path}: no [[product]] entry matches the line item ({facts.describe()}); "
                "add an entry for it to the catalog",
                code="no_catalog_entry",
            )
        return entry

    def products(self) -> tuple[CatalogEntry, ...]:
        """Every entry, in file order, with its match (for a storefront or ``fulfill check``)."""
        return self.entries


def load_catalog(path: Path, environ: Mapping[str, str] | None = None) -> Catalog:
    """Read and validate the catalog file; ``CatalogError`` names the file, entry and field.

    ``environ`` (default ``os.environ``) resolves ``env:NAME`` secrets. When an
    entry has a ``python`` action, the catalog's folder is added to the end of
    ``sys.path`` (as uvicorn's ``--app-dir`` does) so that a module kept next to
    the catalog imports even under the ``fulfill`` console script, which does
    not put the working directory on the path.
    """
    env = os.environ if environ is None else environ
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CatalogError(
            f"{path}: catalog file not found; create it (see the catalog section of the README) "
            "or set FULFILL_CATALOG to its path"
        ) from None
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read the catalog file: {exc.strerror or exc}") from None
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CatalogError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{path}: not valid TOML: {exc}") from None

    for key in document:
        if key != "product":
            raise CatalogError(
                f"{path}: unknown top-level key {_quote(key)}{_hint(key, ['product'])}"
            )
    raw_entries = document.get("product")
    if raw_entries is None:
        raise CatalogError(f"{path}: no [[product]] entries; add one per thing you sell")
    if not isinstance(raw_entries, list) or not all(isinstance(e, dict) for e in raw_entries):
        raise CatalogError(f'{path}: "product" must be an array of tables: write [[product]]')
    if not raw_entries:
        raise CatalogError(f"{path}: no [[product]] entries; add one per thing you sell")

    folder = path.resolve().parent
    entries = tuple(
        _EntryReader(path, folder, index, raw, env).read()
        for index, raw in enumerate(raw_entries, start=1)
    )
    return Catalog(path=path, entries=entries)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _hint(word: str, candidates: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean {_quote(close[0])}?)" if close else ""


def _type_name(value: Any) -> str:
    """How TOML would call the value's type, for messages."""
    names = {
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        list: "an array",
        dict: "a table",
    }
    return names.get(type(value), "a date or time")


class _EntryReader:
    """Checks one raw ``[[product]]`` table and builds its ``CatalogEntry``."""

    def __init__(
        self, path: Path, folder: Path, index: int, raw: dict[str, Any], env: Mapping[str, str]
    ) -> None:
        self.path = path
        self.folder = folder
        self.index = index
        self.raw = raw
        self.env = env
        self.name: str | None = None

    def fail(self, problem: str) -> NoReturn:
        where = f"product #{self.index}"
        if self.name is not None:
            where += f" {_quote(self.name)}"
        raise CatalogError(f"{self.path}: {where}: {problem}")

    def read(self) -> CatalogEntry:
        self.name = self.string("name")
        action = self.string("action")
        if action not in ACTION_FIELDS:
            known = ", ".join(ACTION_FIELDS)
            self.fail(
                f"unknown action {_quote(action)}{_hint(action, list(ACTION_FIELDS))}; "
                f"known actions: {known}"
            )
        self.check_fields(action)
        match = self.read_match()
        readers: dict[str, Callable[[], dict[str, Any]]] = {
            "download": self.options_download,
            "access": self.options_access,
            "license": self.options_license,
            "shipment": self.options_shipment,
            "webhook": self.options_webhook,
            "python": self.options_python,
        }
        timeout = self.timeout(action)
        options = readers[action]()
        if action == "webhook":
            options["timeout"] = timeout
        return CatalogEntry(self.index, self.name, match, action, options, timeout)

    def timeout(self, action: str) -> int:
        if action == "webhook":
            return self.duration("timeout", DEFAULT_WEBHOOK_TIMEOUT, maximum=MAX_WEBHOOK_TIMEOUT)
        return self.duration("timeout", DEFAULT_ACTION_TIMEOUT, maximum=MAX_ACTION_TIMEOUT)

    def check_fields(self, action: str) -> None:
        allowed = (*COMMON_FIELDS, *ACTION_FIELDS[action])
        for key in self.raw:
            if key in allowed:
                continue
            owners = [a for a, fields in ACTION_FIELDS.items() if key in fields]
            if owners:
                self.fail(
                    f"field {_quote(key)} does not apply to action {_quote(action)} "
                    f"(it is an option of {', '.join(_quote(o) for o in owners)}); remove it"
                )
            self.fail(f"unknown field {_quote(key)}{_hint(key, allowed)}")

    # --- typed field readers -------------------------------------------------

    def string(self, key: str, default: str | None = None) -> str:
        value = self.raw.get(key, default)
        if value is None:
            self.fail(f"missing field {_quote(key)}")
        if not isinstance(value, str):
            self.fail(f"field {_quote(key)} must be a string, not {_type_name(value)}")
        if not value.strip():
            self.fail(f"field {_quote(key)} is empty")
        return value

    def duration(self, key: str, default: str | None = None, *, maximum: int | None = None) -> int:
        text = self.string(key, default)
        try:
            seconds = parse_duration(text)
        except ValueError as exc:
            self.fail(f"field {_quote(key)}: {exc}")
        if seconds <= 0:
            self.fail(f"field {_quote(key)} must be longer than zero")
        if maximum is not None and seconds > maximum:
            self.fail(f"field {_quote(key)} must be at most {maximum} s, got {text!r}")
        return seconds

    def url(self, key: str) -> str:
        value = self.string(key)
        if not is_http_url(value):
            self.fail(f"field {_quote(key)} must be an http:// or https:// URL, got {value!r}")
        return value

    def read_match(self) -> ProductMatch:
        raw = self.raw.get("match")
        example = 'write match = { price = "price_…" } (or product, lookup_key, metadata)'
        if raw is None:
            self.fail(f'missing field "match"; {example}')
        if not isinstance(raw, dict):
            self.fail(f'field "match" must be a table, not {_type_name(raw)}; {example}')
        if not raw:
            self.fail(f'field "match" is empty, so it would match nothing; {example}')
        for key in raw:
            if key not in MATCH_KEYS:
                self.fail(
                    f'unknown key {_quote(key)} in "match"{_hint(key, MATCH_KEYS)}; '
                    f"known keys: {', '.join(MATCH_KEYS)}"
                )
        ids: dict[str, str | None] = {}
        for key in ("price", "product", "lookup_key"):
            value = raw.get(key)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                self.fail(f'"match.{key}" must be a non-empty string')
            ids[key] = value
        # A product ID under "price" (or the reverse) would silently match nothing.
        if (ids["price"] or "").startswith("prod_"):
            self.fail(f'"match.price" is {ids["price"]!r}, a product ID; write product = "…"')
        if (ids["product"] or "").startswith("price_"):
            self.fail(f'"match.product" is {ids["product"]!r}, a price ID; write price = "…"')
        metadata: dict[str, str] = {}
        if "metadata" in raw:
            table = raw["metadata"]
            if not isinstance(table, dict) or not table:
                self.fail('"match.metadata" must be a non-empty table, like { fulfill = "ebook" }')
            for key, value in table.items():
                if not isinstance(value, str):
                    self.fail(
                        f'"match.metadata.{key}" must be a string (Stripe metadata values are '
                        f"strings), not {_type_name(value)}"
                    )
                metadata[key] = value
        return ProductMatch(
            price=ids["price"],
            product=ids["product"],
            lookup_key=ids["lookup_key"],
            metadata=metadata,
        )

    # --- the options of each action ------------------------------------------

    def options_download(self) -> dict[str, Any]:
        name = self.string("file")
        file = (self.folder / name).resolve()
        if not file.is_file():
            self.fail(
                f'field "file": {file} does not exist or is not a file '
                "(paths are relative to the catalog file)"
            )
        if not os.access(file, os.R_OK):
            self.fail(f'field "file": {file} is not readable by this user')
        label = self.string("label") if "label" in self.raw else None
        return {
            "file": file,
            "link_ttl": self.duration("link_ttl", DEFAULT_LINK_TTL),
            "label": label,
        }

    def options_access(self) -> dict[str, Any]:
        service = self.string("service")
        url = self.url("url")
        duration: int | None = None
        if self.string("duration") != "lifetime":
            duration = self.duration("duration")
        return {"service": service, "url": url, "duration": duration}

    def options_license(self) -> dict[str, Any]:
        fmt = self.string("format", DEFAULT_LICENSE_FORMAT)
        if "X" not in fmt:
            self.fail(
                f'field "format" is {fmt!r}, with no X to fill in; '
                f'write something like "{DEFAULT_LICENSE_FORMAT}"'
            )
        return {"format": fmt}

    def options_shipment(self) -> dict[str, Any]:
        return {}

    def options_webhook(self) -> dict[str, Any]:
        url = self.url("url")
        secret = self.string("secret")
        if secret.startswith("env:"):
            variable = secret.removeprefix("env:")
            if not _ENV_NAME_RE.match(variable):
                self.fail(f'field "secret": {variable!r} is not an environment variable name')
            value = self.env.get(variable)
            if not value:
                state = "is empty" if value == "" else "is not set"
                self.fail(
                    f'field "secret": environment variable {variable} {state}; '
                    "set it before starting"
                )
            secret = value
        return {"url": url, "secret": secret}

    def options_python(self) -> dict[str, Any]:
        spec = self.string("callable")
        if str(self.folder) not in sys.path:
            sys.path.append(str(self.folder))
        try:
            resolve_callable(spec)
        except ValueError as exc:
            self.fail(f'field "callable": {exc}')
        return {"callable": spec}
