"""Sending the queued emails: each once per session and kind, retried with backoff.

The engine queues an email in the transaction that changes the session's
status, then calls ``kick`` so it goes out at once, in the background (a
webhook's acknowledgement or a landing page never waits for SMTP). The
background worker's ``run_due`` sends what a kick missed: emails queued by a
process that died, failures whose backoff has passed, and sends whose
sender died (expired lease).

A sender that dies after the SMTP server accepted the message but before
the row says ``sent`` leaves the row ``sending``; when its lease expires the
email is sent again, with the same ``Message-ID`` (docs/email.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from fulfill import logs
from fulfill.mail.addresses import AddressError
from fulfill.mail.compose import Composer, message_id_for
from fulfill.mail.transport import PermanentFailure, Transport
from fulfill.metrics import Metrics
from fulfill.records import FulfillmentRecord, backoff_seconds
from fulfill.store import Store
from fulfill.store.emails import FULFILLED_EMAIL, PAYMENT_FAILED_EMAIL, QueuedEmail
from fulfill.stripe_api import StripeApi

log = logging.getLogger("fulfill.mail")


class Mailer:
    def __init__(
        self,
        *,
        store: Store,
        composer: Composer,
        transport: Transport,
        owner: str,
        clock: Callable[[], datetime],
        kinds: frozenset[str] = frozenset({FULFILLED_EMAIL, PAYMENT_FAILED_EMAIL}),
        stripe: StripeApi | None = None,
        lease_seconds: float = 120.0,
        max_attempts: int = 10,
        retry_base_seconds: float = 10.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.composer = composer
        self.transport = transport
        self.owner = owner
        self.clock = clock
        self.kinds = kinds
        self.stripe = stripe
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.retry_base_seconds = retry_base_seconds
        self.metrics = metrics or Metrics()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- what the engine asks --------------------------------------------------------

    def queued(self, kind: str, session_id: str, *, claim: bool = False) -> QueuedEmail | None:
        """The row to queue with a change to ``kind``'s status, or None when it is off.

        ``claim``: queue it already claimed by this mailer, to be sent by
        ``kick(..., claimed=QueuedEmail)`` without a claim of its own. Only for
        a change made once per session (``fulfilled``: the finish succeeds
        once), so the row is certainly the one this transaction inserted.
        """
        if kind not in self.kinds:
            return None
        message_id = message_id_for(session_id, kind, self.composer.shop.domain)
        if claim:
            return QueuedEmail(kind, message_id, self.owner, self.lease_seconds)
        return QueuedEmail(kind, message_id)

    def kick(
        self,
        session_id: str,
        *,
        claimed: QueuedEmail | None = None,
        record: FulfillmentRecord | None = None,
    ) -> None:
        """Send the session's due emails (or the one ``claimed``) now, in the background.

        ``record``: the session's record as the caller just read it (after the
        change the email reports), so that the claimed email is composed
        without reading it again.
        """
        task = asyncio.get_running_loop().create_task(self._kicked(session_id, claimed, record))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _kicked(
        self, session_id: str, claimed: QueuedEmail | None, record: FulfillmentRecord | None
    ) -> None:
        try:
            if claimed is not None and claimed.owner == self.owner:
                with logs.bound(session_id=session_id):
                    await self._deliver(
                        session_id, claimed.kind, claimed.message_id, 1, record=record
                    )
            else:
                await self.send_due(session_id=session_id)
        except Exception as exc:
            # The worker's pass sends it later; the failure is recorded if it got that far.
            with logs.bound(session_id=session_id):
                log.warning("sending the emails failed: %s", exc)

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait for the sends in flight (at shutdown, in tests)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    # -- sending -------------------------------------------------------------------------

    async def send_due(self, *, session_id: str | None = None, limit: int = 50) -> int:
        """Send the due emails (of one session, or any); how many this call sent."""
        due = await self.store.emails.due(session_id=session_id, limit=limit)
        sent = 0
        for due_session, kind in due:
            if await self.send(due_session, kind):
                sent += 1
        return sent

    async def send(self, session_id: str, kind: str) -> bool:
        """Claim and send one email; False when another sender has it or it failed."""
        with logs.bound(session_id=session_id):
            row = await self.store.emails.claim(
                session_id, kind, self.owner, self.lease_seconds, self.clock()
            )
            if row is None:
                return False
            return await self._deliver(session_id, kind, row.message_id, row.attempts)

    async def _deliver(
        self,
        session_id: str,
        kind: str,
        message_id: str,
        attempts: int,
        *,
        record: FulfillmentRecord | None = None,
    ) -> bool:
        """Compose and send an email this mailer holds the claim of; record the outcome."""
        if record is None:
            record = await self.store.get(session_id)
        if record is None:  # a row without its record cannot happen; never loop on it
            await self.store.emails.skipped(
                session_id, kind, self.owner, "no record of the session", self.clock()
            )
            return False
        try:
            record = await self._with_customer(record, kind)
            composed = self.composer.compose(kind, record, message_id)
        except AddressError as exc:
            # Nothing to send to: recorded, not retried (an operator can).
            log.warning("%s email not sent: %s", kind, exc.message)
            await self.store.emails.skipped(session_id, kind, self.owner, exc.message, self.clock())
            self.metrics.emails.labels(kind, "skipped").inc()
            return False
        try:
            async with asyncio.timeout(self.lease_seconds / 2):
                await self.transport.send(
                    composed.data, composed.sender, composed.recipient, f"{session_id}.{kind}"
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._failed(attempts, session_id, kind, composed.recipient, exc)
            return False
        await self.store.emails.sent(session_id, kind, self.owner, composed.recipient, self.clock())
        self.metrics.emails.labels(kind, "sent").inc()
        log.info("%s email sent", kind)
        return True

    async def _with_customer(self, record: FulfillmentRecord, kind: str) -> FulfillmentRecord:
        """A record made by a bare ``payment_failed`` event has no customer: ask Stripe once."""
        if (record.customer or {}).get("email") or self.stripe is None or kind == FULFILLED_EMAIL:
            return record
        snapshot = await self.stripe.session(record.session_id)
        record.customer = dict(snapshot.customer)
        return record

    async def _failed(
        self, attempts: int, session_id: str, kind: str, recipient: str, exc: Exception
    ) -> None:
        message = f"{type(exc).__name__}: {exc}"[:1000]
        retry_in: float | None = None
        if not isinstance(exc, PermanentFailure) and attempts < self.max_attempts:
            retry_in = backoff_seconds(attempts, base=self.retry_base_seconds)
        log.warning(
            "%s email failed (attempt %d%s): %s",
            kind,
            attempts,
            "" if retry_in is not None else ", given up",
            message,
        )
        await self.store.emails.failed(
            session_id, kind, self.owner, message, retry_in, self.clock(), recipient=recipient
        )
        self.metrics.emails.labels(kind, "failed").inc()


__all__ = ["Mailer"]
