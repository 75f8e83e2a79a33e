"""``mdd demo``: the whole system, offline, in one process tree, with a live view.

Under one root nursery: the exchange simulator (Binance and Bybit protocols on
loopback ports), an embedded nats-server (JetStream on, store under the data
directory), the daemon in-process (Binance primary, Bybit backup for BTCUSDT
and ETHUSDT; SQLite, JSONL, metrics and NATS sinks; HTTP API and control
socket) and the consumer (features and signals from NATS). A view is drawn
about once a second: per symbol last price, bid/ask and events/s, the active
provider per feed, bus fill and drops, the consumer's latest features and
signals. Plain lines when stdout is not a terminal (or ``--no-tty``).

The storyline (``--no-faults`` turns it off): after ``--fault-at`` seconds
(20) the Binance simulator goes silent, the daemon fails over to Bybit,
Binance comes back, and the daemon switches back once Binance has been
healthy for ``recover_after``. The view and the log say so as it happens.

Ctrl-C (or ``--duration``) stops everything gracefully, in order: the daemon
(providers, bus, sinks, database), then the consumer, then the simulators and
nats-server; then it prints where the data is.
"""

from __future__ import annotations

import collections
import logging
import signal
import socket
import sys
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

import attrs
import trio

from .events import QuoteEvent, TradeEvent

if TYPE_CHECKING:
    import argparse

    from .config import Config
    from .consumer.service import ConsumerService
    from .daemon import Daemon

LOGGER = logging.getLogger("mdd.demo")

SYMBOLS: Final = ("BTCUSDT", "ETHUSDT")
FEED: Final = "crypto"
#: Failover timings for the demo (seconds): short, so the story fits in a minute.
STALE_AFTER: Final = 3.0
FAILOVER_AFTER: Final = 2.0
RECOVER_AFTER: Final = 8.0
SILENCE: Final = 12.0


@attrs.define
class DemoOptions:
    """What ``mdd demo`` runs.

    Attributes:
        data_dir: SQLite, JSONL, NATS store, control socket and log live here.
        duration: stop after this many seconds (None: until Ctrl-C).
        rate: market steps per second per symbol in the simulators.
        faults: run the storyline (Binance silent -> Bybit -> back).
        fault_at: seconds after start when Binance goes silent.
        silence: how long Binance stays silent.
        stale_after: failover timing: no data for this long is unhealthy.
        failover_after: unhealthy this long -> switch to the backup.
        recover_after: primary healthy this long -> switch back.
        tty: draw a refreshing screen (else one plain line per second).
        out: where the view goes.
    """

    data_dir: Path = Path("demo-data")
    duration: float | None = None
    rate: float = 20.0
    faults: bool = True
    fault_at: float = 20.0
    silence: float = SILENCE
    stale_after: float = STALE_AFTER
    failover_after: float = FAILOVER_AFTER
    recover_after: float = RECOVER_AFTER
    tty: bool = False
    out: TextIO = sys.stdout


@attrs.define
class DemoResult:
    """What the demo left behind (for the final message and tests)."""

    sqlite_path: Path
    jsonl_path: Path
    http_url: str
    consumer_url: str
    control_socket: Path
    nats_url: str
    published: int = 0
    nats_messages: int = 0
    features: dict[str, dict[str, Any]] = attrs.Factory(dict)
    signals: int = 0
    switches: list[str] = attrs.Factory(list)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for the HTTP servers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_config(
    data_dir: Path,
    binance_url: str,
    bybit_url: str,
    nats_url: str,
    http_port: int,
    timings: tuple[float, float, float] = (STALE_AFTER, FAILOVER_AFTER, RECOVER_AFTER),
) -> Config:
    """The daemon config the demo builds in code (``timings``: stale, failover, recover s)."""
    from .config import load_config

    doc: dict[str, Any] = {
        "daemon": {
            "name": "mdd-demo",
            "state_dir": str(data_dir),
            "control_socket": "mdd.sock",
            "watchdog": False,
            "shutdown_grace": 5.0,
        },
        "http": {"enabled": True, "host": "127.0.0.1", "port": http_port},
        "failover": {
            "stale_after": timings[0],
            "failover_after": timings[1],
            "recover_after": timings[2],
            "check_interval": 0.5,
        },
        "providers": {
            "binance": {"kind": "binance", "url": binance_url},
            "bybit": {"kind": "bybit", "url": bybit_url},
        },
        "feeds": [
            {
                "name": FEED,
                "symbols": list(SYMBOLS),
                "providers": ["binance", "bybit"],
                "channels": ["trade", "quote"],
            }
        ],
        "sinks": {
            "sqlite": {"path": "mdd.sqlite", "batch_interval": 0.2},
            "jsonl": {"path": "events.jsonl"},
            "nats": {"url": nats_url, "jetstream": True},
            "metrics": {},
        },
    }
    return load_config(None, env={}, base=doc)


