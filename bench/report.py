"""The results: one JSON document, and one table printed from it.

``python -m bench.report var/bench.json`` prints the table of a saved run again;
with ``--markdown``, as the ratios docs/benchmark.md quotes.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from bench.run import Config, Options
    from bench.scenarios import Throughput

RSS_LIMIT_MB = 200
TARGET_RATE = 100
ACK_P99_LIMIT = 1.0
SHARE_OF_CEILING = 0.5
# The configuration the targets are stated for.
BASELINE = "SQLite x1"


def _clean(value: Any) -> Any:
    """JSON has no NaN: an unmeasured value is null."""
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 6)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _commit() -> str | None:
    """The commit measured; "+changes" when the service's code differs from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        answer = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=root,
        )
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "fulfill"],
            capture_output=True,
            text=True,
            check=True,
            cwd=root,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    commit = answer.stdout.strip()
    return f"{commit}+changes" if commit and changed.stdout.strip() else commit or None


def _config(config: Config) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": config.name,
        "database": config.database,
        "workers": config.workers,
        "error": config.error,
        "ceiling_rps": config.ceiling_rps,
        "sustained_rate": config.sustained,
        "webhook_steps": [{**asdict(s), "sustained": s.sustained} for s in config.steps],
        "api_calls": [{**asdict(a), "per_session": a.per_session} for a in config.api_calls],
        "peak_rss_mb": {str(pid): round(mb, 1) for pid, mb in config.peak_rss_mb.items()},
        "peak_rss_mb_total": round(sum(config.peak_rss_mb.values()), 1) or None,
        "performed_items": config.performed,
        "performed_twice": config.performed_twice,
    }
    for name in ("duplicates", "landing"):
        measured: Throughput | None = getattr(config, name)
        data[name] = (
            None
            if measured is None
            else {**asdict(measured), "vs_ceiling": measured.rps / config.ceiling_rps}
        )
    return data


