"""Download grants (a file for a line item, until it expires) and access grants (entitlements)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, select, text
from sqlalchemy.engine import Connection

from fulfill.records import iso
from fulfill.store import database
from fulfill.store.deliverables.base import DeliverablesBase, normalize_email
from fulfill.store.schema import access_grants, download_grants


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


class Grants(DeliverablesBase):
    """``Deliverables``' downloads and access grants."""

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

        def work(connection: Connection) -> DownloadGrant:
            connection.execute(
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
            grant = _download(connection, session_id, line_item_id, file_name)
            assert grant is not None
            return grant

        return await database.write(self.engine, work)

    async def download(
        self, session_id: str, line_item_id: str, file_name: str
    ) -> DownloadGrant | None:
        async with database.read(self.engine) as connection:
            return await connection.run_sync(_download, session_id, line_item_id, file_name)

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

        def work(connection: Connection) -> AccessGrant:
            existing = _access_for_item(connection, session_id, line_item_id)
            if existing is not None:
                return existing
            if not self._sqlite:
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"),
                    {"key": _lock_key("access", email, service)},
                )
            latest = connection.scalar(
                select(func.max(access_grants.c.ends_at)).where(
                    access_grants.c.email == email,
                    access_grants.c.service == service,
                    access_grants.c.ends_at > now,
                )
            )
            starts_at = max(now, latest) if latest is not None else now
            ends_at = starts_at + timedelta(seconds=duration) if duration is not None else None
            connection.execute(
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
            grant = _access_for_item(connection, session_id, line_item_id)
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


def _lock_key(*parts: str) -> int:
    """A signed 64-bit advisory lock key for ``parts`` (PostgreSQL's bigint)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _download(
    connection: Connection, session_id: str, line_item_id: str, file_name: str
) -> DownloadGrant | None:
    row = (
        connection.execute(
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


def _access_for_item(
    connection: Connection, session_id: str, line_item_id: str
) -> AccessGrant | None:
    row = (
        connection.execute(
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
