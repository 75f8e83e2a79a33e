"""SQLite sink: batched, idempotent inserts into the schema of :mod:`mdd.storage`.

One writer per database (this sink), WAL mode, one transaction per batch.
``executemany`` runs inline in the trio thread: measured on two cores, handing
batches to ``trio.to_thread`` halved throughput (GIL contention), while ~1000
rows per transaction inline reach ~600k rows/s and block the loop ~1.7 ms.

Resource handling:
    The connection is opened in :meth:`SqliteSink.open` and closed in
    :meth:`SqliteSink.close`, after the throttled book rows still pending are
    committed. Every batch is one transaction: it commits whole or not at all.

Error handling:
    Disk full, a read-only file and a database locked by another writer beyond
    the busy timeout become :class:`SqliteSinkError` (with ``kind`` =
    ``disk_full`` / ``read_only`` / ``locked`` / ``io`` / ``cant_open`` /
    ``error``), counted in ``mdd_sqlite_errors_total{kind}``. The transaction
    rolls back, the runner logs the error and retries the same batch with
    backoff; since trades are ``INSERT OR IGNORE`` on
    ``(provider, symbol, trade_id)``, a retry never duplicates one. After a
    read-only or can't-open error the connection is reopened on the next
    attempt, so fixing permissions is enough to recover.
"""

from __future__ import annotations

import logging
import math
import operator
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import apsw
import orjson
import trio

from .. import storage
from ..errors import SinkError
from ..events import BookEvent, QuoteEvent, StatusEvent, TradeEvent
from ..metrics import SQLITE_DUPLICATES, SQLITE_ERRORS, SQLITE_RETAINED, SQLITE_ROWS

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..events import Event

LOGGER = logging.getLogger("mdd.sinks.sqlite")

#: Seconds between retention sweeps (when ``retain_days`` is set).
RETENTION_EVERY: Final = 60.0
#: Rows deleted per table per retention statement (keeps each sweep short).
RETENTION_CHUNK: Final = 5000

#: WAL pages (4 KiB) after which the sink checkpoints, as SQLite's own autocheckpoint.
CHECKPOINT_PAGES: Final = 1000
#: Seconds between checkpoint attempts at most (a reader pinning the WAL can
#: keep one from completing; do not retry it on every batch).
CHECKPOINT_EVERY: Final = 0.25

#: Rows per ``executemany`` step inside a batch's transaction, and the time after
#: which the sink lets other tasks run (a checkpoint) before its next step. A
#: whole 1000-row batch took 4-8 ms here and set the NATS sink's p99 latency;
#: in steps, no task waits more than ~0.3 ms behind the SQLite sink.
STEP_ROWS: Final = 25
STEP_TIME: Final = 0.0002

