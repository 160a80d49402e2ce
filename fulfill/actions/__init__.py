"""Building the action of each catalog entry.

``build_action`` looks the entry's action name up in ``FACTORIES``; adding an
action is one module and one line there. Every factory gets the entry (with
its options checked by the catalog) and the shared dependencies in
``ActionDeps``, so a new dependency is a new field, not a new signature.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import httpx

from fulfill.actions.base import Action, ActionError, ItemContext
from fulfill.actions.python import PythonAction
from fulfill.actions.webhook import WebhookAction
from fulfill.catalog import ACTION_FIELDS, CatalogEntry
from fulfill.errors import FulfillError

__all__ = [
    "FACTORIES",
    "Action",
    "ActionDeps",
    "ActionError",
    "ItemContext",
    "build_action",
]


@dataclass(frozen=True)
class ActionDeps:
    """What the engine lends the actions; it owns them and closes them."""

    http: httpx.AsyncClient


def _webhook(entry: CatalogEntry, deps: ActionDeps) -> Action:
    return WebhookAction(entry.options, deps.http)


def _python(entry: CatalogEntry, deps: ActionDeps) -> Action:
    return PythonAction(entry.options)


FACTORIES: dict[str, Callable[[CatalogEntry, ActionDeps], Action]] = {
    "webhook": _webhook,
    "python": _python,
}


def build_action(entry: CatalogEntry, *, http: httpx.AsyncClient) -> Action:
    """The configured action for one catalog entry; ``FulfillError`` if it cannot be built."""
    factory = FACTORIES.get(entry.action)
    if factory is None:
        if entry.action in ACTION_FIELDS:
            raise FulfillError(
                f'{entry.label}: action "{entry.action}" is not available yet in this version',
                code="action_unavailable",
            )
        raise FulfillError(f'{entry.label}: unknown action "{entry.action}"', code="unknown_action")
    return factory(entry, ActionDeps(http=http))
