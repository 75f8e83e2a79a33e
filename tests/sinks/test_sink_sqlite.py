"""SQLite sink and storage: real files, a fault-injecting VFS, the real runner and bus."""

from __future__ import annotations

import shutil
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import apsw
import pytest
import trio
from prometheus_client import generate_latest

from mdd import storage
from mdd.bus import Bus
from mdd.events import BookEvent, HeartbeatEvent, QuoteEvent, StatusEvent, TradeEvent
from mdd.metrics import REGISTRY
from mdd.sinks import SINK_FACTORIES, SinkHealth, run_sink
from mdd.sinks import sqlite as sqlite_sink
from mdd.sinks.sqlite import SqliteSink, SqliteSinkError

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import FaultVFS

T0 = 1_700_000_000_000_000_000


def trade(i: int, symbol: str = "BTCUSDT", provider: str = "binance") -> TradeEvent:
    return TradeEvent(provider, symbol, T0 + i, T0 + i + 1000, 100.0 + i, 0.5, "buy", str(i))


def quote(i: int, symbol: str = "BTCUSDT") -> QuoteEvent:
    return QuoteEvent("binance", symbol, T0 + i, T0 + i + 1000, 99.5, 1.0, 100.5, 2.0)


def book(ts: int, bid: float = 99.0) -> BookEvent:
    return BookEvent(
        "binance", "BTCUSDT", ts, ts, ((bid, 1.0), (bid - 1, 2.0)), ((101.0, 1.0),), True, 1, ts
    )


def count(path: Path, table: str = "trades") -> int:
    """Row count through a second, read-only connection.

    In-process readers must use apsw too: the stdlib ``sqlite3`` module is a
    second copy of SQLite, and two copies in one process defeat each other's
    POSIX locks (closing one may reset the other's WAL). Other processes, such
    as the ``sqlite3`` CLI below, are fine.
    """
    conn = storage.open_reader(path)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


def metric(name: str, **labels: str) -> float:
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def test_factory_builds_from_config(tmp_path: Path) -> None:
    from mdd.config import Config, DaemonConfig, SinksConfig, SqliteSinkConfig

    cfg = Config(
        daemon=DaemonConfig(state_dir=str(tmp_path)),
        sinks=SinksConfig(sqlite=SqliteSinkConfig(path="db/x.sqlite", batch_size=7)),
    )
    sink = SINK_FACTORIES["sqlite"](cfg, cfg.sinks.sqlite)
    assert isinstance(sink, SqliteSink)
    assert sink.path == tmp_path / "db" / "x.sqlite"
    assert sink.batch_size == 7
    assert sink.batch_interval == 0.2


async def test_schema_migrations(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    conn = storage.open_db(path)
    assert storage.schema_version(conn) == storage.SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"trades_symbol_ts", "quotes_symbol_ts", "books_ts", "status_ts"} <= names
    assert not {"trades_ts", "quotes_ts"} & names  # dropped in 2: retention needs none
    conn.close()
    # Reopening is a no-op migration; a newer file is refused, not damaged.
    conn = storage.open_db(path)
    assert storage.migrate(conn) == storage.SCHEMA_VERSION
    conn.execute("INSERT INTO schema_version VALUES (99)")
    conn.close()
    with pytest.raises(storage.StorageError, match="newer"):
        storage.open_db(path)


async def test_a_version_1_file_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite"
    conn = apsw.Connection(str(path))
    conn.execute("CREATE TABLE schema_version(version INTEGER NOT NULL)")
    conn.execute(storage.MIGRATIONS[0])
    conn.execute("INSERT INTO schema_version VALUES (1)")
    conn.execute("INSERT INTO trades VALUES ('binance', 'BTCUSDT', 1, 1, 2.0, 3.0, 'buy', '7')")
    conn.close()
    conn = storage.open_db(path)
    assert storage.schema_version(conn) == storage.SCHEMA_VERSION == 2
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "trades_ts" not in names
    assert "quotes_ts" not in names
    assert conn.execute("SELECT trade_id FROM trades").fetchall() == [("7",)]
    conn.close()


