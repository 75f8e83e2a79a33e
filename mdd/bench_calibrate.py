"""``mdd bench --calibrate``: how fast this machine is against DESIGN.md's reference figures.

A throughput figure alone says little on a VM whose speed drifts, or on a
machine other than the one a budget was set on. The calibration times the
steps of DESIGN.md's hot-path table here -- JSON decode of a Binance trade
three ways, a trio memory channel both ways, SQLite inserts into mdd's own
schema -- and prints each next to the figure DESIGN.md quotes, with the ratio
(below 1: this machine is slower at that step). Steps that run mostly Python
bytecode (``json.loads`` building a dict, the awaited channel) and steps that
run mostly C (orjson, msgspec, SQLite) are summarized apart: a slow
interpreter shows in the first group only. Last, it counts how often the
machine takes the core away (gaps in a busy loop: steal time on a shared VM),
which bounds any latency percentile measured here.

Each step runs ``repeat`` times and the best run counts (the least disturbed
by the rest of the machine).
"""

from __future__ import annotations

import itertools
import json
import math
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs
import msgspec
import orjson
import trio

if TYPE_CHECKING:
    from collections.abc import Callable

#: A Binance spot trade payload, as the venue sends it.
TRADE: Final = (
    b'{"e":"trade","E":1700000000000,"s":"BTCUSDT","t":12345,"p":"50000.37",'
    b'"q":"0.00100000","T":1700000000000,"m":true,"M":true}'
)


class TradePayload(msgspec.Struct, gc=False):
    """A Binance trade payload, typed (what the decode steps build)."""

    e: str
    E: int
    s: str
    t: int
    p: str
    q: str
    T: int
    m: bool
    M: bool


@attrs.frozen
class Step:
    """One calibration step and DESIGN.md's figure for it."""

    name: str
    what: str
    #: Items per second DESIGN.md quotes (medians, one core, its 2-core machines).
    reference: float
    #: ``python``: mostly interpreter work; ``c``: mostly inside an extension.
    kind: Literal["python", "c"]
    #: Items per run at ``scale`` 1.
    items: int


STEPS: Final = (
    Step("json_loads", "json.loads, Binance trade", 360_000, "python", 100_000),
    Step("orjson_loads", "orjson.loads, Binance trade", 1_400_000, "c", 200_000),
    Step("msgspec_typed", "msgspec typed Struct, Binance trade", 2_100_000, "c", 200_000),
    Step("channel_await", "trio channel, one await per item", 115_000, "python", 50_000),
    Step("channel_batched", "trio channel, receive_nowait batches", 2_500_000, "python", 200_000),
    Step("sqlite_batch", "SQLite trade rows, 1000 per transaction", 600_000, "c", 50_000),
    Step("sqlite_row_txn", "SQLite trade rows, one per transaction", 70_000, "c", 5_000),
)


def _loads(fn: Callable[[bytes], Any]) -> Callable[[int], None]:
    def run(n: int) -> None:
        raw = TRADE
        for _ in range(n):
            fn(raw)

    return run


def _channel(batched: bool) -> Callable[[int], None]:
    async def main(n: int) -> None:
        send, receive = trio.open_memory_channel[int](1000 if not batched else math.inf)
        async with trio.open_nursery() as nursery:
            if batched:

                async def produce() -> None:
                    with send:
                        for i in range(n):
                            send.send_nowait(i)
                            if i % 1000 == 999:
                                await trio.lowlevel.checkpoint()

                nursery.start_soon(produce)
                got = 0
                async with receive:
                    while got < n:
                        await receive.receive()
                        got += 1
                        while got < n:
                            try:
                                receive.receive_nowait()
                            except trio.WouldBlock:
                                break
                            got += 1
            else:

                async def produce() -> None:
                    async with send:
                        for i in range(n):
                            await send.send(i)

                nursery.start_soon(produce)
                async with receive:
                    async for _ in receive:
                        pass

    def run(n: int) -> None:
        trio.run(main, n)

    return run


def _sqlite(per_txn: int, directory: Path) -> Callable[[int], None]:
    from .sinks.sqlite import _INSERT_TRADE  # mdd's own statement and schema
    from .storage import open_db

    runs = itertools.count()

    def run(n: int) -> None:
        conn = open_db(directory / f"calibrate-{per_txn}-{next(runs)}.sqlite")
        try:
            rows = [
                ("binance", "BTCUSDT", 1_700_000_000_000_000_000 + i, 1_700_000_000_000_000_000 + i,
                 50_000.37, 0.001, "buy", str(i))
                for i in range(n)
            ]  # fmt: skip
            for start in range(0, n, per_txn):
                with conn:
                    conn.executemany(_INSERT_TRADE, rows[start : start + per_txn])
            count = conn.execute("SELECT count(*) FROM trades").get
            if count != n:
                raise RuntimeError(f"calibration inserted {count} rows, expected {n}")
        finally:
            conn.close()

    return run


