"""Emails to the customer, through a real SMTP server (aiosmtpd) started by each test."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest

from fulfill.records import SessionSnapshot
from fulfill.store import Store
from fulfill.store.emails import SENT, SKIPPED
from tests.conftest import EmulatorServer, ServiceFactory, ServiceServer, table_rows
from tests.servers import Receiver
from tests.smtp import Sink, smtp_server

CUSTOMER = "jenny.rosen@example.com"


@pytest.fixture
def sink() -> Iterator[Sink]:
    with smtp_server() as server:
        yield server


def smtp_settings(sink: Sink, **more: Any) -> dict[str, Any]:
    return {
        "FULFILL_SMTP_URL": f"smtp://127.0.0.1:{sink.port}?tls=none",
        "FULFILL_MAIL_FROM": "Lantern Books <orders@lantern.example>",
        "FULFILL_SHOP_NAME": "Lantern Books",
        "FULFILL_SUPPORT_EMAIL": "help@lantern.example",
        **more,
    }


def every_action_catalog(tmp_path: Path, shop: EmulatorServer) -> tuple[str, dict[str, str]]:
    """One product per built-in action; the prices by action."""
    handbook = tmp_path / "handbook.pdf"
    handbook.write_bytes(b"%PDF-1.4 the handbook\n")
    prices = {
        "download": shop.price("Field handbook", 1900),
        "access": shop.price("Online course", 4900),
        "license": shop.price("Editor licence", 2900),
        "shipment": shop.price("Printed poster", 1500),
    }
    catalog = f"""
[[product]]
name = "Handbook"
match = {{ price = "{prices["download"]}" }}
action = "download"
file = "{handbook}"

[[product]]
name = "Course"
match = {{ price = "{prices["access"]}" }}
action = "access"
service = "Course platform"
url = "https://learn.lantern.example/course"
duration = "365d"

[[product]]
name = "Licence"
match = {{ price = "{prices["license"]}" }}
action = "license"
format = "EDIT-XXXX-XXXX"

