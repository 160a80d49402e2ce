"""A factory for the ``ItemContext`` every action receives."""

from __future__ import annotations

from typing import Any

from fulfill.actions.base import ItemContext


def make_item(**overrides: Any) -> ItemContext:
    """One line item of a paid session, with plausible values; override any field."""
    fields: dict[str, Any] = {
        "session_id": "cs_test_a1B2c3",
        "line_item_id": "li_1Pgc73B7WZ01zgkWx8kcmZPK",
        "price_id": "price_external",
        "product_id": "prod_external",
        "description": "Consulting hour",
        "quantity": 2,
        "currency": "eur",
        "amount_total": 19800,
        "customer": {"email": "jenny@example.com", "name": "Jenny Rosen"},
        "shipping": None,
        "metadata": {"order": "A-17"},
        "livemode": False,
        "entry_name": "Anything my own system fulfills",
    }
    fields.update(overrides)
    return ItemContext(**fields)
