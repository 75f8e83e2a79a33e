"""``mdd bench``: how fast the pipeline is, end to end and per stage.

One process tree: :mod:`mdd.bench_blaster` in a child process writes real
venue trade frames on a loopback WebSocket as fast as the client reads (or at
``--rate``); this process runs the hot path exactly as a provider does --
transport ``get_messages`` -> the venue's pure ``parse`` -> the feed gate and
``Bus.publish`` -- and the chosen sinks, each driven by its usual runner from
its bus lane.

Where the time goes is measured without per-event clock reads in the sinks:

* ``parse`` and ``bus`` are timed inline in the reader loop, per batch of
  frames from one socket read (the batch is parsed, then published: three
  ``perf_counter_ns`` reads per batch, no awaits in between);
* every other task's CPU share is measured by a :class:`trio.abc.Instrument`
  that accumulates ``perf_counter_ns`` around each task step, and tasks are
  grouped into stages by what they run: the transport's tasks and the reader's
  remaining time are ``receive``, each sink runner is that sink, the
  trio-asyncio loop is ``asyncio`` (the NATS client, and picows when used);
* ``idle`` is wall time no task ran (waiting for the network, the scheduler).

``coverage`` is the share of wall time the named stages explain. Latency
(receive -> NATS publish flushed, receive -> SQLite commit) is recorded per
event after each sink batch, only with a fixed ``--rate`` (at max rate it
measures queueing, not the pipeline). With ``--rate`` the task clock is off:
its hooks run on every task step (~10 % of the CPU at 10k events/s, all of it
added to the latency being measured), so only ``parse`` and ``bus`` are timed.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from .bench_calibrate import cpu_times, steal_pct
from .bus import Bus
from .errors import MddError

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

    from .bus import SinkInbox
    from .events import Event
    from .providers._ws import Connection, Transport

LOGGER = logging.getLogger("mdd.bench")

SINK_NAMES: Final = ("jsonl", "sqlite", "nats", "metrics")
TRANSPORTS: Final = ("trio-websocket", "picows")
#: Sinks whose latency (receive -> written) is recorded at a fixed rate.
_LATENCY_SINKS: Final = ("nats", "sqlite")


class BenchError(MddError):
    """The benchmark could not run (blaster failed, bad options)."""


@attrs.define
class BenchOptions:
    """What ``mdd bench`` runs.

    Attributes:
        venue: ``binance`` or ``bybit`` wire format.
        symbols: venue symbols the frames rotate through.
        sinks: sinks behind the bus (subset of :data:`SINK_NAMES`).
        events: stop after this many events (None: run for ``duration``).
        duration: seconds to run when ``events`` is None.
        rate: offered events per second (0: as fast as the client reads).
        events_per_frame: trades per frame (Bybit only).
        transport: ``trio-websocket`` or ``picows``.
        data_dir: where SQLite/JSONL files go (a temp dir if None; removed after).
        nats_url: NATS server for the nats sink (None: an embedded nats-server).
        progress: print a progress line to stderr once a second.
        policy: the sinks' lane policy. ``block`` (default) applies backpressure
            (the reader waits for the slowest sink, as a provider does with a
            blocking sink), so events/s is what every sink really absorbs;
            ``tiered`` reads at full speed and counts what the drop policy sheds.
        server: the load generator, ``blaster`` or ``sim`` (see :class:`Blaster`).
        one_loop: run picows and the NATS sink on one trio-asyncio loop (default:
            each opens its own, as in the daemon).
    """

    venue: str = "binance"
    symbols: tuple[str, ...] = ("BTCUSDT",)
    sinks: tuple[str, ...] = ()
    events: int | None = None
    duration: float = 10.0
    rate: float = 0.0
    events_per_frame: int = 1
    transport: str = "trio-websocket"
    data_dir: str | None = None
    nats_url: str | None = None
    progress: bool = False
    policy: str = "block"
    server: str = "blaster"
    one_loop: bool = False


class TaskClock(trio.abc.Instrument):
    """Accumulates each task's step time (ns): its exclusive share of the thread."""

    def __init__(self) -> None:
        self.ns: collections.Counter[trio.lowlevel.Task] = collections.Counter()
        self._t0 = 0
        self._perf = time.perf_counter_ns

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._t0 = self._perf()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self._t0:  # the step that installed us had no "before"
            self.ns[task] += self._perf() - self._t0
            self._t0 = 0


