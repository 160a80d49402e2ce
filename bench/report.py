"""The results: one JSON document, and one table printed from it.

``python -m bench.report var/bench.json`` prints the table of a saved run again.
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
    try:
        answer = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return answer.stdout.strip() or None


def _config(config: Config, ceiling_rps: float) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": config.name,
        "database": config.database,
        "workers": config.workers,
        "error": config.error,
        "sustained_rate": config.sustained,
        "webhook_steps": [{**asdict(s), "sustained": s.sustained} for s in config.steps],
        "api_calls": [{**asdict(a), "per_session": a.per_session} for a in config.api_calls],
        "peak_rss_mb": {str(pid): round(mb, 1) for pid, mb in config.peak_rss_mb.items()},
        "performed_items": config.performed,
        "performed_twice": config.performed_twice,
    }
    for name in ("duplicates", "landing"):
        measured: Throughput | None = getattr(config, name)
        data[name] = (
            None
            if measured is None
            else {**asdict(measured), "vs_ceiling": measured.rps / ceiling_rps}
        )
    return data


def _targets(configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, each with what was measured and whether it held."""
    by_name = {c["name"]: c for c in configs}
    one = by_name.get(BASELINE)
    targets: list[dict[str, Any]] = []

    def add(number: str, service: str, what: str, measured: str, held: bool) -> None:
        targets.append(
            {
                "scenario": number,
                "service": service,
                "target": what,
                "measured": measured,
                "held": held,
            }
        )

    if one is None:
        return targets
    at_target = next((s for s in one["webhook_steps"] if s["rate"] == TARGET_RATE), None)
    rate = one["sustained_rate"]
    add(
        "2",
        BASELINE,
        f"≥ {TARGET_RATE} sessions/s, all fulfilled",
        f"{rate:g}/s" if rate else "none",
        bool(rate and rate >= TARGET_RATE),
    )
    add(
        "2",
        BASELINE,
        f"ack p99 < {ACK_P99_LIMIT * 1000:.0f} ms at {TARGET_RATE}/s",
        _ms(at_target["ack_p99"]) if at_target else "not run",
        bool(at_target and at_target["ack_p99"] is not None and at_target["ack_p99"] < 1.0),
    )
    for name, config in by_name.items():
        if config["workers"] > 1 and config["database"] == "SQLite":
            more = config["sustained_rate"]
            add(
                "2",
                name,
                "more sessions/s than 1 process",
                f"{more:g}/s" if more else "none",
                bool(more and (rate is None or more > rate)),
            )
    for number, key in (("3", "duplicates"), ("4", "landing")):
        measured = one[key]
        add(
            number,
            BASELINE,
            f"≥ {SHARE_OF_CEILING:g} of the ceiling's requests/s",
            f"{measured['vs_ceiling']:.2f}" if measured else "not run",
            bool(measured and measured["vs_ceiling"] >= SHARE_OF_CEILING),
        )
    calls = one["api_calls"]
    exact = bool(calls) and all(
        c["fulfilled"] == c["sessions"] and c["per_session"] == c["expected_per_session"]
        for c in calls
    )
    add(
        "5",
        BASELINE,
        "1 call/session to 10 items, +1 a page beyond",
        " ".join(f"{c['per_session']:.2f}" for c in calls) or "not run",
        exact,
    )
    peak = max(one["peak_rss_mb"].values(), default=None)
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
        f"{twice} of {sum(c['performed_items'] for c in configs)}",
        twice == 0,
    )
    return targets


def build(
    options: Options, ceiling: Throughput, configs: list[Config], *, postgres_skipped: str | None
) -> dict[str, Any]:
    """Everything measured, as JSON-able data."""
    config_data = [_config(c, ceiling.rps) for c in configs]
    results: dict[str, Any] = _clean(
        {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "commit": _commit(),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "options": {
                "latency_ms": options.latency_ms,
                "rates": list(options.rates),
                "step_seconds": options.step_seconds,
                "closed_seconds": options.closed_seconds,
                "concurrency": options.concurrency,
            },
            "postgres_skipped": postgres_skipped,
            "ceiling": asdict(ceiling),
            "configs": config_data,
            "targets": _targets(config_data),
        }
    )
    return results


