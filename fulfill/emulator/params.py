"""Reading Stripe's form-encoded parameters, with Stripe's errors.

Stripe takes ``a[b][0][c]=v`` nested form encoding in query strings and POST
bodies alike (the official libraries send lists as ``expand[0]=…``, people
with curl send ``expand[]=…``); ``qs_codec`` decodes both. Every reader here
names the full parameter in its error (``line_items[3][quantity]``) as Stripe
does, so a client sees which value was wrong.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import qs_codec

from fulfill.emulator.errors import invalid, missing_parameter, unknown_parameter

_DECODE = qs_codec.DecodeOptions(list_limit=10_000, depth=8, parameter_limit=10_000)

Params = dict[str, Any]


def decode(raw: str) -> Params:
    """Decode a query string or form body into nested dicts and lists."""
    if not raw:
        return {}
    decoded = qs_codec.decode(raw, _DECODE)
    if not isinstance(decoded, dict):
        return {}
    return _listify(decoded)  # type: ignore[no-any-return]


def _listify(value: Any) -> Any:
    """Turn ``{"0": a, "1": b}`` (what very long index lists decode to) into lists."""
    if isinstance(value, dict):
        converted = {k: _listify(v) for k, v in value.items()}
        if converted and all(isinstance(k, str) and k.isdigit() for k in converted):
            return [converted[k] for k in sorted(converted, key=int)]
        return converted
    if isinstance(value, list):
        return [_listify(v) for v in value]
    return value


def check_keys(params: Params, allowed: Iterable[str], prefix: str = "") -> None:
    """400 ``parameter_unknown`` for the first key not in ``allowed``."""
    allowed_set = set(allowed)
    for key in params:
        if key not in allowed_set:
            raise unknown_parameter(f"{prefix}[{key}]" if prefix else key)


def sub(prefix: str, key: str | int) -> str:
    return f"{prefix}[{key}]" if prefix else str(key)


def get_str(params: Params, key: str, prefix: str = "", *, required: bool = False) -> str | None:
    value = params.get(key)
    name = sub(prefix, key)
    if value is None or value == "":
        if required:
            raise missing_parameter(name)
        return None
    if not isinstance(value, str):
        raise invalid(name, f"Invalid string: {name} must be a string")
    return value


def get_choice(
    params: Params, key: str, choices: Iterable[str], prefix: str = "", *, required: bool = False
) -> str | None:
    value = get_str(params, key, prefix, required=required)
    options = list(choices)
    if value is not None and value not in options:
        name = sub(prefix, key)
        raise invalid(name, f"Invalid {name}: must be one of {', '.join(options)}", kind="string")
    return value


def get_int(
    params: Params,
    key: str,
    prefix: str = "",
    *,
    required: bool = False,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int | None:
    value = params.get(key)
    name = sub(prefix, key)
    if value is None or value == "":
        if required:
            raise missing_parameter(name)
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.lstrip("-").isdigit() and len(value) < 19:
        number = int(value)
    else:
        raise invalid(name, f"Invalid integer: {_show(value)}", kind="integer")
    if minimum is not None and number < minimum:
        raise invalid(
            name, f"This value must be greater than or equal to {minimum}.", kind="integer"
        )
    if maximum is not None and number > maximum:
        raise invalid(name, f"This value must be less than or equal to {maximum}.", kind="integer")
    return number


def get_bool(params: Params, key: str, prefix: str = "") -> bool | None:
    value = params.get(key)
    if value is None or value == "":
        return None
    if value in ("true", True):
        return True
    if value in ("false", False):
        return False
    name = sub(prefix, key)
    raise invalid(name, f"Invalid boolean: {_show(value)}", kind="boolean")


def get_list(params: Params, key: str, prefix: str = "") -> list[Any]:
    value = params.get(key)
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        return [value]
    name = sub(prefix, key)
    raise invalid(name, f"Invalid array: {name} must be a list", kind="array")


def get_metadata(params: Params, key: str = "metadata", prefix: str = "") -> dict[str, str]:
    """Stripe metadata: up to 50 string keys of 40 chars, values of 500 chars."""
    value = params.get(key)
    name = sub(prefix, key)
    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        raise invalid(name, f"Invalid hash: {name} must be a hash", kind="hash")
    if len(value) > 50:
        raise invalid(name, "Metadata can have at most 50 keys.", kind="hash")
    result: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(v, str) or len(str(k)) > 40 or len(v) > 500:
            raise invalid(sub(name, k), f"Invalid metadata value for {k!r}", kind="string")
        result[str(k)] = v
    return result


def get_hash(params: Params, key: str, prefix: str = "") -> Params | None:
    value = params.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, dict):
        name = sub(prefix, key)
        raise invalid(name, f"Invalid hash: {name} must be a hash", kind="hash")
    return value


def _show(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:40] + "…"
