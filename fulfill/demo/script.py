"""``fulfill demo --headless``: the scripted purchases, and the check that each was right.

It buys as a customer would, over HTTP: the storefront's Buy button (``POST
/checkout/sessions``), the emulator's hosted checkout page, the redirect to
the landing page. On the way it does what real life does to a fulfillment
service: a payment that settles later, a 25-item order (more than the 10
items Stripe expands), a free order, duplicate and concurrent webhook
deliveries while the work is in flight and after, and many visits of the
same landing page at once. Then every record must be ``fulfilled`` and every
line item performed exactly once.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from fulfill.actions import Action, ItemContext
from fulfill.demo.runner import DEMO_KEY, Demo, free_port, running_demo
from fulfill.demo.samples import Listed
from fulfill.outbox import letters
from fulfill.presentation import money
from fulfill.store import Store

BIG_ORDER = 25
CUSTOMER = {"email": "jenny.rosen@example.com", "name": "Jenny Rosen"}
ADDRESS = {
    "line1": "Friedrichstraße 123",
    "city": "Berlin",
    "postal_code": "10117",
    "country": "DE",
}


class CountedAction:
    """Counts each call of an action by idempotency key, then performs it."""

    def __init__(self, inner: Action, calls: Counter[str], lock: threading.Lock) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls = calls
        self.lock = lock

    async def perform(self, item: ItemContext) -> dict[str, Any]:
        with self.lock:
            self.calls[item.idempotency_key] += 1
        return await self.inner.perform(item)


@dataclass
class Purchase:
    """One scripted order and what it must come to."""

    scenario: str
    items: list[tuple[Listed, int]]
    outcome: str  # how it is paid on the hosted page: paid, delayed, free
    session_id: str = ""
    landing_url: str = ""
    record: dict[str, Any] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)  # statuses the landing page showed
    problems: list[str] = field(default_factory=list)

    @property
    def expected_payment(self) -> str:
        return "no_payment_required" if self.outcome == "free" else "paid"


class Customer:
    """A customer's browser, as far as the demo needs one: forms and redirects."""

    def __init__(self, demo: Demo, client: httpx.Client) -> None:
        self.demo = demo
        self.client = client

    def buy(self, purchase: Purchase) -> None:
        answer = self.client.post(
            f"{self.demo.shop_url}/checkout/sessions",
            data={
                "price": [listed.price_id for listed, _ in purchase.items],
                "quantity": [str(quantity) for _, quantity in purchase.items],
            },
        )
        hosted = answer.headers.get("location", "")
        if answer.status_code != 303 or not hosted.startswith(f"{self.demo.emulator_url}/c/pay/"):
            raise AssertionError(f"{purchase.scenario}: checkout answered {answer.status_code}")
        purchase.session_id = hosted.rsplit("/", 1)[1]
        page = self.client.get(hosted)
        if page.status_code != 200:
            raise AssertionError(f"{purchase.scenario}: hosted page answered {page.status_code}")
        paid = self.client.post(
            hosted,
            data={**CUSTOMER, **ADDRESS, "outcome": purchase.outcome, "settle": "succeeded"},
        )
        landing = paid.headers.get("location", "")
        if paid.status_code != 303 or not landing.startswith(
            f"{self.demo.shop_url}/checkout/complete?session_id={purchase.session_id}"
        ):
            raise AssertionError(f"{purchase.scenario}: paying answered {paid.status_code}")
        purchase.landing_url = landing

    def visit(self, purchase: Purchase) -> str:
        """The landing page as HTML; notes the status it showed."""
        page = self.client.get(purchase.landing_url, headers={"Accept": "text/html"})
        marker = 'data-status="'
        start = page.text.find(marker)
        status = page.text[start + len(marker) :].split('"', 1)[0] if start >= 0 else "?"
        purchase.seen.append(status if page.status_code == 200 else str(page.status_code))
        return page.text

    def record(self, purchase: Purchase) -> dict[str, Any]:
        """The landing page's JSON: the customer's view, with the status."""
        answer = self.client.get(purchase.landing_url, headers={"Accept": "application/json"})
        record: dict[str, Any] = answer.json()
        purchase.record = record
        return record

    def stored(self, session_id: str) -> dict[str, Any]:
        """The whole record, as an operator sees it (line items, results), from the database."""

        async def read() -> dict[str, Any]:
            store = await Store.open(self.demo.settings.database_url, migrate=False, pool_size=1)
            try:
                record = await store.get(session_id)
            finally:
                await store.close()
            return {} if record is None else record.as_json()

        return asyncio.run(read())

    def wait_until(self, purchase: Purchase, status: str, timeout: float = 30) -> None:
        """Visit the landing page until it shows ``status``; then keep the whole record."""
        deadline = time.monotonic() + timeout
        while self.record(purchase).get("status") != status:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{purchase.scenario}: still {purchase.record.get('status')} after {timeout} s"
                )
            time.sleep(0.2)
        purchase.record = self.stored(purchase.session_id)


