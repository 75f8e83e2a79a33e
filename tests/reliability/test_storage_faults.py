"""Reliability: storage faults under the whole daemon (in process, MockClock).

The daemon runs its real tree with the SQLite and JSONL sinks while the
database is made read-only, fills the disk, and is locked by another writer.
Each fault gives a clear error in the sink's health (what /health serves)
and ``mdd_sqlite_errors_total{kind}``; the JSONL sink sees every event
throughout; when the fault clears the SQLite sink catches up and, at the
end, SQLite and JSONL hold the same trades, each once.

The tests run as root here, where file permissions do not stop writes and
a tmpfs cannot be mounted, so read-only and disk-full come from a VFS that
fails the way the OS does (the one the SQLite sink tests use). The lock is
a real second writer holding ``BEGIN IMMEDIATE`` on the file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import apsw
import pytest
import trio
import trio.testing
from rel_helpers import duplicates, jsonl_trade_count, jsonl_trades, sqlite_trades

from mdd.config import load_config
from mdd.daemon import Daemon
from mdd.metrics import REGISTRY
from mdd.sinks import SINK_FACTORIES
from mdd.sinks.sqlite import SqliteSink

if TYPE_CHECKING:
    from conftest import FaultVFS


def errors(kind: str) -> float:
    return REGISTRY.get_sample_value("mdd_sqlite_errors_total", {"kind": kind}) or 0.0


async def until(pred: Callable[[], bool], within: float, what: str) -> None:
    with trio.move_on_after(within):
        while not pred():  # noqa: ASYNC110 - daemon state changes under the clock
            await trio.sleep(0.05)
        return
    raise AssertionError(f"not within {within}s: {what}")


async def test_read_only_disk_full_and_locked(
    tmp_path: Path,
    fault_vfs: FaultVFS,
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db = tmp_path / "mdd.sqlite"
    jsonl = tmp_path / "events.jsonl"

    def sqlite_with_fault_vfs(config: Any, section: Any) -> SqliteSink:
        # The real sink and file, opened through the fault VFS, with a short busy
        # timeout (apsw's busy wait is real time, not trio time).
        return SqliteSink(db, batch_interval=0.2, busy_timeout_ms=20, vfs=fault_vfs.vfs_name)

    monkeypatch.setitem(SINK_FACTORIES, "sqlite", sqlite_with_fault_vfs)
    cfg = load_config(
        None,
        env={},
        base={
            "daemon": {"state_dir": str(tmp_path), "shutdown_grace": 120},
            "http": {"enabled": False},
            "providers": {"sim": {"rate": 20, "seed": 5}},
            "feeds": [
                {
                    "name": "f",
                    "symbols": ["AAA", "BBB"],
                    "providers": ["sim"],
                    "channels": ["trade"],
                }
            ],
            "sinks": {
                "sqlite": {"path": "mdd.sqlite"},
                "jsonl": {"path": "events.jsonl"},
                "metrics": {"enabled": False},
            },
        },
    )
    daemon = Daemon(cfg, install_signal_handlers=False)
    seen: dict[str, str] = {}
    before = {kind: errors(kind) for kind in ("read_only", "disk_full", "locked")}
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)

        def sink() -> dict[str, Any]:
            health: dict[str, Any] = daemon.status()["sinks"]["sqlite"]
            return health

        async def fault(name: str, start: Callable[[], None], stop: Callable[[], None]) -> None:
            await until(lambda: len(sqlite_trades(db)) >= 50, 30, "trades stored")
            start()
            await until(lambda: sink()["state"] == "failing", 30, f"{name}: sink failing")
            seen[name] = sink()["last_error"]
            stored = len(sqlite_trades(db))
            n = jsonl_trade_count(jsonl)
            await trio.sleep(10)
            # The other sink is unaffected; SQLite holds still and says why.
            assert jsonl_trade_count(jsonl) >= n + 300, name
            assert len(sqlite_trades(db)) == stored, name
            assert not daemon.stopping
            stop()
            await until(
                lambda: (
                    sink()["state"] == "ok"
                    and len(sqlite_trades(db)) >= jsonl_trade_count(jsonl) - 100
                ),
                120,
                f"{name}: recovered",
            )

        def locker() -> tuple[Callable[[], None], Callable[[], None]]:
            other: list[apsw.Connection] = []

            def start() -> None:
                conn = apsw.Connection(str(db))
                conn.execute("BEGIN IMMEDIATE")
                other.append(conn)

            def stop() -> None:
                conn = other.pop()
                conn.execute("ROLLBACK")
                conn.close()

            return start, stop

        def set_full(on: bool) -> None:
            fault_vfs.full = on

        def set_readonly(on: bool) -> None:
            # Writes to the open file fail, and every reopen is read-only, until fixed.
            fault_vfs.readonly = on

        await fault("disk_full", lambda: set_full(True), lambda: set_full(False))
        lock_start, lock_stop = locker()
        await fault("locked", lock_start, lock_stop)
        await fault("read_only", lambda: set_readonly(True), lambda: set_readonly(False))

        daemon.request_stop("test")
    stats = {lane.sink: lane for lane in daemon.bus.stats().lanes}
    assert stats["sqlite"].lost == 0
    assert not stats["sqlite"].dropped
    assert not stats["sqlite"].evicted
    in_sqlite = sqlite_trades(db)
    in_jsonl = jsonl_trades(jsonl)
    assert not duplicates(in_sqlite)
    assert sorted(in_sqlite) == sorted(in_jsonl)
    assert "disk is full" in seen["disk_full"]
    assert "nothing dropped" in seen["disk_full"]
    assert "lock" in seen["locked"]
    assert "read-only" in seen["read_only"] or "readonly" in seen["read_only"].lower()
    for kind in ("disk_full", "locked", "read_only"):
        assert errors(kind) > before[kind], kind
    print(f"storage faults: trades={len(in_sqlite)} errors={seen}")