# Retention: the rows older than the cutoff ?1 among the oldest ?2 rows in rowid
# (insertion) order. Reads at most ?2 rows, index or not.
_RETAIN: Final = (
    "DELETE FROM {table} WHERE rowid IN (SELECT id FROM "
    "(SELECT rowid AS id, ts_recv FROM {table} ORDER BY rowid LIMIT ?2) WHERE ts_recv < ?1)"
)
_INSERT_TRADE: Final = (
    "INSERT OR IGNORE INTO trades"
    "(provider, symbol, ts_exchange, ts_recv, price, qty, side, trade_id)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, NULLIF(?, ''))"
)
# Row tuples built in C (one attrgetter call per event).
_TRADE_ROW: Final = operator.attrgetter(
    "provider", "symbol", "ts_exchange", "ts_recv", "price", "qty", "side", "trade_id"
)
_QUOTE_ROW: Final = operator.attrgetter(
    "provider", "symbol", "ts_exchange", "ts_recv", "bid_px", "bid_qty", "ask_px", "ask_qty"
)
_STATUS_ROW: Final = operator.attrgetter(
    "provider", "symbol", "ts_exchange", "ts_recv", "status", "detail"
)
_INSERT_QUOTE: Final = (
    "INSERT INTO quotes(provider, symbol, ts_exchange, ts_recv, bid_px, bid_qty, ask_px, ask_qty)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_BOOK: Final = (
    "INSERT INTO books(provider, symbol, ts_exchange, ts_recv, bids, asks, is_snapshot,"
    " last_update_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_STATUS: Final = (
    "INSERT INTO status(provider, symbol, ts_exchange, ts_recv, status, detail)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)

#: apsw exception class -> error kind (label of ``mdd_sqlite_errors_total``).
_KINDS: Final[tuple[tuple[type[BaseException], str], ...]] = (
    (apsw.FullError, "disk_full"),
    (apsw.ReadOnlyError, "read_only"),
    (apsw.PermissionsError, "read_only"),
    (apsw.BusyError, "locked"),
    (apsw.LockedError, "locked"),
    (apsw.CantOpenError, "cant_open"),
    (apsw.IOError, "io"),
)
#: Kinds after which the connection is reopened before the next attempt.
_REOPEN_KINDS: Final = frozenset({"read_only", "cant_open", "io"})


class SqliteSinkError(SinkError):
    """A batch could not be committed; the runner retries it.

    Attributes:
        kind: ``disk_full``, ``read_only``, ``locked``, ``io``, ``cant_open`` or ``error``.
        path: the database file.
        events: how many events the failed batch held (kept for the retry).
    """

    _ADVICE: Final = {
        "disk_full": "the disk is full; free space",
        "read_only": "the database or its directory is read-only; fix permissions",
        "locked": "another process holds the write lock beyond the busy timeout; stop it",
        "cant_open": "the file cannot be opened; check the path and permissions",
        "io": "I/O error from the file system",
        "error": "SQLite error",
    }

    def __init__(self, kind: str, path: Path, events: int, detail: str) -> None:
        self.kind = kind
        self.path = path
        self.events = events
        advice = self._ADVICE.get(kind, "SQLite error")
        super().__init__(
            f"sqlite {kind} at {path}: {advice} ({detail}); "
            f"{events} events kept and retried, nothing dropped"
        )


def error_kind(exc: BaseException) -> str:
    """The ``kind`` label for an apsw exception."""
    for cls, kind in _KINDS:
        if isinstance(exc, cls):
            return kind
    return "error"


class SqliteSink:
    """Writes trades, quotes, throttled books and status events to SQLite.

    Args:
        path: database file (created with its directory if missing).
        batch_size: most events per transaction.
        batch_interval: seconds to keep collecting a short batch; bounds the
            data in flight at low rates (default 0.2 s).
        retain_days: delete rows older than this (by ``ts_recv``) in periodic
            small sweeps; None keeps everything.
        book_levels: levels per side stored for a book row.
        book_interval: at most one book row per (provider, symbol) per this
            many seconds of ``ts_recv`` (the latest book wins; the last pending
            one is written on close).
        busy_timeout_ms: how long a write waits for a lock held by another
            connection before failing as ``locked``.
        vfs: SQLite VFS name (tests use a fault-injecting one).

    Heartbeats are not stored.
    """

    name = "sqlite"

    def __init__(
        self,
        path: str | Path,
        *,
        batch_size: int = 1000,
        batch_interval: float = 0.2,
        retain_days: float | None = None,
        book_levels: int = 10,
        book_interval: float = 1.0,
        busy_timeout_ms: int = storage.DEFAULT_BUSY_TIMEOUT_MS,
        vfs: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.batch_size = batch_size
        self.batch_interval = batch_interval
        self.retain_days = retain_days
        self.book_levels = book_levels
        self.book_interval_ns = int(book_interval * 1e9)
        self.busy_timeout_ms = busy_timeout_ms
        self.vfs = vfs
        self.conn: apsw.Connection | None = None
        self._checkpointer: apsw.Connection | None = None
        self._wal_pages = 0
        self._next_checkpoint = -math.inf
        self.checkpoints = 0
        self._book_pending: dict[tuple[str, str], BookEvent] = {}
        self._book_written: dict[tuple[str, str], int] = {}
        self._next_retention = -math.inf
        # Counters, also exported as metrics.
        self.rows: dict[str, int] = dict.fromkeys(storage.TABLES, 0)
        self.duplicates = 0
        self.retained = 0
        self._rows_metric = {t: SQLITE_ROWS.labels(t) for t in storage.TABLES}

    # -- lifecycle -----------------------------------------------------------

    async def open(self) -> None:
        """Open the database (WAL, migrated). Errors are raised for the runner to retry."""
        await trio.lowlevel.checkpoint()
        self._connect(0)
        LOGGER.info("sink.sqlite.opened path=%s schema=%d", self.path, storage.SCHEMA_VERSION)

    def _connect(self, events: int) -> apsw.Connection:
        if self.conn is None:
            try:
                conn = storage.open_db(
                    self.path, busy_timeout_ms=self.busy_timeout_ms, vfs=self.vfs
                )
                # Checkpoints run off the event loop (see _checkpoint), not inside
                # whichever commit crosses SQLite's autocheckpoint threshold.
                conn.wal_autocheckpoint(0)
                conn.set_wal_hook(self._on_wal)
            except apsw.Error as exc:
                raise self._error(exc, events) from exc
            self.conn = conn
        return self.conn

    def _on_wal(self, conn: apsw.Connection, dbname: str, pages: int) -> int:
        self._wal_pages = pages  # after each commit: the WAL's size in pages
        return apsw.SQLITE_OK

    async def _checkpoint(self) -> None:
        """Copy the WAL into the database file on a worker thread (PASSIVE mode).

        SQLite's automatic checkpoint runs inside the commit that crosses
        1000 WAL pages: in the event loop, with an fsync, ~1.9 µs per
        inserted row on this machine (~37 % of the insert cost) and a stall
        of the whole daemon each time. A checkpoint is one long call into
        SQLite that releases the GIL, i.e. blocking disk I/O, which Trio runs
        on a worker thread (as ``trio.open_file`` does). It uses its own
        connection, never the writer's; PASSIVE mode never blocks the writer
        or readers. A failure is logged and counted, never fatal: the data
        is committed in the WAL and the next checkpoint copies it.
        """
        self._next_checkpoint = trio.current_time() + CHECKPOINT_EVERY
        try:
            if self._checkpointer is None:
                flags = apsw.SQLITE_OPEN_READWRITE
                conn = (
                    apsw.Connection(str(self.path), flags=flags, vfs=self.vfs)
                    if self.vfs
                    else apsw.Connection(str(self.path), flags=flags)
                )
                conn.set_busy_timeout(self.busy_timeout_ms)
                conn.execute("PRAGMA journal_mode").fetchall()  # learn it is WAL
                self._checkpointer = conn
            await trio.to_thread.run_sync(
                self._checkpointer.wal_checkpoint, None, apsw.SQLITE_CHECKPOINT_PASSIVE
            )
            self.checkpoints += 1
        except apsw.Error as exc:
            SQLITE_ERRORS.labels(error_kind(exc)).inc()
            LOGGER.warning(
                "sink.sqlite.checkpoint_failed path=%s error=%r",
                self.path,
                f"{type(exc).__name__}: {exc}",
            )
            self._close_checkpointer()

    def _close_checkpointer(self) -> None:
        ckpt, self._checkpointer = self._checkpointer, None
        if ckpt is not None:
            try:
                ckpt.close()
            except apsw.Error:
                LOGGER.debug("sink.sqlite.checkpointer_close_failed path=%s", self.path)

    def _error(self, exc: apsw.Error, events: int) -> SqliteSinkError:
        kind = error_kind(exc)
        SQLITE_ERRORS.labels(kind).inc()
        if kind in _REOPEN_KINDS and self.conn is not None:
            try:
                self.conn.close()
            except apsw.Error:
                LOGGER.debug("sink.sqlite.close_after_error_failed path=%s", self.path)
            self.conn = None
        return SqliteSinkError(kind, self.path, events, f"{type(exc).__name__}: {exc}")

    async def close(self) -> None:
        """Commit the pending book rows (reopening if an error closed the file), then close.

        A failure here is logged with the number of book rows given up.
        """
        pending = list(self._book_pending.values())
        if pending:
            try:
                await self._commit([], [], pending, [])  # connects if needed
                self._book_pending.clear()
            except (apsw.Error, SqliteSinkError) as exc:
                LOGGER.error(
                    "sink.sqlite.close_flush_failed path=%s books_lost=%d error=%r",
                    self.path,
                    len(pending),
                    f"{type(exc).__name__}: {exc}",
                )
        self._close_checkpointer()
        if self.conn is None:
            return
        self.conn.close()  # the last connection to close checkpoints the rest
        self.conn = None
        LOGGER.info(
            "sink.sqlite.closed path=%s rows=%s duplicates=%d",
            self.path,
            self.rows,
            self.duplicates,
        )

    # -- writing -------------------------------------------------------------

    async def write(self, batch: Sequence[Event]) -> None:
        """Commit one batch in one transaction (raises :class:`SqliteSinkError` to retry)."""
        kinds = set(map(type, batch))
        if kinds == {TradeEvent}:  # the common case: rows straight from the batch, in C
            trades = list(map(_TRADE_ROW, batch))
            quotes: list[tuple[Any, ...]] = []
            status: list[tuple[Any, ...]] = []
            books: dict[tuple[str, str], BookEvent] = {}
        else:
            trades = [_TRADE_ROW(e) for e in batch if type(e) is TradeEvent]
            quotes = [_QUOTE_ROW(e) for e in batch if type(e) is QuoteEvent]
            status = [_STATUS_ROW(e) for e in batch if type(e) is StatusEvent]
            books = {(e.provider, e.symbol): e for e in batch if type(e) is BookEvent}
        due = self._due_books(books)
        await trio.lowlevel.checkpoint()
        try:
            await self._commit(trades, quotes, due, status)
        except apsw.Error as exc:
            raise self._error(exc, len(batch)) from exc
        # Only after the commit: a failed batch is retried with unchanged state.
        for key, event in books.items():
            self._book_pending[key] = event
        for event in due:
            key = (event.provider, event.symbol)
            self._book_written[key] = event.ts_recv
            if self._book_pending.get(key) is event:
                del self._book_pending[key]
        if self.retain_days is not None:
            self._maybe_retain()
        if self._wal_pages >= CHECKPOINT_PAGES and trio.current_time() >= self._next_checkpoint:
            await self._checkpoint()

    def _due_books(self, fresh: dict[tuple[str, str], BookEvent]) -> list[BookEvent]:
        """The latest book per key whose throttle interval has passed."""
        if not fresh and not self._book_pending:
            return []
        latest = {**self._book_pending, **fresh}
        interval = self.book_interval_ns
        written = self._book_written
        return [
            e
            for key, e in latest.items()
            if key not in written or e.ts_recv - written[key] >= interval
        ]

    async def _commit(
        self,
        trades: list[tuple[Any, ...]],
        quotes: list[tuple[Any, ...]],
        books: list[BookEvent],
        status: list[tuple[Any, ...]],
    ) -> None:
        conn = self._connect(len(trades) + len(quotes) + len(books) + len(status))
        n = self.book_levels
        book_rows = [
            (
                e.provider,
                e.symbol,
                e.ts_exchange,
                e.ts_recv,
                orjson.dumps(e.bids[:n]).decode(),
                orjson.dumps(e.asks[:n]).decode(),
                int(e.is_snapshot),
                e.last_update_id,
            )
            for e in books
        ]
        # One transaction per batch, written in steps of STEP_ROWS rows, with a
        # checkpoint every STEP_TIME. Only this task uses the connection, so the
        # open transaction is safe across the checkpoints; an error or a
        # cancellation rolls the whole batch back (and the runner retries it).
        with conn:
            before = conn.total_changes()
            await _steps(conn, _INSERT_TRADE, trades)
            inserted = conn.total_changes() - before
            await _steps(conn, _INSERT_QUOTE, quotes)
            await _steps(conn, _INSERT_BOOK, book_rows)
            await _steps(conn, _INSERT_STATUS, status)
        if trades:
            dup = len(trades) - inserted
            self._count("trades", inserted)
            if dup:
                self.duplicates += dup
                SQLITE_DUPLICATES.inc(dup)
        self._count("quotes", len(quotes))
        self._count("books", len(book_rows))
        self._count("status", len(status))

    def _count(self, table: str, n: int) -> None:
        if n:
            self.rows[table] += n
            self._rows_metric[table].inc(n)

    # -- retention -----------------------------------------------------------

    def _maybe_retain(self) -> None:
        now = trio.current_time()
        if now < self._next_retention or self.conn is None or self.retain_days is None:
            return
        self._next_retention = now + RETENTION_EVERY
        cutoff = time.time_ns() - int(self.retain_days * 86400e9)
        try:
            deleted = self.retain(cutoff)
        except apsw.Error as exc:
            # The batch is committed: a retention failure must not make it retry.
            SQLITE_ERRORS.labels(error_kind(exc)).inc()
            LOGGER.error("sink.sqlite.retention_failed path=%s error=%r", self.path, str(exc))
            return
        if deleted >= RETENTION_CHUNK // 2:
            self._next_retention = now  # more may be left: sweep again after the next batch

    def retain(self, cutoff_ns: int) -> int:
        """Delete up to :data:`RETENTION_CHUNK` rows per table older than ``cutoff_ns``.

        Each sweep looks at the oldest :data:`RETENTION_CHUNK` rows in
        insertion (rowid) order and deletes those older than the cutoff:
        ``ts_recv`` grows with insertion, so old rows are found without a
        ``(ts_recv)`` index (the hot tables have none; see
        :data:`storage.MIGRATIONS`). A row stored with an old ``ts_recv``
        behind a chunk of younger rows waits until they are old too.

        Returns the most rows deleted from one table (near the chunk: call again).
        """
        conn = self.conn
        assert conn is not None
        most = 0
        for table in storage.TABLES:
            with conn:
                before = conn.total_changes()
                conn.execute(_RETAIN.format(table=table), (cutoff_ns, RETENTION_CHUNK))
                deleted = conn.total_changes() - before
            if deleted:
                self.retained += deleted
                SQLITE_RETAINED.labels(table).inc(deleted)
                LOGGER.info("sink.sqlite.retention table=%s deleted=%d", table, deleted)
            most = max(most, deleted)
        return most


async def _steps(conn: apsw.Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
    """``executemany`` in steps of :data:`STEP_ROWS`; other tasks run every :data:`STEP_TIME`."""
    if len(rows) <= STEP_ROWS:
        if rows:
            conn.executemany(sql, rows)
        return
    clock = time.perf_counter
    since = clock()
    for start in range(0, len(rows), STEP_ROWS):
        if clock() - since >= STEP_TIME:
            await trio.lowlevel.checkpoint()
            since = clock()
        conn.executemany(sql, rows[start : start + STEP_ROWS])
