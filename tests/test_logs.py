"""Logs of a real `fulfill serve`: JSON lines that tell a session's story and keep its secrets."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import pythonjsonlogger.json
from click.testing import CliRunner

import fulfill.operations  # noqa: F401 - registers `fulfill show`
from fulfill.cli import main
from fulfill.logs import JsonFormatter, is_log_reference, log_reference, logging_config, scrub
from tests.conftest import HOOK_METADATA, HOOK_SECRET, EmulatorServer, hook_catalog
from tests.processes import Instance, start_instance
from tests.servers import Receiver

SECRET_KEY = "sk_test_LogsMustNeverShowThisKey0123"
WEBHOOK_SECRET = "whsec_LogsMustNeverShowThisSecret0123"
ADMIN_TOKEN = "admin-token-LogsMustNeverShowThis0123"
SECRETS = (SECRET_KEY, WEBHOOK_SECRET, ADMIN_TOKEN, HOOK_SECRET)


def landing(instance: Instance, session_id: str) -> dict[str, Any]:
    answer = httpx.get(
        f"{instance.url}/checkout/complete",
        params={"session_id": session_id},
        headers={"Accept": "application/json"},
        timeout=30,
    )
    record: dict[str, Any] = answer.json()
    return record


def wait_for(instance: Instance, session_id: str, status: str) -> dict[str, Any]:
    """Visit the landing page until it shows ``status``; then the whole record (admin API)."""
    for _ in range(300):
        if landing(instance, session_id)["status"] == status:
            answer = httpx.get(
                f"{instance.url}/api/fulfillments/{session_id}",
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                timeout=30,
            )
            record: dict[str, Any] = answer.json()
            return record
    raise AssertionError(f"{session_id} did not reach {status}")


def paid(shop: EmulatorServer) -> str:
    session = shop.session([(shop.price(product_metadata=HOOK_METADATA), 1)])
    shop.complete(session.id)
    return str(session.id)


def test_serve_logs_json_lines_with_session_and_event_and_no_secret(
    tmp_path: Path, emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    shop = emulator_server
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(hook_catalog(receiver.url))
    log = tmp_path / "serve.log"
    env = {
        "STRIPE_SECRET_KEY": SECRET_KEY,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_API_BASE": shop.url,
        "FULFILL_DATABASE_URL": f"sqlite:///{tmp_path / 'fulfill.db'}",
        "FULFILL_CATALOG": str(catalog),
        "FULFILL_ADMIN_TOKEN": ADMIN_TOKEN,
        "FULFILL_MAX_ATTEMPTS": "1",
        "FULFILL_RECONCILE_INTERVAL": "0",
    }
    instance = start_instance(env, log)
    try:
        shop.post(
            "/_emulator/webhook_endpoints",
            {"url": f"{instance.url}/webhooks/stripe", "secret": WEBHOOK_SECRET},
        )
        # By webhook: fulfilled, then one that fails (its receiver answers 500).
        by_webhook = paid(shop)
        record = wait_for(instance, by_webhook, "fulfilled")
        (event_id,) = [t.split(":", 1)[1] for t in record["triggers"] if t.startswith("webhook:")]
        receiver.failures = 1000
        failing = paid(shop)
        failed = wait_for(instance, failing, "failed")
        (failed_event,) = [
            t.split(":", 1)[1] for t in failed["triggers"] if t.startswith("webhook:")
        ]
        receiver.failures = 0
        # By the landing page alone: no event.
        shop.post("/_emulator/webhooks", {"mode": "off"})
        by_landing = paid(shop)
        wait_for(instance, by_landing, "fulfilled")
        # A forged delivery, and the admin API with its token.
        forged = httpx.post(
            f"{instance.url}/webhooks/stripe",
            content=b'{"id": "evt_forged"}',
            headers={"Stripe-Signature": "t=1,v1=00"},
        )
        assert forged.status_code == 400
        admin = httpx.get(
            f"{instance.url}/api/fulfillments/{by_webhook}",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert admin.status_code == 200
        # A load balancer's probes: each looks for pending migrations.
        for _ in range(5):
            assert httpx.get(f"{instance.url}/readyz").status_code == 200
    finally:
        instance.stop()

    text = log.read_text()
    for secret in SECRETS:
        assert secret not in text
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert lines, "serve logged nothing"
    for line in lines:
        assert {"time", "level", "logger", "message", "session_ref", "event_id"} <= set(line)
    # A session ID opens the customer's order: no line carries one whole, in any field.
    sessions = (by_webhook, failing, by_landing)
    for session_id in sessions:
        assert session_id not in text
    references = {session_id: log_reference(session_id) for session_id in sessions}
    for reference in references.values():
        assert is_log_reference(reference)
    # Every line inside a fulfillment carries its session's reference, and only those.
    for line in lines:
        if line["logger"] in ("fulfill.engine", "fulfill.actions.webhook"):
            assert line["session_ref"] in references.values(), line
        assert line["session_ref"] in (None, *references.values()), line

    def about(session_id: str) -> list[dict[str, Any]]:
        return [line for line in lines if line["session_ref"] == references[session_id]]

    # Migrations say what they applied, once; probes add no alembic line.
    migrations = [line["message"] for line in lines if line["logger"].startswith("alembic")]
    assert migrations
    assert all(message.startswith("Running upgrade") for message in migrations)

    # Inside a webhook's fulfillment: the session and the event on every line.
    (done,) = [line for line in about(by_webhook) if line["message"] == "fulfilled"]
    assert done["logger"] == "fulfill.engine"
    assert done["event_id"] == event_id
    failure = [line for line in about(failing) if line["level"] == "WARNING"]
    assert failure
    assert {line["event_id"] for line in failure} == {failed_event}
    assert any("answered 500" in line["message"] for line in failure)
    # A landing page's fulfillment: the session, and no event.
    (quiet,) = [line for line in about(by_landing) if line["message"] == "fulfilled"]
    assert quiet["event_id"] is None
    assert [line for line in lines if "refused a webhook delivery" in line["message"]]

    # Access lines carry no full session ID, anywhere in the line.
    access = [line for line in lines if line["logger"] == "fulfill.access"]
    landing_lines = [line for line in access if "/checkout/complete" in line["message"]]
    assert landing_lines
    admin_lines = [line for line in access if "/api/fulfillments/" in line["message"]]
    assert admin_lines
    for line in access:
        assert line["session_ref"] is None
        for session_id in (by_webhook, failing, by_landing):
            assert session_id not in json.dumps(line)
    assert any(f"session_id={by_landing[:14]}…" in line["message"] for line in landing_lines)

    # From a log line back to the record: `fulfill show` takes the reference, and prints it.
    reference = failure[0]["session_ref"]
    shown = CliRunner().invoke(main, ["show", reference, "--json"], env=env)
    assert shown.exit_code == 0, shown.output
    record = json.loads(shown.stdout)
    assert (record["session_id"], record["status"]) == (failing, "failed")
    assert record["log_reference"] == reference
    table = CliRunner().invoke(main, ["show", reference], env=env)
    assert table.exit_code == 0, table.output
    assert f"in the logs: {reference}" in table.stdout
    unknown = CliRunner().invoke(main, ["show", reference[:-1] + "x"], env=env)
    assert unknown.exit_code != 0


def test_a_log_reference_is_stable_short_and_not_the_id() -> None:
    session_id = "cs_test_a1" + "Zq9" * 19 + "x"
    reference = log_reference(session_id)
    assert reference == log_reference(session_id)
    assert reference.startswith(session_id[:16] + "-")
    assert len(reference) == 16 + 1 + 10
    assert is_log_reference(reference)
    assert not is_log_reference(session_id)
    # A short ID is never kept whole (at most half of it, and the mode).
    assert log_reference("cs_test_abc").startswith("cs_test_-")
    # Whole IDs in a message or traceback become references; cut-short forms stay.
    assert scrub(f"no such session: {session_id}!") == f"no such session: {reference}!"
    assert scrub(f"{session_id[:16]}… and {reference}") == f"{session_id[:16]}… and {reference}"


def json_formatter() -> JsonFormatter:
    config = logging_config(json_lines=True)["formatters"]["fulfill"]
    options = {key: value for key, value in config.items() if key != "()"}
    return JsonFormatter(**options)


def record(message: str, *args: Any, **attributes: Any) -> logging.LogRecord:
    line = logging.LogRecord("fulfill.access", logging.INFO, __file__, 1, message, args, None)
    line.__dict__.update({"session_ref": None, "event_id": None, **attributes})
    return line


@pytest.mark.parametrize(
    "line",
    [
        record(
            '%s "%s %s" %d %.1fms',
            "127.0.0.1",
            "GET",
            "/checkout/complete?session_id=cs_…",
            200,
            1.25,
        ),
        record("fulfilled", session_ref="cs_test_a1b2c3d4-9f86d08188", event_id="evt_1"),
        record('quotes " and \\ and\nnewlines, «ünïcode» and \x00 control'),
        record("a number where a string goes", event_id=7),
        record("an extra field", customer="someone"),
        record({"a": "dict"}),  # type: ignore[arg-type]
    ],
    ids=["access", "context", "escapes", "number", "extra", "dict"],
)
def test_the_json_lines_are_python_json_loggers_own(line: logging.LogRecord) -> None:
    # Plain records take a direct path (fulfill.logs.JsonFormatter.format): the
    # same line as the library writes, to the character.
    formatter = json_formatter()
    ours = formatter.format(line)
    library = pythonjsonlogger.json.JsonFormatter.format(formatter, line)
    assert ours == library
    assert json.loads(ours)["logger"] == "fulfill.access"


def test_a_json_line_with_a_traceback_keeps_no_session_id() -> None:
    session_id = "cs_test_a1" + "Zq9" * 19 + "x"
    try:
        raise RuntimeError(f"no such session: {session_id}")
    except RuntimeError:
        line = record("failed")
        line.exc_info = sys.exc_info()
    text = json_formatter().format(line)
    assert session_id not in text
    assert log_reference(session_id) in json.loads(text)["exc_info"]


def test_the_time_of_a_json_line_is_loggings_own() -> None:
    formatter = json_formatter()
    plain = logging.Formatter()
    line = record("now")
    for created in (1_700_000_000.0, 1_700_000_000.999, 1_700_000_001.5, 1_600_000_000.25):
        line.created, line.msecs = created, (created - int(created)) * 1000
        assert formatter.formatTime(line) == plain.formatTime(line)
