"""The emails to customers, as rows: queued with the session's change, claimed, recorded.

A row is made in the same transaction as the change of status it reports
(``fulfilled``, ``payment_failed``, ``awaiting_payment``), unique by session
and kind: so an email is never lost to a crash after the status changed, and
never queued twice. Sending it is claimed like a fulfillment: one conditional
``UPDATE`` with a lease, so one sender wins across processes and hosts; a
sender that dies leaves a lease that expires, and the next one sends again
with the same ``Message-ID``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import and_, bindparam, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from fulfill.records import iso
from fulfill.store import database
from fulfill.store.batch import GroupCommit
from fulfill.store.dbtime import DbTime
from fulfill.store.schema import emails

PENDING = "pending"
SENDING = "sending"
SENT = "sent"
FAILED = "failed"
SKIPPED = "skipped"

# The kinds of email: the order is ready; its payment failed; it was received
# and its (delayed) payment is processing.
FULFILLED_EMAIL = "fulfilled"
PAYMENT_FAILED_EMAIL = "payment_failed"
RECEIVED_EMAIL = "received"
KINDS = (FULFILLED_EMAIL, PAYMENT_FAILED_EMAIL, RECEIVED_EMAIL)


@dataclass(frozen=True)
class QueuedEmail:
    """What the transaction that changes a session's status queues with it."""

    kind: str
    message_id: str
    # Queued already claimed by this sender, to send without a claim of its own.
    owner: str | None = None
    lease_seconds: float = 0.0


@dataclass(frozen=True)
class EmailRecord:
    session_id: str
    kind: str
    status: str
    message_id: str
    recipient: str | None
    attempts: int
    last_error: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "status": self.status,
            "message_id": self.message_id,
            "recipient": self.recipient,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "next_attempt_at": iso(self.next_attempt_at),
            "created_at": iso(self.created_at),
            "sent_at": iso(self.sent_at),
        }


T = TypeVar("T")

_FIELDS = tuple(c.name for c in emails.c if c.name not in ("lease_owner", "lease_expires_at"))


def _record(row: Any) -> EmailRecord:
    return EmailRecord(**dict(zip(_FIELDS, row, strict=True)))


def enqueue(
    connection: Connection,
    insert: Callable[..., Any],
    session_id: str,
    email: QueuedEmail,
    now: datetime,
    time: DbTime,
) -> None:
    """Queue ``email`` for the session inside the caller's transaction (once per kind)."""
    claimed: dict[str, Any] = (
        {
            "status": SENDING,
            "lease_owner": email.owner,
            "lease_expires_at": time.plus("b_lease"),
            "attempts": 1,
        }
        if email.owner is not None
        else {"status": PENDING, "attempts": 0}
    )
    connection.execute(
        insert(emails)
        .values(
            session_id=session_id,
            kind=email.kind,
            message_id=email.message_id,
            created_at=now,
            updated_at=now,
            **claimed,
        )
        .on_conflict_do_nothing(index_elements=["session_id", "kind"]),
        time.params(b_lease=email.lease_seconds),
    )


def _due(now: Any) -> Any:
    """Due to be sent: ``now`` is ``DbTime.now``, the clock leases are judged by."""
    return or_(
        emails.c.status == PENDING,
        and_(emails.c.status == FAILED, emails.c.next_attempt_at <= now),
        and_(emails.c.status == SENDING, emails.c.lease_expires_at < now),
    )


# An email the SMTP server accepted, while its sender still holds it: built
# once, as every fulfillment with an email ends with it.
_SENT = (
    update(emails)
    .where(
        emails.c.session_id == bindparam("b_session_id"),
        emails.c.kind == bindparam("b_kind"),
        emails.c.status == SENDING,
        emails.c.lease_owner == bindparam("b_owner"),
    )
    .values(
        status=SENT,
        recipient=bindparam("b_recipient"),
        sent_at=bindparam("b_now", type_=emails.c.sent_at.type),
        updated_at=bindparam("b_now", type_=emails.c.updated_at.type),
        last_error=None,
        next_attempt_at=None,
        lease_owner=None,
        lease_expires_at=None,
    )
)


def _mark_sent(connection: Connection, params: dict[str, Any]) -> bool:
    return bool(connection.execute(_SENT, params).rowcount)


