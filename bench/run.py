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
a reset emulator. Then the guide's code (``bench.peers.guide``: what Stripe's
fulfillment guide leads a merchant to write) runs the same way under gunicorn,
sync and gthread, as the service's peer: scenario 2 at the same rates, and
scenario 5, whose concurrent copies of each event show what it performs
twice. Results go to the terminal as one table and to ``var/bench.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop

from bench import report
from bench.database import (
    GUIDE_FULFILLED_SQL,
    Database,
    SQLite,
    postgres_database,
    postgres_reachable,
)
from bench.http import Pool
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
    record_sessions,
    wait_fulfilled,
    webhook_step,
)
from bench.shop import Paid, Shop
from bench.stack import ROOT, Process, start_ceiling, start_emulator, start_guide, start_service

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
    peers: bool
    scenarios: frozenset[int]
    service_env: tuple[tuple[str, str], ...]
    profile: bool
    folder: Path
    out: Path


@dataclass(frozen=True)
class Peer:
    """One way of running the guide's code: gunicorn's options, as merchants deploy Flask."""

    name: str
    slug: str  # its files in the run's folder: guide-SLUG.log, .db, .actions
    workers: int  # gunicorn's worker processes
    gunicorn: tuple[str, ...]


def guide_peers() -> list[Peer]:
    """gunicorn's recommended sync setup (2 x cores + 1 workers), and threads.

    ``--keep-alive 5`` for gthread: with gunicorn's default of 2 s, an idle
    connection can close just as the bench's client (which drops its own after
    2 s idle) writes a request on it.
    """
    sync = 2 * (os.cpu_count() or 1) + 1
    return [
        Peer(
            f"guide gunicorn sync x{sync}",
            "sync",
            sync,
            ("--workers", str(sync), "--worker-class", "sync"),
        ),
        Peer(
            "guide gunicorn gthread 2x8",
            "gthread",
            2,
            ("--workers", "2", "--threads", "8", "--worker-class", "gthread", "--keep-alive", "5"),
        ),
    ]


@dataclass
class Config:
    """One way of running the service, or a peer of it, and what it measured."""

    database: str
    workers: int
    ceiling_workers: int  # the bare server's processes it is compared with
    ceiling_rps: float  # and that server's requests/s
    peer: Peer | None = None  # None: the service
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
        return self.peer.name if self.peer else f"{self.database} x{self.workers}"

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
        "BENCH_ACTION_LOG": str(action_log),
        # Once the service sends mail, a fulfilled session with no SMTP URL set
        # writes an .eml file: into this run's folder, not the project's var/outbox.
        "FULFILL_MAIL_OUTBOX": str(folder / "outbox"),
    }


