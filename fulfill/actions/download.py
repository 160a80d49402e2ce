"""The ``download`` action (SPEC §6): a signed, expiring link to the entry's file.

The link is ``{FULFILL_PUBLIC_URL}/downloads/{token}``. The token names the
session, the line item and the file, and when it expires, and carries an
HMAC-SHA256 of all that under the service's signing key: changing any part of
it (another session, another item, a later expiry) breaks the signature. It
holds no path; ``GET /downloads/{token}`` (``fulfill.downloads``) finds the
file through the grant this action records, so the server's folder layout is
never shown to customers.

``make_token`` and ``read_token`` are pure, like the webhook signature check,
so tests and other tools can mint and check links without a server.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fulfill.actions.base import ActionError, ItemContext, utcnow
from fulfill.errors import FulfillError
from fulfill.records import iso
from fulfill.store.deliverables import Deliverables

TOKEN_VERSION = 1
MAX_TOKEN = 2048  # far above any token this service makes; longer is refused unread
# Domain separation: the key signs download links and nothing else, even when
# it is derived from a secret used elsewhere (the Stripe key).
KEY_CONTEXT = b"fulfill/download-links/v1"
_SIGNED_PREFIX = b"fulfill.download."


class LinkInvalid(FulfillError):
    """Not a download link this service made: damaged, altered or signed by another key."""

    status_code = 403
    code = "invalid_download_link"


class LinkExpired(FulfillError):
    """A genuine link past its expiry."""

    status_code = 410
    code = "download_link_expired"


@dataclass(frozen=True)
class DownloadClaim:
    """What a download token says: this file of this line item, until ``expires`` (unix s)."""

    session_id: str
    line_item_id: str
    file_name: str
    expires: int


def signing_key(secret: str) -> bytes:
    """The HMAC key of download links, derived from ``secret``.

    ``secret`` is ``FULFILL_SIGNING_KEY`` when set, otherwise the Stripe
    secret key: every instance of the service has it, so links made by one
    are honoured by all, with nothing more to configure. Derived with HMAC so
    that a link never carries anything computed with the Stripe key itself.
    """
    return hmac.new(secret.encode(), KEY_CONTEXT, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(key: bytes, payload: str) -> str:
    return _b64(hmac.new(key, _SIGNED_PREFIX + payload.encode(), hashlib.sha256).digest())


def make_token(key: bytes, claim: DownloadClaim) -> str:
    """``{payload}.{signature}``, both base64url: safe in a URL path as is."""
    body = [TOKEN_VERSION, claim.session_id, claim.line_item_id, claim.file_name, claim.expires]
    payload = _b64(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode())
    return f"{payload}.{_signature(key, payload)}"


def read_token(key: bytes, token: str, now: float) -> DownloadClaim:
    """The claim of a genuine, unexpired token; ``LinkInvalid`` or ``LinkExpired`` otherwise.

    The signature is checked (in constant time) before anything in the
    payload is read, and before the expiry, so an altered link is always
    "invalid", never "expired".
    """
    if len(token) > MAX_TOKEN or not token.isascii() or token.count(".") != 1:
        raise LinkInvalid("malformed download token")
    payload, signature = token.split(".")
    if not hmac.compare_digest(_signature(key, payload), signature):
        raise LinkInvalid("bad download token signature")
    try:
        body = json.loads(_unb64(payload))
    except (ValueError, binascii.Error):
        raise LinkInvalid("unreadable download token") from None
    if (
        not isinstance(body, list)
        or len(body) != 5
        or body[0] != TOKEN_VERSION
        or not all(isinstance(part, str) for part in body[1:4])
        or not isinstance(body[4], int)
        or isinstance(body[4], bool)
    ):
        raise LinkInvalid("unknown download token format")
    claim = DownloadClaim(body[1], body[2], body[3], body[4])
    if now >= claim.expires:
        raise LinkExpired("download link expired")
    return claim


def _ceil_second(moment: datetime) -> datetime:
    """Round up to the whole second a token can carry, so a link never lives shorter."""
    whole = moment.replace(microsecond=0)
    return whole if whole == moment else whole + timedelta(seconds=1)


def unix(moment: datetime) -> int:
    """Naive UTC (the store's) → unix seconds."""
    return math.ceil(moment.replace(tzinfo=UTC).timestamp())


def expiry_text(moment: datetime) -> str:
    """``4 Dec 2026, 20:00 UTC``: how the customer is told when a link stops working."""
    return f"{moment.day} {moment:%b %Y, %H:%M} UTC"


class DownloadAction:
    """Grants the entry's ``file`` for ``link_ttl`` seconds and returns its link."""

    name = "download"

    def __init__(
        self,
        options: Mapping[str, Any],
        deliverables: Deliverables,
        *,
        public_url: str,
        key: bytes,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.file = Path(options["file"])
        self.ttl = int(options["link_ttl"])
        self.label: str | None = options.get("label")
        self.deliverables = deliverables
        self.public_url = public_url.rstrip("/")
        self.key = key
        self.clock = clock

    async def perform(self, item: ItemContext) -> dict[str, Any]:
        """Record the grant (once per item) and return ``{"links", "expires_at", "message"}``."""
        if not self.file.is_file():
            # The catalog checked it at start; it may have gone since. Failing
            # now (and retrying) beats handing out a link that cannot work.
            raise ActionError(f"download file {self.file} is missing; put it back, then retry")
        now = self.clock()
        grant = await self.deliverables.grant_download(
            session_id=item.session_id,
            line_item_id=item.line_item_id,
            file_name=self.file.name,
            path=str(self.file),
            label=self.label,
            expires_at=_ceil_second(now + timedelta(seconds=self.ttl)),
            now=now,
        )
        claim = DownloadClaim(
            grant.session_id, grant.line_item_id, grant.file_name, unix(grant.expires_at)
        )
        url = f"{self.public_url}/downloads/{make_token(self.key, claim)}"
        return {
            "links": [{"label": grant.label or grant.file_name, "url": url}],
            "expires_at": iso(grant.expires_at),
            "message": f"Your download link works until {expiry_text(grant.expires_at)}.",
        }
