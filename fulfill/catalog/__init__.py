"""The catalog (SPEC §6): parsing and validating the TOML file, and matching line items.

``fields`` says what an entry may hold and how its values are written,
``parsing`` reads and checks the file (``load_catalog``), and ``matching``
finds the entry for a line item.
"""

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
    resolve_callable,
)
from fulfill.catalog.matching import Catalog, CatalogEntry, LineItemFacts, ProductMatch
from fulfill.catalog.parsing import load_catalog

__all__ = [
    "ACTION_FIELDS",
    "COMMON_FIELDS",
    "DEFAULT_ACTION_TIMEOUT",
    "DEFAULT_LICENSE_FORMAT",
    "DEFAULT_LINK_TTL",
    "DEFAULT_WEBHOOK_TIMEOUT",
    "MATCH_KEYS",
    "MAX_ACTION_TIMEOUT",
    "MAX_WEBHOOK_TIMEOUT",
    "Catalog",
    "CatalogEntry",
    "LineItemFacts",
    "ProductMatch",
    "is_http_url",
    "load_catalog",
    "parse_duration",
    "resolve_callable",
]
