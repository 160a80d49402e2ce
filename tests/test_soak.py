"""The soak of ``make soak`` (tests/soak.py), smaller: 500 sessions, every fault, two SIGKILLs.

And the rule its table judges repeats by, on made-up performances: a figure
that could not fail would prove nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.soak import Receipt, SoakConfig, judge_repeats, run_soak


@pytest.mark.slow
def test_500_sessions_through_faults_and_two_kills_are_each_fulfilled_once(
    tmp_path: Path,
) -> None:
    report = run_soak(
        SoakConfig(
            workdir=tmp_path,
            sessions=500,
            kills=2,
            seed=7,
            fault_period=1.0,
            # A sweep every 6 s, so that its list and retrieves meet the faults too.
            reconcile_minutes=0.1,
            inline_budget=2.0,
            time_limit=110,
        ),
        echo=False,
    )
    print(report.table())
    assert report.crashes == 2
    assert sum(report.faults.values()) > 0
    assert report.deliveries["redeliver"] + report.deliveries["flush"] > 0
    assert report.missing == 0
    # What the receiver saw: one performance per line item, and again only
    # those the killed servers were performing when they died.
    assert report.performances == report.items_performed + report.repeats
    assert report.repeats_unexplained == 0
    assert report.repeats == report.repeats_in_flight_at_a_kill
    assert report.repeats_in_flight_at_a_kill <= sum(report.in_flight_at_kills)
    assert report.passed, report.table()


def performance(item: str, server: int, at: float, key: str | None = None) -> Receipt:
    return Receipt(key or f"cs_1:{item}", "cs_1", item, at, server)


def test_a_repeat_is_explained_only_by_a_kill_that_caught_its_item_in_flight() -> None:
    # Server 0 was killed with li_a recorded done and li_b in flight; server 1 still runs.
    done_at_kills = [{("cs_1", "li_a")}]
    judged = judge_repeats(
        [
            performance("li_a", 0, 1.0),
            performance("li_b", 0, 2.0),
            performance("li_b", 1, 15.0),  # taken over: the design's one repeat
        ],
        done_at_kills,
    )
    assert (judged.explained, judged.unexplained, judged.in_flight) == (1, [], [1])

    cases = {
        "recorded done when server 0 was killed": [
            performance("li_a", 0, 1.0),
            performance("li_a", 1, 15.0),
        ],
        "performed twice by server 0": [performance("li_c", 0, 1.0), performance("li_c", 0, 3.0)],
        "performed twice by server 1": [performance("li_c", 1, 11.0), performance("li_c", 1, 13.0)],
        "performed by server 1, never killed": [
            performance("li_c", 1, 11.0),
            performance("li_c", 2, 23.0),
        ],
        "under another key": [
            performance("li_b", 0, 2.0),
            performance("li_b", 1, 15.0, key="cs_1:li_b:again"),
        ],
    }
    for why, receipts in cases.items():
        judged = judge_repeats(receipts, done_at_kills)
        assert judged.explained == 0, why
        assert len(judged.unexplained) == 1, why
        assert why in judged.unexplained[0]
