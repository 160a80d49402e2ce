"""Building one service from its settings: store, Stripe client, catalog, actions, engine.

The app factory, the CLI and the public ``fulfill_checkout`` all build the
same ``Service``; it owns what it opens and closes it.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field

import httpx

from fulfill.actions import Action, ActionDeps, build_action, download
from fulfill.catalog import Catalog, load_catalog
from fulfill.config import Settings
from fulfill.engine import Engine, EngineOptions, utcnow
from fulfill.errors import ConfigError
from fulfill.mail.addresses import parse_address
from fulfill.mail.compose import Composer, Shop
from fulfill.mail.mailer import Mailer
from fulfill.mail.transport import OutboxTransport, SmtpTarget, SmtpTransport, Transport
from fulfill.metrics import Metrics
from fulfill.reconcile import Reconciler
from fulfill.store import Store
from fulfill.store.database import migrate as migrate_database
from fulfill.store.emails import FULFILLED_EMAIL, PAYMENT_FAILED_EMAIL, RECEIVED_EMAIL
from fulfill.store.runs import Runs
from fulfill.stripe_api import StripeApi


@dataclass
class Service:
    settings: Settings
    store: Store
    stripe: StripeApi
    catalog: Catalog
    http: httpx.AsyncClient
    engine: Engine
    signing_key: bytes = field(default=b"", repr=False)  # of download links; never log it
    mailer: Mailer | None = None
    runs: Runs = field(init=False)
    reconciler: Reconciler = field(init=False)

    @classmethod
    async def start(cls, settings: Settings, *, migrate: bool = True) -> Service:
        """Open everything; a bad catalog or setting stops here with a clear message."""
        if settings.stripe_secret_key is None:
            raise ConfigError(
                "STRIPE_SECRET_KEY is required: set it to your sk_test_… or sk_live_… key"
            )
        catalog = load_catalog(settings.catalog_path)
        secret = settings.download_key_secret
        assert secret is not None  # the Stripe key is set (checked above)
        signing_key = download.signing_key(secret)
        http = httpx.AsyncClient(limits=httpx.Limits(max_connections=100))
        # Opening the store does no I/O yet: the actions are built (and a
        # broken catalog entry stops the start) before the database is touched.
        store = await Store.open(
            settings.database_url, migrate=False, pool_size=settings.db_pool_size
        )
        try:
            deps = ActionDeps(
                http=http, store=store, public_url=settings.public_url, signing_key=signing_key
            )
            actions: dict[int, Action] = {
                entry.index: build_action(entry, deps) for entry in catalog.entries
            }
            if migrate:
                await migrate_database(store.engine)
        except BaseException:
            await http.aclose()
            await store.close()
            raise
        metrics = Metrics()
        stripe = StripeApi(
            settings.stripe_secret_key.get_secret_value(),
            settings.stripe_api_base,
            metrics=metrics,
        )
        mailer = build_mailer(settings, store, stripe, metrics)
        engine = Engine(
            mailer=mailer,
            metrics=metrics,
            store=store,
            stripe=stripe,
            catalog=catalog,
            actions=actions,
            livemode=settings.livemode,
            options=EngineOptions(
                lease_seconds=settings.lease_seconds,
                max_attempts=settings.max_attempts,
                retry_base_seconds=settings.retry_base,
                payment_check_seconds=settings.payment_check,
            ),
        )
        service = cls(settings, store, stripe, catalog, http, engine, signing_key, mailer)
        service.runs = Runs(store)
        service.reconciler = Reconciler(engine, stripe, service.runs, rate=settings.reconcile_rate)
        return service

    async def close(self) -> None:
        await self.engine.drain(timeout=5)
        await self.stripe.close()
        await self.http.aclose()
        await self.store.close()


def mail_composer(settings: Settings) -> Composer:
    sender = parse_address(settings.mail_from)
    support = parse_address(settings.support_email) if settings.support_email else sender
    return Composer(
        Shop(
            name=settings.shop_name,
            sender=sender,
            support=support,
            public_url=settings.public_url,
            retry_url=settings.retry_url,
        )
    )


def mail_transport(settings: Settings) -> Transport:
    if settings.smtp_url is None:
        return OutboxTransport(settings.mail_outbox)
    return SmtpTransport(SmtpTarget.parse(settings.smtp_url.get_secret_value()))


def build_mailer(
    settings: Settings, store: Store, stripe: StripeApi, metrics: Metrics
) -> Mailer | None:
    """The customer emails, or None when FULFILL_MAIL is off."""
    if not settings.mail_enabled:
        return None
    kinds = {FULFILLED_EMAIL, PAYMENT_FAILED_EMAIL}
    if settings.mail_received:
        kinds.add(RECEIVED_EMAIL)
    return Mailer(
        store=store,
        composer=mail_composer(settings),
        transport=mail_transport(settings),
        owner=f"mail:{os.getpid()}:{uuid.uuid4().hex[:8]}",
        clock=utcnow,
        kinds=frozenset(kinds),
        stripe=stripe,
        max_attempts=settings.max_attempts,
        retry_base_seconds=settings.retry_base,
        metrics=metrics,
    )