class Script:
    def __init__(self, demo: Demo, client: httpx.Client) -> None:
        self.demo = demo
        self.client = client
        self.customer = Customer(demo, client)
        self.calls: Counter[str] = Counter()
        self.pool = ThreadPoolExecutor(max_workers=16)

    def count_performs(self) -> None:
        """Wrap each action so that every call is counted (the check of 'once')."""
        engine = self.demo.service.engine
        lock = threading.Lock()
        engine.actions = {
            index: CountedAction(action, self.calls, lock)
            for index, action in engine.actions.items()
        }

    def events_of(self, session_id: str) -> list[str]:
        answer = self.client.get(
            f"{self.demo.emulator_url}/v1/events", params={"limit": 100}, auth=(DEMO_KEY, "")
        )
        return [
            event["id"]
            for event in answer.json()["data"]
            if event["data"]["object"].get("id") == session_id
        ]

    def storm(self, purchase: Purchase, copies: int) -> None:
        """Redeliver the session's events ``copies`` times at once, and visit its page as often."""

        def redeliver(event_id: str) -> None:
            self.client.post(
                f"{self.demo.emulator_url}/_emulator/events/{event_id}/deliver",
                json={"copies": copies, "concurrent": True},
            )

        jobs: list[Callable[[], Any]] = [
            functools.partial(redeliver, event) for event in self.events_of(purchase.session_id)
        ]
        jobs += [functools.partial(self.customer.visit, purchase)] * copies
        for done in [self.pool.submit(job) for job in jobs]:
            done.result()

    def run(self) -> list[Purchase]:
        self.count_performs()
        listed = self.demo.listed
        paid = [item for item in listed if item.sample.unit_amount > 0]
        # The e-book is paid by bank debit: processing first, fulfilled when it settles.
        delayed = next((i for i in paid if i.sample.action == "download"), paid[0])
        purchases = []
        for item in listed:
            sample = item.sample
            if sample.unit_amount == 0:
                scenario, outcome = f"free · {sample.action}", "free"
            elif item is delayed:
                scenario, outcome = f"bank debit · {sample.action}", "delayed"
            else:
                scenario, outcome = f"card · {sample.action}", "paid"
            purchases.append(Purchase(scenario, [(item, sample.quantity)], outcome))
        big = Purchase(
            f"card · {BIG_ORDER} line items",
            [(paid[i % len(paid)], 1 + i % 3) for i in range(BIG_ORDER)],
            "paid",
        )

        for purchase in purchases:
            self.customer.buy(purchase)
            if purchase.outcome == "delayed":
                page = self.customer.visit(purchase)
                if purchase.seen[-1] != "awaiting_payment" or 'data-testid="checking"' not in page:
                    purchase.problems.append("the landing page did not show the payment processing")
                self.customer.wait_until(purchase, "fulfilled")
            self.customer.visit(purchase)

        # The big order: duplicate webhooks and page visits while it is being fulfilled.
        self.customer.buy(big)
        self.storm(big, copies=5)
        self.customer.visit(big)
        purchases.append(big)

        # And again for every order, now fulfilled: nothing may happen twice.
        for done in [self.pool.submit(self.storm, p, 3) for p in purchases]:
            done.result()
        self.client.get(f"{self.demo.emulator_url}/_emulator/webhooks/idle", params={"timeout": 30})
        for purchase in purchases:
            self.customer.wait_until(purchase, "fulfilled")
            self.check(purchase)
        self.check_emails(purchases)
        self.pool.shutdown()
        return purchases

    def check_emails(self, purchases: list[Purchase]) -> None:
        """Each order's email is in the outbox, written once (the service's own count)."""
        expected = Counter({"fulfilled": len(purchases)})
        expected["received"] = sum(1 for p in purchases if p.outcome == "delayed")
        deadline = time.monotonic() + 20
        while self.emails_sent() != expected and time.monotonic() < deadline:
            time.sleep(0.2)
        sent = self.emails_sent()
        if sent != expected:
            purchases[0].problems.append(f"emails sent {dict(sent)}, expected {dict(expected)}")
        outbox = self.demo.settings.mail_outbox
        for purchase in purchases:
            kinds = ["fulfilled"] + (["received"] if purchase.outcome == "delayed" else [])
            for kind in kinds:
                path = outbox / f"{purchase.session_id}.{kind}.eml"
                if not path.is_file():
                    purchase.problems.append(f"no {kind} email in the outbox")
                elif CUSTOMER["email"] not in path.read_text(errors="replace"):
                    purchase.problems.append(f"the {kind} email is not to the customer")

    def emails_sent(self) -> Counter[str]:
        """``fulfill_emails_total{outcome="sent"}`` by kind, from /metrics."""
        text = self.client.get(f"{self.demo.shop_url}/metrics").text
        sent: Counter[str] = Counter()
        for line in text.splitlines():
            if line.startswith("fulfill_emails_total{") and 'outcome="sent"' in line:
                kind = line.split('kind="', 1)[1].split('"', 1)[0]
                sent[kind] += int(float(line.rsplit(" ", 1)[1]))
        return sent

    def check(self, purchase: Purchase) -> None:
        record = purchase.record
        problems = purchase.problems
        if record.get("payment_status") != purchase.expected_payment:
            problems.append(f"payment_status {record.get('payment_status')}")
        items = record.get("items") or []
        if len(items) != len(purchase.items):
            problems.append(f"{len(items)} items recorded, {len(purchase.items)} bought")
        for item in items:
            key = f"{purchase.session_id}:{item['line_item_id']}"
            if item["status"] != "done":
                problems.append(f"{item['line_item_id']} is {item['status']}")
            if self.calls[key] != 1:
                problems.append(f"{item['description']} performed {self.calls[key]} times")
            if item["action"] == "webhook" and self.demo.merchant.calls[key] != 1:
                problems.append(f"the merchant system got {item['description']} more than once")
            if item["action"] == "download":
                self.check_download(item, problems)
        if "fulfilled" not in purchase.seen:
            problems.append("the landing page never showed it fulfilled")

    def check_download(self, item: dict[str, Any], problems: list[str]) -> None:
        links = (item.get("result") or {}).get("links") or []
        if not links:
            problems.append("the download has no link")
            return
        answer = self.client.get(links[0]["url"])
        if answer.status_code != 200 or not answer.content.startswith(b"%PDF"):
            problems.append(f"the download link answered {answer.status_code}")