class LatencyHistogram:
    """Latencies (ns) in log buckets of ~0.2 % width: bounded memory over any run length."""

    def __init__(self) -> None:
        self.counts: collections.Counter[int] = collections.Counter()
        self.n = 0

    def add_batch(self, now_ns: int, batch: Sequence[Event]) -> None:
        """Record ``now_ns - ts_recv`` for every event of ``batch``."""
        counts = self.counts
        for e in batch:
            ns = now_ns - e.ts_recv
            shift = ns.bit_length() - 10
            if shift > 0:
                ns = ns >> shift << shift
            counts[ns] += 1
        self.n += len(batch)


class TimedSink:
    """A sink wrapper that records latency after each batch (the runner sees the inner sink)."""

    def __init__(self, inner: Any, latencies: LatencyHistogram | None) -> None:
        self.inner = inner
        self.name = inner.name
        self.batch_size = inner.batch_size
        self.batch_interval = inner.batch_interval
        self.latencies = latencies
        self.events = 0
        self.batches = 0
        self.closed_ns = 0

    async def open(self) -> None:
        await self.inner.open()

    async def write(self, batch: Sequence[Event]) -> None:
        await self.inner.write(batch)
        self.events += len(batch)
        self.batches += 1
        lat = self.latencies
        if lat is not None:
            lat.add_batch(time.time_ns(), batch)

    async def close(self) -> None:
        await self.inner.close()
        self.closed_ns = time.perf_counter_ns()


def percentiles(hist: LatencyHistogram) -> dict[str, float] | None:
    """p50/p90/p99/p99.9/max of a latency histogram, in milliseconds (None when empty)."""
    if not hist.n:
        return None
    keys = sorted(hist.counts)
    targets = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "p99.9": 0.999}
    out: dict[str, float] = {}
    seen = 0
    pending = sorted(targets.items(), key=lambda kv: kv[1])
    for key in keys:
        seen += hist.counts[key]
        while pending and seen > pending[0][1] * hist.n:
            out[pending.pop(0)[0]] = round(key / 1e6, 3)
    for name, _ in pending:
        out[name] = round(keys[-1] / 1e6, 3)
    out["max"] = round(keys[-1] / 1e6, 3)
    out["n"] = hist.n
    return {name: out[name] for name in ("p50", "p90", "p99", "p99.9", "max", "n")}


