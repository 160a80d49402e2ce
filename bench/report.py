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

RSS_LIMIT_MB = 150
TARGET_RATE = 100
ACK_P99_LIMIT = 1.0
FULFILLED_P99_RATE = 50  # event → fulfilled p99 at this offered rate,
FULFILLED_P99_LIMIT = 1.5  # as a multiple of the API latency
CPU_PER_BARE_LIMIT = 80  # CPU per new session over the bare request's
CPU_PER_GUIDE_LIMIT = 0.6  # CPU per new session over the guide's code's
WORKERS_GAIN = 1.5  # --workers 2's sustained rate over x1's
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
        # The guide's code (bench/peers/guide.py) under gunicorn: these options.
        "peer": {"gunicorn": " ".join(config.peer.gunicorn)} if config.peer else None,
        "database": config.database,
        "workers": config.workers,
        "error": config.error,
        "ceiling_workers": config.ceiling_workers,
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


def _steps_at(config: dict[str, Any], rate: float | None) -> dict[str, Any] | None:
    """The scenario-2 step of ``config`` at the offered ``rate``, if it ran one."""
    return next((s for s in config["webhook_steps"] if s["rate"] == rate), None)


def _calls(config: dict[str, Any], items: int, duplicates: bool) -> float | None:
    found = [
        c["per_session"]
        for c in config["api_calls"]
        if c["items"] == items and c["duplicates"] == duplicates
    ]
    return found[0] if found else None


