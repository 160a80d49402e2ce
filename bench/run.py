"""``python -m bench``: start everything, run each scenario for a bounded time, report.

1. the ceiling (a bare endpoint on the same stack);
2. new sessions fulfilled through the webhook at rising offered rates;
3. duplicate deliveries of recorded events;
4. landing-page visits of fulfilled sessions;
5. Stripe API calls per fulfilled session (1, 10, 25 line items, with and
   without duplicate concurrent triggers);
6. the service's peak RSS.

Each configuration of the service (SQLite with one and with two processes;
PostgreSQL with one, when it is reachable) runs against a fresh database and
a reset emulator. Results go to the terminal as one table and to
``var/bench.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench import report
from bench.database import Database, SQLite, postgres_database, postgres_reachable
from bench.load import Clients
from bench.scenarios import (
    WEBHOOK_SECRET,
    ApiCalls,
    Step,
    Target,
    Throughput,
    api_calls,
    ceiling,
    duplicates,
    landing,
    webhook_step,
)
from bench.shop import Paid, Shop
from bench.stack import Process, start_ceiling, start_emulator, start_service

ROOT = Path(__file__).resolve().parent.parent
STRIPE_KEY = "sk_test_bench"
CATALOG = """
[[product]]
name = "Benchmark item (instant)"
match = { metadata = { fulfill = "bench" } }
action = "python"
callable = "bench.actions:deliver"
"""


@dataclass(frozen=True)
class Options:
    latency_ms: float
    rates: tuple[float, ...]
    step_seconds: float
    closed_seconds: float
    concurrency: int
    workers: tuple[int, ...]
    postgres: bool
    profile: bool
    folder: Path
    out: Path


@dataclass
class Config:
    """One way of running the service, and what it measured."""

    database: str
    workers: int
    steps: list[Step] = field(default_factory=list)
    duplicates: Throughput | None = None
    landing: Throughput | None = None
    api_calls: list[ApiCalls] = field(default_factory=list)
    peak_rss_mb: dict[int, float] = field(default_factory=dict)
    performed: int = 0  # line items the action was called for
    performed_twice: int = 0  # line items it was called for more than once
    error: str | None = None

    @property
    def name(self) -> str:
        return f"{self.database} x{self.workers}"

    @property
    def sustained(self) -> float | None:
        """The highest offered rate sustained with every session fulfilled."""
        rates = [s.rate for s in self.steps if s.sustained]
        return max(rates) if rates else None


def service_env(
    folder: Path, emulator: str, database: Database, action_log: Path
) -> dict[str, str]:
    catalog = folder / "catalog.toml"
    catalog.write_text(CATALOG)
    return {
        "STRIPE_SECRET_KEY": STRIPE_KEY,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_API_BASE": emulator,
        "FULFILL_DATABASE_URL": database.url,
        "FULFILL_CATALOG": str(catalog),
        # No sweep listing every session mid-run: it would add API calls to scenario 5.
        "FULFILL_RECONCILE_INTERVAL": "0",
        # The bench is one client (127.0.0.1) visiting many sessions it just bought.
        "FULFILL_LOOKUPS_PER_CLIENT": "1000000",
        "FULFILL_LOOKUPS_PER_SECOND": "1000000",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        "BENCH_ACTION_LOG": str(action_log),
        # Once the service sends mail, a fulfilled session with no SMTP URL set
        # writes an .eml file: into this run's folder, not the project's var/outbox.
        "FULFILL_MAIL_OUTBOX": str(folder / "outbox"),
    }


@contextlib.contextmanager
def running(process: Process) -> Iterator[Process]:
    try:
        yield process
    finally:
        process.stop()


@asynccontextmanager
async def database_for(kind: str, folder: Path, workers: int) -> AsyncIterator[Database]:
    if kind == "SQLite":
        yield SQLite(folder / f"sqlite-{workers}.db")
    else:
        async with postgres_database() as database:
            yield database


def say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


async def run_config(
    config: Config, options: Options, emulator: Process, ceiling_rps: float
) -> None:
    folder = options.folder
    name = f"service-{config.database.lower()}-{config.workers}"
    action_log = folder / f"{name}.actions"
    action_log.unlink(missing_ok=True)
    shop = Shop(emulator.url, STRIPE_KEY)
    await shop.reset()
    async with database_for(config.database, folder, config.workers) as database:
        env = service_env(folder, emulator.url, database, action_log)
        service = await asyncio.to_thread(
            start_service, name, folder, env, workers=config.workers, profile=options.profile
        )
        try:
            async with Clients(service.url) as clients:
                target = Target(service, clients, emulator)
                await scenarios(config, options, target, shop, database)
            config.peak_rss_mb = service.peak_rss_mb()
        finally:
            service.stop()
            await shop.close()
    performed = Counter(action_log.read_text().split()) if action_log.exists() else Counter()
    config.performed = len(performed)
    config.performed_twice = sum(1 for n in performed.values() if n > 1)


async def scenarios(
    config: Config, options: Options, target: Target, shop: Shop, database: Database
) -> None:
    # What one process on SQLite sustains is the baseline; the others start
    # near it, to keep the run within a few minutes.
    lowest = 100 if config.workers > 1 else 50 if config.database != "SQLite" else 0
    rates = [r for r in options.rates if r >= lowest]
    recorded: list[Paid] = []
    for rate in rates:
        say(f"{config.name}: new sessions by webhook at {rate:g}/s")
        step, paid = await webhook_step(target, shop, database, rate, options.step_seconds)
        config.steps.append(step)
        recorded += paid
        say(
            f"  {step.fulfilled}/{step.sessions} fulfilled, ack p99 {step.ack_p99 * 1000:.0f} ms,"
            f" {'sustained' if step.sustained else 'NOT sustained'}"
        )
        if not step.sustained:
            break
    concurrency, seconds = options.concurrency, options.closed_seconds
    say(f"{config.name}: duplicate deliveries")
    config.duplicates = await duplicates(
        target, recorded[-2000:], concurrency=concurrency, seconds=seconds
    )
    say(f"{config.name}: landing-page visits")
    fulfilled = [p.session_id for p in recorded[-500:]]
    config.landing = await landing(target, fulfilled, concurrency=concurrency, seconds=seconds)
    if config.workers == 1:
        for items in (1, 10, 25):
            for duplicated in (False, True):
                say(f"{config.name}: API calls, {items} items, duplicates {duplicated}")
                config.api_calls.append(
                    await api_calls(target, shop, database, items=items, duplicated=duplicated)
                )


async def bench(options: Options) -> dict[str, object]:
    folder = options.folder
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    say(f"emulator with {options.latency_ms:g} ms API latency; logs in {folder}")
    emulator = await asyncio.to_thread(start_emulator, folder, options.latency_ms)
    configs: list[Config] = []
    with running(emulator):
        say("ceiling: a bare Starlette app under uvicorn")
        with running(await asyncio.to_thread(start_ceiling, folder)) as bare:
            async with Clients(bare.url) as clients:
                top = await ceiling(
                    Target(bare, clients),
                    concurrency=options.concurrency,
                    seconds=options.closed_seconds,
                )
        say(f"  {top.rps:.0f} requests/s")
        plan = [("SQLite", workers) for workers in options.workers]
        skipped: str | None = None
        if options.postgres:
            skipped = await postgres_reachable()
            if skipped is None:
                plan.append(("PostgreSQL", 1))
            else:
                say(f"PostgreSQL skipped: {skipped}")
        for database, workers in plan:
            config = Config(database, workers)
            configs.append(config)
            try:
                await run_config(config, options, emulator, top.rps)
            except Exception as exc:
                config.error = f"{type(exc).__name__}: {exc}"
                say(f"{config.name} failed: {config.error}")
    return report.build(options, top, configs, postgres_skipped=skipped)


def parse(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--latency-ms", type=float, default=100, help="emulator API latency")
    parser.add_argument(
        "--rates",
        default="25,50,100,125,150,175,200,250,300",
        help="offered rates of new sessions per second, in order; stops at the first not sustained",
    )
    parser.add_argument("--step-seconds", type=float, default=6, help="seconds per offered rate")
    parser.add_argument(
        "--closed-seconds", type=float, default=5, help="seconds per closed-loop measurement"
    )
    parser.add_argument("--concurrency", type=int, default=32, help="closed-loop clients")
    parser.add_argument("--workers", default="1,2", help="service processes to try on SQLite")
    parser.add_argument("--no-postgres", action="store_true", help="skip PostgreSQL")
    parser.add_argument(
        "--profile", action="store_true", help="run the service under pyinstrument (HTML reports)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "bench.json")
    parser.add_argument("--folder", type=Path, default=ROOT / "var" / "bench")
    args = parser.parse_args(argv)
    return Options(
        latency_ms=args.latency_ms,
        rates=tuple(float(r) for r in args.rates.split(",") if r.strip()),
        step_seconds=args.step_seconds,
        closed_seconds=args.closed_seconds,
        concurrency=args.concurrency,
        workers=tuple(int(w) for w in args.workers.split(",") if w.strip()),
        postgres=not args.no_postgres,
        profile=args.profile,
        folder=args.folder,
        out=args.out,
    )


def main(argv: list[str] | None = None) -> None:
    options = parse(argv)
    started = time.monotonic()
    runner_options: dict[str, object] = {}
    with contextlib.suppress(ImportError):
        import uvloop

        runner_options["loop_factory"] = uvloop.new_event_loop
    with asyncio.Runner(**runner_options) as runner:  # type: ignore[arg-type]
        results = runner.run(bench(options))
    results["seconds"] = round(time.monotonic() - started, 1)
    results["out"] = str(options.out)
    report.save(results, options.out)
    report.show(results)
    say(f"done in {results['seconds']} s; results in {options.out}")
