"""``mdd demo`` end to end, offline: simulators, nats-server, daemon, consumer, storyline."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import apsw
import pytest
import trio

from mdd.demo import DemoOptions, run_demo, where_the_data_is

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


async def test_demo_runs_the_storyline_and_leaves_data_everywhere(tmp_path: Path) -> None:
    out = io.StringIO()
    opts = DemoOptions(
        data_dir=tmp_path / "demo-data",
        duration=24.0,
        rate=20.0,
        fault_at=2.0,
        silence=8.0,
        out=out,
    )
    with trio.fail_after(60):
        result = await run_demo(opts, handle_signals=False)
    # Failover to Bybit during the outage, and back to Binance after it.
    assert result.switches == ["binance->bybit", "bybit->binance"]
    # Trades from both venues in SQLite.
    db = apsw.Connection(str(result.sqlite_path))
    rows = dict(db.execute("select provider, count(*) from trades group by provider").fetchall())
    assert rows.get("binance", 0) > 50
    assert rows.get("bybit", 0) > 10
    symbols = {r[0] for r in db.execute("select distinct symbol from trades")}
    assert symbols == {"BTCUSDT", "ETHUSDT"}
    # Events went through NATS to the consumer, which computed features.
    assert result.nats_messages > 100
    assert set(result.features) == {"BTCUSDT", "ETHUSDT"}
    assert all(f["trades_60s"] > 0 for f in result.features.values())
    # JSONL has the same stream.
    first = json.loads(result.jsonl_path.read_text().splitlines()[0])
    assert first["provider"] in ("binance", "bybit")
    # Plain (non-TTY) output tells the story.
    text = out.getvalue()
    assert "Binance goes silent" in text
    assert "active provider binance -> bybit" in text
    assert "active provider bybit -> binance" in text
    assert "\x1b[" not in text
    message = where_the_data_is(result)
    assert str(result.sqlite_path) in message
    assert "mdd-ctl --socket" in message


def test_cli_demo_exits_zero_offline(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mdd",
            "demo",
            "--duration",
            "6",
            "--no-tty",
            "--no-faults",
            "--data-dir",
            str(tmp_path / "d"),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "mdd demo stopped. Your data:" in proc.stdout
    assert "t=" in proc.stdout
    db = apsw.Connection(str(tmp_path / "d" / "mdd.sqlite"))
    assert db.execute("select count(*) from trades").fetchone()[0] > 0
