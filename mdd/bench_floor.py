"""``mdd bench --floor``: an event's cost in the libraries alone here, and what a budget leaves.

A throughput budget is only reachable if the work no Python design can skip
fits in it. This measures that work on this machine, each step in isolation
and with no mdd code per event around it:

* the WebSocket receive: picows frames read from :mod:`mdd.bench_blaster` into
  mdd's transport, nothing done with them (CPU time of this process per frame);
* the typed JSON decode of a Binance combined-stream trade frame (msgspec);
* the two ``float()`` calls that turn the wire's decimal strings into numbers;
* the JSON encode of the normalized event, twice (the JSONL line, the NATS payload);
* a trade row into mdd's schema by apsw's ``executemany`` over ready tuples,
  1000 rows per transaction into a table of realistic size, and, shown as its
  part, the SQLite engine alone (``INSERT OR IGNORE ... SELECT`` from a staging
  table: no Python binding per row).

Summed, they are the floor per event for "all sinks" and for "metrics only";
the report puts each next to the issue #9 budget and prints how much per event
the budget leaves for everything else (building the event, the bus, the sink
loops, NATS framing, metrics). Negative: the budget is below the floor here.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import msgspec
import trio

from .bench_calibrate import TradePayload  # noqa: TC001 - msgspec reads the annotation at run time
from .events import TradeEvent, dumps

if TYPE_CHECKING:
    from collections.abc import Callable

#: A Binance combined-stream trade frame, as the venue sends it.
FRAME: Final = (
    '{"stream":"btcusdt@trade","data":{"e":"trade","E":1700000000123,"s":"BTCUSDT",'
    '"t":3123456789,"p":"50123.45000000","q":"0.00123000","T":1700000000122,'
    '"m":true,"M":true}}'
)

#: Issue #9's throughput budgets, events/s on one core.
BUDGETS: Final = {"all_sinks": 100_000, "metrics_only": 300_000}


class _Combined(msgspec.Struct, gc=False):
    stream: str
    data: TradePayload


@attrs.frozen
class FloorStep:
    """One step of the floor: what it is and how often an event pays it."""

    name: str
    what: str
    per_event: int
    #: Part of the "metrics only" floor (receive and parse), not only "all sinks".
    #: (``per_event`` 0: a part of the step above, shown, not added.)
    metrics_only: bool


STEPS: Final = (
    FloorStep("receive", "WebSocket receive, picows into mdd's transport", 1, True),
    FloorStep("decode", "msgspec typed decode, combined-stream trade", 1, True),
    FloorStep("floats", "float() of the price and size strings", 1, True),
    FloorStep("encode", "JSON encode of the event (JSONL and NATS)", 2, False),
    FloorStep("sqlite", "SQLite row into mdd's schema, apsw executemany", 1, False),
    FloorStep("sqlite_engine", "  of which SQLite's engine (INSERT ... SELECT)", 0, False),
)


def _per_call_ns(fn: Callable[[], Any], n: int, repeat: int) -> float:
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter_ns() - t0) / n)
    return best


def _best_ns(fn: Callable[[], Any], n: int, repeat: int) -> float:
    """Best-of-``repeat`` ns per call of ``fn``, less the cost of calling an empty function."""
    return max(1.0, _per_call_ns(fn, n, repeat) - _per_call_ns(_nothing, n, repeat))


def _nothing() -> None:
    return None


def decode_ns(n: int, repeat: int) -> float:
    """ns per typed decode of :data:`FRAME`."""
    decode = msgspec.json.Decoder(_Combined).decode
    return _best_ns(lambda: decode(FRAME), n, repeat)


def floats_ns(n: int, repeat: int) -> float:
    """ns for the two ``float()`` calls of one trade."""
    wire = msgspec.json.Decoder(_Combined).decode(FRAME).data
    p, q = wire.p, wire.q
    return _best_ns(lambda: (float(p), float(q)), n, repeat)


def encode_ns(n: int, repeat: int) -> float:
    """ns per JSON encode of one normalized trade (:func:`mdd.events.dumps`)."""
    event = TradeEvent(
        "binance", "BTCUSDT", 1_700_000_000_122_000_000, time.time_ns(), 50123.45, 0.00123, "sell",
        "3123456789",
    )  # fmt: skip
    return _best_ns(lambda: dumps(event), n, repeat)


def sqlite_ns(rows: int, directory: Path, batch: int = 1000) -> tuple[float, float]:
    """ns per trade row into mdd's schema: ``(through apsw, the engine alone)``.

    Through apsw: mdd's own insert statement by ``executemany`` over ready
    row tuples, ``batch`` rows per transaction (the least a Python program
    pays: apsw binds eight values per row). The engine alone: the same rows
    staged in a temporary table first (untimed), then ``INSERT OR IGNORE ...
    SELECT`` of ``batch`` rows per transaction, the table, its unique key and
    its ``(symbol, ts_recv)`` index updated with no Python per row. Each into
    its own new file in ``directory``. Raises RuntimeError if a row is missing.
    """
    from .sinks.sqlite import _INSERT_TRADE
    from .storage import open_db

    base = 1_700_000_000_000_000_000
    staged = [
        ("binance", "BTCUSDT" if i % 2 else "ETHUSDT", base + i * 1000, base + i * 1000 + 500,
         50_000.0 + i % 100, 0.001, "buy" if i % 3 else "sell", str(3_000_000_000 + i))
        for i in range(rows)
    ]  # fmt: skip
    select = (
        "INSERT OR IGNORE INTO trades(provider, symbol, ts_exchange, ts_recv, price, qty,"
        " side, trade_id) SELECT * FROM stage WHERE rowid > ? AND rowid <= ?"
    )
    result = []
    for name in ("apsw", "engine"):
        conn = open_db(directory / f"floor-{name}.sqlite")
        try:
            if name == "engine":
                conn.execute(
                    "CREATE TEMP TABLE stage AS SELECT provider, symbol, ts_exchange, ts_recv,"
                    " price, qty, side, trade_id FROM trades WHERE 0"
                )
                with conn:
                    conn.executemany("INSERT INTO stage VALUES (?, ?, ?, ?, ?, ?, ?, ?)", staged)
            t0 = time.perf_counter_ns()
            for start in range(0, rows, batch):
                with conn:
                    if name == "engine":
                        conn.execute(select, (start, start + batch))
                    else:
                        conn.executemany(_INSERT_TRADE, staged[start : start + batch])
            result.append((time.perf_counter_ns() - t0) / rows)
            count = conn.execute("SELECT count(*) FROM trades").get
            if count != rows:
                raise RuntimeError(f"floor inserted {count} rows ({name}), expected {rows}")
        finally:
            conn.close()
    return result[0], result[1]


async def receive_ns(seconds: float, symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")) -> float:
    """CPU ns of this process per frame read by mdd's picows transport from the blaster."""
    import trio_asyncio

    from .bench import BenchOptions, Blaster, make_bench_transport

    opts = BenchOptions(symbols=symbols, transport="picows", progress=False)
    blaster = Blaster(opts, None, 0.0)
    try:
        async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
            conn = await make_bench_transport("picows").connect(nursery, blaster.url(opts))
            await conn.get_messages()  # the first read: connection set up
            frames = 0
            cpu0 = time.process_time_ns()
            with trio.move_on_after(seconds):
                while True:
                    frames += len(await conn.get_messages())
            cpu = time.process_time_ns() - cpu0
            await conn.aclose()
            nursery.cancel_scope.cancel()
    finally:
        blaster.stop()
    if not frames:
        raise RuntimeError("the blaster sent no frames")
    return cpu / frames