def guide_env(emulator: str, database: SQLite, action_log: Path) -> dict[str, str]:
    return {
        "STRIPE_SECRET_KEY": STRIPE_KEY,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_API_BASE": emulator,
        "GUIDE_DATABASE": str(database.path),
        "BENCH_ACTION_LOG": str(action_log),
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
    """A line of progress on stderr (the table goes to stdout at the end)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


async def run_config(config: Config, options: Options, emulator: Process, baseline: float) -> None:
    folder = options.folder
    name = f"service-{config.database.lower()}-{config.workers}"
    action_log = folder / f"{name}.actions"
    action_log.unlink(missing_ok=True)
    shop = Shop(emulator.url, STRIPE_KEY)
    try:
        await shop.reset()
        async with database_for(config.database, folder, config.workers) as database:
            env = service_env(folder, emulator.url, database, action_log)
            env.update(options.service_env)
            say(f"{config.name}: starting the service")
            service = await asyncio.to_thread(
                start_service, name, folder, env, workers=config.workers, profile=options.profile
            )
            try:
                async with Pool(service.url) as pool:
                    target = Target(service, pool, emulator)
                    await scenarios(config, options, target, shop, database, baseline)
                config.peak_rss_mb = service.peak_rss_mb()
            finally:
                await asyncio.to_thread(service.stop)
    finally:
        await shop.close()
    count_performed(config, action_log)


async def run_peer(config: Config, options: Options, emulator: Process, baseline: float) -> None:
    """The guide's code under gunicorn: scenario 2 at the same rates, and scenario 5."""
    assert config.peer is not None
    folder = options.folder
    name = f"guide-{config.peer.slug}"
    action_log = folder / f"{name}.actions"
    action_log.unlink(missing_ok=True)
    database = SQLite(folder / f"{name}.db", sql=GUIDE_FULFILLED_SQL)  # a fresh file
    shop = Shop(emulator.url, STRIPE_KEY)
    try:
        await shop.reset()
        env = guide_env(emulator.url, database, action_log)
        say(f"{config.name}: starting the guide's code")
        peer = await asyncio.to_thread(start_guide, name, folder, env, config.peer.gunicorn)
        try:
            async with Pool(peer.url) as pool:
                target = Target(
                    peer, pool, emulator, webhook_path="/webhook", landing_path="/success"
                )
                if 2 in options.scenarios:
                    await new_sessions(config, options, target, shop, database, baseline)
                if 5 in options.scenarios:
                    await calls_per_session(config, target, shop, database)
            config.peak_rss_mb = peer.peak_rss_mb()
        finally:
            await asyncio.to_thread(peer.stop)
    finally:
        await shop.close()
    count_performed(config, action_log)


def count_performed(config: Config, action_log: Path) -> None:
    """Line items performed, and performed more than once, from the action's own log."""
    performed = Counter(action_log.read_text().split()) if action_log.exists() else Counter()
    config.performed = len(performed)
    config.performed_twice = sum(1 for n in performed.values() if n > 1)


async def new_sessions(
    config: Config,
    options: Options,
    target: Target,
    shop: Shop,
    database: Database,
    baseline: float,
) -> list[Paid]:
    """Scenario 2, rate after rate until one is not sustained; the sessions it fulfilled."""
    recorded: list[Paid] = []
    # Configurations after the first start at half what it sustained: the
    # steps below that would only lengthen the run.
    rates = [r for r in options.rates if r >= baseline / 2] or list(options.rates[-1:])
    for rate in rates:
        say(f"{config.name}: new sessions by webhook, {rate:g}/s for {options.step_seconds:g} s")
        step, paid = await webhook_step(target, shop, database, rate, options.step_seconds)
        config.steps.append(step)
        recorded += paid
        say(
            f"  {step.fulfilled}/{step.sessions} fulfilled at {step.fulfilled_rate:.0f}/s,"
            f" ack p99 {_ms(step.ack_p99)}, fulfilled p99 {_ms(step.fulfil_p99)}:"
            f" {'sustained' if step.sustained else 'NOT sustained'}"
        )
        if not step.sustained:
            if step.fulfilled < step.sessions:
                # Not measured: a backlog left behind would load what comes next.
                await wait_fulfilled(database, [p.session_id for p in paid], timeout=60)
            break
    return recorded


async def calls_per_session(config: Config, target: Target, shop: Shop, database: Database) -> None:
    """Scenario 5: 1, 10 and 25 line items, alone and with concurrent duplicate triggers."""
    for items in (1, 10, 25):
        for duplicated in (False, True):
            calls = await api_calls(target, shop, database, items=items, duplicated=duplicated)
            config.api_calls.append(calls)
            say(
                f"{config.name}: {items} items{', duplicate triggers' if duplicated else ''}:"
                f" {calls.per_session:.2f} API calls per session"
                f" ({calls.fulfilled}/{calls.sessions} fulfilled)"
            )


async def scenarios(
    config: Config,
    options: Options,
    target: Target,
    shop: Shop,
    database: Database,
    baseline: float,
) -> None:
    recorded: list[Paid] = []
    if 2 in options.scenarios:
        recorded += await new_sessions(config, options, target, shop, database, baseline)
    concurrency, seconds = options.concurrency, options.closed_seconds
    if options.scenarios & {3, 4} and len(recorded) < 200:
        say(f"{config.name}: recording sessions for scenarios 3 and 4 (not measured)")
        recorded += await record_sessions(target, shop, database, 200 - len(recorded))
    if 3 in options.scenarios:
        say(f"{config.name}: duplicate deliveries, {concurrency} clients for {seconds:g} s")
        config.duplicates = await duplicates(
            target, recorded[-2000:], concurrency=concurrency, seconds=seconds
        )
        say(f"  {config.duplicates.rps:.0f} requests/s, p99 {_ms(config.duplicates.p99)}")
    if 4 in options.scenarios:
        say(f"{config.name}: landing-page visits, {concurrency} clients for {seconds:g} s")
        fulfilled = [p.session_id for p in recorded[-500:]]
        config.landing = await landing(target, fulfilled, concurrency=concurrency, seconds=seconds)
        say(f"  {config.landing.rps:.0f} requests/s, p99 {_ms(config.landing.p99)}")
    if 5 in options.scenarios and config.workers == 1:
        await calls_per_session(config, target, shop, database)


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.0f} ms"


