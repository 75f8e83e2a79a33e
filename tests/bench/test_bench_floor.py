"""``mdd bench --floor``: every library step is measured, the budgets set against their sum."""

from __future__ import annotations

from pathlib import Path

import pytest

from mdd.bench_floor import BUDGETS, STEPS, floor, format_floor, sqlite_ns
from mdd.storage import open_db


def test_every_step_is_measured_and_summed_per_budget() -> None:
    report = floor(scale=0.01, repeat=1)
    steps = report["steps"]
    assert list(steps) == [s.name for s in STEPS]
    assert all(s["ns"] > 0 for s in steps.values())
    assert steps["encode"]["per_event"] == 2  # the JSONL line and the NATS payload
    expected = {
        "all_sinks": sum(steps[s.name]["ns"] * s.per_event for s in STEPS),
        "metrics_only": sum(steps[s.name]["ns"] * s.per_event for s in STEPS if s.metrics_only),
    }
    for key, b in report["budgets"].items():
        # Rounded per step in the report, exact inside: within a few ns.
        assert b["floor_ns"] == pytest.approx(expected[key], abs=5)
        assert b["ceiling_per_s"] == pytest.approx(1e9 / b["floor_ns"], rel=0.01)
        assert b["budget_per_s"] == BUDGETS[key]
        assert b["left_ns"] == pytest.approx(1e9 / BUDGETS[key] - b["floor_ns"], abs=2)
    budgets = report["budgets"]
    assert budgets["metrics_only"]["floor_ns"] < budgets["all_sinks"]["floor_ns"]
    text = format_floor(report)
    assert "SQLite row into mdd's schema, apsw executemany" in text
    assert steps["sqlite_engine"]["per_event"] == 0  # shown as a part, not added
    assert "JSON encode of the event (JSONL and NATS) x2" in text
    assert "all sinks: floor" in text
    assert "metrics only: floor" in text


def test_the_sqlite_floor_inserts_every_row_into_mdds_schema(tmp_path: Path) -> None:
    through_apsw, engine = sqlite_ns(2500, tmp_path)
    assert through_apsw > 0
    assert engine > 0
    for name in ("apsw", "engine"):
        conn = open_db(tmp_path / f"floor-{name}.sqlite")
        try:
            got = conn.execute("SELECT count(*), count(DISTINCT symbol) FROM trades").fetchall()
            assert got == [(2500, 2)]
        finally:
            conn.close()


def test_the_verdict_says_whether_the_budget_is_above_or_below_the_floor() -> None:
    def report(left_ns: int) -> dict[str, object]:
        budget = {"floor_ns": 9000, "ceiling_per_s": 111_111, "budget_per_s": 100_000}
        return {"steps": {}, "budgets": {"all_sinks": {**budget, "left_ns": left_ns}}}

    assert "leaves 1.00 µs per event" in format_floor(report(1000))
    assert "0.50 µs per event below the floor: out of reach here" in format_floor(report(-500))


@pytest.mark.parametrize(("scale", "repeat"), [(0, 1), (1, 0)])
def test_nonsense_arguments_are_refused(scale: float, repeat: int) -> None:
    with pytest.raises(ValueError, match="scale must be > 0"):
        floor(scale=scale, repeat=repeat)
