"""The ``webhook`` action (SPEC §6): POST the item, signed, to the merchant's own system.

The receiver is told the idempotency key (``Idempotency-Key`` header) because
this service may POST the same item again after a crash between the answer
and recording it; the receiver deduplicates on it. The body is signed like
Stripe signs its webhooks, ``t=…,v1=HMAC-SHA256("{t}.{body}")``, so receivers
can reuse what they know; ``sign`` is pure so they and the tests can verify.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import httpx

from fulfill.actions.base import ActionError, ItemContext
from fulfill.catalog import is_http_url

SIGNATURE_HEADER = "Fulfill-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"

MAX_MESSAGE = 2000
MAX_LABEL = 200
MAX_LINKS = 20
# Enough for any sensible {"message", "links"} answer; more is not read, so a
# misbehaving receiver cannot make a worker buffer an unbounded body.
MAX_ANSWER_BYTES = 256 * 1024
ERROR_EXCERPT = 200


def sign(body: bytes, secret: str, timestamp: int) -> str:
    """The ``Fulfill-Signature`` header value for ``body`` sent at ``timestamp`` (unix seconds)."""
    signed = f"{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def payload(item: ItemContext) -> dict[str, Any]:
    """The JSON body sent for one line item."""
    return {
        "session_id": item.session_id,
        "line_item_id": item.line_item_id,
        "price_id": item.price_id,
        "product_id": item.product_id,
        "quantity": item.quantity,
        "description": item.description,
        "customer": dict(item.customer),
        "shipping": dict(item.shipping) if item.shipping is not None else None,
        "metadata": dict(item.metadata),
        "livemode": item.livemode,
    }


def sanitize_result(answer: Any) -> dict[str, Any]:
    """Keep only the parts of a receiver's answer that are safe to store and show.

    The result ends up as links on the customer's landing page, so only
    http(s) URLs survive (a ``javascript:`` link would run in the customer's
    browser) and text is bounded.
    """
    if not isinstance(answer, Mapping):
        return {}
    result: dict[str, Any] = {}
    message = answer.get("message")
    if isinstance(message, str) and message.strip():
        result["message"] = message[:MAX_MESSAGE]
    links = answer.get("links")
    if isinstance(links, list):
        kept = []
        for link in links:
            if not isinstance(link, Mapping):
                continue
            url = link.get("url")
            if not isinstance(url, str) or not is_http_url(url):
                continue
            label = link.get("label")
            if not isinstance(label, str) or not label.strip():
                label = url
            kept.append({"label": label[:MAX_LABEL], "url": url})
        if kept:
            result["links"] = kept[:MAX_LINKS]
    return result


class WebhookAction:
    """POSTs each line item to ``options["url"]``; a 2xx answer means done.

    ``options`` are a catalog entry's checked options: ``url``, ``secret``
    (already resolved) and ``timeout`` in seconds (the whole exchange, not
    each read). ``http`` is the engine's shared client; it is not closed here.
    """

    name = "webhook"

    def __init__(
        self,
        options: Mapping[str, Any],
        http: httpx.AsyncClient,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url: str = options["url"]
        self.secret: str = options["secret"]
        self.timeout = float(options.get("timeout", 10))
        self.http = http
        self.clock = clock

    async def perform(self, item: ItemContext) -> dict[str, Any]:
        """POST the item; return the sanitised answer, or raise ``ActionError``."""
        body = json.dumps(payload(item), separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            IDEMPOTENCY_HEADER: item.idempotency_key,
            SIGNATURE_HEADER: sign(body, self.secret, int(self.clock())),
        }
        try:
            # httpx's timeout bounds each read; fail_after bounds the whole
            # exchange, so a receiver trickling bytes cannot hold the worker.
            with anyio.fail_after(self.timeout):
                status, answer = await self._post(body, headers)
        except (TimeoutError, httpx.TimeoutException):
            raise ActionError(f"webhook {self.url} timed out after {self.timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise ActionError(
                f"webhook {self.url} failed: {type(exc).__name__}: {str(exc) or 'no detail'}"
            ) from None
        if not 200 <= status < 300:
            excerpt = answer.decode("utf-8", errors="replace")[:ERROR_EXCERPT]
            raise ActionError(f"webhook {self.url} answered {status}: {excerpt!r}")
        # The item is done now, whatever the body says: an unreadable body
        # (not JSON, cut at the size limit, nested too deep) only means no result.
        try:
            parsed = json.loads(answer)
        except (ValueError, RecursionError):
            return {}
        return sanitize_result(parsed)

    async def _post(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        async with self.http.stream(
            "POST",
            self.url,
            content=body,
            headers=headers,
            timeout=self.timeout,
            # A redirected POST would turn into a GET elsewhere: a 3xx is a failure.
            follow_redirects=False,
        ) as response:
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_ANSWER_BYTES:
                    break
            return response.status_code, b"".join(chunks)
