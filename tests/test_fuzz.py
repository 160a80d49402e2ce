"""Fuzzing the two ways in that take arbitrary input: the admin API and the webhook endpoint.

schemathesis generates requests from the admin API's own schema
(``/api/openapi.json``), valid and invalid, and checks every answer: never a
500, always documented, always matching the response schema. The webhook
endpoint has no schema to read, so its requests are generated here, half of
them correctly signed so that the parsing behind the signature check is
fuzzed too; it may answer only 200, 400, 413 or 503. Bounded and
derandomized: the same few hundred requests every run, in seconds.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from tests.conftest import WEBHOOK_SECRET, ServiceFactory
from tests.synthetic import write_records

ADMIN_TOKEN = "admin-token-for-fuzzing-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# "A schema-valid request must be accepted" would need the schema to say
# everything the server checks: that "since" is at most 30 days, that a retry
# names a failed record. Every other check runs: no 500, only documented
# statuses and content types, answers that match their schema, and invalid
# requests refused.
LOOSE = [positive_data_acceptance]
FUZZ = settings(
    max_examples=60,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """Fuzzing is about input handling: SQLite is enough (conftest's adds PostgreSQL)."""
    return f"sqlite:///{tmp_path / 'fulfill.db'}"


def test_the_admin_api_answers_every_generated_request_as_documented(
    service_factory: ServiceFactory, database_url: str
) -> None:
    service = service_factory(FULFILL_ADMIN_TOKEN=ADMIN_TOKEN, webhooks=False)
    write_records(database_url, ["fulfilled", "failed", "pending", "expired"] * 3)
    raw = service.client.get("/api/openapi.json", headers=AUTH)
    assert raw.status_code == 200
    schema = schemathesis.openapi.from_dict(raw.json())
    base_url = f"{service.url}/api"
    seen: dict[int, int] = {}

    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

        @FUZZ
        @given(case=schema.as_strategy(generation_mode=mode))
        def fuzz(case: Any) -> None:
            response = case.call(base_url=base_url, headers=AUTH, timeout=30)
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            case.validate_response(response, headers=AUTH, excluded_checks=LOOSE)

        fuzz()
    assert 500 not in seen
    assert 200 in seen, seen
    assert 400 in seen, seen


# -- the webhook endpoint -------------------------------------------------------------------

HANDLED = (
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "checkout.session.expired",
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)
session_ids = st.one_of(
    st.from_regex(r"cs_(test|live)_[A-Za-z0-9]{1,30}", fullmatch=True),
    st.text(max_size=40),
    json_values,
)
events = st.fixed_dictionaries(
    {
        "id": st.one_of(st.from_regex(r"evt_[A-Za-z0-9_]{1,30}", fullmatch=True), json_values),
        "object": st.sampled_from(["event", "charge", ""]) | json_values,
        "type": st.sampled_from(HANDLED) | st.text(max_size=30) | json_values,
        "livemode": st.sampled_from([False, True]) | json_values,
        "data": st.one_of(
            st.fixed_dictionaries(
                {
                    "object": st.fixed_dictionaries(
                        {
                            "object": st.sampled_from(["checkout.session", "charge"]) | json_values,
                            "id": session_ids,
                        }
                    )
                }
            ),
            json_values,
        ),
    },
    optional={"created": st.integers(), "api_version": st.text(max_size=12)},
)
# Events the endpoint should take: some of an ignored type, some naming
# sessions Stripe does not know (recorded, then "session_not_found").
good_events = st.fixed_dictionaries(
    {
        "id": st.from_regex(r"evt_[A-Za-z0-9]{8,24}", fullmatch=True),
        "object": st.just("event"),
        "type": st.sampled_from((*HANDLED, "customer.created", "invoice.paid")),
        "livemode": st.just(False),
        "data": st.fixed_dictionaries(
            {
                "object": st.fixed_dictionaries(
                    {
                        "object": st.just("checkout.session"),
                        "id": st.from_regex(r"cs_test_[A-Za-z0-9]{8,40}", fullmatch=True),
                    }
                )
            }
        ),
    }
)
ODD_BODIES = (
    b"",
    b"\xff\xfe\x00",
)
bodies = st.one_of(
    good_events.map(lambda event: json.dumps(event).encode()),
    events.map(lambda event: json.dumps(event).encode()),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=512),
    st.sampled_from(ODD_BODIES),
)
# What h11 lets a client send as a header value: no control bytes but tab, no outer spaces.
header_bytes = st.binary(max_size=300).map(
    lambda raw: bytes(b for b in raw if (b >= 0x20 and b != 0x7F) or b == 0x09).strip()
)
# How to sign: not at all, correctly (so the body's parsing is fuzzed), with
# another secret, at a fuzzed time, or a fuzzed header.
signings = st.one_of(
    st.just(("none", 0)),
    st.tuples(st.just("valid"), st.integers(-400, 400)),
    st.tuples(st.just("other-secret"), st.just(0)),
    st.tuples(st.just("timestamp"), st.integers(-(2**40), 2**40)),
    st.tuples(st.just("raw"), st.just(0)),
)
deliveries = st.one_of(
    # Half of them as Stripe would send them, so that they get past the
    # signature; the other half anything at all.
    st.tuples(
        good_events.map(lambda event: json.dumps(event).encode()),
        st.tuples(st.just("valid"), st.integers(-290, 290)),
        st.just(b""),
    ),
    st.tuples(bodies, signings, header_bytes),
)


def test_the_webhook_endpoint_never_answers_other_than_200_400_413_503(
    service_factory: ServiceFactory,
) -> None:
    service = service_factory(webhooks=False)
    seen: dict[int, int] = {}

    @settings(FUZZ, max_examples=150)
    @given(delivery=deliveries)
    @example(delivery=(b"[" * 5000 + b"]" * 5000, ("valid", 0), b""))
    @example(delivery=(b'{"object": "event"' + b" " * 1024 * 1024, ("valid", 0), b""))
    def fuzz(delivery: tuple[bytes, tuple[str, int], bytes]) -> None:
        body, (how, offset), raw = delivery
        now = int(time.time())
        headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json")]
        if how == "valid":
            headers.append((b"stripe-signature", sign(body, WEBHOOK_SECRET, now + offset)))
        elif how == "other-secret":
            headers.append((b"stripe-signature", sign(body, "whsec_someone_else", now)))
        elif how == "timestamp":
            headers.append((b"stripe-signature", sign(body, WEBHOOK_SECRET, offset)))
        elif how == "raw":
            headers.append((b"stripe-signature", raw))
        answer = service.client.post("/webhooks/stripe", content=body, headers=headers)
        seen[answer.status_code] = seen.get(answer.status_code, 0) + 1
        assert answer.status_code in (200, 400, 413, 503), (answer.status_code, answer.text)
        assert answer.headers["content-type"] == "application/json"
        if answer.status_code != 200:
            assert set(answer.json()["error"]) == {"code", "message"}
        # Signed too far in the past stays stale; too far in the future comes
        # back inside as the request takes its time: a minute's margin for that.
        tolerance = service.settings.webhook_tolerance
        if how != "valid" or offset < -tolerance or offset > tolerance + 60:
            assert answer.status_code in (400, 413), "accepted without a valid signature"

    fuzz()
    assert {200, 400, 413} <= set(seen), seen


def sign(payload: bytes, secret: str, timestamp: int) -> bytes:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}".encode()