async def measure_ceiling(options: Options, workers: int) -> Throughput:
    say(f"ceiling: a bare Starlette app under uvicorn x{workers}")
    bare = await asyncio.to_thread(start_ceiling, options.folder, workers)
    try:
        async with Pool(bare.url) as pool:
            top = await ceiling(
                Target(bare, pool), concurrency=options.concurrency, seconds=options.closed_seconds
            )
    finally:
        await asyncio.to_thread(bare.stop)
    say(f"  {top.rps:.0f} requests/s, p99 {_ms(top.p99)}")
    return top


async def bench(options: Options) -> dict[str, Any]:
    folder = options.folder
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    say(f"emulator with {options.latency_ms:g} ms API latency; logs in {folder}")
    emulator = await asyncio.to_thread(start_emulator, folder, options.latency_ms)
    configs: list[Config] = []
    ceilings: dict[int, Throughput] = {}
    with running(emulator):
        plan = [("SQLite", workers) for workers in options.workers]
        skipped: str | None = None
        if options.postgres:
            skipped = await postgres_reachable()
            if skipped is None:
                plan.append(("PostgreSQL", 1))
            else:
                say(f"PostgreSQL skipped: {skipped}")
        for workers in sorted({w for _, w in plan}):
            ceilings[workers] = await measure_ceiling(options, workers)
        baseline = 0.0
        for database, workers in plan:
            config = Config(database, workers, workers, ceilings[workers].rps)
            configs.append(config)
            try:
                await run_config(config, options, emulator, baseline)
            except Exception as exc:
                config.error = f"{type(exc).__name__}: {exc}"
                say(f"{config.name} failed: {config.error}")
            if not baseline:
                baseline = config.sustained or 0.0
        if options.peers and options.scenarios & {2, 5}:
            # Its CPU per request is compared with one bare process's (it runs
            # neither scenario 3 nor 4: no share of a ceiling to report).
            bare = min(ceilings)
            for peer in guide_peers():
                config = Config("SQLite", peer.workers, bare, ceilings[bare].rps, peer=peer)
                configs.append(config)
                try:
                    await run_peer(config, options, emulator, baseline)
                except Exception as exc:
                    config.error = f"{type(exc).__name__}: {exc}"
                    say(f"{config.name} failed: {config.error}")
    return report.build(options, ceilings, configs, postgres_skipped=skipped)