def _targets(configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, each with what was measured and whether it held (None: not run)."""
    by_name = {c["name"]: c for c in configs}
    one = by_name.get(BASELINE)
    targets: list[dict[str, Any]] = []

    def add(number: str, service: str, what: str, measured: str, held: bool | None) -> None:
        targets.append(
            {
                "scenario": number,
                "service": service,
                "target": what,
                "measured": measured,
                "held": held,
            }
        )

    if one is None or one["error"]:
        return targets
    steps = one["webhook_steps"]
    rate = one["sustained_rate"]
    if steps:
        at_target = next((s for s in steps if s["rate"] == TARGET_RATE), None)
        add(
            "2",
            BASELINE,
            f"≥ {TARGET_RATE} new sessions/s, every one fulfilled",
            f"{rate:g}/s" if rate else "none",
            bool(rate and rate >= TARGET_RATE),
        )
        add(
            "2",
            BASELINE,
            f"webhook ack p99 < {ACK_P99_LIMIT:g} s at {TARGET_RATE}/s",
            _ms(at_target["ack_p99"]) if at_target else "not reached",
            bool(at_target and at_target["ack_p99"] is not None and at_target["ack_p99"] < 1.0),
        )
        for name, config in by_name.items():
            if config["workers"] > 1 and config["database"] == "SQLite":
                more = config["sustained_rate"]
                add(
                    "2",
                    name,
                    "more new sessions/s than x1",
                    f"{more:g}/s" if more else "none",
                    bool(more and (rate is None or more > rate)),
                )
    for number, key in (("3", "duplicates"), ("4", "landing")):
        measured = one[key]
        if measured:
            add(
                number,
                BASELINE,
                f"≥ {SHARE_OF_CEILING:g} x the ceiling's requests/s",
                f"{measured['vs_ceiling']:.2f}",
                measured["vs_ceiling"] >= SHARE_OF_CEILING,
            )
    calls = one["api_calls"]
    if calls:
        add(
            "5",
            BASELINE,
            "1 call/session up to 10 items, +1 a page beyond",
            " ".join(f"{c['per_session']:.2f}" for c in calls),
            all(
                c["fulfilled"] == c["sessions"] and c["per_session"] == c["expected_per_session"]
                for c in calls
            ),
        )
    peak = one["peak_rss_mb_total"]
    add(
        "6",
        BASELINE,
        f"peak RSS < {RSS_LIMIT_MB} MB",
        f"{peak:.0f} MB" if peak else "not read",
        bool(peak and peak < RSS_LIMIT_MB),
    )
    twice = sum(c["performed_twice"] for c in configs)
    add(
        "all",
        "every run",
        "no line item performed twice",
        f"{twice} of {sum(c['performed_items'] for c in configs)} items",
        twice == 0,
    )
    return targets


def build(
    options: Options,
    ceilings: dict[int, Throughput],
    configs: list[Config],
    *,
    postgres_skipped: str | None,
) -> dict[str, Any]:
    """Everything measured, as JSON-able data."""
    config_data = [_config(c) for c in configs]
    results: dict[str, Any] = _clean(
        {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "commit": _commit(),
            "machine": {
                "cpus": os.cpu_count(),
                "load_average": os.getloadavg()[0],
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "options": {
                "latency_ms": options.latency_ms,
                "rates": list(options.rates),
                "step_seconds": options.step_seconds,
                "closed_seconds": options.closed_seconds,
                "concurrency": options.concurrency,
                "scenarios": sorted(options.scenarios),
                "service_env": dict(options.service_env),
                "profile": options.profile,
            },
            "postgres_skipped": postgres_skipped,
            "ceilings": {str(w): asdict(t) for w, t in ceilings.items()},
            "configs": config_data,
            "targets": _targets(config_data),
        }
    )
    return results


def save(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.2f} s" if seconds >= 10 else f"{seconds * 1000:.0f} ms"


def _us(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e6:.0f} µs"


def _held(held: bool | None) -> str:
    return "" if held is None else ("[green]✓[/green]" if held else "[red]✗[/red]")


def _rss(peaks: dict[str, float]) -> str:
    values = list(peaks.values())
    if len(values) == 1:
        return f"{values[0]:.0f} MB"
    # `fulfill serve` (uvicorn's supervisor) first, then its children.
    parts = " + ".join(f"{mb:.0f}" for mb in values)
    return f"{sum(values):.0f} MB in {len(values)} processes ({parts})"


def table(results: dict[str, Any]) -> Table:
    options = results["options"]
    machine = results["machine"]
    load = f"{machine.get('load_average_before', 0):.1f} → {machine['load_average']:.1f}"
    title = (
        f"fulfill bench — {machine['cpus']} CPUs (load average {load}), Stripe API latency "
        f"{options['latency_ms']:g} ms, commit {results['commit']}, {results.get('seconds', '?')} s"
    )
    grid = Table(title=title, title_justify="left", caption_justify="left")
    grid.add_column("#", justify="right")
    grid.add_column("scenario")
    grid.add_column("service")
    grid.add_column("result")
    grid.add_column("p50", justify="right")
    grid.add_column("p99", justify="right")
    grid.add_column("x ceiling", justify="right")
    grid.add_column("CPU/req", justify="right")
    for workers, top in results["ceilings"].items():
        grid.add_row(
            "1",
            "bare endpoint",
            f"Starlette x{workers}",
            f"{top['rps']:.0f} req/s",
            _ms(top["p50"]),
            _ms(top["p99"]),
            "1.00",
            _us(top["server_cpu"]),
        )
    for config in results["configs"]:
        grid.add_section()
        name = config["name"]
        if config["error"]:
            grid.add_row("", "[red]failed[/red]", name, config["error"][:100])
        for step in config["webhook_steps"]:
            grid.add_row(
                "2",
                f"new sessions at {step['rate']:g}/s",
                name,
                f"{step['fulfilled']}/{step['sessions']} at {step['fulfilled_rate']:.0f}/s "
                + _held(step["sustained"]),
                f"{_ms(step['ack_p50'])} / {_ms(step['fulfil_p50'])}",
                f"{_ms(step['ack_p99'])} / {_ms(step['fulfil_p99'])}",
                "",
                _us(step["server_cpu"]),
            )
        for number, key, label in (
            ("3", "duplicates", "duplicate events"),
            ("4", "landing", "landing page, fulfilled"),
        ):
            measured = config[key]
            if measured:
                grid.add_row(
                    number,
                    label,
                    name,
                    f"{measured['rps']:.0f} req/s",
                    _ms(measured["p50"]),
                    _ms(measured["p99"]),
                    f"{measured['vs_ceiling']:.2f}",
                    _us(measured["server_cpu"]),
                )
        by_items: dict[int, list[dict[str, Any]]] = {}
        for calls in config["api_calls"]:
            by_items.setdefault(calls["items"], []).append(calls)
        for items, variants in by_items.items():
            grid.add_row(
                "5",
                f"API calls/session, {items} item{'s' if items > 1 else ''}",
                name,
                ", ".join(
                    f"{v['per_session']:.2f}{' (dup.)' if v['duplicates'] else ''}"
                    for v in variants
                )
                + f"; expect {variants[0]['expected_per_session']}",
            )
        if config["peak_rss_mb"]:
            grid.add_row("6", "peak RSS (VmHWM)", name, _rss(config["peak_rss_mb"]))
    if results.get("postgres_skipped"):
        grid.add_section()
        grid.add_row("", "PostgreSQL skipped", "", results["postgres_skipped"][:100])
    return grid


def targets_table(results: dict[str, Any]) -> Table:
    grid = Table(title="targets (issue #8)", title_justify="left")
    grid.add_column("#", justify="right")
    grid.add_column("target")
    grid.add_column("service")
    grid.add_column("measured", justify="right")
    grid.add_column("held", justify="center")
    for target in results["targets"]:
        grid.add_row(
            target["scenario"],
            target["target"],
            target["service"],
            target["measured"],
            _held(target["held"]),
        )
    return grid


def show(results: dict[str, Any]) -> None:
    """Print the tables to stdout."""
    console = Console(width=None if sys.stdout.isatty() else 150)
    console.print(table(results))
    console.print(
        "2: p50 and p99 are webhook acknowledged / session fulfilled, each from the event's "
        "scheduled send (open loop). x ceiling: requests/s over the bare endpoint's with as "
        "many processes. CPU/req: the service's CPU time, all its processes and threads, per "
        "request (per session in 2). 6: the sum over uvicorn's supervisor and workers. "
        f"JSON: {results.get('out', 'var/bench.json')}",
        highlight=False,
    )
    console.print()
    console.print(targets_table(results))


def markdown(results: dict[str, Any]) -> str:
    """The run as ratios (docs/benchmark.md): absolute times depend on the machine.

    Rates against the ceiling; latencies as multiples of the emulator's API
    latency (the floor Stripe sets); CPU per request as multiples of the
    bare endpoint's.
    """
    latency = results["options"]["latency_ms"] / 1000
    ceilings = results["ceilings"]

    def times_latency(seconds: float | None) -> str:
        if seconds is None:
            return "-"
        ratio = seconds / latency
        return f"{ratio:.2f}x" if ratio < 1 else f"{ratio:.1f}x"

    def times_bare(config: dict[str, Any], seconds: float | None) -> str:
        bare = ceilings[str(config["workers"])]["server_cpu"]
        return "-" if seconds is None or not bare else f"{seconds / bare:.0f}x"

    lines = [
        "| # | scenario | service | result | p99 / API latency | CPU per request / bare |",
        "|---|---|---|---|---|---|",
    ]
    for workers, top in ceilings.items():
        lines.append(
            f"| 1 | bare endpoint (ceiling) | Starlette x{workers} | 1.00 | "
            f"{times_latency(top['p99'])} | 1x |"
        )
    for config in results["configs"]:
        name = config["name"]
        if config["error"]:
            lines.append(f"| | failed | {name} | {config['error'][:80]} | | |")
        for step in config["webhook_steps"]:
            lines.append(
                f"| 2 | new sessions offered at {step['rate']:g}/s | {name} | "
                f"{step['fulfilled']}/{step['sessions']} fulfilled, at "
                f"{step['fulfilled_rate'] / step['rate']:.2f}x the offered rate"
                f"{'' if step['sustained'] else ' — **not sustained**'} | "
                f"ack {times_latency(step['ack_p99'])}, fulfilled "
                f"{times_latency(step['fulfil_p99'])} | {times_bare(config, step['server_cpu'])} |"
            )
        for number, key, label in (
            ("3", "duplicates", "duplicate deliveries"),
            ("4", "landing", "landing page of a fulfilled session"),
        ):
            measured = config[key]
            if measured:
                lines.append(
                    f"| {number} | {label} | {name} | {measured['vs_ceiling']:.2f}x the ceiling | "
                    f"{times_latency(measured['p99'])} | "
                    f"{times_bare(config, measured['server_cpu'])} |"
                )
        if config["api_calls"]:
            calls = ", ".join(
                f"{c['items']} item{'s' if c['items'] > 1 else ''}"
                f"{' dup.' if c['duplicates'] else ''}: {c['per_session']:.2f}"
                for c in config["api_calls"]
            )
            lines.append(f"| 5 | API calls per session | {name} | {calls} | | |")
        if config["peak_rss_mb"]:
            lines.append(f"| 6 | peak RSS | {name} | {_rss(config['peak_rss_mb'])} | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.report [--markdown] [FILE]``: a saved run, again."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m bench.report", description="Print a saved benchmark run again."
    )
    parser.add_argument("file", nargs="?", default="var/bench.json", help="the run's JSON")
    parser.add_argument("--markdown", action="store_true", help="as ratios, in Markdown")
    options = parser.parse_args(sys.argv[1:] if argv is None else argv)
    path = Path(options.file)
    if not path.is_file():
        parser.error(f"{path} does not exist: run `make bench` first, or name a saved run")
    results = json.loads(path.read_text())
    as_markdown = options.markdown
    if as_markdown:
        print(markdown(results), end="")
    else:
        show(results)


if __name__ == "__main__":
    main()