def floor(scale: float = 1.0, repeat: int = 3) -> dict[str, Any]:
    """Measure every :data:`STEPS` entry; the report ``mdd bench --floor`` prints."""
    if scale <= 0 or repeat < 1:
        raise ValueError("scale must be > 0 and repeat >= 1")
    n = max(100, int(200_000 * scale))
    rows = max(1000, int(200_000 * scale))
    sqlite = engine = math.inf
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(prefix="mdd-floor-") as tmp:
            through_apsw, alone = sqlite_ns(rows, Path(tmp))
        sqlite, engine = min(sqlite, through_apsw), min(engine, alone)
    ns = {
        "receive": trio.run(receive_ns, max(0.2, 3.0 * scale)),
        "decode": decode_ns(n, repeat),
        "floats": floats_ns(n, repeat),
        "encode": encode_ns(n, repeat),
        "sqlite": sqlite,
        "sqlite_engine": engine,
    }
    steps = {
        s.name: {"what": s.what, "ns": round(ns[s.name]), "per_event": s.per_event} for s in STEPS
    }
    floors = {
        "all_sinks": sum(ns[s.name] * s.per_event for s in STEPS),
        "metrics_only": sum(ns[s.name] * s.per_event for s in STEPS if s.metrics_only),
    }
    budgets = {}
    for key, floor_ns in floors.items():
        budget = BUDGETS[key]
        budgets[key] = {
            "floor_ns": round(floor_ns),
            "ceiling_per_s": round(1e9 / floor_ns),
            "budget_per_s": budget,
            "left_ns": round(1e9 / budget - floor_ns),
        }
    return {"bench": "floor", "steps": steps, "budgets": budgets}


def format_floor(report: dict[str, Any]) -> str:
    """The floor as an aligned table and one line per budget."""
    lines = ["mdd bench --floor: the libraries' own cost per event here, no mdd code around it"]
    for s in report["steps"].values():
        times = f" x{s['per_event']}" if s["per_event"] > 1 else ""
        lines.append(f"  {s['what'] + times:<52} {s['ns']:>6} ns")
    for key, b in report["budgets"].items():
        label = key.replace("_", " ")
        left = b["left_ns"]
        verdict = (
            f"leaves {left / 1e3:.2f} µs per event for all of mdd's own work"
            if left > 0
            else f"is {-left / 1e3:.2f} µs per event below the floor: out of reach here"
        )
        lines.append(
            f"  {label}: floor {b['floor_ns'] / 1e3:.2f} µs -> at most {b['ceiling_per_s']:,}/s "
            f"with no mdd code at all; the {b['budget_per_s']:,}/s budget {verdict}"
        )
    return "\n".join(lines)
