"""The emails themselves: multipart plain text + HTML, from Jinja2 templates.

Each kind has ``templates/mail/{kind}.txt`` and ``{kind}.html`` (autoescaped:
product names and results are text, never markup) and shows what the
landing page shows: the items, download links, licence keys, access links
and the shipping address, with a link back to the landing page.

Header values cannot become a second header: addresses are parsed and
checked (``parse_address`` refuses control characters), names the customer
typed and the subject are reduced to one line of text (``clean_text``), and
``_header`` refuses a CR or LF in any value before it is set.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from email import message_from_bytes
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import compat32, default
from email.utils import formataddr, formatdate

from fulfill.mail.addresses import AddressError, clean_text, parse_address
from fulfill.presentation import TEMPLATES, item_badge
from fulfill.records import FulfillmentRecord
from fulfill.store.emails import FULFILLED_EMAIL, KINDS, PAYMENT_FAILED_EMAIL, RECEIVED_EMAIL


def message_id_for(session_id: str, kind: str, domain: str) -> str:
    """The email's ``Message-ID``: fixed per session and kind, so a re-send carries the same.

    The session ID is a key to the customer's order, and Message-IDs are
    logged by every mail server on the way: it goes in only as a hash.
    """
    digest = hashlib.sha256(f"{session_id}\0{kind}".encode()).hexdigest()[:32]
    return f"<{kind}.{digest}@{domain}>"


# CRLF line ends, as SMTP wants them; compat32 keeps headers exactly as set.
WIRE = compat32.clone(linesep="\r\n")


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
    FULFILLED_EMAIL: "Your order from {shop} is ready",
    PAYMENT_FAILED_EMAIL: "Your payment to {shop} did not go through",
    RECEIVED_EMAIL: "We received your order at {shop}: payment processing",
}


@dataclass(frozen=True)
class Composed:
    """One email, serialized for the wire, with its envelope."""

    data: bytes
    sender: str
    recipient: str

    @property
    def message(self) -> EmailMessage:
        """The email parsed back (previews, tests); sending uses ``data`` as is."""
        return parse_email(self.data)


def parse_email(data: bytes) -> EmailMessage:
    """An email's bytes (as sent, or an outbox file) as a modern ``EmailMessage``."""
    parsed = message_from_bytes(data, policy=default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def _header(value: str) -> str:
    """A header value as it goes on the wire: one line, RFC 2047 when not ASCII.

    Every value here was built from checked addresses and cleaned text, so a
    CR or LF cannot arrive; refusing one anyway keeps it so if that changes.
    """
    if "\r" in value or "\n" in value:
        raise ValueError("a header value must be one line")
    return value if value.isascii() else Header(value, "utf-8").encode()


def _address(address: Address) -> str:
    return _header(formataddr((address.display_name, address.addr_spec), charset="utf-8"))


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
        except ValueError:
            # Not the address itself: this message goes to logs and the record.
            raise AddressError(
                "the customer email is not usable: it is not an address like name@example.com"
            ) from None

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
        """The email as bytes. Built on the compat32 classes from checked, one-line
        values: a third of the CPU of the ``email`` header registry, at a hundred
        sessions a second (docs/benchmark.md)."""
        to = self.recipient(record)
        subject, text, html = self.render(kind, record)
        # A boundary given, not made: the generator would otherwise scan both
        # bodies for a collision. "=_" cannot occur in base64 (the parts' encoding).
        message = MIMEMultipart("alternative", boundary=f"=_{secrets.token_hex(16)}")
        message["Subject"] = _header(subject)
        message["From"] = _address(self.shop.sender)
        message["To"] = _address(to)
        if self.shop.support.addr_spec != self.shop.sender.addr_spec:
            message["Reply-To"] = _address(self.shop.support)
        message["Message-ID"] = _header(message_id)
        message["Date"] = formatdate(usegmt=True)
        # RFC 3834: a message a program sent; auto-responders do not answer it.
        message["Auto-Submitted"] = "auto-generated"
        message.attach(MIMEText(text, "plain", "utf-8"))
        message.attach(MIMEText(html, "html", "utf-8"))
        return Composed(message.as_bytes(policy=WIRE), self.shop.sender.addr_spec, to.addr_spec)
