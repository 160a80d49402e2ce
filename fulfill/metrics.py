"""Prometheus metrics: what an operator watches to know fulfillment is healthy.

One ``Metrics`` per service, registered in its own registry (tests run many
services in one process). With ``serve --workers N`` the processes write to
``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` adds them up, so a scrape that
lands on any process sees the whole host.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

ACTION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.webhook_events = Counter(
            "fulfill_webhook_events",
            "Webhook deliveries by event type and outcome "
            "(accepted, duplicate, ignored, refused, invalid, unavailable)",
            ["type", "outcome"],
            registry=r,
        )
        self.fulfillments = Counter(
            "fulfill_fulfillments",
            "Fulfillment attempts by outcome (fulfilled, failed, awaiting_payment, …)",
            ["outcome"],
            registry=r,
        )
        self.action_seconds = Histogram(
            "fulfill_action_duration_seconds",
            "Time an action took to fulfill one line item",
            ["action", "result"],
            buckets=ACTION_BUCKETS,
            registry=r,
        )
        self.stripe_calls = Counter(
            "fulfill_stripe_api_calls",
            "Calls to the Stripe API by endpoint and HTTP status (0: no answer)",
            ["endpoint", "status"],
            registry=r,
        )
        self.retries = Counter(
            "fulfill_retries", "Sessions taken up again by the background worker", registry=r
        )
        self.lease_takeovers = Counter(
            "fulfill_lease_takeovers",
            "Fulfillments resumed after their worker's lease expired",
            registry=r,
        )
        self.lease_renewal_errors = Counter(
            "fulfill_lease_renewal_errors",
            "Renewals of a fulfillment's lease that failed with an error (each tried again)",
            registry=r,
        )
        self.reconcile_sessions = Counter(
            "fulfill_reconcile_sessions",
            "Sessions seen by reconcile sweeps, by what was done (fulfilled: a lost "
            "webhook; already, unpaid, in_progress, retry_scheduled, waiting_for_operator: "
            "left alone; error)",
            ["result"],
            registry=r,
        )
        self.emails = Counter(
            "fulfill_emails",
            "Emails to customers by kind and outcome (sent, failed, skipped)",
            ["kind", "outcome"],
            registry=r,
        )
        self.reconcile_last_success = Gauge(
            "fulfill_reconcile_last_success_timestamp_seconds",
            "When the last reconcile sweep finished",
            registry=r,
            multiprocess_mode="max",
        )

    def render(self) -> tuple[bytes, str]:
        """The exposition text (all processes of the host in multiprocess mode)."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