# ---------------------------------------------------------------------------
# The view


@attrs.define
class _Sym:
    last: float | None = None
    bid: float | None = None
    ask: float | None = None
    provider: str = "-"
    events: int = 0
    prev_events: int = 0


class DemoView:
    """Reads its own bus lane (like any sink) and draws the state once a second."""

    def __init__(self, opts: DemoOptions) -> None:
        self.opts = opts
        self.syms: dict[str, _Sym] = {s: _Sym() for s in SYMBOLS}
        self.daemon: Daemon | None = None
        self.consumer: ConsumerService | None = None
        self.started = 0.0
        self.story: collections.deque[str] = collections.deque(maxlen=6)
        self.active: dict[str, str | None] = {}
        self.switches: list[str] = []

    def say(self, text: str) -> None:
        """A storyline line: logged, kept for the screen, printed at once in plain mode."""
        stamp = f"{trio.current_time() - self.started:5.1f}s"
        LOGGER.warning("demo.story %s", text)
        self.story.append(f"{stamp}  {text}")
        if not self.opts.tty:
            print(f"[{stamp}] {text}", file=self.opts.out, flush=True)

    async def service(
        self, daemon: Daemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """A daemon service: a lane on the bus, drained in batches."""
        self.daemon = daemon
        inbox = daemon.bus.add_sink("demo-view", 10_000)
        task_status.started()
        syms = self.syms
        while True:
            try:
                batch = await inbox.receive_batch(5000)
            except trio.EndOfChannel:
                return
            for e in batch:
                s = syms.get(e.symbol)
                if s is None:
                    continue
                if type(e) is TradeEvent:
                    s.last = e.price
                    s.provider = e.provider
                    s.events += 1
                elif type(e) is QuoteEvent:
                    s.bid, s.ask = e.bid_px, e.ask_px
                    s.events += 1

    def watch_switches(self) -> None:
        """Note active-provider changes (called once a second)."""
        if self.daemon is None:
            return
        for name, sup in self.daemon.feeds.items():
            now = sup.active
            before = self.active.get(name, "?")
            if before != "?" and now != before:
                self.switches.append(f"{before}->{now}")
                self.say(f"feed {name}: active provider {before} -> {now}")
            self.active[name] = now

    def frame(self) -> list[str]:
        """The lines of one refresh."""
        t = trio.current_time() - self.started
        out = [f"mdd demo  t={t:5.1f}s   (Ctrl-C to stop)"]
        active = ", ".join(f"{k}: {v or '-'}" for k, v in self.active.items()) or "-"
        out.append(f"active provider  {active}")
        out.append(f"{'symbol':<9}{'last':>12}{'bid':>12}{'ask':>12}{'ev/s':>7}  via")
        for name, s in self.syms.items():
            rate = s.events - s.prev_events
            s.prev_events = s.events
            out.append(
                f"{name:<9}{_num(s.last):>12}{_num(s.bid):>12}{_num(s.ask):>12}{rate:>7}  "
                f"{s.provider}"
            )
        if self.daemon is not None:
            stats = self.daemon.bus.stats()
            fill = max((lane.fill_pct for lane in stats.lanes), default=0.0)
            drops = sum(lane.total_dropped for lane in stats.lanes)
            out.append(f"bus  published={stats.published} max_fill={fill:.1f}% drops={drops}")
        if self.consumer is not None:
            for sym in SYMBOLS:
                f = self.consumer.latest_features.get(sym)
                if f is not None:
                    out.append(
                        f"features {sym:<8} vwap60={_num(f.vwap_60s)} ret10s={_pct(f.return_10s)}"
                        f" vol60={_pct(f.volatility_60s)} trades60={f.trades_60s}"
                        f" spread={_num(f.spread_bps)}bps"
                    )
            if self.consumer.recent_signals:
                sig = self.consumer.recent_signals[-1]
                out.append(f"signal   {sig.get('side')} {sig.get('symbol')}")
        return out

    async def draw_forever(self) -> None:
        """Refresh about once a second."""
        while True:
            await trio.sleep(1.0)
            self.watch_switches()
            lines = self.frame()
            if self.opts.tty:
                text = "\x1b[H\x1b[2J" + "\n".join([*lines, "", *self.story]) + "\n"
                self.opts.out.write(text)
                self.opts.out.flush()
            else:
                print(self.plain_line(lines), file=self.opts.out, flush=True)

    def plain_line(self, lines: list[str]) -> str:
        """One compact line per refresh for logs and pipes."""
        t = trio.current_time() - self.started
        parts = [f"t={t:.0f}s", lines[1].replace("active provider  ", "active ")]
        parts += [" ".join(line.split()) for line in lines[3:]]
        return " | ".join(parts)


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.3f}%"


