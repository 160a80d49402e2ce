"""Email addresses and header text: checked, one line, never a second header."""

from __future__ import annotations

import re
from email.headerregistry import Address
from email.utils import parseaddr
from typing import Any

from fulfill.errors import FulfillError

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]+")


class AddressError(FulfillError):
    """Not an address an email can be sent to or from."""

    code = "invalid_address"


def clean_text(value: Any, limit: int = 200) -> str:
    """One line of text: control characters (CR, LF, tabs) become one space."""
    text = _CONTROL.sub(" ", str(value or "")).strip()
    return text[:limit]


def parse_address(text: str, *, display_name: str | None = None) -> Address:
    """``"Shop <orders@example.com>"`` or ``"orders@example.com"`` as an ``Address``.

    Raises ``ValueError`` saying what is wrong (pydantic reports it as the
    setting's error); CR/LF anywhere is refused rather than cleaned.
    """
    if _CONTROL.search(text):
        raise ValueError("must be one line, without control characters")
    name, spec = parseaddr(text)
    if not spec or spec.count("@") != 1 or " " in spec:
        raise ValueError(f"must be an email address like orders@example.com, got {text!r}")
    local, domain = spec.split("@")
    if not local or "." not in domain or domain.startswith(".") or domain.endswith("."):
        raise ValueError(f"must be an email address like orders@example.com, got {text!r}")
    try:
        return Address(
            display_name=clean_text(display_name if display_name is not None else name),
            username=local,
            domain=domain,
        )
    except (ValueError, TypeError) as exc:  # the header registry's own checks
        raise ValueError(f"must be an email address like orders@example.com: {exc}") from None
