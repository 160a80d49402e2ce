"""Commands for the operator: list, show, retry, reconcile, check (SPEC §8).

Each prints a table people can read and, with ``--json``, what a machine
can; errors say what to do next.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Column, Table
from rich.text import Text

from fulfill.catalog import Catalog, load_catalog
from fulfill.console import err, print_record, read_settings, read_store, stdout
from fulfill.errors import FulfillError
from fulfill.logs import is_log_reference, log_reference
from fulfill.records import FAILED, FULFILLED, STATUSES, FulfillmentRecord, iso
from fulfill.service import Service, mail_composer
from fulfill.store.emails import KINDS, EmailRecord
from fulfill.store.references import session_for_reference
from fulfill.stripe_api import StripeApi

T = TypeVar("T")


def with_service(work: Callable[[Service], Awaitable[T]]) -> T:
    """Run ``work`` with the whole service (Stripe client, catalog, store) open."""
    settings = read_settings()

    async def go() -> T:
        service = await Service.start(settings)
        try:
            return await work(service)
        finally:
            await service.close()

    return asyncio.run(go())


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def records_table(records: list[FulfillmentRecord]) -> Table:
    # The session ID is what an operator copies into `fulfill show`: never cut.
    table = Table(
        Column("session", no_wrap=True),
        "status",
        "payment",
        "items",
        "attempts",
        "created",
        "last error",
    )
    for record in records:
        done = sum(1 for item in record.items if item.status == "done")
        table.add_row(
            record.session_id,
            record.status,
            record.payment_status or "",
            f"{done}/{len(record.items)}",
            str(record.attempts),
            iso(record.created_at) or "",
            Text((record.last_error or "")[:60]),  # a receiver's words, not markup
        )
    return table


@click.command("list")
@click.option("--status", type=click.Choice(STATUSES), default=None, help="Only this status.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
def list_records(status: str | None, limit: int, as_json: bool) -> None:
    """Fulfillment records, newest first."""
    records = read_store(lambda store: store.list_records(status=status, limit=limit))
    if as_json:
        echo_json([r.as_json() for r in records])
    elif not records:
        stdout().print("no records" + (f" with status {status}" if status else ""))
    else:
        stdout().print(records_table(records))


@click.command()
@click.argument("session_id")
@click.option("--json", "as_json", is_flag=True, help="Print the record (and its events) as JSON.")
def show(session_id: str, as_json: bool) -> None:
    """One record with its items and history: by session ID, or by the reference in the logs."""

    async def read(
        store: Any,
    ) -> tuple[FulfillmentRecord | None, list[dict[str, Any]], list[EmailRecord]]:
        nonlocal session_id
        if is_log_reference(session_id):
            session_id = await session_for_reference(store.engine, session_id) or session_id
        return (
            await store.get(session_id),
            await store.events_for(session_id),
            await store.emails.for_session(session_id),
        )

    record, events, emails = read_store(read)
    if record is None and is_log_reference(session_id):
        raise FulfillError(f"no record has the log reference {session_id}")
    if record is None:
        raise FulfillError(
            f"no record for {session_id}; `fulfill run {session_id}` reads it from Stripe"
        )
    if as_json:
        echo_json(
            {
                **record.as_json(),
                "log_reference": log_reference(record.session_id),
                "events": [_event(e) for e in events],
                "emails": [e.as_json() for e in emails],
            }
        )
        return
    print_record(record)
    out = stdout()
    out.print(f"in the logs: {log_reference(record.session_id)}", highlight=False)
    history = Table(
        "received", Column("event", no_wrap=True), "type", "outcome", title="webhook events"
    )
    for event in events:
        history.add_row(
            iso(event["received_at"]) or "", event["event_id"], event["type"], event["outcome"]
        )
    out.print(history)
    if emails:
        out.print(emails_table(emails))
    out.print("triggers: " + (", ".join(record.triggers) or "none"), highlight=False)


def emails_table(emails: list[EmailRecord]) -> Table:
    table = Table("kind", "status", "to", "attempts", "sent", "last error", title="emails")
    for email in emails:
        table.add_row(
            email.kind,
            email.status,
            escape(email.recipient or ""),
            str(email.attempts),
            iso(email.sent_at) or "",
            escape(email.last_error or ""),
        )
    return table


def _event(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "event_id": row["event_id"],
        "type": row["type"],
        "outcome": row["outcome"],
        "received_at": iso(row["received_at"]),
        "processed_at": iso(row["processed_at"]),
    }


@click.command()
@click.argument("session_id", required=False)
@click.option("--failed", "all_failed", is_flag=True, help="Retry every failed record.")
@click.option("--json", "as_json", is_flag=True, help="Print the resulting records as JSON.")
def retry(session_id: str | None, all_failed: bool, as_json: bool) -> None:
    """Retry a failed record now (SESSION_ID), or every failed one (--failed).

    Exits 1 when a record is still not fulfilled afterwards, so that a
    script (or the operator's shell prompt) sees that the cause is not fixed.
    """
    if bool(session_id) == all_failed:
        raise click.UsageError("give one SESSION_ID or --failed")

    async def work(service: Service) -> tuple[list[FulfillmentRecord], list[str]]:
        if session_id:
            record = await service.store.get(session_id)
            if record is None:
                raise FulfillError(
                    f"no record for {session_id}; `fulfill run {session_id}` reads it from Stripe"
                )
            if record.status != FAILED:
                raise FulfillError(f"{session_id} is {record.status}, not failed: nothing to retry")
            ids = [session_id]
        else:
            ids = await service.store.session_ids(FAILED)
        results: list[FulfillmentRecord] = []
        errors: list[str] = []
        for sid in ids:
            try:
                results.append(
                    await service.engine.fulfill_checkout(sid, trigger="cli-retry", force=True)
                )
            except FulfillError as exc:
                if session_id:
                    raise
                # One session Stripe cannot answer for does not stop the others.
                errors.append(f"{sid}: {exc.message}")
        return results, errors

    records, errors = with_service(work)
    if as_json:
        echo_json([r.as_json() for r in records])
    elif not records and not errors:
        stdout().print("no failed records")
    elif records:
        stdout().print(records_table(records))
    for error in errors:
        err.print(f"[red]error[/red] {escape(error)}", highlight=False, soft_wrap=True)
    if errors or any(r.status != FULFILLED for r in records):
        raise SystemExit(1)


@click.command()
@click.option("--since", default="72h", show_default=True, help="How far back: 30m, 72h, 7d.")
@click.option("--dry-run", is_flag=True, help="List what would be fulfilled; change nothing.")
@click.option(
    "--restart", is_flag=True, help="Start over instead of resuming an interrupted sweep."
)
@click.option(
    "--rate", type=float, default=None, help="API calls per second (FULFILL_RECONCILE_RATE)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def reconcile(since: str, dry_run: bool, restart: bool, rate: float | None, as_json: bool) -> None:
    """Fulfill every paid session created since then that was never seen paid (resumable).

    Failed sessions are left to the worker's retries or to `fulfill retry`.
    """
    from fulfill.reconcile import Reconciler, Summary, parse_since

    window = parse_since(since)

    async def work(service: Service) -> Summary:
        reconciler = service.reconciler
        if rate is not None:
            reconciler = Reconciler(service.engine, service.stripe, service.runs, rate=rate)
        with Progress(
            SpinnerColumn(),
            TextColumn("[bold]reconcile[/bold]"),
            BarColumn(bar_width=None),
            TextColumn("{task.completed} sessions · {task.fields[last]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=as_json,
            transient=False,
        ) as progress:
            bar = progress.add_task("sweep", total=None, last="listing…")

            def advance(summary: Summary, listed: Any) -> None:
                counts = ", ".join(f"{k} {v}" for k, v in sorted(summary.results.items()))
                progress.update(bar, completed=summary.listed, last=counts)

            summary = await reconciler.sweep(
                window, dry_run=dry_run, restart=restart, progress=advance
            )
            progress.update(bar, total=summary.listed)
        return summary

    summary = with_service(work)
    if as_json:
        echo_json(summary.as_json())
        return
    out = stdout()
    if summary.resumed:
        out.print(f"resumed the sweep started for sessions since {summary.as_json()['since']}")
    table = Table("result", "sessions", title=f"reconcile since {summary.as_json()['since']}")
    for result, count in sorted(summary.results.items()):
        table.add_row(result, str(count))
    table.add_row("[bold]listed[/bold]", str(summary.listed))
    table.add_row("list pages", str(summary.pages))
    out.print(table)
    for error in summary.errors[:20]:
        out.print(f"[red]error[/red] {escape(error)}", highlight=False)
    if summary.errors:
        raise SystemExit(1)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def check(as_json: bool) -> None:
    """Validate configuration and catalog; with a reachable API, check its prices and products."""
    settings = read_settings()
    catalog = load_catalog(settings.catalog_path)
    findings: list[dict[str, str]] = [
        {"what": "configuration", "result": "ok", "detail": "all settings valid"},
        {
            "what": "catalog",
            "result": "ok",
            "detail": f"{len(catalog.entries)} entries in {catalog.path}",
        },
    ]
    if not settings.webhook_secrets:
        findings.append(
            {
                "what": "webhook secret",
                "result": "missing",
                "detail": "STRIPE_WEBHOOK_SECRET is not set; serve needs the endpoint's whsec_…",
            }
        )
    findings.append(_check_mail(settings))
    if settings.stripe_secret_key is None:
        findings.append(
            {"what": "stripe", "result": "skipped", "detail": "STRIPE_SECRET_KEY not set"}
        )
    else:
        key = settings.stripe_secret_key.get_secret_value()
        findings += asyncio.run(_check_stripe(key, settings.stripe_api_base, catalog))
    failed = [f for f in findings if f["result"] == "missing" or f["result"] == "error"]
    if as_json:
        echo_json({"ok": not failed, "findings": findings})
    else:
        table = Table("check", "result", "detail")
        for finding in findings:
            style = {"ok": "green", "missing": "red", "error": "red"}.get(
                finding["result"], "yellow"
            )
            table.add_row(
                Text(finding["what"]),
                f"[{style}]{finding['result']}[/{style}]",
                Text(finding["detail"]),
            )
        stdout().print(table)
    if failed:
        raise SystemExit(1)


def _check_mail(settings: Any) -> dict[str, str]:
    """Where customer emails go; with an SMTP server, that it takes our connection and login."""
    from fulfill.mail.addresses import parse_address
    from fulfill.mail.transport import SmtpTarget, SmtpTransport

    if not settings.mail_enabled:
        return {"what": "email", "result": "off", "detail": "FULFILL_MAIL=false"}
    if settings.smtp_url is None:
        return {
            "what": "email",
            "result": "outbox",
            "detail": f"written to {settings.mail_outbox}, not sent: set FULFILL_SMTP_URL",
        }
    transport = SmtpTransport(SmtpTarget.parse(settings.smtp_url.get_secret_value()))
    try:
        asyncio.run(transport.check(parse_address(settings.mail_from).addr_spec))
    except Exception as exc:
        return {
            "what": "email",
            "result": "error",
            "detail": f"{transport.description}: {type(exc).__name__}: {exc}; check "
            "FULFILL_SMTP_URL's host, port, TLS, user and password",
        }
    return {"what": "email", "result": "ok", "detail": f"{transport.description} accepts us"}


async def _check_stripe(key: str, api_base: str, catalog: Catalog) -> list[dict[str, str]]:
    # The API alone: a check opens no database (let alone migrates one), so
    # it runs anywhere the configuration is, before anything is deployed.
    stripe = StripeApi(key, api_base)
    try:
        return await stripe.check_catalog(catalog)
    finally:
        await stripe.close()


# -- emails to customers --------------------------------------------------------------


@click.group()
def mail() -> None:
    """The emails to customers: preview one, send failed ones again."""


@mail.command("preview")
@click.argument("session_id")
@click.option(
    "--kind",
    type=click.Choice(KINDS),
    default="fulfilled",
    show_default=True,
    help="Which email.",
)
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write the HTML part to this file (to open in a browser) instead of printing.",
)
def mail_preview(session_id: str, kind: str, html_path: str | None) -> None:
    """Render an email of a recorded session, as the customer would get it; sends nothing."""
    from pathlib import Path

    from fulfill.mail.compose import message_id_for

    settings = read_settings()
    record = read_store(lambda store: store.get(session_id))
    if record is None:
        raise FulfillError(
            f"no record for {session_id}; `fulfill run {session_id}` reads it from Stripe"
        )
    composer = mail_composer(settings)
    composed = composer.compose(
        kind, record, message_id_for(session_id, kind, composer.shop.domain)
    )
    message = composed.message
    html = message.get_body(preferencelist=("html",))
    text = message.get_body(preferencelist=("plain",))
    assert html is not None
    assert text is not None
    if html_path is not None:
        Path(html_path).write_text(str(html.get_content()), encoding="utf-8")
        err.print(f"Wrote the HTML part to {html_path}.", highlight=False)
        return
    for header in ("From", "To", "Reply-To", "Subject", "Message-ID"):
        if message[header] is not None:
            click.echo(f"{header}: {message[header]}")
    click.echo("")
    click.echo(str(text.get_content()).replace("\r\n", "\n"), nl=False)


@mail.command("retry")
@click.argument("session_id")
def mail_retry(session_id: str) -> None:
    """Send a session's failed or skipped emails again (by the next worker pass of `serve`)."""
    from fulfill.engine import utcnow

    async def write(store: Any) -> int:
        return int(await store.emails.retry(session_id, utcnow()))

    count = read_store(write)
    if not count:
        raise FulfillError(
            f"no failed or skipped email for {session_id}; `fulfill show {session_id}` lists them"
        )
    stdout().print(f"{count} email(s) of {session_id} queued again.", highlight=False)


# What ``fulfill/cli.py`` adds to its ``main`` group.
COMMANDS = (list_records, show, retry, reconcile, check, mail)