[[product]]
name = "Poster"
match = {{ price = "{prices["shipment"]}" }}
action = "shipment"
"""
    return catalog, prices


SHIPPING = {
    "name": "Jenny Rosen",
    "address": {
        "line1": "Hauptstraße 1",
        "line2": None,
        "city": "Berlin",
        "postal_code": "10115",
        "state": None,
        "country": "DE",
    },
}


def parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None
    assert html is not None
    return str(text.get_content()), str(html.get_content())


def emails_of(service: ServiceServer, session_id: str) -> list[dict[str, Any]]:
    rows = table_rows(service.settings.database_url, "emails")
    columns = [
        "session_id",
        "kind",
        "status",
        "message_id",
        "recipient",
        "attempts",
        "last_error",
    ]
    return [dict(zip(columns, row[:7], strict=True)) for row in rows if row[0] == session_id]


def wait_email_status(
    service: ServiceServer, session_id: str, kind: str, status: str, timeout: float = 20
) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = [r for r in emails_of(service, session_id) if r["kind"] == kind]
        if rows and rows[0]["status"] == status:
            return rows[0]
        time.sleep(0.05)
    raise AssertionError(f"{kind} email never {status}: {rows}")


def test_a_fulfilled_order_is_emailed_once_with_everything_the_page_shows(
    service_factory: ServiceFactory, emulator_server: EmulatorServer, sink: Sink, tmp_path: Path
) -> None:
    catalog, prices = every_action_catalog(tmp_path, emulator_server)
    service = service_factory(catalog, **smtp_settings(sink))
    session = emulator_server.session(
        [
            (prices["download"], 1),
            (prices["access"], 1),
            (prices["license"], 2),
            (prices["shipment"], 1),
        ],
        shipping_address_collection={"allowed_countries": ["DE"]},
    )
    emulator_server.complete(
        session.id, "paid", email=CUSTOMER, name="Jenny Rosen", shipping=SHIPPING
    )
    assert service.landing(session.id).json()["status"] == "fulfilled"
    record = service.record(session.id)
    row = wait_email_status(service, session.id, "fulfilled", SENT)
    [received] = sink.wait_for(1)
    message = received.message

    assert received.recipients == [CUSTOMER]
    assert message["To"] == f"Jenny Rosen <{CUSTOMER}>"
    assert message["From"] == "Lantern Books <orders@lantern.example>"
    assert message["Reply-To"] == "help@lantern.example"
    assert message["Subject"] == "Your order from Lantern Books is ready"
    assert message["Message-ID"] == row["message_id"]
    assert session.id not in message["Message-ID"]  # the order's key stays out of headers
    assert message["Auto-Submitted"] == "auto-generated"
    assert message.get_content_type() == "multipart/alternative"
    text, html = parts(message)

    results = {item["action"]: item["result"] for item in record["items"]}
    download_url = results["download"]["links"][0]["url"]
    keys = results["license"]["keys"]
    assert len(keys) == 2
    landing_url = f"{service.url}/checkout/complete?session_id={session.id}"
    for body in (text, html):
        assert "Jenny Rosen" in body
        for name in ("Field handbook", "Online course", "Editor licence", "Printed poster"):
            assert name in body
        assert download_url in body
        assert "https://learn.lantern.example/course" in body
        for key in keys:
            assert key in body
        assert "Hauptstraße 1" in body
        assert "10115 Berlin" in body
        assert "help@lantern.example" in body
    assert landing_url in text
    assert landing_url in html
    assert "Total: 141.00 EUR" in text  # 19 + 49 + 2 * 29 + 15
    assert "141.00 EUR" in html

    # Visits and redeliveries after it was sent change nothing.
    for _ in range(3):
        service.landing(session.id)
    events = list(_events_of(emulator_server, session.id))
    assert events
    for event_id in events:
        answer = emulator_server.post(f"/_emulator/events/{event_id}/deliver", {"copies": 3})
        assert [a["status"] for a in answer["attempts"]] == [200] * 3
    assert len(sink.received) == 1
    assert emails_of(service, session.id)[0]["attempts"] == 1


def _events_of(shop: EmulatorServer, session_id: str) -> Iterator[str]:
    for event in shop.emulator.state.events.values():
        if event["data"]["object"].get("id") == session_id:
            yield str(event["id"])


def test_twenty_triggers_on_two_instances_send_one_email(
    service_factory: ServiceFactory, emulator_server: EmulatorServer, receiver: Receiver, sink: Sink
) -> None:
    first = service_factory(None, **smtp_settings(sink))
    second = service_factory(None, **smtp_settings(sink))
    sessions = [first.paid_session() for _ in range(3)]

    def visit(service: ServiceServer, session_id: str) -> None:
        with httpx.Client(base_url=service.url, timeout=60) as client:
            client.get(
                "/checkout/complete",
                params={"session_id": session_id},
                headers={"Accept": "application/json"},
            )

    threads = [
        threading.Thread(target=visit, args=((first, second)[n % 2], session_id))
        for session_id in sessions
        for n in range(20)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for session_id in sessions:
        wait_email_status(first, session_id, "fulfilled", SENT)
    received = sink.wait_for(len(sessions))
    import time

    time.sleep(1.0)  # anything sent twice would have arrived by now
    assert len(sink.received) == len(sessions)
    ids = [r.message["Message-ID"] for r in received]
    assert len(set(ids)) == len(sessions)
    for session_id in sessions:
        [row] = emails_of(first, session_id)
        assert row["attempts"] == 1


def test_smtp_refusing_for_a_while_is_retried_then_delivered_once(
    service_factory: ServiceFactory, emulator_server: EmulatorServer, sink: Sink
) -> None:
    sink.refuse = 3
    service = service_factory(None, **smtp_settings(sink))
    session_id = service.paid_session()
    assert service.landing(session_id).json()["status"] == "fulfilled"
    row = wait_email_status(service, session_id, "fulfilled", SENT, timeout=30)
    assert sink.refused == 3
    assert row["attempts"] == 4
    assert len(sink.wait_for(1)) == 1
    # While it was refused, the row said why.
    metrics = service.client.get("/metrics").text
    assert 'fulfill_emails_total{kind="fulfilled",outcome="failed"} 3.0' in metrics
    assert 'fulfill_emails_total{kind="fulfilled",outcome="sent"} 1.0' in metrics


def test_a_name_with_crlf_and_markup_injects_neither_headers_nor_html(
    service_factory: ServiceFactory, emulator_server: EmulatorServer, sink: Sink, tmp_path: Path
) -> None:
    catalog, prices = every_action_catalog(tmp_path, emulator_server)
    service = service_factory(catalog, **smtp_settings(sink))
    evil = "Eve\r\nBcc: victim@example.net\r\n\r\n<script>alert(1)</script><b>x</b>"
    session = emulator_server.session(
        [(prices["shipment"], 1)], shipping_address_collection={"allowed_countries": ["DE"]}
    )
    emulator_server.complete(
        session.id,
        "paid",
        email=CUSTOMER,
        name=evil,
        shipping={**SHIPPING, "name": evil},
    )
    assert service.landing(session.id).json()["status"] == "fulfilled"
    wait_email_status(service, session.id, "fulfilled", SENT)
    [received] = sink.wait_for(1)
    message = received.message
    assert received.recipients == [CUSTOMER]
    assert message["Bcc"] is None
    assert "\n" not in str(message["To"])
    assert "\r" not in str(message["To"])
    assert message["To"].addresses[0].addr_spec == CUSTOMER
    text, html = parts(message)
    assert "Hello Eve Bcc: victim@example.net" in text  # one line of text, nothing more
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>x</b>" not in html


def test_a_customer_email_that_is_not_an_address_is_recorded_and_nothing_is_sent(
    service_factory: ServiceFactory, emulator_server: EmulatorServer, sink: Sink
) -> None:
    service = service_factory(None, **smtp_settings(sink))
    session = emulator_server.session(
        [(emulator_server.price(product_metadata={"fulfill": "hook"}), 1)]
    )
    emulator_server.complete(session.id, "paid", email="jenny@@example")
    assert service.landing(session.id).json()["status"] == "fulfilled"
    row = wait_email_status(service, session.id, "fulfilled", SKIPPED)
    assert "not usable" in row["last_error"]
    assert "jenny@@example" not in row["last_error"]  # the address stays out of logs
    import time

    time.sleep(0.5)
    assert sink.received == []


def test_delayed_payments_get_received_then_fulfilled_or_payment_failed_emails(
    service_factory: ServiceFactory, emulator_server: EmulatorServer, sink: Sink
) -> None:
    service = service_factory(
        None,
        **smtp_settings(
            sink,
            FULFILL_MAIL_RECEIVED="true",
            FULFILL_MAIL_RETRY_URL="https://lantern.example/try-again",
        ),
    )
    settles = emulator_server.session(
        [(emulator_server.price(product_metadata={"fulfill": "hook"}), 1)]
    )
    fails = emulator_server.session(
        [(emulator_server.price(product_metadata={"fulfill": "hook"}), 1)]
    )
    for session in (settles, fails):
        emulator_server.complete(session.id, "delayed", email=CUSTOMER)
        wait_email_status(service, session.id, "received", SENT)
    emulator_server.post(f"/_emulator/sessions/{settles.id}/settle", {"result": "succeeded"})
    emulator_server.post(f"/_emulator/sessions/{fails.id}/settle", {"result": "failed"})
    wait_email_status(service, settles.id, "fulfilled", SENT)
    wait_email_status(service, fails.id, "payment_failed", SENT)
    received = sink.wait_for(4)
    subjects = sorted(str(r.message["Subject"]) for r in received)
    assert subjects == [
        "We received your order at Lantern Books: payment processing",
        "We received your order at Lantern Books: payment processing",
        "Your order from Lantern Books is ready",
        "Your payment to Lantern Books did not go through",
    ]
    failed = next(r.message for r in received if "did not go through" in r.message["Subject"])
    text, html = parts(failed)
    assert "https://lantern.example/try-again" in text
    assert 'href="https://lantern.example/try-again"' in html
    assert {k["kind"] for k in emails_of(service, fails.id)} == {"received", "payment_failed"}


def test_without_an_smtp_url_emails_are_written_to_the_outbox(
    service_factory: ServiceFactory, emulator_server: EmulatorServer, tmp_path: Path
) -> None:
    service = service_factory(None)
    session_id = service.paid_session()
    assert service.landing(session_id).json()["status"] == "fulfilled"
    wait_email_status(service, session_id, "fulfilled", SENT)
    outbox = tmp_path / "outbox"
    files = sorted(p.name for p in outbox.iterdir())
    assert files == [f"{session_id}.fulfilled.eml"]
    import email
    from email.policy import default

    message = email.message_from_bytes((outbox / files[0]).read_bytes(), policy=default)
    assert message["Subject"] == "Your order from Fulfill demo shop is ready"


def test_mail_can_be_switched_off(
    service_factory: ServiceFactory, emulator_server: EmulatorServer, sink: Sink
) -> None:
    service = service_factory(None, **smtp_settings(sink, FULFILL_MAIL="false"))
    session_id = service.paid_session()
    assert service.landing(session_id).json()["status"] == "fulfilled"
    assert emails_of(service, session_id) == []


# -- the mailer on its own: a crash between sending and recording ---------------------


def test_a_sender_that_dies_after_sending_is_followed_by_one_with_the_same_message_id(
    database_url: str, sink: Sink, tmp_path: Path
) -> None:
    from fulfill.config import load_settings
    from fulfill.engine import utcnow
    from fulfill.metrics import Metrics
    from fulfill.service import build_mailer
    from fulfill.stripe_api import StripeApi

    async def scenario() -> None:
        store = await Store.open(database_url)
        stripe = StripeApi("sk_test_x", "http://127.0.0.1:9")
        settings = load_settings(env_file=None, **smtp_settings(sink))
        mailer = build_mailer(settings, store, stripe, Metrics())
        assert mailer is not None
        # Long enough that the check "within the lease" below comes within it
        # on a busy machine.
        mailer.lease_seconds = 5
        snapshot = SessionSnapshot.from_stripe(
            {
                "id": "cs_test_crash1",
                "object": "checkout.session",
                "status": "complete",
                "payment_status": "paid",
                "livemode": False,
                "mode": "payment",
                "amount_total": 1900,
                "currency": "usd",
                "customer_details": {"email": CUSTOMER, "name": "Jenny Rosen"},
                "metadata": {},
            },
            [],
        )
        queued = mailer.queued("fulfilled", "cs_test_crash1")
        assert queued is not None
        await store.observe(snapshot, "fulfilled", ("pending",), utcnow(), email=queued)

        # The first sender hands the message to the server, then dies before recording.
        class DiesAfterSending:
            description = "dies"

            def __init__(self, inner: Any) -> None:
                self.inner = inner

            async def send(self, data: bytes, sender: str, recipient: str, name: str) -> None:
                await self.inner.send(data, sender, recipient, name)
                raise asyncio.CancelledError  # the process is gone: nothing more runs

        real = mailer.transport
        mailer.transport = DiesAfterSending(real)
        with pytest.raises(asyncio.CancelledError):
            await mailer.send("cs_test_crash1", "fulfilled")
        [row] = await store.emails.for_session("cs_test_crash1")
        assert row.status == "sending"
        # Another sender, within the lease: not due, nothing sent.
        mailer.transport = real
        assert await mailer.send_due() == 0
        # Once the lease has run out, the next sender sends it again.
        async with asyncio.timeout(60):
            while not (sent := await mailer.send_due()):
                await asyncio.sleep(0.2)
        assert sent == 1
        [row] = await store.emails.for_session("cs_test_crash1")
        assert (row.status, row.attempts) == ("sent", 2)
        await stripe.close()
        await store.close()

    asyncio.run(scenario())
    first, second = sink.wait_for(2)
    assert first.message["Message-ID"] == second.message["Message-ID"]
    assert re.fullmatch(r"<fulfilled\.[0-9a-f]{32}@lantern\.example>", first.message["Message-ID"])


def test_the_outbox_viewer_is_the_demos_alone(service_factory: ServiceFactory) -> None:
    service = service_factory(None)
    session_id = service.paid_session()
    assert service.landing(session_id).json()["status"] == "fulfilled"
    assert service.client.get("/outbox").status_code == 404
    assert service.client.get(f"/outbox/{session_id}.fulfilled.eml").status_code == 404
    assert 'href="/outbox"' not in service.client.get("/shop").text


def mail_cli(service: ServiceServer, *args: str) -> tuple[int, str]:
    from click.testing import CliRunner

    from fulfill.cli import main

    env = {
        "FULFILL_DATABASE_URL": service.settings.database_url,
        "FULFILL_PUBLIC_URL": service.url,
        "FULFILL_SHOP_NAME": "Lantern Books",
        "FULFILL_MAIL_FROM": "orders@lantern.example",
        "COLUMNS": "200",
    }
    outcome = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    return outcome.exit_code, outcome.output


def test_mail_preview_show_and_retry_from_the_command_line(
    service_factory: ServiceFactory, emulator_server: EmulatorServer, tmp_path: Path
) -> None:
    service = service_factory(None)
    session = emulator_server.session(
        [(emulator_server.price(product_metadata={"fulfill": "hook"}), 1)]
    )
    emulator_server.complete(session.id, "paid", email="jenny@@example")
    assert service.landing(session.id).json()["status"] == "fulfilled"
    wait_email_status(service, session.id, "fulfilled", SKIPPED)

    code, out = mail_cli(service, "show", session.id)
    assert code == 0, out
    assert "emails" in out
    assert "skipped" in out
    code, out = mail_cli(service, "show", session.id, "--json")
    assert code == 0, out
    import json

    [email_row] = json.loads(out)["emails"]
    assert (email_row["kind"], email_row["status"]) == ("fulfilled", "skipped")

    # An address the customer cannot get mail at: the preview says so, in one line.
    code, out = mail_cli(service, "mail", "preview", session.id)
    assert code == 2
    assert "the customer email is not usable" in out

    good = service.paid_session()
    assert service.landing(good).json()["status"] == "fulfilled"
    code, out = mail_cli(service, "mail", "preview", good)
    assert code == 0, out
    assert "Subject: Your order from Lantern Books is ready" in out
    assert f"{service.url}/checkout/complete?session_id={good}" in out
    page = tmp_path / "preview.html"
    code, out = mail_cli(
        service, "mail", "preview", good, "--kind", "payment_failed", "--html", str(page)
    )
    assert code == 0, out
    assert "did not go through" in page.read_text()
    code, out = mail_cli(service, "mail", "preview", "cs_test_unknown1")
    assert code == 2
    assert "no record for cs_test_unknown1" in out

    # An operator's retry makes the skipped email due again; the worker tries it at once.
    code, out = mail_cli(service, "mail", "retry", session.id)
    assert code == 0, out
    assert "1 email(s)" in out
    row = wait_email_status(service, session.id, "fulfilled", SKIPPED)
    assert row["attempts"] == 2
    code, out = mail_cli(service, "mail", "retry", good)
    assert code == 2
    assert "no failed or skipped email" in out
