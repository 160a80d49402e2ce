"""``fulfill_checkout``: claim, retrieve, perform, record. Knows nothing of HTTP.

Every trigger (webhook, landing page, background worker, CLI, reconcile)
ends here. The steps, and the failure each one prevents:

1. A record already ``fulfilled`` is returned at once: no API call (SPEC §10.3).
2. A record ``fulfilling`` under a live lease is another worker's: wait for it.
3. Otherwise read the session from the API (the event is only a trigger:
   its copy may be stale or out of order) with every line item.
4. ``open`` → nothing; ``expired`` → recorded; ``unpaid`` → awaiting payment
   (a delayed method is never fulfilled early); paid → claim.
5. The claim is an atomic conditional write with a lease: one claimant wins,
   across processes and hosts. The winner performs each item not ``done``,
   recording each ``done`` as soon as it is, then the session ``fulfilled``.
   A worker that dies leaves a lease that expires; the next claimant skips the
   items already done.
6. A failing action leaves the session ``failed`` with the error and the time
   of the next attempt (exponential backoff, up to a limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from cachetools import LRUCache

from fulfill import logs
from fulfill.actions import Action, ActionError, ItemContext, PermanentActionError
from fulfill.catalog import Catalog
from fulfill.errors import FulfillError, describe
from fulfill.lease import LeaseKeeper
from fulfill.metrics import Metrics
from fulfill.records import (
    AWAITING_PAYMENT,
    EXPIRED,
    FAILED,
    FULFILLED,
    FULFILLING,
    ITEM_DONE,
    MAY_REPLACE,
    NOT_APPLICABLE,
    OPEN,
    PAYMENT_FAILED,
    PENDING,
    FulfillmentRecord,
    SessionSnapshot,
    backoff_seconds,
    status_for,
    valid_session_id,
)
from fulfill.store import Store
from fulfill.store.emails import (
    FULFILLED_EMAIL,
    PAYMENT_FAILED_EMAIL,
    RECEIVED_EMAIL,
    QueuedEmail,
)
from fulfill.store.record_writes import Observed
from fulfill.stripe_api import StripeApi

if TYPE_CHECKING:
    from fulfill.mail.mailer import Mailer

log = logging.getLogger("fulfill.engine")

# The trigger of the customer's landing page (and of its polling).
LANDING = "landing"

# Fulfilled records each process keeps in memory for repeated page visits.
KEPT_RECORDS = 10_000


class InvalidSessionId(FulfillError):
    status_code = 400
    code = "invalid_session_id"


class ModeMismatch(FulfillError):
    """A live session with a test key or the reverse: refused, never fulfilled."""

    status_code = 400
    code = "livemode_mismatch"


def utcnow() -> datetime:
    """Naive UTC: what the database columns hold on SQLite and PostgreSQL alike."""
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class EngineOptions:
    lease_seconds: float = 60.0
    max_attempts: int = 10
    retry_base_seconds: float = 10.0
    wait_seconds: float = 30.0  # how long a caller waits for another worker's outcome
    poll_seconds: float = 0.1
    # Landing visits ask Stripe about a session waiting for its payment at
    # most once per this many seconds, across all visitors and instances.
    payment_check_seconds: float = 30.0


class Engine:
    """Fulfills Checkout Sessions exactly once; one per process, shared by all triggers."""

    def __init__(
        self,
        *,
        store: Store,
        stripe: StripeApi,
        catalog: Catalog,
        actions: Mapping[int, Action],
        livemode: bool | None,
        options: EngineOptions | None = None,
        clock: Callable[[], datetime] = utcnow,
        metrics: Metrics | None = None,
        mailer: Mailer | None = None,
    ) -> None:
        self.store = store
        # Emails to the customer, queued with the change of status they report.
        self.mailer = mailer
        self.stripe = stripe
        self.catalog = catalog
        self.actions = actions
        self.livemode = livemode
        self.options = options or EngineOptions()
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.owner = f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # In-process: the running fulfillment of each session, so concurrent
        # triggers in one process await one task instead of polling the database.
        self._running: dict[str, asyncio.Task[None]] = {}
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        # The leases this process holds while it performs (fulfill/lease.py).
        self.lease = LeaseKeeper(store, self.owner, self.options.lease_seconds, self.metrics)
        # Fulfilled records, final by nature (no status replaces ``fulfilled``),
        # kept for the landing page's refreshes; the least recently asked for
        # dropped first, so a page a customer keeps refreshing stays here.
        self._fulfilled: LRUCache[str, FulfillmentRecord] = LRUCache(maxsize=KEPT_RECORDS)

    # -- the entry point ---------------------------------------------------------

    async def fulfill_checkout(
        self,
        session_id: str,
        *,
        trigger: str = "api",
        wait: float | None = None,
        force: bool = False,
        admit: Callable[[], Awaitable[None]] | None = None,
    ) -> FulfillmentRecord:
        """Fulfill the session if it is paid and not yet fulfilled; return its record.

        Safe to call any number of times, concurrently, from any process: each
        line item is performed once. ``wait`` bounds how long this call waits
        for a fulfillment in progress (default ``EngineOptions.wait_seconds``);
        the record returned may then still be ``fulfilling``. A ``failed``
        record is retried only when its backoff has passed, or with ``force``
        (the worker, an operator). ``admit``, if given, is awaited before a
        Stripe call for a session this service has no record of; it raises to
        refuse (the landing page's limits on unknown sessions).
        """
        self.check_session_id(session_id)
        with logs.bound(session_id=session_id):
            return await self._fulfill(session_id, trigger, wait, force, admit)

    async def _fulfill(
        self,
        session_id: str,
        trigger: str,
        wait: float | None,
        force: bool,
        admit: Callable[[], Awaitable[None]] | None,
    ) -> FulfillmentRecord:
        wait = self.options.wait_seconds if wait is None else wait
        kept = self._fulfilled.get(session_id)
        if kept is not None and trigger in kept.triggers:
            # A customer refreshing the page of a fulfilled order: nothing can
            # change it any more, and this trigger is already recorded.
            return kept
        # One caller per session at a time in this process decides what to do;
        # the others then find its task running and wait on it, so concurrent
        # triggers in one process cost one retrieve (SPEC §10.3).
        lock = self._locks.get(session_id)
        if lock is None:
            lock = self._locks[session_id] = asyncio.Lock()
        async with lock:
            task = self._running.get(session_id)
            record: FulfillmentRecord | None = None
            if task is None:
                record, task = await self._start(session_id, trigger, force, admit)
        if task is not None:
            await _bounded(task, wait)
            # A fulfillment that ended kept its final record (``_perform_items``).
            record = self._fulfilled.get(session_id) or await self._get(session_id)
            await self._note_trigger(record, trigger)
            return self._keep(record)
        assert record is not None
        if record.status == FULFILLING:
            # Another process holds the session: wait, bounded, for its outcome.
            return await self._await_outcome(session_id, trigger, wait)
        return record

    async def _start(
        self,
        session_id: str,
        trigger: str,
        force: bool,
        admit: Callable[[], Awaitable[None]] | None = None,
    ) -> tuple[FulfillmentRecord | None, asyncio.Task[None] | None]:
        """Read the record and, if needed, the session; start the fulfillment if it is due."""
        record = await self.store.get(session_id)
        if record is not None:
            await self._note_trigger(record, trigger)
            if record.status == FULFILLED:
                return self._keep(record), None
            # Both judged by the database's clock when the record was read
            # (``DbTime``): an instance whose host clock runs ahead must not take
            # live leases over.
            if record.status == FAILED and not force and not record.retry_due:
                return record, None
            if record.status == FULFILLING and record.lease_live:
                return record, None
            if trigger == LANDING and not await self._check_due(record):
                return record, None
        elif admit is not None:
            await admit()
        snapshot = await self.stripe.session(session_id)
        self._check_mode(snapshot.livemode, session_id)
        status = status_for(snapshot)
        if status == OPEN:
            transient = FulfillmentRecord(
                session_id=session_id,
                status=OPEN,
                payment_status=snapshot.payment_status,
                livemode=snapshot.livemode,
                mode=snapshot.mode,
                amount_total=snapshot.amount_total,
                currency=snapshot.currency,
            )
            return transient, None
        # A trigger seen first here is recorded with what it found, and a
        # session to fulfill claimed, in one write.
        email = self._email(RECEIVED_EMAIL, session_id) if status == AWAITING_PAYMENT else None
        perform = status == PENDING or (record is not None and record.status == FULFILLING)
        asked = self.lease.monotonic()
        observed = await self.store.observe(
            snapshot,
            status,
            MAY_REPLACE[status],
            self.clock(),
            trigger=trigger if record is None else None,
            email=email,
            claim=(self.owner, self.options.lease_seconds) if perform else None,
        )
        moved = observed.moved
        if moved and email is not None:
            self._send_emails(session_id)
        if status != PENDING and (record is None or record.status != status):
            self.metrics.fulfillments.labels(status).inc()
        if record is not None and record.status == FULFILLING:
            log.warning("taking over a fulfillment whose worker's lease expired")
            self.metrics.lease_takeovers.inc()
        if perform:
            if observed.claimed:
                self.lease.confirm(session_id, asked)
            task = asyncio.get_running_loop().create_task(
                self._perform(session_id, snapshot, observed)
            )
            self._running[session_id] = task
            task.add_done_callback(lambda _: self._running.pop(session_id, None))
            return None, task
        return await self._get(session_id), None

    async def record_payment_failed(self, session_id: str, trigger: str) -> FulfillmentRecord:
        """``checkout.session.async_payment_failed``: nothing is fulfilled."""
        return await self._record_final(session_id, PAYMENT_FAILED, trigger)

    async def record_expired(self, session_id: str, trigger: str) -> FulfillmentRecord:
        """``checkout.session.expired``."""
        return await self._record_final(session_id, EXPIRED, trigger)

    async def _record_final(self, session_id: str, status: str, trigger: str) -> FulfillmentRecord:
        self.check_session_id(session_id)
        now = self.clock()
        email = self._email(PAYMENT_FAILED_EMAIL, session_id) if status == PAYMENT_FAILED else None
        if await self.store.set_status(session_id, status, MAY_REPLACE[status], now, email=email):
            self.metrics.fulfillments.labels(status).inc()
            if email is not None:
                self._send_emails(session_id)
        record = await self._get(session_id)
        await self._note_trigger(record, trigger)
        return record

    # -- emails ---------------------------------------------------------------------

    def _email(self, kind: str, session_id: str, *, claim: bool = False) -> QueuedEmail | None:
        if self.mailer is None:
            return None
        return self.mailer.queued(kind, session_id, claim=claim)

    def _send_emails(
        self,
        session_id: str,
        *,
        claimed: QueuedEmail | None = None,
        record: FulfillmentRecord | None = None,
    ) -> None:
        if self.mailer is not None:
            self.mailer.kick(session_id, claimed=claimed, record=record)

    # -- checks ---------------------------------------------------------------------

    def check_session_id(self, session_id: str) -> None:
        """Refuse anything but ``cs_test_…``/``cs_live_…`` letters and digits, before any I/O."""
        if not valid_session_id(session_id):
            raise InvalidSessionId(
                "That is not a Checkout Session ID (cs_test_… or cs_live_…, letters and digits)."
            )
        self._check_mode(session_id.startswith("cs_live_"), session_id)

    def _check_mode(self, livemode: bool, session_id: str) -> None:
        if self.livemode is not None and livemode != self.livemode:
            log.warning(
                "refused %s session %s…: the API key is in %s mode",
                "live" if livemode else "test",
                session_id[:16],
                "live" if self.livemode else "test",
            )
            raise ModeMismatch(
                f"A {'live' if livemode else 'test'} session cannot be fulfilled with a "
                f"{'live' if self.livemode else 'test'} mode key."
            )

    async def _check_due(self, record: FulfillmentRecord) -> bool:
        """May a landing visit ask Stripe about this record now?

        A bank debit can stay ``awaiting_payment`` for days while its page
        polls: each visit asking Stripe would spend the account's rate limit
        on tabs left open. Webhooks move the status at once (they are not
        throttled); a visit asks at most once per ``payment_check_seconds``,
        decided by a conditional write, so across all visitors and instances.
        An expired session never becomes payable, a setup session never has
        anything to fulfill: neither is asked about again.
        """
        if record.status in (EXPIRED, NOT_APPLICABLE):
            return False
        if record.status not in (AWAITING_PAYMENT, PAYMENT_FAILED):
            return True
        return await self.store.take_check(record.session_id, self.options.payment_check_seconds)

    async def _note_trigger(self, record: FulfillmentRecord, trigger: str) -> None:
        # A trigger is recorded once: a customer refreshing the landing page
        # should not grow the record (nor write to the database) each time.
        if trigger not in record.triggers:
            await self.store.add_trigger(record.session_id, trigger, self.clock())
            record.triggers.append(trigger)

    def _keep(self, record: FulfillmentRecord) -> FulfillmentRecord:
        if record.status == FULFILLED:
            self._fulfilled[record.session_id] = record
        return record

    async def _get(self, session_id: str) -> FulfillmentRecord:
        record = await self.store.get(session_id)
        if record is None:
            raise FulfillError(f"record {session_id} vanished", code="record_missing")
        return record

    # -- running and waiting ---------------------------------------------------------

    async def _await_outcome(
        self, session_id: str, trigger: str, wait: float, *, takeover: bool = True
    ) -> FulfillmentRecord:
        """Poll, bounded, until another process's fulfillment ends; the record then."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            record = await self._get(session_id)
            if record.status != FULFILLING or loop.time() >= deadline:
                return record
            if takeover and not record.lease_live:
                # Its worker died: take over now rather than wait for the worker loop.
                return await self.fulfill_checkout(
                    session_id, trigger=trigger, wait=max(0.0, deadline - loop.time())
                )
            await asyncio.sleep(self.options.poll_seconds)

    async def _perform(
        self, session_id: str, snapshot: SessionSnapshot, observed: Observed
    ) -> None:
        if not observed.claimed:
            # Another process claimed it first: its outcome is what our callers wait for.
            await self._await_outcome(
                session_id, "claim", self.options.wait_seconds, takeover=False
            )
            return
        heartbeat = asyncio.get_running_loop().create_task(self.lease.heartbeat(session_id))
        try:
            await self._perform_items(session_id, snapshot, fresh=observed.inserted)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._failed(session_id, exc)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            self.lease.forget(session_id)

    async def _perform_items(
        self, session_id: str, snapshot: SessionSnapshot, *, fresh: bool
    ) -> None:
        by_id = {item.line_item_id: item for item in snapshot.items}
        if fresh:
            # Recorded and claimed in one transaction just now: every item is
            # the snapshot's, and none was performed.
            pending = [item.line_item_id for item in snapshot.items]
        else:
            stored = await self._get(session_id)
            pending = [item.line_item_id for item in stored.items if item.status != ITEM_DONE]
        finished: bool | None = None
        # Queued already claimed: the finish succeeds once per session, so the
        # row it inserts is ours to send without a claim of its own.
        email = self._email(FULFILLED_EMAIL, session_id, claim=True)
        for n, line_item_id in enumerate(pending):
            line = by_id.get(line_item_id)
            if line is None:
                raise ActionError(f"line item {line_item_id} is no longer in the session")
            entry = self.catalog.match(line.facts)
            if entry is None:
                await self.store.item_failed(session_id, line_item_id, "no catalog entry")
                raise ActionError(
                    f"No catalog entry matches line item {line_item_id} "
                    f"({line.facts.describe()}); add one to the catalog, then retry."
                )
            if not await self.lease.still_ours(session_id):
                log.warning("lost the lease on %s…; another worker continues", session_id[:16])
                return
            context = ItemContext.for_item(snapshot, line.line_item_id, entry)
            started = time.perf_counter()
            try:
                result = await self.actions[entry.index].perform(context)
            except Exception as exc:
                self.metrics.action_seconds.labels(entry.action, "failed").observe(
                    time.perf_counter() - started
                )
                message = describe(exc)
                await self.store.item_failed(session_id, line_item_id, message, action=entry.action)
                kind = (
                    PermanentActionError if isinstance(exc, PermanentActionError) else ActionError
                )
                raise kind(
                    f"{entry.action} action for line item {line_item_id} failed: {message}"
                ) from exc
            self.metrics.action_seconds.labels(entry.action, "done").observe(
                time.perf_counter() - started
            )
            done = (session_id, line_item_id, self.owner, result, self.clock())
            # What a write proves is that the lease was ours when it was sent.
            asked = self.lease.monotonic()
            if n == len(pending) - 1:
                # The last item and the session's end: one transaction.
                recorded, finished = await self.store.finish_with_item(
                    *done, lease=self.options.lease_seconds, action=entry.action, email=email
                )
            else:
                recorded = await self.store.item_done(
                    *done, lease=self.options.lease_seconds, action=entry.action
                )
            if not recorded:
                # Our lease was taken over: the new owner carries on; stop here.
                log.warning("lost the lease on %s…; another worker continues", session_id[:16])
                return
            self.lease.confirm(session_id, asked)
        if finished is None:  # nothing was left to perform
            finished = await self.store.finish(session_id, self.owner, self.clock(), email=email)
        if finished:
            self.metrics.fulfillments.labels("fulfilled").inc()
            log.info("fulfilled")
            # Read once, final: for the callers waiting on this task and for the
            # email, which would each read it again.
            final: FulfillmentRecord | None = None
            with contextlib.suppress(Exception):  # they read it themselves then
                final = self._keep(await self._get(session_id))
            if email is not None:
                self._send_emails(session_id, claimed=email, record=final)
        else:
            log.warning("could not mark the session fulfilled; the lease was lost")

    async def _failed(self, session_id: str, exc: Exception) -> None:
        message = describe(exc)
        try:
            record = await self._get(session_id)
            retry_in: float | None = None
            if record.attempts < self.options.max_attempts and not isinstance(
                exc, PermanentActionError
            ):
                retry_in = backoff_seconds(record.attempts, base=self.options.retry_base_seconds)
            log.warning(
                "fulfillment of %s… failed (attempt %d): %s",
                session_id[:16],
                record.attempts,
                message,
            )
            await self.store.fail(session_id, self.owner, message, retry_in, self.clock())
        except Exception as error:
            # The database itself failed (it may be why the attempt did): the
            # lease runs out and the worker takes the session up again.
            log.warning(
                "could not record the failure of %s… (%s); the worker retries it when the "
                "lease expires: %s",
                session_id[:16],
                message,
                describe(error),
            )
        self.metrics.fulfillments.labels("failed").inc()

    # -- the background worker's step ----------------------------------------------------

    async def run_due(self, limit: int = 50) -> int:
        """Retry due failures and resume dead workers' sessions; how many were taken up."""
        stale = self.clock() - timedelta(seconds=max(30.0, self.options.lease_seconds))
        due = await self.store.take_due(stale, window=self.options.lease_seconds, limit=limit)
        self.metrics.retries.inc(len(due))
        for session_id in due:
            try:
                await self.fulfill_checkout(session_id, trigger="retry", wait=0, force=True)
            except FulfillError as exc:
                with logs.bound(session_id=session_id):
                    log.warning("retry failed: %s", exc.message)
        return len(due)

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait for fulfillments in progress in this process (at shutdown, in tests)."""
        tasks = list(self._running.values())
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        if self.mailer is not None:
            await self.mailer.drain(timeout=timeout)


async def _bounded(task: asyncio.Task[None], wait: float) -> None:
    """Wait for ``task`` at most ``wait`` seconds without cancelling it.

    shield: a caller that stops waiting (the webhook's inline budget, a
    closed landing page) must not cancel the fulfillment itself.
    """
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(task), wait)


__all__ = [
    "AWAITING_PAYMENT",
    "Engine",
    "EngineOptions",
    "InvalidSessionId",
    "ModeMismatch",
]
