"""What the built-in actions deliver: download grants, access grants, licence keys, shipments.

Each table is unique per line item; that constraint is the action's
idempotency record. A write is an ``INSERT … ON CONFLICT DO NOTHING``
followed by a read of the row, so performing an item again (after a crash
between the action and recording it ``done``, or by two workers racing for a
lease) finds what the first attempt wrote: a unique-constraint violation
means "already done", never an error.

Times are naive UTC, as in the rest of the store.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from fulfill.errors import FulfillError
from fulfill.records import iso
from fulfill.store import database
from fulfill.store.schema import access_grants, download_grants, license_keys, shipments

SHIPMENT_PENDING = "pending"
SHIPMENT_STATUSES = ("pending", "shipped", "delivered", "cancelled")

# Rows per INSERT: SQLite caps the parameters of one statement.
_CHUNK = 500
# Rounds of fresh keys for the units whose key collided with one already issued.
LICENSE_ROUNDS = 10


class KeySpaceExhausted(FulfillError):
    """Fresh licence keys kept colliding with issued ones: the format is too short."""

    code = "license_keys_exhausted"


def normalize_email(email: str) -> str:
    """Emails are compared case-insensitively, as every mail system in use treats them."""
    return email.strip().lower()


@dataclass(frozen=True)
class DownloadGrant:
    """One file a ``download`` action granted for one line item, until ``expires_at``."""

    session_id: str
    line_item_id: str
    file_name: str
    path: str
    label: str | None
    expires_at: datetime
    created_at: datetime


@dataclass(frozen=True)
class AccessGrant:
    """An entitlement: ``email`` may use ``service`` from ``starts_at`` to ``ends_at``."""

    id: int
    session_id: str
    line_item_id: str
    email: str
    customer_name: str | None
    service: str
    url: str
    product_id: str | None
    price_id: str | None
    quantity: int
    livemode: bool
    starts_at: datetime
    ends_at: datetime | None  # None: lifetime
    created_at: datetime

    @property
    def lifetime(self) -> bool:
        return self.ends_at is None

    def active(self, now: datetime) -> bool:
        return self.starts_at <= now and (self.ends_at is None or now < self.ends_at)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "email": self.email,
            "name": self.customer_name,
            "service": self.service,
            "url": self.url,
            "starts_at": iso(self.starts_at),
            "ends_at": iso(self.ends_at),
            "lifetime": self.lifetime,
            "quantity": self.quantity,
            "session_id": self.session_id,
            "line_item_id": self.line_item_id,
            "product_id": self.product_id,
            "price_id": self.price_id,
            "livemode": self.livemode,
            "created_at": iso(self.created_at),
        }


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


@dataclass(frozen=True)
class Shipment:
    """A line item to ship: what, how many, to whom and where, and how far it got."""

    id: int
    session_id: str
    line_item_id: str
    status: str
    email: str | None
    name: str | None
    phone: str | None
    address: dict[str, Any]
    description: str | None
    product_id: str | None
    price_id: str | None
    quantity: int
    livemode: bool
    created_at: datetime
    updated_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "session_id": self.session_id,
            "line_item_id": self.line_item_id,
            "description": self.description,
            "product_id": self.product_id,
            "price_id": self.price_id,
            "quantity": self.quantity,
            "email": self.email,
            "name": self.name,
            "phone": self.phone,
            "address": self.address,
            "livemode": self.livemode,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }


class Deliverables:
    """Queries for what the ``download``, ``access``, ``license`` and ``shipment`` actions keep."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sqlite = database.is_sqlite(engine)
        self._insert = sqlite_insert if self._sqlite else pg_insert

    # -- downloads ---------------------------------------------------------------------

    async def grant_download(
        self,
        *,
        session_id: str,
        line_item_id: str,
        file_name: str,
        path: str,
        label: str | None,
        expires_at: datetime,
        now: datetime,
    ) -> DownloadGrant:
        """Record the grant; a repeat returns the first one (with its original expiry)."""

        async def work(connection: AsyncConnection) -> DownloadGrant:
            await connection.execute(
                self._insert(download_grants)
                .values(
                    session_id=session_id,
                    line_item_id=line_item_id,
                    file_name=file_name,
                    path=path,
                    label=label,
                    expires_at=expires_at,
                    created_at=now,
                )
                .on_conflict_do_nothing(index_elements=["session_id", "line_item_id", "file_name"])
            )
            grant = await _download(connection, session_id, line_item_id, file_name)
            assert grant is not None
            return grant

        return await database.write(self.engine, work)

    async def download(
        self, session_id: str, line_item_id: str, file_name: str
    ) -> DownloadGrant | None:
        async with self.engine.connect() as connection:
            return await _download(connection, session_id, line_item_id, file_name)

    # -- access ------------------------------------------------------------------------

    async def grant_access(
        self,
        *,
        session_id: str,
        line_item_id: str,
        email: str,
        customer_name: str | None,
        service: str,
        url: str,
        duration: int | None,
        product_id: str | None,
        price_id: str | None,
        quantity: int,
        livemode: bool,
        now: datetime,
    ) -> AccessGrant:
        """Grant ``email`` access to ``service`` for ``duration`` seconds (None: lifetime).

        A customer who buys again before their access ends gets the new period
        after the current one, not overlapping it: renewing early must not
        cost them the days they already paid for. The latest end is read and
        the grant written in one transaction, serialised per email and service
        (SQLite's write lock; an advisory lock on PostgreSQL), so two
        purchases at once stack too. A repeat for the same item returns the
        grant already made.
        """
        email = normalize_email(email)

        async def work(connection: AsyncConnection) -> AccessGrant:
            existing = await _access_for_item(connection, session_id, line_item_id)
            if existing is not None:
                return existing
            if not self._sqlite:
                await connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"),
                    {"key": _lock_key("access", email, service)},
                )
            latest = await connection.scalar(
                select(func.max(access_grants.c.ends_at)).where(
                    access_grants.c.email == email,
                    access_grants.c.service == service,
                    access_grants.c.ends_at > now,
                )
            )
            starts_at = max(now, latest) if latest is not None else now
            ends_at = starts_at + timedelta(seconds=duration) if duration is not None else None
            await connection.execute(
                self._insert(access_grants)
                .values(
                    session_id=session_id,
                    line_item_id=line_item_id,
                    email=email,
                    customer_name=customer_name,
                    service=service,
                    url=url,
                    product_id=product_id,
                    price_id=price_id,
                    quantity=quantity,
                    livemode=livemode,
                    starts_at=starts_at,
                    ends_at=ends_at,
                    created_at=now,
                )
                .on_conflict_do_nothing(index_elements=["session_id", "line_item_id"])
            )
            grant = await _access_for_item(connection, session_id, line_item_id)
            assert grant is not None
            return grant

        return await database.write(self.engine, work)

    async def access_grants(
        self, *, email: str | None = None, service: str | None = None
    ) -> list[AccessGrant]:
        """Grants, newest first; only ``email``'s (any case) or ``service``'s when given."""
        query = select(access_grants)
        if email is not None:
            query = query.where(access_grants.c.email == normalize_email(email))
        if service is not None:
            query = query.where(access_grants.c.service == service)
        query = query.order_by(access_grants.c.created_at.desc(), access_grants.c.id.desc())
        async with self.engine.connect() as connection:
            rows = await connection.execute(query)
            return [_access(row._mapping) for row in rows]

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

        async def work(connection: AsyncConnection) -> list[LicenseKey]:
            missing: list[int] = []
            for round_ in range(LICENSE_ROUNDS + 1):
                have = await _keys_for_item(connection, session_id, line_item_id)
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
                    await connection.execute(
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

    # -- shipments ---------------------------------------------------------------------

    async def create_shipment(
        self,
        *,
        session_id: str,
        line_item_id: str,
        email: str | None,
        name: str | None,
        phone: str | None,
        address: Mapping[str, Any],
        description: str | None,
        product_id: str | None,
        price_id: str | None,
        quantity: int,
        livemode: bool,
        now: datetime,
    ) -> Shipment:
        """A ``pending`` shipment for the item; a repeat returns the one already made."""

        async def work(connection: AsyncConnection) -> Shipment:
            await connection.execute(
                self._insert(shipments)
                .values(
                    session_id=session_id,
                    line_item_id=line_item_id,
                    status=SHIPMENT_PENDING,
                    email=email,
                    name=name,
                    phone=phone,
                    address=dict(address),
                    description=description,
                    product_id=product_id,
                    price_id=price_id,
                    quantity=quantity,
                    livemode=livemode,
                    created_at=now,
                    updated_at=now,
                )
                .on_conflict_do_nothing(index_elements=["session_id", "line_item_id"])
            )
            row = (
                await connection.execute(
                    select(shipments).where(
                        shipments.c.session_id == session_id,
                        shipments.c.line_item_id == line_item_id,
                    )
                )
            ).one()
            return _shipment(row._mapping)

        return await database.write(self.engine, work)

    async def shipments(
        self, *, status: str | None = None, session_id: str | None = None
    ) -> list[Shipment]:
        """Shipments oldest first, the order a warehouse works through them."""
        query = select(shipments)
        if status is not None:
            query = query.where(shipments.c.status == status)
        if session_id is not None:
            query = query.where(shipments.c.session_id == session_id)
        query = query.order_by(shipments.c.created_at, shipments.c.id)
        async with self.engine.connect() as connection:
            rows = await connection.execute(query)
            return [_shipment(row._mapping) for row in rows]


def _lock_key(*parts: str) -> int:
    """A signed 64-bit advisory lock key for ``parts`` (PostgreSQL's bigint)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def _download(
    connection: AsyncConnection, session_id: str, line_item_id: str, file_name: str
) -> DownloadGrant | None:
    row = (
        await connection.execute(
            select(download_grants).where(
                and_(
                    download_grants.c.session_id == session_id,
                    download_grants.c.line_item_id == line_item_id,
                    download_grants.c.file_name == file_name,
                )
            )
        )
    ).first()
    if row is None:
        return None
    m = row._mapping
    return DownloadGrant(
        session_id=m["session_id"],
        line_item_id=m["line_item_id"],
        file_name=m["file_name"],
        path=m["path"],
        label=m["label"],
        expires_at=m["expires_at"],
        created_at=m["created_at"],
    )


async def _access_for_item(
    connection: AsyncConnection, session_id: str, line_item_id: str
) -> AccessGrant | None:
    row = (
        await connection.execute(
            select(access_grants).where(
                access_grants.c.session_id == session_id,
                access_grants.c.line_item_id == line_item_id,
            )
        )
    ).first()
    return _access(row._mapping) if row is not None else None


def _access(m: Any) -> AccessGrant:
    return AccessGrant(
        id=int(m["id"]),
        session_id=m["session_id"],
        line_item_id=m["line_item_id"],
        email=m["email"],
        customer_name=m["customer_name"],
        service=m["service"],
        url=m["url"],
        product_id=m["product_id"],
        price_id=m["price_id"],
        quantity=int(m["quantity"]),
        livemode=bool(m["livemode"]),
        starts_at=m["starts_at"],
        ends_at=m["ends_at"],
        created_at=m["created_at"],
    )


async def _keys_for_item(
    connection: AsyncConnection, session_id: str, line_item_id: str
) -> Sequence[LicenseKey]:
    rows = await connection.execute(
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


def _shipment(m: Any) -> Shipment:
    return Shipment(
        id=int(m["id"]),
        session_id=m["session_id"],
        line_item_id=m["line_item_id"],
        status=m["status"],
        email=m["email"],
        name=m["name"],
        phone=m["phone"],
        address=dict(m["address"] or {}),
        description=m["description"],
        product_id=m["product_id"],
        price_id=m["price_id"],
        quantity=int(m["quantity"]),
        livemode=bool(m["livemode"]),
        created_at=m["created_at"],
        updated_at=m["updated_at"],
    )
