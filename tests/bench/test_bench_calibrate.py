"""``mdd bench --calibrate``: every reference step runs and is reported against DESIGN.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from mdd.bench_calibrate import (
    STEPS,
    calibrate,
    cpu_times,
    format_calibration,
    stalls,
    steal_pct,
)


def test_every_step_is_timed_and_compared_with_its_reference() -> None:
    report = calibrate(scale=0.02, repeat=1)
    assert list(report["steps"]) == [s.name for s in STEPS]
    for step in STEPS:
        got = report["steps"][step.name]
        assert got["per_s"] > 0
        assert got["reference_per_s"] == step.reference
        assert got["ratio"] == pytest.approx(got["per_s"] / step.reference, abs=0.002)
    for kind in ("python", "c"):
        ratios = [s["ratio"] for s in report["steps"].values() if s["kind"] == kind]
        assert min(ratios) - 0.001 <= report[f"ratio_{kind}"] <= max(ratios) + 0.001
    st = report["stalls"]
    assert st["seconds"] >= 0.04
    assert st["stalls_over_0_5ms"] >= st["stalls_over_2ms"] >= 0
    assert 0 <= st["stalled_pct"] <= 100
    text = format_calibration(report)
    assert "SQLite trade rows, 1000 per transaction (c)" in text
    assert "geometric mean: python-bound" in text
    assert "busy loop" in text


def test_stalls_are_the_gaps_of_a_busy_loop() -> None:
    # A threshold of 0 counts every iteration: many gaps, none over 2 ms on average.
    st = stalls(0.02, threshold=0.0)
    assert st["stalls_over_0_5ms"] > 100
    assert st["stalled_pct"] > 50  # all of the loop's time is gaps at threshold 0


@pytest.mark.parametrize(("scale", "repeat"), [(0, 1), (1, 0)])
def test_nonsense_arguments_are_refused(scale: float, repeat: int) -> None:
    with pytest.raises(ValueError, match="scale must be > 0"):
        calibrate(scale=scale, repeat=repeat)


def test_steal_is_read_from_proc_stat(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 10 0 5 35 0 0\ncpu0 1 2 3\n")
    before = cpu_times(str(stat))
    assert before == (35, 1000)
    stat.write_text("cpu  200 0 100 1500 10 0 5 185 0 0\n")
    after = cpu_times(str(stat))
    assert after == (185, 2000)
    assert steal_pct(before, after) == 15.0  # 150 of 1000 ticks
    assert steal_pct(after, before) is None  # no time passed forward
    assert steal_pct(None, after) is None
    assert cpu_times(str(tmp_path / "missing")) is None
    stat.write_text("intr 1 2 3\n")
    assert cpu_times(str(stat)) is None