class Emails:
    """Every read and write of the ``emails`` table."""

    def __init__(self, engine: AsyncEngine, time: DbTime) -> None:
        self.engine = engine
        self.time = time
        # Emails sent together are marked sent in one transaction (batch.py).
        self._sent = GroupCommit(self._write, _mark_sent)

    async def _write(self, work: Callable[[Connection], T]) -> T:
        return await database.write(self.engine, work)

    async def for_session(self, session_id: str) -> list[EmailRecord]:
        async with database.read(self.engine) as connection:
            rows = await connection.execute(
                select(*(emails.c[name] for name in _FIELDS))
                .where(emails.c.session_id == session_id)
                .order_by(emails.c.created_at, emails.c.kind)
            )
            return [_record(row) for row in rows]

    async def due(self, *, session_id: str | None = None, limit: int = 50) -> list[tuple[str, str]]:
        """(session, kind) of the emails to send now, oldest first."""
        query = select(emails.c.session_id, emails.c.kind).where(_due(self.time.now))
        if session_id is not None:
            query = query.where(emails.c.session_id == session_id)
        async with database.read(self.engine) as connection:
            rows = await connection.execute(
                query.order_by(emails.c.updated_at).limit(limit), self.time.params()
            )
            return [(str(r[0]), str(r[1])) for r in rows]

    async def claim(
        self, session_id: str, kind: str, owner: str, lease: float, now: datetime
    ) -> EmailRecord | None:
        """Take the email for sending if it is due; the row as claimed, or None (not ours).

        The lease runs ``lease`` seconds on the database's clock (``DbTime``).
        """

        def work(connection: Connection) -> EmailRecord | None:
            claimed = connection.execute(
                update(emails)
                .where(
                    emails.c.session_id == session_id, emails.c.kind == kind, _due(self.time.now)
                )
                .values(
                    status=SENDING,
                    lease_owner=owner,
                    lease_expires_at=self.time.plus("b_lease"),
                    attempts=emails.c.attempts + 1,
                    updated_at=now,
                ),
                self.time.params(b_lease=lease),
            )
            if not claimed.rowcount:
                return None
            row = (
                connection.execute(
                    select(*(emails.c[name] for name in _FIELDS)).where(
                        emails.c.session_id == session_id, emails.c.kind == kind
                    )
                )
            ).one()
            return _record(row)

        return await database.write(self.engine, work)

    async def _settle(
        self,
        session_id: str,
        kind: str,
        owner: str,
        now: datetime,
        params: dict[str, Any] | None = None,
        **values: Any,
    ) -> bool:
        def work(connection: Connection) -> bool:
            result = connection.execute(
                update(emails)
                .where(
                    emails.c.session_id == session_id,
                    emails.c.kind == kind,
                    emails.c.status == SENDING,
                    emails.c.lease_owner == owner,
                )
                .values(lease_owner=None, lease_expires_at=None, updated_at=now, **values),
                params or {},
            )
            return bool(result.rowcount)

        return await database.write(self.engine, work)

    async def sent(
        self, session_id: str, kind: str, owner: str, recipient: str, now: datetime
    ) -> bool:
        return await self._sent(
            {
                "b_session_id": session_id,
                "b_kind": kind,
                "b_owner": owner,
                "b_recipient": recipient,
                "b_now": now,
            }
        )

    async def failed(
        self,
        session_id: str,
        kind: str,
        owner: str,
        error: str,
        retry_in: float | None,
        now: datetime,
        *,
        recipient: str | None = None,
    ) -> bool:
        """``failed``, due again ``retry_in`` seconds from now on the database's clock;
        None: given up, until an operator retries."""
        return await self._settle(
            session_id,
            kind,
            owner,
            now,
            status=FAILED,
            last_error=error[:1000],
            next_attempt_at=None if retry_in is None else self.time.plus("b_retry"),
            recipient=recipient,
            params=self.time.params(b_retry=retry_in or 0.0),
        )

    async def skipped(
        self, session_id: str, kind: str, owner: str, reason: str, now: datetime
    ) -> bool:
        return await self._settle(
            session_id, kind, owner, now, status=SKIPPED, last_error=reason, next_attempt_at=None
        )

    async def retry(self, session_id: str, now: datetime) -> int:
        """An operator's retry: every failed or skipped email of the session is due again."""

        def work(connection: Connection) -> int:
            result = connection.execute(
                update(emails)
                .where(emails.c.session_id == session_id, emails.c.status.in_((FAILED, SKIPPED)))
                .values(status=PENDING, next_attempt_at=None, updated_at=now)
            )
            return int(result.rowcount)

        return await database.write(self.engine, work)