def _best_rate(run: Callable[[int], None], items: int, repeat: int) -> float:
    best = 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        run(items)
        best = max(best, items / (time.perf_counter() - t0))
    return best


def cpu_times(path: str = "/proc/stat") -> tuple[int, int] | None:
    """(steal, total) CPU time of the whole machine so far, in clock ticks; None off Linux.

    Steal is time the hypervisor ran something else while this VM wanted the
    CPU: a bench run with steal was slowed, and its latency tail lengthened,
    by the host, not by mdd.
    """
    try:
        with open(path) as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    ticks = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return ticks[7], sum(ticks)


def steal_pct(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of all CPU time stolen by the host between two :func:`cpu_times` readings."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round(100 * (after[0] - before[0]) / (after[1] - before[1]), 2)


def stalls(seconds: float, threshold: float = 0.0005) -> dict[str, float]:
    """Gaps longer than ``threshold`` in a busy loop: time the machine took this core away.

    On a shared VM (steal time) these stalls, not the code, can set a p99
    latency: a receive -> publish figure cannot be steadier than this.
    """
    clock = time.perf_counter
    gaps: list[float] = []
    last = start = clock()
    end = start + seconds
    while last < end:
        now = clock()
        if now - last > threshold:
            gaps.append(now - last)
        last = now
    wall = last - start
    return {
        "seconds": round(wall, 3),
        "stalls_over_0_5ms": len(gaps),
        "stalls_over_2ms": sum(g > 0.002 for g in gaps),
        "max_ms": round(max(gaps, default=0.0) * 1e3, 3),
        "stalled_pct": round(100 * sum(gaps) / wall, 3) if wall else 0.0,
    }


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else 0.0


def calibrate(scale: float = 1.0, repeat: int = 3) -> dict[str, Any]:
    """Time every :data:`STEPS` entry here; the report ``mdd bench --calibrate`` prints."""
    if scale <= 0 or repeat < 1:
        raise ValueError("scale must be > 0 and repeat >= 1")
    decoder = msgspec.json.Decoder(TradePayload)
    with tempfile.TemporaryDirectory(prefix="mdd-calibrate-") as tmp:
        runners: dict[str, Callable[[int], None]] = {
            "json_loads": _loads(json.loads),
            "orjson_loads": _loads(orjson.loads),
            "msgspec_typed": _loads(decoder.decode),
            "channel_await": _channel(batched=False),
            "channel_batched": _channel(batched=True),
            "sqlite_batch": _sqlite(1000, Path(tmp)),
            "sqlite_row_txn": _sqlite(1, Path(tmp)),
        }
        steps: dict[str, dict[str, Any]] = {}
        for step in STEPS:
            items = max(1, int(step.items * scale))
            rate = _best_rate(runners[step.name], items, repeat)
            steps[step.name] = {
                "what": step.what,
                "kind": step.kind,
                "per_s": round(rate),
                "reference_per_s": step.reference,
                "ratio": round(rate / step.reference, 3),
            }
    ratios = {
        kind: [s["ratio"] for s in steps.values() if s["kind"] == kind] for kind in ("python", "c")
    }
    return {
        "bench": "calibrate",
        "steps": steps,
        "stalls": stalls(2.0 * scale),
        "ratio_python": round(_geomean(ratios["python"]), 3),
        "ratio_c": round(_geomean(ratios["c"]), 3),
        "ratio_all": round(_geomean(ratios["python"] + ratios["c"]), 3),
    }


def _k(rate: float) -> str:
    return f"{rate / 1e6:.2f}M" if rate >= 1e6 else f"{rate / 1e3:.0f}k"


def format_calibration(report: dict[str, Any]) -> str:
    """The calibration as an aligned table."""
    lines = [
        "mdd bench --calibrate: this machine against DESIGN.md's hot-path figures (best run)",
        f"  {'step':<48} {'here/s':>8} {'DESIGN/s':>9} {'ratio':>6}",
    ]
    for s in report["steps"].values():
        lines.append(
            f"  {s['what'] + ' (' + s['kind'] + ')':<48} {_k(s['per_s']):>8} "
            f"{_k(s['reference_per_s']):>9} {s['ratio']:>6.2f}"
        )
    lines.append(
        f"  geometric mean: python-bound {report['ratio_python']:.2f}, "
        f"C-bound {report['ratio_c']:.2f}, all {report['ratio_all']:.2f} "
        "(below 1: slower than DESIGN.md's machine)"
    )
    st = report["stalls"]
    lines.append(
        f"  stalls in a {st['seconds']:g} s busy loop: {st['stalls_over_0_5ms']} over 0.5 ms, "
        f"{st['stalls_over_2ms']} over 2 ms, longest {st['max_ms']:.1f} ms "
        f"({st['stalled_pct']:.2f} % of the time lost: tail latencies here include them)"
    )
    return "\n".join(lines)
