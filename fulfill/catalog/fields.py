"""What a catalog entry may say: its fields, their defaults and limits, and their values' forms."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

# The fields every entry has (``timeout`` optional), and the options of each action.
COMMON_FIELDS = ("name", "match", "action", "timeout")
ACTION_FIELDS: Mapping[str, tuple[str, ...]] = {
    "download": ("file", "link_ttl", "label"),
    "access": ("service", "url", "duration"),
    "license": ("format",),
    "shipment": (),
    "webhook": ("url", "secret"),
    "python": ("callable",),
}
MATCH_KEYS = ("price", "product", "lookup_key", "metadata")

DEFAULT_LINK_TTL = "7d"
DEFAULT_LICENSE_FORMAT = "XXXX-XXXX-XXXX-XXXX"
# How long one line item's action may take before it counts as failed (the
# entry's ``timeout``). Without a bound, a hung callable would keep its
# session ``fulfilling`` (its lease renewed by the heartbeat) until a restart.
DEFAULT_ACTION_TIMEOUT = "30s"
MAX_ACTION_TIMEOUT = 3600
# A webhook's receiver should answer quickly and do slow work in the
# background: a shorter default, and a lower limit, for its HTTP exchange.
DEFAULT_WEBHOOK_TIMEOUT = "10s"
MAX_WEBHOOK_TIMEOUT = 300

_DURATION_RE = re.compile(r"^([0-9]+)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_CALLABLE_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def parse_duration(text: str) -> int:
    """``"30s"``, ``"10m"``, ``"2h"``, ``"7d"`` → seconds; ``ValueError`` for anything else."""
    found = _DURATION_RE.match(text)
    if found is None:
        raise ValueError(
            f"{text!r} is not a duration; write a number and a unit, "
            'like "30s", "10m", "2h" or "7d"'
        )
    return int(found.group(1)) * _UNIT_SECONDS[found.group(2)]


def is_http_url(url: str) -> bool:
    """True for an absolute ``http://`` or ``https://`` URL with a host and no whitespace."""
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


def resolve_callable(spec: str) -> Callable[..., Any]:
    """Import ``"package.module:attr"`` (attr may be dotted); ``ValueError`` if unusable."""
    if not _CALLABLE_RE.match(spec):
        raise ValueError(f'{spec!r} is not of the form "package.module:function"')
    module_name, _, attr_path = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"cannot import module {module_name!r} ({exc}); "
            "put it next to the catalog file, install it, or add its folder to PYTHONPATH"
        ) from exc
    except Exception as exc:
        # Importing runs the merchant's module code; any failure there is theirs to see.
        raise ValueError(
            f"importing module {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attr_path!r}") from None
    if not callable(target):
        raise ValueError(f"{spec!r} is not callable (it is of type {type(target).__name__})")
    return target  # type: ignore[no-any-return]


def quote(text: str) -> str:
    """``text`` as TOML writes a string, for messages that name a field or an entry."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
