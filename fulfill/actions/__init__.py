"""Building the action of each catalog entry.

``build_action`` looks the entry's action name up in ``FACTORIES``; adding an
action is one module and one line there. Every factory gets the entry (with
its options checked by the catalog) and the shared dependencies in
``ActionDeps``, so a new dependency is a new field, not a new signature.
Every action built is bounded by its entry's ``timeout`` (``TimedAction``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import httpx

from fulfill.actions.access import AccessAction
from fulfill.actions.base import (
    Action,
    ActionError,
    ItemContext,
    PermanentActionError,
    TimedAction,
    utcnow,
)
from fulfill.actions.download import DownloadAction
from fulfill.actions.license import LicenseAction
from fulfill.actions.python import PythonAction
from fulfill.actions.shipment import ShipmentAction
from fulfill.actions.webhook import WebhookAction
from fulfill.catalog import ACTION_FIELDS, CatalogEntry
from fulfill.errors import FulfillError
from fulfill.store import Store
from fulfill.store.deliverables import Deliverables

__all__ = [
    "FACTORIES",
    "Action",
    "ActionDeps",
    "ActionError",
    "ItemContext",
    "PermanentActionError",
    "TimedAction",
    "build_action",
]


@dataclass(frozen=True)
class ActionDeps:
    """What the service lends the actions; it owns them and closes them.

    ``store`` and ``signing_key`` are needed only by the built-in actions that
    keep what they deliver (``download``, ``access``, ``license``,
    ``shipment``); building one of those without them is an error.
    ``signing_key`` is already derived (``download.signing_key``): never log it.
    """

    http: httpx.AsyncClient
    store: Store | None = None
    public_url: str = "http://127.0.0.1:8000"
    signing_key: bytes = b""
    clock: Callable[[], datetime] = utcnow


def _deliverables(entry: CatalogEntry, deps: ActionDeps) -> Deliverables:
    if deps.store is None:
        raise FulfillError(
            f'{entry.label}: action "{entry.action}" needs the database', code="action_unavailable"
        )
    return deps.store.deliverables


def _download(entry: CatalogEntry, deps: ActionDeps) -> Action:
    deliverables = _deliverables(entry, deps)
    if not deps.signing_key:
        raise FulfillError(
            f'{entry.label}: action "download" needs a signing key', code="action_unavailable"
        )
    return DownloadAction(
        entry.options,
        deliverables,
        public_url=deps.public_url,
        key=deps.signing_key,
        clock=deps.clock,
    )


def _access(entry: CatalogEntry, deps: ActionDeps) -> Action:
    return AccessAction(entry.options, _deliverables(entry, deps), clock=deps.clock)


def _license(entry: CatalogEntry, deps: ActionDeps) -> Action:
    return LicenseAction(
        entry.options, _deliverables(entry, deps), product=entry.name, clock=deps.clock
    )


def _shipment(entry: CatalogEntry, deps: ActionDeps) -> Action:
    return ShipmentAction(entry.options, _deliverables(entry, deps), clock=deps.clock)


def _webhook(entry: CatalogEntry, deps: ActionDeps) -> Action:
    return WebhookAction(entry.options, deps.http)


def _python(entry: CatalogEntry, deps: ActionDeps) -> Action:
    return PythonAction(entry.options)


FACTORIES: dict[str, Callable[[CatalogEntry, ActionDeps], Action]] = {
    "download": _download,
    "access": _access,
    "license": _license,
    "shipment": _shipment,
    "webhook": _webhook,
    "python": _python,
}


def build_action(entry: CatalogEntry, deps: ActionDeps) -> Action:
    """The configured action for one catalog entry, bounded by its ``timeout``.

    ``FulfillError`` if it cannot be built.
    """
    factory = FACTORIES.get(entry.action)
    if factory is None:
        if entry.action in ACTION_FIELDS:
            raise FulfillError(
                f'{entry.label}: action "{entry.action}" is not available yet in this version',
                code="action_unavailable",
            )
        raise FulfillError(f'{entry.label}: unknown action "{entry.action}"', code="unknown_action")
    target = entry.options.get("callable") or entry.options.get("url")
    what = f"{entry.action} action of {entry.label}" + (f" ({target})" if target else "")
    return TimedAction(factory(entry, deps), entry.timeout, what)