async def test_idempotent_insert_counts_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite"
    sink = SqliteSink(path)
    await sink.open()
    dup_before = metric("mdd_sqlite_duplicate_trades_total")
    batch = [trade(1), trade(2), trade(2), trade(3), trade(1, provider="bybit")]
    await sink.write(batch)
    assert count(path) == 4
    assert sink.duplicates == 1
    await sink.write(batch)  # a retried batch: nothing new
    assert count(path) == 4
    assert sink.duplicates == 6
    assert metric("mdd_sqlite_duplicate_trades_total") - dup_before == 6
    # A trade without a venue id (empty) is stored every time, never merged.
    no_id = TradeEvent("alpaca", "AAPL", T0, T0, 1.0, 1.0, None, "")
    await sink.write([no_id, no_id])
    assert count(path) == 6
    await sink.close()


async def test_all_event_types_and_latest(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite"
    sink = SqliteSink(path, book_interval=1.0, book_levels=1)
    await sink.open()
    await sink.write(
        [
            trade(1),
            trade(5),
            quote(2),
            quote(9, "ETHUSDT"),
            book(T0),
            book(T0 + 100_000_000, bid=98.0),  # same batch: the latest one wins
            book(T0 + 200_000_000, bid=97.0),
            StatusEvent("binance", "BTCUSDT", None, T0, "gap", "U=5 expected 4"),
            HeartbeatEvent("mdd", "__system__", None, T0),
        ]
    )
    await sink.write([book(T0 + 500_000_000, bid=96.0)])  # within 1 s: pending
    assert count(path, "books") == 1
    await sink.write([book(T0 + 1_300_000_000, bid=95.0)])  # 1.1 s later: written
    assert count(path, "books") == 2
    await sink.write([book(T0 + 1_400_000_000, bid=94.0)])  # pending until close
    await sink.close()
    assert count(path, "books") == 3
    assert count(path, "status") == 1
    conn = storage.open_reader(path)
    bids = [r[0] for r in conn.execute("SELECT bids FROM books ORDER BY ts_recv")]
    assert bids == ["[[97.0,1.0]]", "[[95.0,1.0]]", "[[94.0,1.0]]"]
    rows = conn.execute("SELECT * FROM trades ORDER BY ts_recv DESC LIMIT 5").fetchall()
    assert [r[7] for r in rows] == ["5", "1"]
    conn.close()

    got = storage.latest(path, "btcusdt")
    assert got["trade"]["trade_id"] == "5"
    assert got["trade"]["price"] == 105.0
    assert got["quote"]["bid_px"] == 99.5
    assert storage.latest(path, "NOPE") == {"symbol": "NOPE", "trade": None, "quote": None}
    assert storage.latest(tmp_path / "missing.sqlite", "X")["trade"] is None


async def test_batches_by_time(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    path = tmp_path / "t.sqlite"
    bus = Bus()
    inbox = bus.add_sink("sqlite", 100)
    sink = SqliteSink(path, batch_size=100, batch_interval=0.2)
    health = SinkHealth("sqlite")
    async with trio.open_nursery() as nursery:
        await nursery.start(run_sink, sink, inbox, health)
        await trio.sleep(0.01)  # opened
        bus.publish(trade(1))
        bus.publish(trade(2))
        await trio.sleep(0.1)
        assert count(path) == 0  # still collecting: short batches wait up to 0.2 s
        bus.publish(trade(3))
        await trio.sleep(0.15)
        assert count(path) == 3
        assert health.batches == 1  # one transaction for the three
        for i in range(4, 104):  # a full batch goes at once, without waiting
            bus.publish(trade(i))
        await trio.sleep(0.001)
        assert count(path) == 103
        bus.close()
    assert health.batches == 2


async def test_concurrent_reader_while_writing(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite"
    sink = SqliteSink(path)
    await sink.open()
    await sink.write([trade(i) for i in range(10)])
    reader = storage.open_reader(path)
    # A reader holding a read transaction neither blocks the writer nor sees half a batch.
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM trades").fetchone()[0] == 10
    for k in range(1, 4):
        await sink.write([trade(i) for i in range(10 * k, 10 * k + 10)])
        assert reader.execute("SELECT count(*) FROM trades").fetchone()[0] == 10
    reader.execute("COMMIT")
    assert reader.execute("SELECT count(*) FROM trades").fetchone()[0] == 40
    assert count(path) == 40
    reader.close()
    await sink.close()


async def test_other_processes_read_while_the_sink_writes(tmp_path: Path) -> None:
    """The seed README query from another process (the sqlite3 CLI, else python's sqlite3)."""
    path = tmp_path / "t.sqlite"
    sink = SqliteSink(path)
    await sink.open()
    query = "SELECT trade_id FROM trades ORDER BY ts_recv DESC LIMIT 5"
    cli = shutil.which("sqlite3")
    if cli:
        cmd = [cli, str(path), query]
    else:
        cmd = [
            sys.executable,
            "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]);"
            " print('\\n'.join(r[0] for r in c.execute(sys.argv[2])))",
            str(path),
            query,
        ]
    for k in range(3):
        await sink.write([trade(i) for i in range(10 * k, 10 * k + 10)])
        result = await trio.run_process(cmd, capture_stdout=True, stderr=subprocess.STDOUT)
        ids = result.stdout.decode().split()
        assert ids == [str(i) for i in range(10 * k + 9, 10 * k + 4, -1)]
    await sink.write([trade(100)])  # the writer is unaffected by the readers
    assert count(path) == 31
    await sink.close()


async def test_locked_by_another_writer(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite"
    sink = SqliteSink(path, busy_timeout_ms=20)
    await sink.open()
    other = apsw.Connection(str(path))
    other.execute("BEGIN IMMEDIATE")  # holds the write lock
    before = metric("mdd_sqlite_errors_total", kind="locked")
    with pytest.raises(SqliteSinkError, match="locked") as info:
        await sink.write([trade(1), trade(2)])
    assert info.value.kind == "locked"
    assert "2 events kept and retried" in str(info.value)
    assert metric("mdd_sqlite_errors_total", kind="locked") == before + 1
    other.execute("ROLLBACK")
    other.close()
    await sink.write([trade(1), trade(2)])  # the retry goes through
    assert count(path) == 2
    await sink.close()


async def test_read_only_file_then_fixed(tmp_path: Path, fault_vfs: FaultVFS) -> None:
    path = tmp_path / "t.sqlite"
    sink = SqliteSink(path, vfs=fault_vfs.vfs_name)
    await sink.open()
    await sink.write([trade(1)])
    await sink.close()
    fault_vfs.readonly = True  # as a file without write permission opens
    sink = SqliteSink(path, vfs=fault_vfs.vfs_name)
    await sink.open()
    before = metric("mdd_sqlite_errors_total", kind="read_only")
    with pytest.raises(SqliteSinkError) as info:
        await sink.write([trade(2)])
    assert info.value.kind == "read_only"
    assert "read-only" in str(info.value)
    assert metric("mdd_sqlite_errors_total", kind="read_only") == before + 1
    fault_vfs.readonly = False  # permissions fixed: the next attempt reopens
    await sink.write([trade(2)])
    await sink.close()
    assert count(path) == 2


async def test_disk_full_nothing_lost_other_sinks_go_on(
    tmp_path: Path, fault_vfs: FaultVFS, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "t.sqlite"
    bus = Bus()
    inbox = bus.add_sink("sqlite", 10_000)
    other_inbox = bus.add_sink("other", 10_000)
    seen: list[Any] = []

    class ListSink:
        name = "other"
        batch_size = 1000
        batch_interval = 0.0

        async def open(self) -> None: ...

        async def write(self, batch: Any) -> None:
            seen.extend(batch)

        async def close(self) -> None: ...

    sink = SqliteSink(path, batch_size=50, batch_interval=0.05, vfs=fault_vfs.vfs_name)
    health = SinkHealth("sqlite")
    before = metric("mdd_sqlite_errors_total", kind="disk_full")
    async with trio.open_nursery() as nursery:
        await nursery.start(run_sink, sink, inbox, health)
        await nursery.start(run_sink, ListSink(), other_inbox)
        await trio.sleep(0.01)
        for i in range(100):
            bus.publish(trade(i))
        await trio.sleep(0.2)
        assert count(path) == 100
        fault_vfs.full = True
        for i in range(100, 300):
            bus.publish(trade(i))
        await trio.sleep(5)
        assert health.state == "failing"
        assert "disk_full" in health.last_error
        assert health.errors >= 3
        assert len(seen) == 300  # the other sink is not held up
        assert count(path) == 100
        fault_vfs.full = False  # space freed: the retried batches commit
        bus.close()
    assert count(path) == 300
    assert metric("mdd_sqlite_errors_total", kind="disk_full") >= before + 3
    assert inbox.stats().lost == 0
    exposition = generate_latest(REGISTRY).decode()
    assert 'mdd_sqlite_errors_total{kind="disk_full"}' in exposition


async def test_shutdown_commits_everything(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite"
    bus = Bus()
    inbox = bus.add_sink("sqlite", 5000)
    sink = SqliteSink(path, batch_size=100, batch_interval=10.0)
    n = 2345
    async with trio.open_nursery() as nursery:
        await nursery.start(run_sink, sink, inbox)
        for i in range(n):
            bus.publish(trade(i))
            if i % 3 == 0:
                bus.publish(quote(i))
        bus.close()  # the daemon's shutdown step: the runner drains, then close() commits
    assert count(path) == n
    assert count(path, "quotes") == len(range(0, n, 3))
    assert sink.conn is None


async def test_retention_deletes_old_rows(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite"
    sink = SqliteSink(path, retain_days=1.0)
    await sink.open()
    old = TradeEvent("binance", "BTCUSDT", 1, 1, 1.0, 1.0, "buy", "old")
    fresh_ts = 10**19 // 5  # far in the future: never retained
    fresh = TradeEvent("binance", "BTCUSDT", fresh_ts, fresh_ts, 1.0, 1.0, "buy", "new")
    before = metric("mdd_sqlite_retention_deleted_total", table="trades")
    await sink.write([old, fresh, quote(1)])
    assert count(path) == 1
    assert count(path, "quotes") == 0  # T0 is 2023: older than a day
    assert metric("mdd_sqlite_retention_deleted_total", table="trades") == before + 1
    await sink.close()


async def test_retention_sweeps_the_oldest_rows_in_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_sink, "RETENTION_CHUNK", 100)
    sink = SqliteSink(tmp_path / "r.sqlite")  # no sweeps of its own: called below
    await sink.open()
    future = 10**19 // 5
    # A row stamped in the future (a clock step) at the head does not hold the rest back.
    head = TradeEvent("binance", "BTCUSDT", future, future, 1.0, 1.0, "buy", "future")
    await sink.write([head, *_trades(0, 250)])
    cutoff = T0 + 1000  # all 250 are older
    # Each sweep: the oldest 100 rows in insertion order, less the young one.
    assert sink.retain(cutoff) == 99
    assert sink.retain(cutoff) == 99
    assert sink.retain(cutoff) == 52
    assert sink.retain(cutoff) == 0
    assert count(sink.path) == 1
    await sink.close()


def _trades(start: int, n: int) -> list[TradeEvent]:
    return [
        TradeEvent("binance", "BTCUSDT", T0 + i, T0 + i, 1.0, 1.0, "buy", str(i))
        for i in range(start, start + n)
    ]


async def test_wal_is_checkpointed_by_the_sink_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_sink, "CHECKPOINT_PAGES", 1)
    monkeypatch.setattr(sqlite_sink, "CHECKPOINT_EVERY", 0.0)
    path = tmp_path / "c.sqlite"
    sink = SqliteSink(path)
    await sink.open()
    assert sink.conn is not None
    before = path.stat().st_size
    for k in range(3):
        await sink.write(_trades(k * 300, 300))
    assert sink.checkpoints >= 1
    assert path.stat().st_size > before  # the rows were copied from the WAL into the file
    assert count(path) == 900
    await sink.close()


async def test_a_failed_checkpoint_is_counted_and_writing_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault_vfs: FaultVFS, caplog: Any
) -> None:
    monkeypatch.setattr(sqlite_sink, "CHECKPOINT_PAGES", 1)
    monkeypatch.setattr(sqlite_sink, "CHECKPOINT_EVERY", 0.0)
    path = tmp_path / "f.sqlite"
    sink = SqliteSink(path, vfs=fault_vfs.vfs_name)
    await sink.open()
    errors = metric("mdd_sqlite_errors_total", kind="disk_full")
    fault_vfs.main_full = True  # commits (WAL) work, checkpoints (main file) fail
    await sink.write(_trades(0, 300))
    await sink.write(_trades(300, 300))
    assert sink.checkpoints == 0
    assert metric("mdd_sqlite_errors_total", kind="disk_full") >= errors + 1
    assert "sink.sqlite.checkpoint_failed" in caplog.text
    assert count(path) == 600  # nothing lost: the rows are in the WAL
    fault_vfs.main_full = False
    await sink.write(_trades(600, 300))
    assert sink.checkpoints == 1
    await sink.close()
    assert count(path) == 900
