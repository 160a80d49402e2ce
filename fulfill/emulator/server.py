"""Running the emulator alone under uvicorn: ``fulfill emulator``."""

from __future__ import annotations

import logging

import uvicorn
from rich.console import Console

from fulfill.emulator.app import Emulator, create_app

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
