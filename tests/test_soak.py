"""The soak of ``make soak`` (tests/soak.py), smaller: 500 sessions, every fault, two SIGKILLs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.soak import SoakConfig, run_soak

pytestmark = pytest.mark.slow


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
    assert report.duplicates == 0
    assert report.repeats_unexplained == 0
    assert report.passed, report.table()
