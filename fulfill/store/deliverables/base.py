"""What each kind of deliverable's queries share: the engine, its dialect, how emails compare."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine


def normalize_email(email: str) -> str:
    """Emails are compared case-insensitively, as every mail system in use treats them."""
    return email.strip().lower()


class DeliverablesBase:
    """The parts of ``Deliverables`` build on these; ``Deliverables.__init__`` sets them."""

    engine: AsyncEngine
    _sqlite: bool
    # ``insert`` of the engine's dialect, whose inserts can ``on_conflict_do_nothing``.
    _insert: Callable[..., Any]