def outbox_table(folder: Path) -> Table:
    table = Table(
        title=f"The emails customers got (written to {folder}, not sent)",
        title_justify="left",
        title_style="bold",
    )
    table.add_column("file", no_wrap=True)
    table.add_column("to", no_wrap=True)
    table.add_column("subject")
    for letter in letters(folder):
        name = letter.name
        table.add_row("…" + name[-30:] if len(name) > 31 else name, letter.to, letter.subject)
    return table


def report(purchases: list[Purchase], calls: Counter[str], out: Console) -> bool:
    """The records as a table, then every problem; True if there was none."""
    table = Table(title="The scripted purchases", title_justify="left", title_style="bold")
    table.add_column("order", no_wrap=True)
    table.add_column("session", no_wrap=True)
    table.add_column("payment", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("items", justify="right", no_wrap=True)
    table.add_column("total", justify="right", no_wrap=True)
    table.add_column("landing page showed", no_wrap=True)
    table.add_column("once", justify="center", no_wrap=True)
    for p in purchases:
        record = p.record
        items = record.get("items") or []
        done = sum(1 for i in items if i["status"] == "done")
        status = str(record.get("status", "?"))
        table.add_row(
            p.scenario,
            "…" + p.session_id[-8:],
            str(record.get("payment_status", "?")),
            f"[green]{status}[/green]" if status == "fulfilled" else f"[red]{status}[/red]",
            f"{done}/{len(items)}",
            money(record.get("amount_total"), record.get("currency")),
            " → ".join(dict.fromkeys(p.seen)),
            "[green]✓[/green]" if not p.problems else "[red]✗[/red]",
        )
    out.print(table)
    line_items = sum(len(p.record.get("items") or []) for p in purchases)
    performed = sum(calls.values())
    for p in purchases:
        for problem in p.problems:
            out.print(f"[red]✗[/red] {p.scenario}: {problem}", highlight=False)
    if performed != line_items:
        out.print(f"[red]✗[/red] {performed} actions ran for {line_items} line items")
    ok = all(not p.problems for p in purchases) and performed == line_items
    if ok:
        out.print(
            f"[green]✓[/green] {len(purchases)} orders fulfilled, each of their {line_items} "
            "line items performed exactly once, through duplicate and concurrent webhooks "
            "and page visits."
        )
    return ok


def headless(port: int | None) -> int:
    """Play the scripted purchases; 0 only if every outcome is as expected."""
    out = Console(width=None if sys.stdout.isatty() else 140)
    with running_demo(port or free_port(), settle_after=1.0) as demo:
        out.print(
            f"fulfill demo (headless): the shop at {demo.shop_url}, Stripe emulator at "
            f"{demo.emulator_url}"
        )
        with httpx.Client(timeout=60, follow_redirects=False) as client:
            script = Script(demo, client)
            try:
                purchases = script.run()
            except (AssertionError, httpx.HTTPError) as exc:
                out.print(f"[red]✗ the demo stopped:[/red] {exc}", highlight=False)
                return 1
        out.print(outbox_table(demo.settings.mail_outbox))
        return 0 if report(purchases, script.calls, out) else 1
