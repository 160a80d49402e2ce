"""The operator's commands (SPEC §8): list, show, retry and check, as tables and as JSON."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from fulfill.cli import main
from fulfill.engine import utcnow
from fulfill.logs import log_reference
from tests.conftest import (
    HOOK_METADATA,
    TEST_KEY,
    WEBHOOK_SECRET,
    EmulatorServer,
    ServiceFactory,
    ServiceServer,
    hook_catalog,
)
from tests.servers import Receiver
from tests.synthetic import write_records
from tests.test_cli import env_for
from tests.test_engine import wait_status


def env_of(service: ServiceServer, **extra: str) -> dict[str, str]:
    """The environment of an operator's shell next to ``service``: same API, database, catalog."""
    settings = service.settings
    return {
        "STRIPE_SECRET_KEY": TEST_KEY,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_API_BASE": settings.stripe_api_base,
        "FULFILL_DATABASE_URL": settings.database_url,
        "FULFILL_CATALOG": str(settings.catalog_path),
        "FULFILL_MAIL_OUTBOX": str(settings.mail_outbox),
        **extra,
    }


def fulfill(env: Mapping[str, str | None], *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def shop_with_records(
    service_factory: ServiceFactory, receiver: Receiver, database_url: str
) -> tuple[ServiceServer, dict[str, str]]:
    """A service (no automatic retries) and a database with one record in each of four statuses."""
    service = service_factory(FULFILL_MAX_ATTEMPTS=1)
    # Brackets in Stripe's text: printed as they are, not taken for console markup.
    poster = service.shop.price("Poster [A2]", product_metadata=HOOK_METADATA)
    sessions = {"fulfilled": service.paid_session([(poster, 1)])}
    wait_status(service, sessions["fulfilled"], "fulfilled")
    receiver.failures = 1000
    sessions["failed"] = service.paid_session()
    wait_status(service, sessions["failed"], "failed")
    delayed = service.shop.session([(service.shop.price(product_metadata=HOOK_METADATA), 1)])
    service.shop.complete(delayed.id, "delayed")
    wait_status(service, delayed.id, "awaiting_payment")
    sessions["awaiting_payment"] = delayed.id
    (sessions["expired"],) = write_records(database_url, ["expired"], start=utcnow())
    return service, sessions


def test_list_prints_records_newest_first_as_a_table_and_as_json(
    service_factory: ServiceFactory, receiver: Receiver, database_url: str
) -> None:
    service, sessions = shop_with_records(service_factory, receiver, database_url)
    env = env_of(service)

    records = as_json(fulfill(env, "list", "--json"))
    assert [r["session_id"] for r in records] == [
        sessions[s] for s in ("expired", "awaiting_payment", "failed", "fulfilled")
    ]
    assert [r["status"] for r in records] == ["expired", "awaiting_payment", "failed", "fulfilled"]
    assert records[3]["items"][0]["status"] == "done"

    failed = as_json(fulfill(env, "list", "--status", "failed", "--json"))
    assert [r["session_id"] for r in failed] == [sessions["failed"]]
    assert "500" in failed[0]["last_error"]
    assert len(as_json(fulfill(env, "list", "--limit", "2", "--json"))) == 2

    table = fulfill(env, "list")
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    for status, session_id in sessions.items():
        # One line per record, with its whole session ID: `fulfill list | grep` works.
        (line,) = [line for line in lines if session_id in line]
        assert status in line
    assert "1/1" in next(line for line in lines if sessions["fulfilled"] in line)
    assert "0/1" in next(line for line in lines if sessions["failed"] in line)

    none = fulfill(env, "list", "--status", "payment_failed")
    assert none.exit_code == 0
    assert "no records with status payment_failed" in none.stdout
    assert as_json(fulfill(env, "list", "--status", "payment_failed", "--json")) == []

    typo = fulfill(env, "list", "--status", "fulfiled")
    assert typo.exit_code == 2
    assert "fulfiled" in typo.output


def test_show_prints_the_record_with_its_events_and_triggers(
    service_factory: ServiceFactory, receiver: Receiver, database_url: str
) -> None:
    service, sessions = shop_with_records(service_factory, receiver, database_url)
    env = env_of(service)
    session_id = sessions["fulfilled"]

    record = as_json(fulfill(env, "show", session_id, "--json"))
    # The whole record, as the admin API gives it (the landing page's JSON is the customer's).
    stored = service.record(session_id)
    assert {
        k: v for k, v in record.items() if k not in ("events", "emails", "log_reference")
    } == stored
    assert record["log_reference"] == log_reference(session_id)
    (email,) = record["emails"]
    # Sent in the background: by now, or about to be.
    assert (email["kind"], email["status"] in ("pending", "sending", "sent")) == ("fulfilled", True)
    assert email["message_id"].startswith("<fulfilled.")
    (event,) = record["events"]
    assert event["event_id"].startswith("evt_")
    assert event["type"] == "checkout.session.completed"
    assert event["outcome"] == "processed"
    assert event["received_at"].endswith("Z")
    assert f"webhook:{event['event_id']}" in record["triggers"]

    table = fulfill(env, "show", session_id)
    assert table.exit_code == 0
    text = table.stdout
    assert session_id in text
    assert "fulfilled" in text
    assert "webhook events" in text
    assert event["event_id"] in text
    assert "checkout.session.completed" in text
    assert "Poster [A2]" in text
    assert "emails" in text
    (triggers,) = [line for line in text.splitlines() if line.startswith("triggers: ")]
    assert f"webhook:{event['event_id']}" in triggers

    failed = fulfill(env, "show", sessions["failed"])
    assert "last error:" in failed.stdout
    assert "500" in failed.stdout

    missing = fulfill(env, "show", "cs_test_NoSuchSession0")
    assert missing.exit_code == 2
    assert "no record for cs_test_NoSuchSession0" in missing.output
    assert "Traceback" not in missing.output


def test_retry_fulfills_failed_records_once_their_cause_is_fixed(
    service_factory: ServiceFactory, receiver: Receiver, database_url: str
) -> None:
    service, sessions = shop_with_records(service_factory, receiver, database_url)
    env = env_of(service)
    receiver.failures = 1000
    second = service.paid_session()
    wait_status(service, second, "failed")

    still = fulfill(env, "retry", sessions["failed"], "--json")
    assert still.exit_code == 1  # retried, failed again: a script must see it
    assert [r["status"] for r in json.loads(still.stdout)] == ["failed"]

    receiver.failures = 0  # the receiver is fixed
    one = as_json(fulfill(env, "retry", sessions["failed"], "--json"))
    assert [(r["session_id"], r["status"]) for r in one] == [(sessions["failed"], "fulfilled")]
    assert "cli-retry" in one[0]["triggers"]

    again = fulfill(env, "retry", sessions["failed"])
    assert again.exit_code == 2
    assert "is fulfilled, not failed: nothing to retry" in again.output

    receiver.failures = 1000
    third = service.paid_session()
    wait_status(service, third, "failed")
    receiver.failures = 0
    every = fulfill(env, "retry", "--failed")
    assert every.exit_code == 0, every.output
    assert second in every.stdout
    assert third in every.stdout
    assert "failed" not in every.stdout.replace("--failed", "")
    for session_id in (second, third):
        assert wait_status(service, session_id, "fulfilled")["items"][0]["status"] == "done"
    # Each item reached the receiver until it answered 200, and never after.
    by_key: dict[str, int] = {}
    for request in receiver.received:
        key = request.headers["idempotency-key"]
        by_key[key] = by_key.get(key, 0) + 1
    assert len(by_key) == 4

    nothing = fulfill(env, "retry", "--failed")
    assert nothing.exit_code == 0
    assert "no failed records" in nothing.stdout
    assert fulfill(env, "retry").exit_code == 2
    assert fulfill(env, "retry", second, "--failed").exit_code == 2


# -- check ---------------------------------------------------------------------------------


def check_catalog(tmp_path: Path, receiver: Receiver, *entries: str) -> Path:
    path = tmp_path / "check-catalog.toml"
    path.write_text(hook_catalog(receiver.url) + "\n".join(entries))
    return path


def webhook_entry(name: str, match: str) -> str:
    return f"""
[[product]]
name = "{name}"
match = {{ {match} }}
action = "webhook"
url = "http://127.0.0.1:9/hook"
secret = "s"
"""


def check_env(tmp_path: Path, shop: EmulatorServer, catalog: Path) -> dict[str, str]:
    return {
        "STRIPE_SECRET_KEY": TEST_KEY,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_API_BASE": shop.url,
        # Never created: check reads no database, let alone migrates one.
        "FULFILL_DATABASE_URL": f"sqlite:///{tmp_path / 'nowhere' / 'fulfill.db'}",
        "FULFILL_CATALOG": str(catalog),
    }


def test_check_finds_every_catalog_price_product_and_lookup_key(
    tmp_path: Path, emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    shop = emulator_server
    price = shop.price("E-book")
    product = shop.stripe().v1.prices.retrieve(price).product
    shop.price("Editor", lookup_key="editor_pro")
    catalog = check_catalog(
        tmp_path,
        receiver,
        webhook_entry("E-book", f'price = "{price}"'),
        webhook_entry("Course", f'product = "{product}"'),
        webhook_entry("Editor", 'lookup_key = "editor_pro"'),
    )
    env = check_env(tmp_path, shop, catalog)

    report = as_json(fulfill(env, "check", "--json"))
    assert report["ok"] is True
    results = {f["what"]: f["result"] for f in report["findings"]}
    assert results.pop("email") == "outbox"  # no FULFILL_SMTP_URL: written, not sent
    assert set(results.values()) == {"ok"}
    assert len([w for w in results if w.endswith((" price", " product", " lookup_key"))]) == 3

    table = fulfill(env, "check")
    assert table.exit_code == 0
    assert "missing" not in table.stdout
    assert price in table.stdout
    assert not (tmp_path / "nowhere").exists()


def test_check_reports_a_missing_price_and_exits_1(
    tmp_path: Path, emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    shop = emulator_server
    price = shop.price("E-book")
    catalog = check_catalog(
        tmp_path,
        receiver,
        webhook_entry("E-book", f'price = "{price}"'),
        webhook_entry("Typo'd price", 'price = "price_DoesNotExist42"'),
        webhook_entry("Gone product", 'product = "prod_Gone"'),
        webhook_entry("Unknown key", 'lookup_key = "no_such_key"'),
    )
    env = check_env(tmp_path, shop, catalog)

    result = fulfill(env, "check")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    (missing_price,) = [line for line in lines if "price_DoesNotExist42" in line]
    assert "missing" in missing_price
    assert "does not exist in this Stripe account" in missing_price
    assert any("prod_Gone" in line and "missing" in line for line in lines)
    assert any("no_such_key" in line and "missing" in line for line in lines)
    assert any(price in line and "ok" in line for line in lines)

    report = json.loads(fulfill(env, "check", "--json").stdout)
    assert report["ok"] is False
    missing = sorted(f["detail"].split()[0] for f in report["findings"] if f["result"] == "missing")
    assert missing == ["no_such_key", "price_DoesNotExist42", "prod_Gone"]


def test_check_without_a_key_checks_only_configuration_and_catalog(
    tmp_path: Path, emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    catalog = check_catalog(tmp_path, receiver, webhook_entry("Gone", 'price = "price_Gone"'))
    env: dict[str, str | None] = {
        **check_env(tmp_path, emulator_server, catalog),
        "STRIPE_SECRET_KEY": None,
    }
    report = as_json(fulfill(env, "check", "--json"))
    assert report["ok"] is True
    assert {f["what"]: f["result"] for f in report["findings"]}["stripe"] == "skipped"
    assert emulator_server.get("/_emulator/requests")["total"] == 0


TYPOS = [
    (
        '[[product]]\nname = "E-book"\nmatch = { price = "price_x" }\naction = "downlaod"\n',
        'unknown action "downlaod" (did you mean "download"?)',
    ),
    ("product = 1\n", "write [[product]]"),
]


def test_a_catalog_typo_is_one_clear_line_and_exit_2(
    tmp_path: Path, emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    catalog = tmp_path / "typo.toml"
    for text, says in TYPOS:
        catalog.write_text(text)
        env = check_env(tmp_path, emulator_server, catalog)
        for args in (["check"], ["check", "--json"], ["retry", "--failed"]):
            result = fulfill(env, *args)
            assert result.exit_code == 2, result.output
            # One line, however narrow the terminal, quoting the TOML as written.
            (line,) = result.output.strip().splitlines()
            assert line.startswith(f"error: {catalog}: ")
            assert says in line
            assert result.stdout == ""  # nothing half-printed for a script to parse
    assert emulator_server.get("/_emulator/requests")["total"] == 0


def test_check_reports_a_missing_webhook_secret(
    tmp_path: Path, emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    env: dict[str, str | None] = {
        **env_for(tmp_path, emulator_server, receiver),
        "STRIPE_WEBHOOK_SECRET": None,
    }
    result = CliRunner().invoke(main, ["check", "--json"], env=env)
    assert result.exit_code == 1
    findings = json.loads(result.output)["findings"]
    assert {"what": "webhook secret", "result": "missing"}.items() <= findings[2].items()


def test_a_short_admin_token_is_refused_at_start(
    tmp_path: Path, emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    env = {**env_for(tmp_path, emulator_server, receiver), "FULFILL_ADMIN_TOKEN": "short"}
    result = CliRunner().invoke(main, ["check"], env=env)
    assert result.exit_code == 2
    assert "FULFILL_ADMIN_TOKEN: must be at least 24 characters" in result.output
    assert "short" not in result.output.replace("short ", "")


def test_list_shows_setup_sessions_as_not_applicable(
    service_factory: ServiceFactory, receiver: Receiver
) -> None:
    service = service_factory()
    card = service.shop.stripe().v1.checkout.sessions.create(
        {"mode": "setup", "currency": "eur", "success_url": "http://shop.test/saved"}
    )
    service.shop.complete(card.id)
    wait_status(service, card.id, "not_applicable")
    paid = service.paid_session()
    wait_status(service, paid, "fulfilled")
    env = env_of(service)
    only = as_json(fulfill(env, "list", "--status", "not_applicable", "--json"))
    assert [(r["session_id"], r["mode"], r["items"]) for r in only] == [(card.id, "setup", [])]
    (line,) = [line for line in fulfill(env, "list").stdout.splitlines() if card.id in line]
    assert "not_applicable" in line
