"""Running the emulator under uvicorn, alone or with the demo's sample data."""

from __future__ import annotations

import logging

import uvicorn
from rich.console import Console

from fulfill.emulator.app import Emulator, create_app
from fulfill.emulator.state import State

console = Console()


class _QuietDrops(logging.Filter):
    """An injected dropped connection is on purpose; don't log it as an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "returned without completing response" not in record.getMessage()


def build(
    *,
    api_key: str | None = None,
    latency_ms: float = 0.0,
    auto_settle: float | None = None,
    retry_delays: tuple[float, ...] | None = None,
    webhooks: tuple[str, ...] = (),
) -> Emulator:
    emulator = Emulator(
        api_key=api_key, latency_ms=latency_ms, auto_settle=auto_settle, retry_delays=retry_delays
    )
    for spec in webhooks:
        url, _, secret = spec.partition("=")
        endpoint = emulator.keep_endpoint(url, secret=secret or None)
        console.print(f"webhook endpoint {endpoint.url}  secret [bold]{endpoint.secret}[/bold]")
    return emulator


def serve_emulator(*, host: str, port: int, **options: object) -> None:
    emulator = build(**options)  # type: ignore[arg-type]
    console.print(
        f"Stripe emulator on [bold]http://{host}:{port}[/bold] (API at /v1, control at /_emulator)"
    )
    run(emulator, host, port)


def run(emulator: Emulator, host: str, port: int) -> None:
    logging.getLogger("uvicorn.error").addFilter(_QuietDrops())
    uvicorn.run(create_app(emulator), host=host, port=port, log_level="warning")


def seed_samples(state: State) -> dict[str, str]:
    """A few sample products and prices; returns price IDs by name."""
    ebook = state.create_product("The Python Handbook (e-book)", product_id="prod_ebook")
    course = state.create_product("Course access (1 year)", product_id="prod_course")
    tshirt = state.create_product("T-shirt", product_id="prod_tshirt")
    return {
        "ebook": state.create_price(currency="eur", unit_amount=1900, product=ebook["id"])["id"],
        "course": state.create_price(
            currency="eur", unit_amount=9900, product=course["id"], lookup_key="course_year"
        )["id"],
        "tshirt": state.create_price(currency="eur", unit_amount=2500, product=tshirt["id"])["id"],
    }


def serve_demo(*, port: int) -> None:
    emulator = build(auto_settle=10.0)
    prices = seed_samples(emulator.state)
    base = f"http://127.0.0.1:{port}"
    console.print(f"[bold]fulfill demo[/bold]: the Stripe emulator is running on {base}")
    console.print("Sample prices: " + ", ".join(f"{name}={pid}" for name, pid in prices.items()))
    console.print(
        "Create a Checkout Session and open its url to pay on the hosted page:\n"
        f"  curl -s {base}/v1/checkout/sessions -u sk_test_demo: \\\n"
        f"    -d mode=payment -d 'line_items[0][price]={prices['ebook']}' "
        "-d 'line_items[0][quantity]=1' \\\n"
        f"    -d 'success_url=http://127.0.0.1:{port}/?session_id={{CHECKOUT_SESSION_ID}}'\n"
        "Point the official stripe library at it with "
        f"StripeClient('sk_test_…', base_addresses={{'api': '{base}'}}).\n"
        "Press Ctrl+C to stop."
    )
    run(emulator, "127.0.0.1", port)