def save(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def _cpu(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f} ms"


def _held(held: bool | None) -> str:
    return "" if held is None else ("[green]yes[/green]" if held else "[red]NO[/red]")


def table(results: dict[str, Any]) -> Table:
    options = results["options"]
    top = results["ceiling"]
    title = (
        f"fulfill bench: {results['machine']['cpus']} CPUs, Stripe API latency "
        f"{options['latency_ms']:g} ms, commit {results['commit']}, {results.get('seconds', '?')} s"
    )
    grid = Table(title=title, title_justify="left")
    grid.add_column("#", justify="right")
    grid.add_column("scenario")
    grid.add_column("service")
    grid.add_column("result", no_wrap=True)
    for column in ("p50", "p99", "vs ceiling", "CPU/req"):
        grid.add_column(column, justify="right", no_wrap=True)
    grid.add_row(
        "1",
        "bare endpoint",
        "Starlette x1",
        f"{top['rps']:.0f} req/s",
        _ms(top["p50"]),
        _ms(top["p99"]),
        "1.00",
        _cpu(top["server_cpu"]),
    )
    for config in results["configs"]:
        grid.add_section()
        name = config["name"]
        if config["error"]:
            grid.add_row("", "[red]failed[/red]", name, config["error"][:60])
        for step in config["webhook_steps"]:
            grid.add_row(
                "2",
                f"new sessions {step['rate']:g}/s",
                name,
                f"{step['fulfilled']}/{step['sessions']}, {step['fulfilled_rate']:.0f}/s "
                + _held(step["sustained"]),
                f"{_ms(step['ack_p50'])} / {_ms(step['fulfil_p50'])}",
                f"{_ms(step['ack_p99'])} / {_ms(step['fulfil_p99'])}",
                "",
                f"{_cpu(step['server_cpu'])} (+{_cpu(step.get('emulator_cpu'))} Stripe)",
            )
        for number, key, label in (
            ("3", "duplicates", "duplicate events"),
            ("4", "landing", "landing, fulfilled"),
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
                    _cpu(measured["server_cpu"]),
                )
        by_items: dict[int, list[dict[str, Any]]] = {}
        for calls in config["api_calls"]:
            by_items.setdefault(calls["items"], []).append(calls)
        for items, variants in by_items.items():
            grid.add_row(
                "5",
                f"API calls, {items} item{'s' if items > 1 else ''}",
                name,
                ", ".join(
                    f"{v['per_session']:.2f}{' dup.' if v['duplicates'] else ''}" for v in variants
                )
                + f" (expect {variants[0]['expected_per_session']})",
            )
        peaks = config["peak_rss_mb"]
        if peaks:
            grid.add_row("6", "peak RSS", name, " + ".join(f"{mb:.0f} MB" for mb in peaks.values()))
    if results.get("postgres_skipped"):
        grid.add_section()
        grid.add_row("", "PostgreSQL skipped", "", results["postgres_skipped"][:60])
    grid.add_section()
    for target in results["targets"]:
        grid.add_row(
            target["scenario"],
            f"target: {target['target']}",
            target["service"],
            f"{target['measured']}  {_held(target['held'])}",
        )
    return grid


def show(results: dict[str, Any]) -> None:
    """Print the table; p50 and p99 of scenario 2 are "acknowledged / fulfilled"."""
    console = Console(width=max(160, Console().width))
    console.print(table(results))
    console.print(
        "Scenario 2 latencies: webhook acknowledged / session fulfilled, from the event's "
        "scheduled send. CPU/req: the server's CPU time (all its processes and threads) per "
        "request or session; for scenario 2 also the emulator's, playing Stripe. "
        f"JSON: {results.get('out', 'var/bench.json')}"
    )


if __name__ == "__main__":
    show(json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else "var/bench.json").read_text()))
