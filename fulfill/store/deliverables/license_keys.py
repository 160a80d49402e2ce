"""Licence keys: one per unit of a line item, unique across the database."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from fulfill.errors import FulfillError
from fulfill.records import iso
from fulfill.store import database
from fulfill.store.deliverables.base import DeliverablesBase, normalize_email
from fulfill.store.schema import license_keys

# Rows per INSERT: SQLite caps the parameters of one statement.
_CHUNK = 500
# Rounds of fresh keys for the units whose key collided with one already issued.
LICENSE_ROUNDS = 10


class KeySpaceExhausted(FulfillError):
    """Fresh licence keys kept colliding with issued ones: the format is too short."""

    code = "license_keys_exhausted"


@dataclass(frozen=True)
class LicenseKey:
    key: str
    session_id: str
    line_item_id: str
    unit: int
    product: str | None
    email: str | None
    created_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "session_id": self.session_id,
            "line_item_id": self.line_item_id,
            "unit": self.unit,
            "product": self.product,
            "email": self.email,
            "created_at": iso(self.created_at),
        }


class LicenseKeys(DeliverablesBase):
    """``Deliverables``' licence keys."""

    # -- licence keys ------------------------------------------------------------------

    async def issue_license_keys(
        self,
        *,
        session_id: str,
        line_item_id: str,
        quantity: int,
        product: str | None,
        email: str | None,
        livemode: bool,
        generate: Callable[[], str],
        now: datetime,
    ) -> list[LicenseKey]:
        """One key per unit of ``quantity``, unique across the database; a repeat returns them.

        Keys come from ``generate``. A unit whose key collides with one already
        issued (the unique index says so: the insert skips it) gets a fresh key
        in the next round; ``KeySpaceExhausted`` after ``LICENSE_ROUNDS``.
        """
        email = normalize_email(email) if email else None

        def work(connection: Connection) -> list[LicenseKey]:
            missing: list[int] = []
            for round_ in range(LICENSE_ROUNDS + 1):
                have = _keys_for_item(connection, session_id, line_item_id)
                by_unit = {key.unit: key for key in have}
                missing = [unit for unit in range(quantity) if unit not in by_unit]
                if not missing:
                    return [by_unit[unit] for unit in range(quantity)]
                if round_ == LICENSE_ROUNDS:
                    break
                rows = [
                    {
                        "key": generate(),
                        "session_id": session_id,
                        "line_item_id": line_item_id,
                        "unit": unit,
                        "product": product,
                        "email": email,
                        "livemode": livemode,
                        "created_at": now,
                    }
                    for unit in missing
                ]
                for start in range(0, len(rows), _CHUNK):
                    # No conflict target: a row is skipped whether its key is
                    # taken or its unit is (another worker issued it meanwhile).
                    connection.execute(
                        self._insert(license_keys)
                        .values(rows[start : start + _CHUNK])
                        .on_conflict_do_nothing()
                    )
            raise KeySpaceExhausted(
                f"could not find unused licence keys for {len(missing)} unit(s) in "
                f"{LICENSE_ROUNDS} tries: the key format has too few X for the keys issued"
            )

        return await database.write(self.engine, work)

    async def license_keys(
        self, *, session_id: str | None = None, email: str | None = None
    ) -> list[LicenseKey]:
        query = select(license_keys)
        if session_id is not None:
            query = query.where(license_keys.c.session_id == session_id)
        if email is not None:
            query = query.where(license_keys.c.email == normalize_email(email))
        query = query.order_by(license_keys.c.id)
        async with self.engine.connect() as connection:
            rows = await connection.execute(query)
            return [_license_key(row._mapping) for row in rows]

    async def count_license_keys(self) -> int:
        async with self.engine.connect() as connection:
            return int(await connection.scalar(select(func.count()).select_from(license_keys)) or 0)


def _keys_for_item(
    connection: Connection, session_id: str, line_item_id: str
) -> Sequence[LicenseKey]:
    rows = connection.execute(
        select(license_keys)
        .where(
            license_keys.c.session_id == session_id,
            license_keys.c.line_item_id == line_item_id,
        )
        .order_by(license_keys.c.unit)
    )
    return [_license_key(row._mapping) for row in rows]


def _license_key(m: Any) -> LicenseKey:
    return LicenseKey(
        key=m["key"],
        session_id=m["session_id"],
        line_item_id=m["line_item_id"],
        unit=int(m["unit"]),
        product=m["product"],
        email=m["email"],
        created_at=m["created_at"],
    )
