"""Typed settings, read once from the environment (and ``.env``), failing loudly.

The variables and defaults are those of SPEC §3. ``load_settings`` turns any
validation problem into one ``ConfigError`` line that names the variable, so
that a typo stops the program at start instead of at the first payment.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fulfill.errors import ConfigError
from fulfill.mail.addresses import clean_text, parse_address
from fulfill.mail.transport import SmtpTarget

SECRET_KEY_RE = re.compile(r"^(sk|rk)_(test|live)_[A-Za-z0-9]+$")
WEBHOOK_SECRET_RE = re.compile(r"^whsec_[A-Za-z0-9+/=_-]+$")
MIN_SIGNING_KEY = 32
COUNTRY_RE = re.compile(r"^[A-Z]{2}$")
DEFAULT_SHIPPING_COUNTRIES = (
    "AT,AU,BE,BG,CA,CH,CY,CZ,DE,DK,EE,ES,FI,FR,GB,GR,HR,HU,IE,IS,IT,JP,LI,LT,LU,LV,MT,NL,NO,"
    "NZ,PL,PT,RO,SE,SG,SI,SK,US"
)


class Settings(BaseSettings):
    """Everything configurable about one running service."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        frozen=True,
    )

    stripe_secret_key: SecretStr | None = Field(default=None, alias="STRIPE_SECRET_KEY")
    stripe_webhook_secret: SecretStr | None = Field(default=None, alias="STRIPE_WEBHOOK_SECRET")
    stripe_api_base: str = Field(default="https://api.stripe.com", alias="STRIPE_API_BASE")
    database_url: str = Field(default="sqlite:///./var/fulfill.db", alias="FULFILL_DATABASE_URL")
    catalog_path: Path = Field(default=Path("./catalog.toml"), alias="FULFILL_CATALOG")
    public_url: str = Field(default="http://127.0.0.1:8000", alias="FULFILL_PUBLIC_URL")
    admin_token: SecretStr | None = Field(default=None, alias="FULFILL_ADMIN_TOKEN")
    # Signs download links; unset, a key is derived from STRIPE_SECRET_KEY, so
    # every instance agrees without more configuration (see ``download_key_secret``).
    signing_key: SecretStr | None = Field(default=None, alias="FULFILL_SIGNING_KEY")
    webhook_tolerance: int = Field(default=300, alias="FULFILL_WEBHOOK_TOLERANCE", ge=1)
    inline_budget: float = Field(default=5.0, alias="FULFILL_INLINE_BUDGET", ge=0)
    landing_wait: float = Field(default=8.0, alias="FULFILL_LANDING_WAIT", ge=0)
    # Landing visits of a session waiting for its payment ask Stripe at most
    # once per this many seconds, across visitors and instances.
    payment_check: float = Field(default=30.0, alias="FULFILL_PAYMENT_CHECK_INTERVAL", ge=0)
    # Beyond SPEC §3: the knobs of the retry machinery, with production defaults.
    lease_seconds: float = Field(default=60.0, alias="FULFILL_LEASE_SECONDS", gt=0)
    max_attempts: int = Field(default=10, alias="FULFILL_MAX_ATTEMPTS", ge=1)
    retry_base: float = Field(default=10.0, alias="FULFILL_RETRY_BASE", gt=0)
    worker_interval: float = Field(default=2.0, alias="FULFILL_WORKER_INTERVAL", gt=0)
    db_pool_size: int = Field(default=10, alias="FULFILL_DB_POOL_SIZE", ge=1, le=200)
    # Reconcile: API calls per second (Stripe allows 25/s in test mode, 100/s
    # live), and the sweep serve runs every N minutes (0: never) over a window.
    reconcile_rate: float = Field(default=10.0, alias="FULFILL_RECONCILE_RATE", gt=0, le=100)
    reconcile_interval: float = Field(default=15.0, alias="FULFILL_RECONCILE_INTERVAL", ge=0)
    reconcile_since: str = Field(default="72h", alias="FULFILL_RECONCILE_SINCE")
    # Landing-page lookups of sessions the service does not know (each costs a
    # Stripe call): per client per minute, and in total per second (SPEC §10.6).
    lookups_per_client: float = Field(default=10, alias="FULFILL_LOOKUPS_PER_CLIENT", gt=0)
    lookups_per_second: float = Field(default=10, alias="FULFILL_LOOKUPS_PER_SECOND", gt=0)
    # The proxies (IPs or CIDR networks) whose X-Forwarded-For and -Proto are
    # believed; none by default: the client is the connection's peer. See
    # ``fulfill.app.server_options`` for how this reaches uvicorn.
    trusted_proxies: str = Field(default="", alias="FULFILL_TRUSTED_PROXIES")
    # POST /checkout/sessions (each creates a session at Stripe): per client
    # per minute, and in total per second.
    checkouts_per_client: float = Field(default=10, alias="FULFILL_CHECKOUTS_PER_CLIENT", gt=0)
    checkouts_per_second: float = Field(default=5, alias="FULFILL_CHECKOUTS_PER_SECOND", gt=0)
    # Where POST /checkout/sessions lets Checkout ship physical goods (ISO 3166-1 alpha-2).
    shipping_countries: str = Field(
        default=DEFAULT_SHIPPING_COUNTRIES, alias="FULFILL_SHIPPING_COUNTRIES"
    )
    # Emails to the customer (docs/email.md). Without an SMTP URL they are written
    # as .eml files to the outbox folder instead of sent (the demo; a dry run).
    smtp_url: SecretStr | None = Field(default=None, alias="FULFILL_SMTP_URL")
    mail_enabled: bool = Field(default=True, alias="FULFILL_MAIL")
    mail_from: str = Field(
        default="Fulfill demo shop <orders@example.com>", alias="FULFILL_MAIL_FROM"
    )
    shop_name: str = Field(default="Fulfill demo shop", alias="FULFILL_SHOP_NAME", min_length=1)
    support_email: str | None = Field(default=None, alias="FULFILL_SUPPORT_EMAIL")
    mail_outbox: Path = Field(default=Path("./var/outbox"), alias="FULFILL_MAIL_OUTBOX")
    # Where a customer whose payment failed can try again; default: the shop.
    mail_retry_url: str | None = Field(default=None, alias="FULFILL_MAIL_RETRY_URL")
    # The optional "order received, payment processing" email for delayed methods.
    mail_received: bool = Field(default=False, alias="FULFILL_MAIL_RECEIVED")

    @field_validator("stripe_secret_key")
    @classmethod
    def _check_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not SECRET_KEY_RE.match(value.get_secret_value()):
            # Never echo the value: it is a secret even when malformed.
            raise ValueError("must look like sk_test_…, sk_live_… or rk_…")
        return value

    @field_validator("signing_key")
    @classmethod
    def _check_signing_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().strip()) < MIN_SIGNING_KEY:
            raise ValueError(
                f"must be at least {MIN_SIGNING_KEY} characters; make one with "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return value

    @field_validator("stripe_webhook_secret")
    @classmethod
    def _check_webhook_secrets(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        parts = [p.strip() for p in value.get_secret_value().split(",")]
        if not parts or any(not WEBHOOK_SECRET_RE.match(p) for p in parts):
            raise ValueError("must be one or more whsec_… secrets, comma-separated")
        return value

    @field_validator("shipping_countries")
    @classmethod
    def _check_countries(cls, value: str) -> str:
        codes = [c.strip().upper() for c in value.split(",") if c.strip()]
        if not codes or any(not COUNTRY_RE.match(c) for c in codes):
            raise ValueError("must be two-letter country codes, comma-separated, like DE,FR,US")
        return ",".join(codes)

    @field_validator("trusted_proxies")
    @classmethod
    def _check_trusted_proxies(cls, value: str) -> str:
        entries = [e.strip() for e in value.split(",") if e.strip()]
        for entry in entries:
            if entry == "*":
                # uvicorn would then take the leftmost X-Forwarded-For entry,
                # which any client writes: everyone could pick their address.
                raise ValueError(
                    "'*' would let any client choose its address; list the proxies' IPs or "
                    "networks, e.g. 10.0.0.0/16"
                )
            try:
                # strict, as uvicorn is: 10.0.0.1/8 is no network to it, and it
                # would quietly compare it as text and never trust anyone.
                ipaddress.ip_network(entry, strict=True)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or network (like 10.0.0.5 or 10.0.0.0/16)"
                ) from None
        return ",".join(entries)

    @field_validator("admin_token")
    @classmethod
    def _check_admin_token(cls, value: SecretStr | None) -> SecretStr | None:
        # A short token can be guessed; the admin API can retry and reconcile.
        if value is not None and len(value.get_secret_value()) < 24:
            raise ValueError(
                "must be at least 24 characters; make one with "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return value

    @field_validator("reconcile_since")
    @classmethod
    def _check_since(cls, value: str) -> str:
        if not re.fullmatch(r"[0-9]+[mhd]", value.strip()):
            raise ValueError(
                f'must be a number and a unit, like "72h", "30m" or "7d"; got {value!r}'
            )
        return value.strip()

    @field_validator("smtp_url")
    @classmethod
    def _check_smtp_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        # The message names the part that is wrong, never the URL (it holds a password).
        SmtpTarget.parse(value.get_secret_value().strip())
        return SecretStr(value.get_secret_value().strip())

    @field_validator("mail_from")
    @classmethod
    def _check_mail_from(cls, value: str) -> str:
        parse_address(value.strip())
        return value.strip()

    @field_validator("support_email")
    @classmethod
    def _check_support_email(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parse_address(value.strip())
        return value.strip()

    @field_validator("shop_name")
    @classmethod
    def _check_shop_name(cls, value: str) -> str:
        if clean_text(value) != value.strip() or not value.strip():
            raise ValueError("must be one line of text")
        return value.strip()

    @field_validator("stripe_api_base", "public_url", "mail_retry_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError(f"must be an http(s) URL, got {value!r}")
        return value.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", value):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return value

    @property
    def webhook_secrets(self) -> tuple[str, ...]:
        """The configured signing secrets, in order; any of them may sign."""
        if self.stripe_webhook_secret is None:
            return ()
        raw = self.stripe_webhook_secret.get_secret_value()
        return tuple(p.strip() for p in raw.split(",") if p.strip())

    @property
    def shipping_country_list(self) -> tuple[str, ...]:
        return tuple(self.shipping_countries.split(","))

    @property
    def trusted_proxy_list(self) -> tuple[str, ...]:
        """The proxies whose forwarding headers are believed; empty: none."""
        return tuple(self.trusted_proxies.split(",")) if self.trusted_proxies else ()

    @property
    def livemode(self) -> bool | None:
        """True for a live key, False for a test key, None without a key."""
        if self.stripe_secret_key is None:
            return None
        return "_live_" in self.stripe_secret_key.get_secret_value()

    @property
    def download_key_secret(self) -> str | None:
        """The secret download links are signed with: FULFILL_SIGNING_KEY, else the Stripe key.

        Changing it (or, without FULFILL_SIGNING_KEY, rolling the Stripe key)
        invalidates every download link handed out before.
        """
        if self.signing_key is not None:
            return self.signing_key.get_secret_value().strip()
        if self.stripe_secret_key is not None:
            return self.stripe_secret_key.get_secret_value()
        return None

    @property
    def retry_url(self) -> str:
        """Where the payment-failed email sends the customer to try again."""
        return self.mail_retry_url or f"{self.public_url}/shop"

    def require_stripe(self) -> None:
        """Stop with a clear line when the settings ``serve`` needs are absent."""
        if self.stripe_secret_key is None:
            raise ConfigError(
                "STRIPE_SECRET_KEY is required: set it to your sk_test_… or sk_live_… key"
            )
        if not self.webhook_secrets:
            raise ConfigError(
                "STRIPE_WEBHOOK_SECRET is required: set it to the endpoint's whsec_… signing secret"
            )


def load_settings(env_file: str | Path | None = ".env", **overrides: Any) -> Settings:
    """Read the settings once; overrides (from command-line flags) win over the environment.

    Raises ``ConfigError`` with one line naming the first bad variable.
    """
    try:
        return Settings(_env_file=env_file, **overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "settings"
        variable = _alias_of(field)
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{variable}: {message}") from None


def _alias_of(name: str) -> str:
    for field_name, info in Settings.model_fields.items():
        if name in (field_name, info.alias):
            return info.alias or field_name.upper()
    return name
