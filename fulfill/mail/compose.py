"""The emails themselves: multipart plain text + HTML, from Jinja2 templates.

Each kind has ``templates/mail/{kind}.txt`` and ``{kind}.html`` (autoescaped:
product names and results are text, never markup) and shows what the
landing page shows: the items, download links, licence keys, access links
and the shipping address, with a link back to the landing page.

Headers are built with the ``email`` package's header registry: a value with
a CR or LF cannot become a second header, and names the customer typed are
stripped of control characters first, so they cannot even try.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

from fulfill.landing import item_badge
from fulfill.mail.addresses import AddressError, clean_text, parse_address
from fulfill.pages import TEMPLATES
from fulfill.records import FulfillmentRecord
from fulfill.store.emails import FULFILLED_EMAIL, KINDS, PAYMENT_FAILED_EMAIL, RECEIVED_EMAIL

FULFILLED = FULFILLED_EMAIL
PAYMENT_FAILED = PAYMENT_FAILED_EMAIL
RECEIVED = RECEIVED_EMAIL


def message_id_for(session_id: str, kind: str, domain: str) -> str:
    """The email's ``Message-ID``: fixed per session and kind, so a re-send carries the same.

    The session ID is a key to the customer's order, and Message-IDs are
    logged by every mail server on the way: it goes in only as a hash.
    """
    digest = hashlib.sha256(f"{session_id}\0{kind}".encode()).hexdigest()[:32]
    return f"<{kind}.{digest}@{domain}>"


@dataclass(frozen=True)
class Shop:
    """What every email says about who sends it."""

    name: str
    sender: Address
    support: Address
    public_url: str
    retry_url: str

    @property
    def domain(self) -> str:
        return self.sender.domain


SUBJECTS = {
    FULFILLED: "Your order from {shop} is ready",
    PAYMENT_FAILED: "Your payment to {shop} did not go through",
    RECEIVED: "We received your order at {shop}: payment processing",
}


@dataclass(frozen=True)
class Composed:
    message: EmailMessage
    recipient: str


class Composer:
    """Renders one kind of email for one record."""

    def __init__(self, shop: Shop) -> None:
        self.shop = shop

    def landing_url(self, session_id: str) -> str:
        return f"{self.shop.public_url}/checkout/complete?session_id={session_id}"

    def recipient(self, record: FulfillmentRecord) -> Address:
        """The customer's address; ``AddressError`` when the session has none usable."""
        email = (record.customer or {}).get("email")
        if not isinstance(email, str) or not email.strip():
            raise AddressError("the session has no customer email")
        try:
            return parse_address(email.strip(), display_name=(record.customer or {}).get("name"))
        except ValueError as exc:
            raise AddressError(f"the customer email is not usable: {exc}") from None

    def render(self, kind: str, record: FulfillmentRecord) -> tuple[str, str, str]:
        """(subject, text, html) of ``kind`` for ``record``."""
        if kind not in SUBJECTS:
            raise ValueError(f"unknown email kind {kind!r}; one of {', '.join(KINDS)}")
        subject = clean_text(SUBJECTS[kind].format(shop=self.shop.name), 250)
        context = {
            "kind": kind,
            "record": record,
            "shop": self.shop,
            "support": self.shop.support.addr_spec,
            "customer_name": clean_text((record.customer or {}).get("name")),
            "landing_url": self.landing_url(record.session_id),
            "retry_url": self.shop.retry_url,
            "subject": subject,
            "item_badge": item_badge,
            "reference": record.session_id[-12:],
        }
        text = TEMPLATES.get_template(f"mail/{kind}.txt").render(context)
        html = TEMPLATES.get_template(f"mail/{kind}.html").render(context)
        return subject, text, html

    def compose(self, kind: str, record: FulfillmentRecord, message_id: str) -> Composed:
        to = self.recipient(record)
        subject, text, html = self.render(kind, record)
        message = EmailMessage(policy=SMTP)
        message["Subject"] = subject
        message["From"] = self.shop.sender
        message["To"] = to
        if self.shop.support.addr_spec != self.shop.sender.addr_spec:
            message["Reply-To"] = self.shop.support
        message["Message-ID"] = message_id
        message["Date"] = format_datetime(datetime.now(UTC), usegmt=True)
        # RFC 3834: a message a program sent; auto-responders do not answer it.
        message["Auto-Submitted"] = "auto-generated"
        message.set_content(text, subtype="plain", charset="utf-8")
        message.add_alternative(html, subtype="html", charset="utf-8")
        return Composed(message, to.addr_spec)
