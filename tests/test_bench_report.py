"""The bench's report: the guide's code beside the service, and the targets, from measurements.

No processes: made-up measurements through ``bench.report.build``, as a run
hands them over, so that which side is "ahead", the rate they are compared
at, and what fails the run are checked where they are decided.
"""

from __future__ import annotations

from pathlib import Path

from bench.report import build, markdown
from bench.run import Config, Options, Peer, guide_peers
from bench.scenarios import ApiCalls, Step, Throughput


def options() -> Options:
    return Options(
        latency_ms=100,
        rates=(25, 50, 75, 100),
        step_seconds=4,
        closed_seconds=5,
        concurrency=32,
        workers=(1,),
        postgres=False,
        peers=True,
        scenarios=frozenset({2, 5}),
        service_env=(),
        profile=False,
        folder=Path("var/bench"),
        out=Path("var/bench.json"),
    )


def step(rate: float, sustained: bool, p99: float, cpu: float) -> Step:
    sessions = int(rate * 4)
    return Step(
        rate=rate,
        sessions=sessions,
        acknowledged=sessions,
        fulfilled=sessions,
        sent_rate=rate,
        fulfilled_rate=rate if sustained else rate / 2,
        ack_p50=p99 / 2,
        ack_p99=p99,
        fulfil_p50=p99 / 2,
        fulfil_p99=p99,
        server_cpu=cpu,
        emulator_cpu=0.001,
        client_cpu=0.0005,
    )


def calls(per_session: int, duplicates: bool) -> ApiCalls:
    return ApiCalls(
        items=1,
        duplicates=duplicates,
        sessions=20,
        fulfilled=20,
        calls=20 * per_session,
        expected_per_session=1,
        max_per_session=per_session,
    )


def ceiling() -> Throughput:
    return Throughput("ceiling", 1000, 1000, 20000.0, 0.001, 0.004, 0.00004, 0.00002)


def configs() -> list[Config]:
    sync, gthread = guide_peers()
    ours = Config("SQLite", 1, 1, 20000.0)
    ours.steps = [
        step(25, True, 0.2, 0.014),
        step(50, True, 0.13, 0.012),
        step(75, False, 1, 0.013),
    ]
    ours.api_calls = [calls(1, False), calls(1, True)]
    ours.performed, ours.peak_rss_mb = 1000, {1: 125.0}
    slow = Config("SQLite", sync.workers, 1, 20000.0, peer=sync)
    slow.steps = [step(25, True, 0.6, 0.01), step(50, False, 0.5, 0.006)]
    fast = Config("SQLite", gthread.workers, 1, 20000.0, peer=gthread)
    fast.steps = [
        step(25, True, 0.3, 0.009),
        step(50, True, 0.11, 0.006),
        step(75, True, 0.1, 0.005),
    ]
    for peer in (slow, fast):
        peer.api_calls = [calls(1, False), calls(5, True)]
        peer.performed, peer.performed_twice = 1000, 300
    return [ours, slow, fast]


def test_the_guide_is_compared_at_the_highest_rate_both_sustained() -> None:
    results = build(options(), {1: ceiling()}, configs(), postgres_skipped=None)
    comparison = results["comparison"]
    # The configuration of the guide's that sustained more, whatever its order.
    assert comparison["guide"] == "guide gunicorn gthread 2x8"
    assert comparison["rate"] == 50
    ahead = {row["measure"]: row["ahead"] for row in comparison["rows"]}
    assert ahead == {
        "highest rate sustained": "guide",
        "webhook ack p99 at 50/s": "guide",
        "event → fulfilled p99 at 50/s": "guide",
        "CPU per new session at 50/s": "guide",
        "line items performed twice": "ours",
        "Stripe calls per session, 1 item": "even",
        "Stripe calls per session, 1 item, 5 copies of its event and 3 landing visits at once": (
            "ours"
        ),
    }
    cpu = next(t for t in results["targets"] if "guide's code" in t["target"])
    assert cpu["measured"] == "2.00x at 50/s"
    assert cpu["held"] is False


def test_the_guides_doubles_are_reported_but_do_not_count_against_the_service() -> None:
    results = build(options(), {1: ceiling()}, configs(), postgres_skipped=None)
    twice = next(t for t in results["targets"] if t["target"] == "no line item performed twice")
    assert twice["held"] is True
    assert twice["measured"] == "0 of 1000 items"
    peers = [c for c in results["configs"] if c["peer"]]
    assert [c["performed_twice"] for c in peers] == [300, 300]
    text = markdown(results)
    sync = guide_peers()[0].name  # gunicorn's 2 x cores + 1 workers: named by this machine's
    assert f"| | line items performed twice | {sync} | 300 of 1,000 | | |" in text
    assert "| line items performed twice | 0 of 1,000 | 300 of 1,000 | - | ours |" in text


def test_without_peers_there_is_no_comparison() -> None:
    ours = configs()[0]
    results = build(options(), {1: ceiling()}, [ours], postgres_skipped=None)
    assert results["comparison"] is None
    assert not any("guide's code" in t["target"] for t in results["targets"])


def test_a_peer_is_named_by_its_gunicorn_setup() -> None:
    config = Config("SQLite", 2, 1, 1.0, peer=Peer("guide x", "x", 2, ("--workers", "2")))
    assert config.name == "guide x"
    assert Config("SQLite", 2, 2, 1.0).name == "SQLite x2"
