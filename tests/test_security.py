"""Hostile input at every way in: refused with the right status, nothing changed, no API call.

Each case asserts the exact answer, that every table of the database is as it
was (``Unchanged``), and, where the input names a session, that the Stripe
emulator's request log did not grow: a forged or malformed request must cost
neither a write nor a call of the account's API capacity (SPEC §10.4, §10.6).
"""

from __future__ import annotations

import pytest

from fulfill.records import valid_session_id
from fulfill.webhooks import WebhookError, parse_event

# IDs that must never reach the API. Each is refused by the pattern itself.
MALFORMED_IDS = [
    pytest.param("cs_test_../../v1/customers", id="traversal"),
    pytest.param("cs_test_abc/def", id="slash"),
    pytest.param("cs_test_abc?expand[]=customer", id="query"),
    pytest.param("cs_test_abc&session_id=cs_test_other", id="ampersand"),
    pytest.param("cs_test_abc#x", id="fragment"),
    pytest.param("cs_test_abc\n", id="trailing-newline"),
    pytest.param("cs_test_abc\r\nX-Injected: 1", id="crlf"),
    pytest.param("cs_test_abc\x00", id="nul"),
    pytest.param("cs_test_\u0430bc", id="cyrillic-a"),
    pytest.param("cs_test_\uff21\uff22\uff23", id="fullwidth"),
    pytest.param("cs_test_abc\u200b", id="zero-width-space"),
    pytest.param("cs_test_" + "a" * 10_000, id="10kb"),
    pytest.param("CS_TEST_abc", id="upper-prefix"),
    pytest.param(" cs_test_abc", id="leading-space"),
    pytest.param("cs_test_", id="empty-suffix"),
    pytest.param("", id="empty"),
]


# -- the pure checks ----------------------------------------------------------------


@pytest.mark.parametrize("session_id", MALFORMED_IDS)
def test_malformed_session_ids_are_not_valid(session_id: str) -> None:
    assert not valid_session_id(session_id)


def test_well_formed_session_ids_are_valid() -> None:
    assert valid_session_id("cs_test_a1B2c3")
    assert valid_session_id("cs_live_" + "Z" * 250)
    assert not valid_session_id("cs_live_" + "Z" * 251)


def test_an_event_id_with_a_trailing_newline_is_refused() -> None:
    body = b'{"object": "event", "id": "evt_1\\n", "type": "x", "livemode": false}'
    with pytest.raises(WebhookError, match="no valid id"):
        parse_event(body)


def test_deeply_nested_json_is_a_bad_event_not_a_crash() -> None:
    # Past the signature check only with a valid secret, but then it was a
    # RecursionError: a 500 that Stripe would retry for three days.
    with pytest.raises(WebhookError, match="nested too deeply"):
        parse_event(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(WebhookError, match="nested too deeply"):
        parse_event(b'{"a":' * 100_000 + b"1" + b"}" * 100_000)