def rss_kb() -> int:
    """Current resident set size, KiB (Linux ``/proc``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except OSError:
        return 0


#: A venue's pure parse of one frame, ``parse(raw, ts_recv)``.
FrameParser = Callable[[str | bytes, int], Any]
#: A venue's parse of a socket read's frames at once; None: parse them one by one.
BatchParser = Callable[[list[str | bytes], int], list[Any] | None]


def parser_for(
    venue: str, symbols: Sequence[str] = ("BTCUSDT",)
) -> tuple[FrameParser, BatchParser | None]:
    """The venue's pure parsers ``(per frame, per socket read)``, set up as the provider does.

    Binance: with the connection's :class:`~mdd.providers.binance.StreamDecoder`
    for the blaster's trade streams, as ``BinanceProvider.parse_frame`` and
    ``parse_frames`` use. Bybit has no batch parser.
    """
    if venue == "binance":
        from .providers.binance import MILLISECONDS, StreamDecoder
        from .providers.binance import parse as binance_parse

        decoder = StreamDecoder(f"{s.lower()}@trade" for s in symbols)

        def many(frames: list[str | bytes], ts_recv: int) -> list[Any] | None:
            return decoder.parse_many(frames, ts_recv, "binance", MILLISECONDS)

        return functools.partial(binance_parse, decoder=decoder), many
    if venue == "bybit":
        from .providers.bybit import parse as bybit_parse

        return bybit_parse, None
    raise BenchError(f"bench venue must be binance or bybit, got {venue!r}")


def make_bench_transport(name: str) -> Transport:
    """The client transport by name (picows only if its module is present)."""
    from .providers._ws import make_transport

    if name == "picows":
        from .providers._picows import PicowsTransport

        return PicowsTransport()
    return make_transport(name)


# ---------------------------------------------------------------------------
# The blaster process


class Blaster:
    """The load generator child process (started and stopped by its Popen handle).

    ``server="blaster"`` runs :mod:`mdd.bench_blaster` (pre-encoded frames,
    many per write: the client is the bottleneck); ``server="sim"`` runs
    ``mdd sim --rate 0`` (the exchange simulator at maximum rate, Binance only:
    its streams are subscribed by URL), which is more realistic but sends one
    frame per trio-websocket write, so it may be the slower side.
    """

    def __init__(self, opts: BenchOptions, events: int | None, rate: float) -> None:
        self.server = opts.server
        if opts.server == "sim":
            if opts.venue != "binance":
                raise BenchError("--server sim supports --venue binance only")
            per_symbol = rate / len(opts.symbols) if rate > 0 else 0.0
            cmd = [
                sys.executable,
                "-m",
                "mdd",
                "sim",
                "--venue",
                "binance",
                "--port",
                "0",
                "--rate",
                str(per_symbol),
                "--symbols",
                ",".join(opts.symbols),
                "--log-level",
                "error",
            ]
        elif opts.server == "blaster":
            cmd = [
                sys.executable,
                "-m",
                "mdd.bench_blaster",
                "--venue",
                opts.venue,
                "--symbols",
                ",".join(opts.symbols),
                "--events-per-frame",
                str(opts.events_per_frame),
                "--rate",
                str(rate),
            ]
            if events is not None:
                cmd += ["--events", str(events)]
        else:
            raise BenchError(f"unknown --server {opts.server!r} (blaster or sim)")
        self._err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._err)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if opts.server == "sim" and line.startswith("binance"):
            self.base = line.split()[1]
        elif line.startswith("port="):
            self.base = f"ws://127.0.0.1:{int(line.split('=', 1)[1])}"
        else:
            self._err.seek(0)
            err = self._err.read().decode(errors="replace")
            self.stop()
            raise BenchError(f"bench load generator failed to start: {line!r} {err[-500:]}")

    def url(self, opts: BenchOptions) -> str:
        """The endpoint the client connects to (a combined-stream URL, as the venue's)."""
        streams = "/".join(f"{s.lower()}@trade" for s in opts.symbols)
        return f"{self.base}/stream?streams={streams}"

    def stop(self) -> None:
        """Terminate the child (kill after 3 s)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._err.close()


# ---------------------------------------------------------------------------
# The run


def _build_sinks(
    names: Sequence[str], data_dir: Path, nats_url: str | None
) -> list[tuple[Any, Any]]:
    """The sinks by name, built by the daemon's factories from a config made in code."""
    from .config import load_config
    from .sinks import SINK_FACTORIES

    doc: dict[str, Any] = {"daemon": {"state_dir": str(data_dir)}, "sinks": {}}
    for name in names:
        doc["sinks"][name] = {"url": nats_url} if name == "nats" else {}
    if "metrics" not in names:
        doc["sinks"]["metrics"] = {"enabled": False}
    cfg = load_config(None, env={}, base=doc)
    enabled = cfg.sinks.enabled()
    return [(SINK_FACTORIES[name](cfg, enabled[name]), enabled[name]) for name in names]


@attrs.define
class _Run:
    events: int = 0
    frames: int = 0
    parse_ns: int = 0
    bus_ns: int = 0
    first_ns: int = 0
    last_rx_ns: int = 0


async def _reader(
    conn: Connection,
    parsers: tuple[FrameParser, BatchParser | None],
    bus: Bus,
    run: _Run,
    target: int | None,
    deadline: float,
) -> None:
    """The hot loop of :meth:`mdd.providers._ws.WsProvider._receive`, with stage clocks."""
    perf = time.perf_counter_ns
    clock = time.time_ns
    # Through the active provider's feed gate, as in the daemon (dedup memory
    # for failover, pass counts), then the bus: the "bus" stage is both.
    from .supervisor import FeedGate

    publish_many = FeedGate(bus, "bench", active=True).publish_many
    has_blocking = any(lane.policy == "block" for lane in bus.lanes)
    parse, parse_many = parsers
    events = frames = parse_ns = bus_ns = 0
    run.first_ns = perf()
    with trio.move_on_at(deadline):
        while target is None or events < target:
            batch = await conn.get_messages()
            ts_recv = clock()  # once per batch, as the provider loop does
            # Clocks per batch, not per frame (three clock reads per frame cost
            # ~0.3 µs, a cost the daemon does not have): parse the batch into
            # one list, then publish it in one call, as the provider loop does.
            t1 = perf()
            out = parse_many(batch, ts_recv) if parse_many is not None else None
            if out is None:  # not all taken at once: frame by frame, as the provider loop
                out = []
                for raw in batch:
                    out += parse(raw, ts_recv)
            t2 = perf()
            publish_many(out)
            events += len(out)
            t3 = perf()
            parse_ns += t2 - t1
            bus_ns += t3 - t2
            frames += len(batch)
            if has_blocking and bus.congested:
                await bus.wait_for_room()
            run.events, run.frames, run.parse_ns, run.bus_ns = events, frames, parse_ns, bus_ns
    run.events, run.frames, run.parse_ns, run.bus_ns = events, frames, parse_ns, bus_ns
    run.last_rx_ns = perf()


async def _progress(run: _Run, bus: Bus, t0: float) -> None:
    last = 0
    while True:
        await trio.sleep(1.0)
        ev = run.events
        drops = sum(lane.total_dropped for lane in bus.stats().lanes)
        print(
            f"mdd bench: {trio.current_time() - t0:5.1f}s events={ev} "
            f"rate={ev - last}/s drops={drops} rss={rss_kb() // 1024}MiB",
            file=sys.stderr,
            flush=True,
        )
        last = ev


def _stage_of(name: str, sink_tasks: dict[str, str]) -> str:
    if name in sink_tasks:
        return sink_tasks[name]
    low = name.lower()
    if "trio_websocket" in low or "_picows" in low:
        return "receive"
    if "trio_asyncio" in low or "asyncio" in low:
        return "asyncio"
    return "other"


async def run_bench(opts: BenchOptions) -> dict[str, Any]:
    """Run one benchmark and return the report (what ``--json`` writes)."""
    for s in opts.sinks:
        if s not in SINK_NAMES:
            raise BenchError(f"unknown sink {s!r} (choose from {', '.join(SINK_NAMES)})")
    if opts.transport not in TRANSPORTS:
        raise BenchError(f"unknown transport {opts.transport!r} ({', '.join(TRANSPORTS)})")
    parsers = parser_for(opts.venue, opts.symbols)
    transport = make_bench_transport(opts.transport)
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if opts.data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="mdd-bench-")
        data_dir = Path(tmp.name)
    else:
        data_dir = Path(opts.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
    nats_server = None
    blaster: Blaster | None = None
    try:
        nats_url = opts.nats_url
        if "nats" in opts.sinks and nats_url is None:
            from .natsserver import NatsServer

            nats_server = NatsServer(jetstream=False, workdir=data_dir / "nats").start()
            nats_url = nats_server.url
        blaster = Blaster(opts, opts.events, opts.rate)
        url = blaster.url(opts)
        if opts.one_loop:
            import trio_asyncio

            # One asyncio loop for picows and the NATS client (else one each).
            async with trio_asyncio.open_loop():
                return await _measure(opts, parsers, transport, url, data_dir, nats_url)
        return await _measure(opts, parsers, transport, url, data_dir, nats_url)
    finally:
        if blaster is not None:
            blaster.stop()
        if nats_server is not None:
            nats_server.close()
        if tmp is not None:
            tmp.cleanup()


async def _measure(
    opts: BenchOptions,
    parsers: tuple[FrameParser, BatchParser | None],
    transport: Transport,
    url: str,
    data_dir: Path,
    nats_url: str | None,
) -> dict[str, Any]:
    from .sinks import sink_runner

    bus = Bus()
    latencies: dict[str, LatencyHistogram] = {}
    timed: list[TimedSink] = []
    sink_tasks: dict[str, str] = {}
    built = _build_sinks(opts.sinks, data_dir, nats_url)
    for sink, _section in built:
        lat: LatencyHistogram | None = None
        if opts.rate > 0 and sink.name in _LATENCY_SINKS:
            lat = latencies.setdefault(sink.name, LatencyHistogram())
        t = TimedSink(sink, lat)
        timed.append(t)
    clock = TaskClock()
    run = _Run()
    rss0 = rss_kb()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    machine0 = cpu_times()
    timing_tasks = opts.rate <= 0  # see the module docstring
    if timing_tasks:
        trio.lowlevel.add_instrument(clock)
    try:
        async with trio.open_nursery() as outer:
            async with trio.open_nursery() as sinks_nursery:
                from .sinks.nats import NatsSink

                for t, (_, section) in zip(timed, built, strict=True):
                    inbox: SinkInbox = bus.add_sink(
                        t.name,
                        section.capacity or 10_000,
                        "block" if opts.policy == "block" else "tiered",
                    )
                    task_name = f"mdd.bench.sink.{t.name}"
                    sink_tasks[task_name] = t.name
                    if isinstance(t.inner, NatsSink):
                        # The NATS sink's run() opens the trio-asyncio loop and drives itself.
                        await sinks_nursery.start(_run_nats, t, inbox, name=task_name)
                    else:
                        await sinks_nursery.start(sink_runner(t), inbox, name=task_name)
                async with trio.open_nursery() as conn_nursery:
                    conn = await transport.connect(conn_nursery, url)
                    t0 = trio.current_time()
                    if opts.progress:
                        outer.start_soon(_progress, run, bus, t0, name="mdd.bench.progress")
                    deadline = (
                        float("inf")
                        if opts.events is not None
                        else trio.current_time() + opts.duration
                    )
                    wall0 = time.perf_counter_ns()
                    async with trio.open_nursery() as rn:
                        rn.start_soon(
                            _reader,
                            conn,
                            parsers,
                            bus,
                            run,
                            opts.events,
                            deadline,
                            name="mdd.bench.reader",
                        )
                    # Close the bus first: the sinks drain while the socket closes
                    # (a WebSocket close handshake is not pipeline time).
                    bus.close()
                    await conn.aclose()
                    conn_nursery.cancel_scope.cancel()
            # The run ends when the last sink has written and closed (or, with
            # no sinks, when the reader stopped).
            wall1 = max([run.last_rx_ns, *(t.closed_ns for t in timed)])
            outer.cancel_scope.cancel()
    finally:
        if timing_tasks:
            trio.lowlevel.remove_instrument(clock)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    report = _report(
        opts, bus, run, clock, sink_tasks, timed, latencies, wall1 - wall0, cpu0, cpu1, rss0
    )
    report["steal_pct"] = steal_pct(machine0, cpu_times())
    return report


async def _run_nats(t: TimedSink, inbox: SinkInbox, *, task_status: trio.TaskStatus[None]) -> None:
    import trio_asyncio

    from .sinks import run_sink

    if trio_asyncio.current_loop.get() is not None:  # --one-loop: share the bench's loop
        await run_sink(t, inbox, t.inner.health, task_status=task_status)
        return
    async with trio_asyncio.open_loop():
        await run_sink(t, inbox, t.inner.health, task_status=task_status)


def _report(
    opts: BenchOptions,
    bus: Bus,
    run: _Run,
    clock: TaskClock,
    sink_tasks: dict[str, str],
    timed: list[TimedSink],
    latencies: dict[str, LatencyHistogram],
    wall_ns: int,
    cpu0: resource.struct_rusage,
    cpu1: resource.struct_rusage,
    rss0: int,
) -> dict[str, Any]:
    stages: collections.Counter[str] = collections.Counter()
    for task, ns in clock.ns.items():
        stages[_stage_of(task.name, sink_tasks)] += ns
    reader_ns = sum(ns for task, ns in clock.ns.items() if task.name == "mdd.bench.reader")
    tasks_timed = bool(clock.ns)  # off with --rate: parse and bus only
    if tasks_timed:
        stages["other"] -= reader_ns
        stages["receive"] += reader_ns - run.parse_ns - run.bus_ns
    stages["parse"] = run.parse_ns
    stages["bus"] = run.bus_ns
    if tasks_timed:
        busy = sum(stages.values())
        stages["idle"] = max(0, wall_ns - busy)
    ev = run.events
    delivered = min((t.events for t in timed), default=ev)
    stats = bus.stats()
    cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    order = ["receive", "parse", "bus", *[t.name for t in timed], "asyncio", "other", "idle"]
    per_stage = {
        name: {
            "ms": round(stages[name] / 1e6, 1),
            "pct": round(100 * stages[name] / wall_ns, 1) if wall_ns else 0.0,
            "ns_per_event": round(stages[name] / ev) if ev else None,
        }
        for name in order
        if name in stages
    }
    return {
        "venue": opts.venue,
        "transport": opts.transport,
        "symbols": list(opts.symbols),
        "events_per_frame": opts.events_per_frame,
        "sinks": list(opts.sinks),
        "offered_rate": opts.rate or "max",
        "policy": opts.policy,
        "server": opts.server,
        "one_loop": opts.one_loop,
        "events": ev,
        "frames": run.frames,
        "delivered_to_every_sink": delivered,
        "seconds": round(wall_ns / 1e9, 3),
        "events_per_s": round(ev / (wall_ns / 1e9)) if wall_ns else 0,
        "receive_events_per_s": (
            round(ev / ((run.last_rx_ns - run.first_ns) / 1e9))
            if run.last_rx_ns > run.first_ns
            else 0
        ),
        "cpu_seconds": round(cpu_s, 3),
        # Throughput per CPU-second of this process: comparable on a loaded machine.
        "events_per_cpu_s": round(ev / cpu_s) if cpu_s > 0 else 0,
        "stages": per_stage,
        "coverage_pct": round(100 * (wall_ns - stages["idle"] - stages["other"]) / wall_ns, 1)
        if wall_ns and tasks_timed
        else None,
        "latency_ms": {name: percentiles(values) for name, values in latencies.items()},
        "rss_kib": {
            "start": rss0,
            "end": rss_kb(),
            "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        },
        "drops": {lane.sink: lane.total_dropped for lane in stats.lanes},
        # Mean events per write call: small batches mean per-batch costs dominate.
        "batch_mean": {t.name: round(t.events / t.batches, 1) for t in timed if t.batches},
        "python": sys.version.split()[0],
    }


def bench_consumer(n: int = 200_000, *, batch: int = 1000) -> dict[str, Any]:
    """Consumer throughput: encoded trades and quotes through decode, state, features, signals.

    Drives :meth:`mdd.consumer.service.ConsumerService.process_batch` (what the
    consumer runs per NATS batch) with pre-encoded events for two symbols, one
    quote per four trades; input is built before the clock starts.
    """
    from .consumer.config import ConsumerConfig
    from .consumer.service import ConsumerService
    from .events import QuoteEvent, TradeEvent, dumps

    service = ConsumerService(ConsumerConfig())
    now_ns = time.time_ns()
    msgs: list[tuple[str, bytes, int]] = []
    for i in range(n):
        sym = "BTCUSDT" if i & 1 else "ETHUSDT"
        ts = now_ns + i * 10_000
        price = 50_000.0 + (i % 97) * 0.5
        if i % 5 == 4:
            ev: Any = QuoteEvent("bench", sym, ts, ts, price - 0.5, 1.0, price + 0.5, 1.0)
        else:
            ev = TradeEvent("bench", sym, ts, ts, price, 0.01, "buy" if i & 2 else "sell", str(i))
        msgs.append((f"md.events.{ev.type}.{sym}", dumps(ev), ts))
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        service.process_batch(msgs[start : start + batch], 0.0)
    seconds = time.perf_counter() - t0
    return {
        "events": n,
        "batch": batch,
        "seconds": round(seconds, 3),
        "events_per_s": round(n / seconds),
        "features_computed": service.feature_computations,
        "signals": sum(service.signal_counts.values()),
    }


def format_report(r: dict[str, Any]) -> str:
    """The human-readable summary printed at the end."""
    lines = [
        f"mdd bench: {r['venue']} via {r['transport']}, sinks: {', '.join(r['sinks']) or 'none'},"
        f" offered: {r['offered_rate']}, policy: {r['policy']}",
        f"  {r['events']} events in {r['seconds']} s = {r['events_per_s']:,} events/s end to end"
        f" (cpu {r['cpu_seconds']} s = {r['events_per_cpu_s']:,} events per cpu-second)",
        "  stage            ms      %   ns/event",
    ]
    batch_mean = r.get("batch_mean", {})
    for name, st in r["stages"].items():
        nspe = "" if st["ns_per_event"] is None else str(st["ns_per_event"])
        line = f"  {name:<12} {st['ms']:>9} {st['pct']:>6} {nspe:>9}"
        if name in batch_mean:
            line += f"   ({batch_mean[name]} events/batch)"
        lines.append(line)
    if r["coverage_pct"] is None:
        lines.append("  (task clock off at a fixed --rate: only parse and bus are timed)")
    else:
        lines.append(f"  coverage {r['coverage_pct']} % of wall time explained by named stages")
    for name, lat in r["latency_ms"].items():
        if lat:
            lines.append(
                f"  latency receive -> {name}: p50 {lat['p50']} ms, p99 {lat['p99']} ms,"
                f" max {lat['max']} ms (n={lat['n']})"
            )
    if r.get("steal_pct") is not None:
        lines.append(
            f"  steal {r['steal_pct']} % of the machine's CPU time during the run"
            " (taken by the host: slower figures, longer latency tails)"
        )
    rss = r["rss_kib"]
    lines.append(
        f"  rss start {rss['start'] // 1024} MiB, end {rss['end'] // 1024} MiB,"
        f" peak {rss['peak'] // 1024} MiB; drops {r['drops'] or 0}"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# CLI


def add_parser(sub: Any) -> None:
    """Register ``mdd bench``."""
    p = sub.add_parser(
        "bench",
        help="measure the pipeline: events/s, per-stage costs, latency, RSS",
        description="Blast venue trade frames over loopback WebSocket into the pipeline "
        "(transport -> parse -> bus -> sinks) and report throughput and where the time goes.",
    )
    p.add_argument("--venue", default="binance", choices=["binance", "bybit"])
    p.add_argument("--symbols", default="BTCUSDT", help="comma-separated (default BTCUSDT)")
    p.add_argument(
        "--sinks",
        default="all",
        help="none | all | comma list of jsonl,sqlite,nats,metrics (default all)",
    )
    p.add_argument("--events", type=int, default=None, help="stop after this many events")
    p.add_argument("--duration", type=float, default=10.0, help="seconds (default 10)")
    p.add_argument("--rate", type=float, default=0.0, help="offered events/s (default: max)")
    p.add_argument("--events-per-frame", type=int, default=1, help="trades per frame (bybit)")
    p.add_argument(
        "--transport",
        default="both",
        help="trio-websocket | picows | both (default both, one after the other)",
    )
    p.add_argument(
        "--policy",
        default="block",
        choices=["block", "tiered"],
        help="lane policy: block = backpressure, no drops (default); tiered = shed",
    )
    p.add_argument(
        "--server",
        default="blaster",
        choices=["blaster", "sim"],
        help="load generator: blaster (pre-encoded frames, default) or the simulator at max rate",
    )
    p.add_argument(
        "--one-loop",
        action="store_true",
        help="picows and NATS share one trio-asyncio loop (default: one each)",
    )
    p.add_argument("--nats-url", default=None, help="NATS server (default: embedded)")
    p.add_argument("--data-dir", default=None, help="keep SQLite/JSONL files here")
    p.add_argument(
        "--json", metavar="FILE", default=None, help="write the report as JSON ('-': stdout)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument("--consumer", action="store_true", help="benchmark the consumer features")
    p.add_argument("--book", action="store_true", help="benchmark the L2 book engine")
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="time DESIGN.md's reference steps here (how fast this machine is), ~8 s",
    )
    p.add_argument(
        "--floor",
        action="store_true",
        help="the libraries' own cost per event here (receive, decode, encode, SQLite) "
        "and what the throughput budgets leave for mdd's code, ~8 s",
    )
    p.set_defaults(func=_cmd_bench)


def _sinks_arg(text: str) -> tuple[str, ...]:
    text = text.strip()
    if text in ("", "none"):
        return ()
    if text == "all":
        return SINK_NAMES
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _cmd_bench(args: argparse.Namespace) -> int:
    reports: list[dict[str, Any]] = []
    if args.json and args.json != "-" and not Path(args.json).parent.is_dir():
        # Refused before the run, not after minutes of benchmarking.
        print(f"mdd bench: --json {args.json}: no such directory", file=sys.stderr)
        return 2
    try:
        if args.calibrate:
            from .bench_calibrate import calibrate, format_calibration

            cal = calibrate()
            reports.append(cal)
            print(format_calibration(cal))
        elif args.floor:
            from .bench_floor import floor, format_floor

            low = floor()
            reports.append(low)
            print(format_floor(low))
        elif args.book:
            from .books import bench_book

            n = args.events or 200_000
            rate = bench_book(n)
            reports.append({"bench": "book", "deltas": n, "levels_per_s": round(rate)})
            print(f"mdd bench --book: {rate:,.0f} level changes/s")
        elif args.consumer:
            r = bench_consumer(args.events or 200_000)
            reports.append({"bench": "consumer", **r})
            print(
                f"mdd bench --consumer: {r['events']} events in {r['seconds']} s = "
                f"{r['events_per_s']:,} events/s (decode, state, features, signals)"
            )
        else:
            transports = TRANSPORTS if args.transport == "both" else (args.transport,)
            for name in transports:
                opts = BenchOptions(
                    venue=args.venue,
                    symbols=tuple(s.strip().upper() for s in args.symbols.split(",") if s),
                    sinks=_sinks_arg(args.sinks),
                    events=args.events,
                    duration=args.duration,
                    rate=args.rate,
                    events_per_frame=args.events_per_frame,
                    transport=name,
                    data_dir=args.data_dir,
                    nats_url=args.nats_url,
                    progress=not args.quiet,
                    policy=args.policy,
                    server=args.server,
                    one_loop=args.one_loop,
                )
                report = trio.run(run_bench, opts)
                reports.append(report)
                print(format_report(report))
    except (BenchError, ImportError, ValueError) as exc:
        print(f"mdd bench: {exc}", file=sys.stderr)
        return 2
    if args.json:
        out = reports[0] if len(reports) == 1 else reports
        text = json.dumps(out, indent=2) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
        else:
            Path(args.json).write_text(text)
    return 0