def _best_peer(configs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The guide's configuration that did best: highest rate sustained, then least CPU there."""
    peers = [c for c in configs if c.get("peer") and not c["error"]]

    def rank(config: dict[str, Any]) -> tuple[float, float]:
        step = _steps_at(config, config["sustained_rate"])
        return (config["sustained_rate"] or 0.0, -step["server_cpu"] if step else -math.inf)

    return max(peers, key=rank) if peers else None


def _comparison(configs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The service (SQLite x1) beside the best configuration of the guide's code.

    Latencies and CPU are compared at one offered rate: the highest both
    sustained (or, when they share none, the lowest both were offered), so
    that neither is judged at a load the other was not given.
    """
    ours = next((c for c in configs if c["name"] == BASELINE and not c["error"]), None)
    peer = _best_peer(configs)
    if ours is None or peer is None:
        return None

    def rates(config: dict[str, Any], sustained: bool) -> set[float]:
        return {s["rate"] for s in config["webhook_steps"] if s["sustained"] or not sustained}

    both = rates(ours, True) & rates(peer, True)
    offered = rates(ours, False) & rates(peer, False)
    rate = max(both) if both else min(offered) if offered else None
    at_ours, at_peer = _steps_at(ours, rate), _steps_at(peer, rate)
    rows: list[dict[str, Any]] = []

    def add(measure: str, unit: str, better: str, mine: Any, theirs: Any) -> None:
        rows.append(
            {"measure": measure, "unit": unit, "better": better, "ours": mine, "guide": theirs}
        )

    def step(at: dict[str, Any] | None, key: str) -> float | None:
        return at[key] if at else None

    add("highest rate sustained", "rate", "higher", ours["sustained_rate"], peer["sustained_rate"])
    at = f" at {rate:g}/s" if rate else ""
    for key, label in (("ack_p99", "webhook ack p99"), ("fulfil_p99", "event → fulfilled p99")):
        add(label + at, "seconds", "lower", step(at_ours, key), step(at_peer, key))
    add(
        "CPU per new session" + at,
        "cpu",
        "lower",
        step(at_ours, "server_cpu"),
        step(at_peer, "server_cpu"),
    )
    add(
        "line items performed twice",
        "twice",
        "lower",
        [ours["performed_twice"], ours["performed_items"]],
        [peer["performed_twice"], peer["performed_items"]],
    )
    add(
        "Stripe calls per session, 1 item",
        "calls",
        "lower",
        _calls(ours, 1, False),
        _calls(peer, 1, False),
    )
    add(
        "Stripe calls per session, 1 item, 5 copies of its event and 3 landing visits at once",
        "calls",
        "lower",
        _calls(ours, 1, True),
        _calls(peer, 1, True),
    )
    for row in rows:
        row["ahead"] = _ahead(row)
    return {"ours": ours["name"], "guide": peer["name"], "rate": rate, "rows": rows}


def _ahead(row: dict[str, Any]) -> str | None:
    """ "ours", "guide" or "even" (None: one side was not measured)."""
    mine, theirs = row["ours"], row["guide"]
    if row["unit"] == "twice":
        mine, theirs = mine[0], theirs[0]
    if mine is None or theirs is None:
        return None
    if mine == theirs:
        return "even"
    ours_better = mine > theirs if row["better"] == "higher" else mine < theirs
    return "ours" if ours_better else "guide"


def _targets(
    configs: list[dict[str, Any]],
    comparison: dict[str, Any] | None,
    ceilings: dict[str, dict[str, Any]],
    latency: float,
) -> list[dict[str, Any]]:
    """The issues' targets, each with what was measured and whether it held (None: not run)."""
    by_name = {c["name"]: c for c in configs if not c.get("peer")}
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
        for name in (BASELINE, "PostgreSQL x1"):
            config = by_name.get(name)
            if config and config["webhook_steps"]:
                sustained = config["sustained_rate"]
                add(
                    "2",
                    name,
                    f"≥ {TARGET_RATE} new sessions/s sustained, every one fulfilled",
                    f"{sustained:g}/s" if sustained else "none",
                    bool(sustained and sustained >= TARGET_RATE),
                )
        at_target = _steps_at(one, TARGET_RATE)
        add(
            "2",
            BASELINE,
            f"webhook ack p99 < {ACK_P99_LIMIT:g} s at {TARGET_RATE}/s",
            _ms(at_target["ack_p99"]) if at_target else "not reached",
            bool(at_target and at_target["ack_p99"] is not None and at_target["ack_p99"] < 1.0),
        )
        at_fifty = _steps_at(one, FULFILLED_P99_RATE)
        p99 = at_fifty["fulfil_p99"] if at_fifty else None
        add(
            "2",
            BASELINE,
            f"event → fulfilled p99 at {FULFILLED_P99_RATE:g}/s"
            f" ≤ {FULFILLED_P99_LIMIT:g} x the API latency",
            f"{p99 / latency:.2f}x" if p99 is not None else "not reached",
            None if p99 is None else p99 / latency <= FULFILLED_P99_LIMIT,
        )
        at_top = _steps_at(one, rate)
        bare = ceilings.get(str(one["workers"]), {}).get("server_cpu")
        per_bare = at_top["server_cpu"] / bare if at_top and bare else None
        add(
            "2",
            BASELINE,
            f"CPU per new session ≤ {CPU_PER_BARE_LIMIT:g} x the bare request's,"
            " at the highest rate sustained",
            f"{per_bare:.0f}x at {rate:g}/s" if per_bare is not None else "no rate sustained",
            None if per_bare is None else per_bare <= CPU_PER_BARE_LIMIT,
        )
        cpu = next((r for r in (comparison or {}).get("rows", []) if r["unit"] == "cpu"), None)
        if comparison and cpu:
            ratio = cpu["ours"] / cpu["guide"] if cpu["ours"] and cpu["guide"] else None
            add(
                "2",
                BASELINE,
                f"CPU per new session ≤ {CPU_PER_GUIDE_LIMIT:g} x the guide's code's"
                f" ({comparison['guide']}), at the highest rate both sustained",
                f"{ratio:.2f}x at {comparison['rate']:g}/s" if ratio else "not measured",
                None if ratio is None else ratio <= CPU_PER_GUIDE_LIMIT,
            )
        for name, config in by_name.items():
            if config["workers"] == 2 and config["database"] == "SQLite":
                more = config["sustained_rate"]
                add(
                    "2",
                    name,
                    f"≥ {WORKERS_GAIN:g} x the new sessions/s x1 sustains",
                    f"{more:g}/s against {rate:g}/s" if more and rate else f"{more or 0:g}/s",
                    bool(more and (rate is None or more >= WORKERS_GAIN * rate)),
                )
    for number, key, label in (
        ("3", "duplicates", "duplicate deliveries"),
        ("4", "landing", "landing pages of fulfilled orders"),
    ):
        measured = one[key]
        if measured:
            add(
                number,
                BASELINE,
                f"{label} ≥ {SHARE_OF_CEILING:g} x the ceiling's requests/s",
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
        f"peak RSS ≤ {RSS_LIMIT_MB} MB",
        f"{peak:.0f} MB" if peak else "not read",
        bool(peak and peak <= RSS_LIMIT_MB),
    )
    service = [c for c in configs if not c.get("peer")]
    twice = sum(c["performed_twice"] for c in service)
    add(
        "all",
        "every run of the service",
        "no line item performed twice",
        f"{twice} of {sum(c['performed_items'] for c in service)} items",
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
    config_data: list[dict[str, Any]] = _clean([_config(c) for c in configs])
    ceiling_data: dict[str, dict[str, Any]] = _clean(
        {str(w): asdict(t) for w, t in ceilings.items()}
    )
    comparison = _comparison(config_data)
    targets = _targets(config_data, comparison, ceiling_data, options.latency_ms / 1000)
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
            "ceilings": ceiling_data,
            "configs": config_data,
            "comparison": comparison,
            "targets": targets,
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
        if config["performed_items"]:
            twice = f"{config['performed_twice']} of {config['performed_items']}"
            if config["performed_twice"] and not config.get("peer"):
                twice = f"[red]{twice}[/red]"
            grid.add_row("", "line items performed twice", name, twice)
    if results.get("postgres_skipped"):
        grid.add_section()
        grid.add_row("", "PostgreSQL skipped", "", results["postgres_skipped"][:100])
    return grid


GUIDE_DIFFERS = (
    "The guide's code (bench/peers/guide.py, Flask under gunicorn, SQLite) sends no "
    "emails, keeps no access log, takes no lease, retries nothing and reconciles "
    "nothing; it checks for a record, retrieves, performs, then records, so "
    "overlapping copies of an event each perform the items."
)


def _value(unit: str, value: Any) -> str:
    """A compared figure, in the terminal's units."""
    if unit == "twice":
        return f"{value[0]} of {value[1]}"
    if value is None:
        return "-" if unit != "rate" else "none"
    if unit == "rate":
        return f"{value:g}/s"
    if unit == "seconds":
        return _ms(value)
    if unit == "cpu":
        return f"{value * 1000:.1f} ms"
    return f"{value:.2f}"


def _ratio(row: dict[str, Any]) -> str:
    """Ours over the guide's, for the figures where a ratio means something."""
    mine, theirs = row["ours"], row["guide"]
    if row["unit"] == "twice" or not mine or not theirs:
        return "-"
    return f"{mine / theirs:.2f}"


AHEAD = {"ours": "ours", "guide": "the guide's", "even": "even", None: "-"}


def comparison_table(results: dict[str, Any]) -> Table | None:
    comparison = results.get("comparison")
    if not comparison:
        return None
    grid = Table(
        title=f"the service beside the guide's code (issue #16), best of the guide's: "
        f"{comparison['guide']}",
        title_justify="left",
    )
    grid.add_column("measure")
    grid.add_column(f"ours ({comparison['ours']})", justify="right")
    grid.add_column("the guide's", justify="right")
    grid.add_column("ours ÷ guide's", justify="right")
    grid.add_column("ahead")
    for row in comparison["rows"]:
        ahead = AHEAD[row["ahead"]]
        colour = {"ours": "green", "guide": "red"}.get(row["ahead"] or "")
        grid.add_row(
            row["measure"],
            _value(row["unit"], row["ours"]),
            _value(row["unit"], row["guide"]),
            _ratio(row),
            f"[{colour}]{ahead}[/{colour}]" if colour else ahead,
        )
    return grid


def targets_table(results: dict[str, Any]) -> Table:
    grid = Table(title="targets (issues #8, #16)", title_justify="left")
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
        "request (per session in 2). 6: the sum over uvicorn's supervisor and workers "
        "(gunicorn's master and workers for the guide's code). "
        f"JSON: {results.get('out', 'var/bench.json')}",
        highlight=False,
    )
    compared = comparison_table(results)
    if compared is not None:
        console.print()
        console.print(compared)
        rate = results["comparison"]["rate"]
        console.print(
            f"{GUIDE_DIFFERS} Latencies and CPU at "
            + (f"{rate:g}/s, " if rate else "no common rate, ")
            + "the highest offered rate both sustained (or the lowest both were offered).",
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
        workers = config.get("ceiling_workers", config["workers"])
        bare = ceilings[str(workers)]["server_cpu"]
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
        if config["performed_items"]:
            lines.append(
                f"| | line items performed twice | {name} | "
                f"{config['performed_twice']:,} of {config['performed_items']:,} | | |"
            )
    comparison = results.get("comparison")
    if comparison:
        bare = ceilings[min(ceilings, key=int)]["server_cpu"]

        def figure(unit: str, value: Any) -> str:
            if unit == "seconds":
                return times_latency(value)
            if unit == "cpu":
                return "-" if value is None or not bare else f"{value / bare:.0f}x"
            if unit == "twice":
                return f"{value[0]:,} of {value[1]:,}"
            return _value(unit, value)

        lines += [
            "",
            f"Beside the guide's code ({comparison['guide']}, the best of its configurations); "
            "p99s over the API latency, CPU over the bare request's:",
            "",
            f"| | ours ({comparison['ours']}) | the guide's | ours ÷ guide's | ahead |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {row['measure']} | {figure(row['unit'], row['ours'])} | "
            f"{figure(row['unit'], row['guide'])} | {_ratio(row)} | {AHEAD[row['ahead']]} |"
            for row in comparison["rows"]
        ]
    if results.get("targets"):
        lines += ["", "| # | target | service | measured | holds? |", "|---|---|---|---|---|"]
        lines += [
            f"| {t['scenario']} | {t['target']} | {t['service']} | {t['measured']} | "
            f"{'-' if t['held'] is None else 'yes' if t['held'] else '**no**'} |"
            for t in results["targets"]
        ]
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
