"""``mdd demo`` end to end, offline: simulators, nats-server, daemon, consumer, storyline."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import apsw
import pytest
import trio
import trio.testing

from mdd.demo import DemoOptions, DemoView, run_demo, where_the_data_is

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


async def test_demo_runs_the_storyline_and_leaves_data_everywhere(tmp_path: Path) -> None:
    out = io.StringIO()
    opts = DemoOptions(
        data_dir=tmp_path / "demo-data",
        duration=12.0,
        rate=20.0,
        fault_at=2.0,
        silence=4.0,
        stale_after=1.0,
        failover_after=0.5,
        recover_after=2.0,
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


def test_cli_demo_ctrl_c_stops_gracefully_and_exits_zero(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mdd",
            "demo",
            "--duration",
            "120",
            "--no-tty",
            "--no-faults",
            "--data-dir",
            str(tmp_path / "d"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # its own process group, as a shell gives a job
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("t=3s"):
                break
        # Ctrl-C in a terminal signals the whole foreground group: the embedded
        # nats-server must not die before the daemon has flushed to it.
        os.killpg(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert "mdd demo stopped. Your data:" in rest
    assert any("BTCUSDT" in line for line in lines)
    db = apsw.Connection(str(tmp_path / "d" / "mdd.sqlite"))
    assert db.execute("select count(*) from trades").fetchone()[0] > 0


async def test_tty_view_redraws_the_screen(autojump_clock: trio.testing.MockClock) -> None:
    out = io.StringIO()
    view = DemoView(DemoOptions(tty=True, out=out))
    view.syms["BTCUSDT"].last = 50000.5
    view.say("hello story")
    with trio.move_on_after(2.5):
        await view.draw_forever()
    text = out.getvalue()
    assert text.count("\x1b[H\x1b[2J") == 2
    assert "BTCUSDT" in text
    assert "50000.50" in text
    assert "hello story" in text