# ---------------------------------------------------------------------------
# The run


async def _storyline(view: DemoView, binance: Any, opts: DemoOptions) -> None:
    await trio.sleep(opts.fault_at)
    view.say(f"Binance goes silent for {opts.silence:g}s (simulated outage)")
    binance.go_silent(opts.silence)
    await trio.sleep(opts.silence)
    view.say(f"Binance is back; mdd switches back after {opts.recover_after:g}s of health")


async def _run_until_done(
    fn: Any, done: trio.Event, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
) -> None:
    try:
        await fn(task_status=task_status)
    finally:
        done.set()


async def _watch_signals(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            stop.set()
            return


async def run_demo(opts: DemoOptions, *, handle_signals: bool = True) -> DemoResult:
    """Run the demo until ``opts.duration`` or Ctrl-C; returns where the data is."""
    from .cli import DAEMON_HOOKS
    from .consumer.config import build_consumer_config
    from .consumer.service import ConsumerService
    from .daemon import Daemon
    from .natsserver import NatsServer
    from .sim import SimOptions, serve_sim

    data_dir = opts.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    nats = NatsServer(jetstream=True, workdir=data_dir / "nats").start()
    view = DemoView(opts)
    try:
        async with trio.open_nursery() as root:
            sim_opts = partial(SimOptions, symbols=SYMBOLS, rate=opts.rate)
            binance = await root.start(partial(serve_sim, "binance", sim_opts(seed=1)))
            bybit = await root.start(partial(serve_sim, "bybit", sim_opts(seed=2)))
            http_port, consumer_port = free_port(), free_port()
            cfg = demo_config(
                data_dir,
                binance.url,
                bybit.url,
                nats.url,
                http_port,
                (opts.stale_after, opts.failover_after, opts.recover_after),
            )
            daemon = Daemon(cfg, install_signal_handlers=False)
            for hook in DAEMON_HOOKS:
                hook(daemon)
            daemon.services.append(view.service)
            daemon_done = trio.Event()
            view.started = trio.current_time()
            await root.start(partial(_run_until_done, daemon.run, daemon_done))
            view.say("daemon up: Binance primary, Bybit backup; sinks sqlite, jsonl, nats, metrics")
            ccfg = build_consumer_config(
                {
                    "consumer": {"name": "demo-consumer"},
                    "nats": {"url": nats.url},
                    "http": {"port": consumer_port},
                    "signals": {"cooldown": 5.0, "return_threshold": 0.00005},
                },
                "<mdd demo>",
            )
            consumer = ConsumerService(ccfg)
            consumer_done = trio.Event()
            await root.start(partial(_run_until_done, consumer.run, consumer_done))
            view.consumer = consumer
            view.say("consumer up: features and signals from NATS md.events.>")
            view.say(
                f"try: curl http://127.0.0.1:{http_port}/health | "
                f"{_ctl()} --socket {data_dir / 'mdd.sock'} status | "
                f"curl 'http://127.0.0.1:{consumer_port}/features/latest?symbol=BTCUSDT'"
            )
            root.start_soon(view.draw_forever)
            if opts.faults:
                root.start_soon(_storyline, view, binance, opts)
            stop = trio.Event()
            if handle_signals:
                root.start_soon(_watch_signals, stop)
            with trio.move_on_after(opts.duration if opts.duration is not None else float("inf")):
                await stop.wait()
            # Graceful, in order: daemon (WS -> bus -> storage -> DB), then the consumer.
            view.say("stopping")
            daemon.request_stop("demo over")
            await daemon_done.wait()
            await trio.sleep(0.2)  # let the consumer take the last NATS messages
            consumer.request_stop("demo over")
            await consumer_done.wait()
            view.watch_switches()
            result = DemoResult(
                sqlite_path=data_dir / "mdd.sqlite",
                jsonl_path=data_dir / "events.jsonl",
                http_url=f"http://127.0.0.1:{http_port}",
                consumer_url=f"http://127.0.0.1:{consumer_port}",
                control_socket=data_dir / "mdd.sock",
                nats_url=nats.url,
                published=daemon.bus.published,
                nats_messages=sum(consumer.consumed.values()),
                features={k: f.as_dict() for k, f in consumer.latest_features.items()},
                signals=sum(consumer.signal_counts.values()),
                switches=list(view.switches),
            )
            root.cancel_scope.cancel("demo over")
    finally:
        nats.close()
    return result


def where_the_data_is(r: DemoResult) -> str:
    """The closing message."""
    return "\n".join(
        [
            "",
            "mdd demo stopped. Your data:",
            f"  SQLite   {r.sqlite_path}",
            f"           sqlite3 {r.sqlite_path} 'select symbol, provider, count(*), "
            "max(price) from trades group by 1, 2'",
            f"  JSONL    {r.jsonl_path}   (head -3 {r.jsonl_path})",
            f"  HTTP     {r.http_url}/health  {r.http_url}/bus-stats  {r.http_url}/metrics"
            "  (while running)",
            f"  consumer {r.consumer_url}/features/latest?symbol=BTCUSDT  (while running)",
            f"  control  {_ctl()} --socket {r.control_socket} status  (while running)",
            f"  events published {r.published}, seen by the consumer via NATS {r.nats_messages},"
            f" signals {r.signals}, failover switches: {', '.join(r.switches) or 'none'}",
        ]
    )


def add_parser(sub: Any) -> None:
    """Register ``mdd demo``."""
    p = sub.add_parser(
        "demo",
        help="run everything offline: simulator, NATS, daemon, consumer, live view",
        description="Offline demo: simulated Binance and Bybit, embedded nats-server, the "
        "daemon and the consumer in one process, with a live view and a failover story.",
    )
    p.add_argument("--data-dir", default="demo-data", help="where data goes (./demo-data)")
    p.add_argument("--duration", type=float, default=None, help="seconds (default: Ctrl-C)")
    p.add_argument("--rate", type=float, default=20.0, help="market steps/s per symbol (20)")
    p.add_argument("--no-faults", action="store_true", help="no failover storyline")
    p.add_argument("--fault-at", type=float, default=20.0, help="Binance goes silent at (20 s)")
    p.add_argument("--no-tty", action="store_true", help="plain lines, no screen refresh")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--cluster",
        action="store_true",
        help="scale-out demo instead: 3-node NATS cluster, R3 stream, two active-active "
        "daemons, two consumers (mdd.demo_cluster)",
    )
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    if getattr(args, "cluster", False):
        from .demo_cluster import run_from_args

        return run_from_args(args)
    from .logs import setup_logging

    tty = sys.stdout.isatty() and not args.no_tty
    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(args.log_level)
    if tty:
        # The screen owns the terminal: logs go to a file instead.
        root = logging.getLogger()
        for h in list(root.handlers):
            root.removeHandler(h)
        handler = logging.FileHandler(data_dir / "demo.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        root.addHandler(handler)
    opts = DemoOptions(
        data_dir=data_dir,
        duration=args.duration,
        rate=args.rate,
        faults=not args.no_faults,
        fault_at=args.fault_at,
        tty=tty,
    )
    t0 = time.monotonic()
    try:
        result = trio.run(run_demo, opts)
    except KeyboardInterrupt:  # a second Ctrl-C: forced
        print("mdd demo: interrupted", file=sys.stderr)
        return 1
    print(where_the_data_is(result))
    print(f"  ran {time.monotonic() - t0:.0f} s")
    return 0


def _ctl() -> str:
    """How to call mdd-ctl from a shell: the script next to this Python if the
    venv is not on PATH (``make demo`` does not activate it)."""
    import shutil

    beside = Path(sys.executable).parent / "mdd-ctl"
    if beside.exists() and shutil.which("mdd-ctl") != str(beside):
        return str(beside)
    return "mdd-ctl"
