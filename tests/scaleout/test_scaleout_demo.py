"""``mdd demo --cluster`` end to end: the storyline runs and the stream is exact."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from mdd.demo_cluster import ClusterDemoOptions, run_cluster_demo, summary

pytestmark = pytest.mark.slow


async def test_cluster_demo_kills_a_daemon_and_a_node_and_loses_nothing(tmp_path: Path) -> None:
    out = io.StringIO()
    result = await run_cluster_demo(
        ClusterDemoOptions(data_dir=tmp_path, duration=10.0, rate=20.0, out=out)
    )
    text = out.getvalue()
    assert "daemon mdd-1 killed" in text
    assert "NATS node" in text
    assert result.killed_node is not None
    assert result.sent > 100
    assert result.missing == 0, text
    assert result.stored_twice == 0
    assert result.stored == result.sent
    assert result.rejected_duplicates > 0, "both daemons published before the kill"
    assert sum(result.consumed) >= result.stored, "the queue group shares the stream"
    assert min(result.consumed) > 0, "both consumers got part of it"
    assert "OK: every trade stored exactly once" in summary(result)
