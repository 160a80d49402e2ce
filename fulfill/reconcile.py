"""Reconcile: find paid sessions whose webhooks never came, and fulfill them.

The day a webhook endpoint was down for six hours, Stripe's retries may or
may not have caught up; reconcile does not wait to find out. It lists the
complete sessions created since a moment (paged with ``starting_after``)
and fulfills the paid ones the service never saw paid: no record at all, or a
record still ``awaiting_payment`` or ``payment_failed`` while Stripe now says
paid. That is a lost webhook, and only that is counted ``fulfilled`` (the
``WebhooksLost`` alert). Everything else is left to whoever holds it, and
costs no call beyond the list: a fulfilled record; a ``pending`` or
``fulfilling`` one (in the worker's hands); a ``failed`` one, whether its
retry is scheduled (the worker's) or it waits for an operator (a permanent
failure, or ``FULFILL_MAX_ATTEMPTS`` used up) — a sweep every 15 minutes that
retried those would make the attempt limit meaningless and repeat, for 72
hours, actions that can only fail. ``fulfill_checkout`` is called without
``force``, so it is exactly once with any webhook or landing visit racing it,
and a record that turned ``failed`` meanwhile is not retried either. Its own
API calls stay under a rate well
below Stripe's limits (25/s in test mode, 100/s live), it honours 429 and
``Retry-After``, and it checkpoints its cursor in the database so that an
interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

import stamina
from aiolimiter import AsyncLimiter

from fulfill import logs
from fulfill.engine import Engine, utcnow
from fulfill.errors import FulfillError
from fulfill.records import (
    AWAITING_PAYMENT,
    FAILED,
    FULFILLED,
    FULFILLING,
    NOT_APPLICABLE,
    PAYMENT_FAILED,
    PENDING,
    FulfillmentRecord,
)
from fulfill.store.runs import ReconcileRun, Runs
from fulfill.stripe_api import ListedSession, StripeApi, StripeUnavailable

log = logging.getLogger("fulfill.reconcile")

T = TypeVar("T")

DEFAULT_RATE = 10.0  # API calls per second: well under Stripe's 25/s test-mode limit
_SINCE_RE = re.compile(r"^([0-9]+)([mhd])$")
_UNITS = {"m": 60, "h": 3600, "d": 86400}
MAX_SINCE_DAYS = 30  # Stripe keeps listing sessions longer, but its events only 30 days

# What a sweep made of each listed session: the ``result`` label of
# fulfill_reconcile_sessions_total and the keys of the summary. A session the
# sweep took up and did not fulfill is counted by the status it was left in
# (``failed``, ``fulfilling``).
FULFILLED_NOW = "fulfilled"  # a lost webhook: paid, never seen paid, fulfilled by the sweep
WOULD_FULFILL = "would_fulfill"  # the same, in a dry run
ALREADY = "already"
UNPAID = "unpaid"
IN_PROGRESS = "in_progress"  # pending or fulfilling: the worker's
RETRY_SCHEDULED = "retry_scheduled"  # failed, next attempt set: the worker's
WAITING_FOR_OPERATOR = "waiting_for_operator"  # failed for good, or out of attempts
ERROR = "error"  # Stripe could not be asked

PAID = ("paid", "no_payment_required")
# Records whose paid session means a webhook went missing: the service knows
# nothing of the payment having settled.
NOT_SEEN_PAID = (AWAITING_PAYMENT, PAYMENT_FAILED)


class ReconcileError(FulfillError):
    status_code = 400
    code = "invalid_reconcile"


def parse_since(text: str) -> timedelta:
    """``"72h"``, ``"30m"``, ``"7d"`` → a duration; ``ReconcileError`` otherwise."""
    found = _SINCE_RE.match(text.strip())
    if found is None:
        raise ReconcileError(
            f'--since must be a number and a unit, like "72h", "30m" or "7d"; got {text!r}'
        )
    seconds = int(found.group(1)) * _UNITS[found.group(2)]
    if seconds <= 0 or seconds > MAX_SINCE_DAYS * 86400:
        raise ReconcileError(f"--since must be between 1m and {MAX_SINCE_DAYS}d")
    return timedelta(seconds=seconds)


def left_alone(record: FulfillmentRecord | None, payment_status: str) -> str | None:
    """Why a sweep leaves a listed session alone (its result), or None: the sweep's to fulfill.

    Only a paid session the service has no record of, or has not seen paid,
    is the sweep's. A failed record is never retried here: its retry is the
    worker's (``next_attempt_at`` set) or an operator's (``NULL``).
    """
    if record is not None and record.status == FULFILLED:
        return ALREADY
    if payment_status not in PAID:
        return UNPAID
    if record is None or record.status in NOT_SEEN_PAID:
        return None
    if record.status == FAILED:
        return WAITING_FOR_OPERATOR if record.next_attempt_at is None else RETRY_SCHEDULED
    if record.status in (PENDING, FULFILLING):
        return IN_PROGRESS
    return record.status  # expired: final, whatever the list says


@dataclass
class Summary:
    """What one sweep saw and did."""

    run_id: int
    since: datetime
    resumed: bool = False
    dry_run: bool = False
    listed: int = 0
    pages: int = 0
    results: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    finished: bool = False

    def as_json(self) -> dict[str, object]:
        return {
            "run_id": self.run_id,
            "since": self.since.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "resumed": self.resumed,
            "dry_run": self.dry_run,
            "listed": self.listed,
            "pages": self.pages,
            "results": dict(self.results),
            "errors": self.errors[:20],
            "finished": self.finished,
        }


Progress = Callable[[Summary, ListedSession | None], None]


class Reconciler:
    def __init__(
        self,
        engine: Engine,
        stripe: StripeApi,
        runs: Runs,
        *,
        rate: float = DEFAULT_RATE,
        max_rate_limit_waits: int = 20,
    ) -> None:
        self.engine = engine
        self.stripe = stripe
        self.runs = runs
        # Every API call reconcile makes (list pages and retrieves) takes a token.
        # A bucket of one, refilled every 1/rate s: calls are spaced evenly, so
        # no one-second window ever holds more than ``rate`` (a bucket of
        # ``rate`` would allow a burst of ``rate`` on top of the refill).
        self.limiter = AsyncLimiter(1, 1.0 / max(rate, 0.1))
        self.max_rate_limit_waits = max_rate_limit_waits

    async def sweep(
        self,
        since: timedelta,
        *,
        dry_run: bool = False,
        restart: bool = False,
        progress: Progress | None = None,
    ) -> Summary:
        """List complete sessions created since ``since`` ago and fulfill the unfulfilled."""
        now = utcnow()
        run: ReconcileRun | None = None if restart or dry_run else await self.runs.unfinished()
        resumed = run is not None
        if run is None:
            run = ReconcileRun(id=0, since=now - since, cursor=None, started_at=now)
            if not dry_run:
                run = await self.runs.start(run.since, now)
        summary = Summary(run_id=run.id, since=run.since, resumed=resumed, dry_run=dry_run)
        cursor = run.cursor
        created_gte = _epoch(run.since)
        while True:
            page = await self._call(
                functools.partial(self.stripe.list_complete_sessions, created_gte, cursor)
            )
            summary.pages += 1
            for listed in page.sessions:
                summary.listed += 1
                result = await self._one(listed, dry_run, summary)
                summary.results[result] += 1
                self.engine.metrics.reconcile_sessions.labels(result).inc()
                cursor = listed.id
                if not dry_run:
                    # Checkpoint after each session: an interrupted sweep
                    # resumes right after the last one it handled.
                    await self.runs.advance(run.id, cursor, utcnow())
                if progress is not None:
                    progress(summary, listed)
            if not page.has_more or not page.sessions:
                break
        summary.finished = True
        if not dry_run:
            await self.runs.finish(run.id, dict(summary.results), utcnow())
        self.engine.metrics.reconcile_last_success.set_to_current_time()
        return summary

    async def _one(self, listed: ListedSession, dry_run: bool, summary: Summary) -> str:
        with logs.bound(session_id=listed.id):
            known = await self.engine.store.get(listed.id)
            result = left_alone(known, listed.payment_status)
            if result is not None:
                return result
            if dry_run:
                return NOT_APPLICABLE if listed.mode == "setup" else WOULD_FULFILL
            try:
                # No force: a record that failed since it was read above is
                # the worker's or an operator's, as in left_alone.
                record = await self._call(
                    lambda: self.engine.fulfill_checkout(listed.id, trigger="reconcile")
                )
            except FulfillError as exc:
                summary.errors.append(f"{listed.id}: {exc.message}")
                log.warning("reconcile could not fulfill: %s", exc.message)
                return ERROR
            return FULFILLED_NOW if record.status == FULFILLED else record.status

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        """One rate-limited API call, made again while Stripe fails in a way that passes.

        A 429 is waited out as its ``Retry-After`` asks; a 5xx or a broken
        connection that outlasted stripe-python's own retries with backoff. A
        sweep of thousands of sessions should not end with errors, or stop,
        for a burst of failures that is over in seconds.
        """

        def wait(exc: Exception) -> bool | float:
            if not isinstance(exc, StripeUnavailable):
                return False
            # Retry-After as asked; otherwise stamina's backoff (1, 2, 4, 8, 10 s …).
            if exc.retry_after is None:
                log.info("%s; waiting, with backoff", exc.message)
                return True
            log.info("%s; waiting %.1f s as Stripe asked", exc.message, exc.retry_after)
            return exc.retry_after

        async for attempt in stamina.retry_context(
            on=wait,
            attempts=self.max_rate_limit_waits + 1,
            timeout=None,
            wait_initial=1.0,
            wait_max=10.0,
            wait_jitter=0.0,
        ):
            # The limiter is held for the call alone, not for the wait after it.
            with attempt:
                async with self.limiter:
                    return await call()
        raise AssertionError("unreachable")


def _epoch(moment: datetime) -> int:
    """Seconds since the epoch of a naive UTC datetime (what the database holds)."""
    return int((moment - datetime(1970, 1, 1)).total_seconds())


class Schedule:
    """The sweep ``serve`` runs every ``interval`` seconds, one instance at a time."""

    def __init__(
        self,
        reconciler: Reconciler,
        runs: Runs,
        *,
        owner: str,
        interval: float,
        since: timedelta,
        first_delay: float = 10.0,
    ) -> None:
        self.reconciler = reconciler
        self.runs = runs
        self.owner = owner
        self.interval = interval
        self.since = since
        self.first_delay = first_delay

    async def step(self) -> Summary | None:
        """Sweep if this instance takes the schedule's lock now."""
        if not await self.runs.acquire("reconcile", self.owner, self.interval):
            return None
        summary = await self.reconciler.sweep(self.since)
        log.info(
            "reconcile sweep: %d sessions listed, %s",
            summary.listed,
            ", ".join(f"{k} {v}" for k, v in sorted(summary.results.items())) or "nothing to do",
        )
        return summary

    async def run(self) -> None:
        await asyncio.sleep(self.first_delay)
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("reconcile sweep failed: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(min(self.interval, 60.0))
