"""Matching line items to entries: a pure function of a line item's facts.

The first entry whose ``match`` holds wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fulfill.catalog.fields import DEFAULT_ACTION_TIMEOUT, parse_duration, quote
from fulfill.errors import CatalogError, FulfillError


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
        return f"product #{self.index} {quote(self.name)}"


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
