"""``mdd bench --calibrate``: every reference step runs and is reported against DESIGN.md."""

from __future__ import annotations

import pytest

from mdd.bench_calibrate import STEPS, calibrate, format_calibration, stalls


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
