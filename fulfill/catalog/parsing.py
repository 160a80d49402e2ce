"""Parsing and validating the catalog file (SPEC §6) into a ``Catalog``.

``load_catalog`` reads the file once at start and checks every field of every
entry, so that a typo stops the program with one line naming the file, the
entry and the field instead of failing the first customer who pays. The
options of each entry are normalised here (durations in seconds, files as
absolute paths, ``env:`` secrets resolved), so actions get typed values.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

from fulfill.catalog.fields import (
    ACTION_FIELDS,
    COMMON_FIELDS,
    DEFAULT_ACTION_TIMEOUT,
    DEFAULT_LICENSE_FORMAT,
    DEFAULT_LINK_TTL,
    DEFAULT_WEBHOOK_TIMEOUT,
    MATCH_KEYS,
    MAX_ACTION_TIMEOUT,
    MAX_WEBHOOK_TIMEOUT,
    is_http_url,
    parse_duration,
    quote,
    resolve_callable,
)
from fulfill.catalog.matching import Catalog, CatalogEntry, ProductMatch
from fulfill.errors import CatalogError

_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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
                f"{path}: unknown top-level key {quote(key)}{_hint(key, ['product'])}"
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


def _hint(word: str, candidates: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean {quote(close[0])}?)" if close else ""


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
            where += f" {quote(self.name)}"
        raise CatalogError(f"{self.path}: {where}: {problem}")

    def read(self) -> CatalogEntry:
        self.name = self.string("name")
        action = self.string("action")
        if action not in ACTION_FIELDS:
            known = ", ".join(ACTION_FIELDS)
            self.fail(
                f"unknown action {quote(action)}{_hint(action, list(ACTION_FIELDS))}; "
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
                    f"field {quote(key)} does not apply to action {quote(action)} "
                    f"(it is an option of {', '.join(quote(o) for o in owners)}); remove it"
                )
            self.fail(f"unknown field {quote(key)}{_hint(key, allowed)}")

    # --- typed field readers -------------------------------------------------

    def string(self, key: str, default: str | None = None) -> str:
        value = self.raw.get(key, default)
        if value is None:
            self.fail(f"missing field {quote(key)}")
        if not isinstance(value, str):
            self.fail(f"field {quote(key)} must be a string, not {_type_name(value)}")
        if not value.strip():
            self.fail(f"field {quote(key)} is empty")
        return value

    def duration(self, key: str, default: str | None = None, *, maximum: int | None = None) -> int:
        text = self.string(key, default)
        try:
            seconds = parse_duration(text)
        except ValueError as exc:
            self.fail(f"field {quote(key)}: {exc}")
        if seconds <= 0:
            self.fail(f"field {quote(key)} must be longer than zero")
        if maximum is not None and seconds > maximum:
            self.fail(f"field {quote(key)} must be at most {maximum} s, got {text!r}")
        return seconds

    def url(self, key: str) -> str:
        value = self.string(key)
        if not is_http_url(value):
            self.fail(f"field {quote(key)} must be an http:// or https:// URL, got {value!r}")
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
                    f'unknown key {quote(key)} in "match"{_hint(key, MATCH_KEYS)}; '
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