def parse(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        epilog="From make: make bench BENCH_ARGS='--workers 1 --no-postgres'.",
        description=(
            "Measure the service next to a bare server on the same stack, on 127.0.0.1: "
            "1 the ceiling, 2 new sessions by webhook at rising rates, 3 duplicate "
            "deliveries, 4 landing pages, 5 Stripe API calls per session, 6 peak RSS. "
            "Prints one table and writes JSON; see docs/benchmark.md."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--latency-ms", type=float, default=100, help="the emulator's Stripe API latency"
    )
    parser.add_argument(
        "--rates",
        default="25,50,75,100,125,150,200",
        help="offered rates of new sessions per second (scenario 2), in order;"
        " stops at the first not sustained",
    )
    parser.add_argument(
        "--step-seconds", type=float, default=6, help="seconds of each offered rate"
    )
    parser.add_argument(
        "--closed-seconds",
        type=float,
        default=5,
        help="seconds of each closed-loop measurement (scenarios 1, 3, 4)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=32, help="requests in flight in closed loops"
    )
    parser.add_argument(
        "--workers",
        default="1,2",
        help="`fulfill serve --workers` values to run on SQLite, comma-separated",
    )
    parser.add_argument("--no-postgres", action="store_true", help="skip PostgreSQL")
    parser.add_argument(
        "--no-peers",
        action="store_true",
        help="skip the guide's code (the peer: Flask under gunicorn, sync and gthread)",
    )
    parser.add_argument(
        "--scenarios",
        default="2,3,4,5",
        help="which of scenarios 2-5 to run (1 and 6 always are), comma-separated",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for the service, e.g. FULFILL_MAIL=false; repeatable",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the service under pyinstrument; samples in FOLDER/service-*.pyisession",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "var" / "bench.json", help="the JSON results"
    )
    parser.add_argument(
        "--folder",
        type=Path,
        default=ROOT / "var" / "bench",
        help="databases and logs of the run (emptied first)",
    )
    args = parser.parse_args(argv)
    try:
        rates = tuple(float(r) for r in args.rates.split(",") if r.strip())
        workers = tuple(int(w) for w in args.workers.split(",") if w.strip())
        chosen = frozenset(int(n) for n in args.scenarios.split(",") if n.strip())
    except ValueError as exc:
        parser.error(str(exc))
    if not rates or any(r <= 0 for r in rates):
        parser.error("--rates: one or more rates above 0")
    if not workers or any(w < 1 for w in workers):
        parser.error("--workers: one or more counts of 1 or more")
    if not chosen <= {2, 3, 4, 5}:
        parser.error("--scenarios: numbers from 2 to 5")
    pairs = [tuple(e.split("=", 1)) for e in args.env]
    if any(len(p) != 2 or not p[0] for p in pairs):
        parser.error("--env: NAME=VALUE")
    return Options(
        latency_ms=args.latency_ms,
        rates=rates,
        step_seconds=args.step_seconds,
        closed_seconds=args.closed_seconds,
        concurrency=args.concurrency,
        workers=workers,
        postgres=not args.no_postgres,
        peers=not args.no_peers,
        scenarios=chosen,
        service_env=tuple((p[0], p[1]) for p in pairs),
        profile=args.profile,
        folder=args.folder.resolve(),
        out=args.out.resolve(),
    )


def main(argv: list[str] | None = None) -> None:
    options = parse(argv)
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        results = runner.run(bench(options))
    results["seconds"] = round(time.monotonic() - started, 1)
    results["machine"]["load_average_before"] = round(load_before, 2)
    results["out"] = str(options.out)
    report.save(results, options.out)
    report.show(results)
    say(f"done in {results['seconds']} s; results in {options.out}")
    # Targets missed say something about the machine as much as the service,
    # and do not fail the run; a configuration that did not run, or a line
    # item the service performed twice, does. The guide's code performing
    # items twice is what it does, and is reported, not a failure.
    broken = [c["name"] for c in results["configs"] if c["error"]]
    twice = sum(c["performed_twice"] for c in results["configs"] if not c["peer"])
    if broken or twice:
        say(f"FAILED: {', '.join(broken) or 'no run failed'}; {twice} line items performed twice")
        sys.exit(1)
