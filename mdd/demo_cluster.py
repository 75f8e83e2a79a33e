"""``mdd demo --cluster``: scale-out on NATS, offline, in one process tree.

Under one root nursery: a 3-node NATS cluster (:class:`~mdd.natsserver.NatsCluster`,
routes and JetStream on loopback ports) holding an R3 stream, the Binance
simulator, two daemons ingesting the same feed (active-active: both publish
every trade with the same ``Nats-Msg-Id``, the stream keeps one copy) and two
consumers sharing one JetStream durable consumer through a queue group (each
stored event goes to one of them).

The storyline (``faults``, on by default): at 30 % of the run daemon 1 is
killed (its task cancelled at once, no graceful stop); at 55 % one NATS node is
killed (the stream's leader when it is not the consumers' seed server); at
85 % the venue stops sending. The run then waits for the stream to settle and
compares it with what the simulator sent: every trade stored, none twice.

One plain line per second shows trades sent and stored, the duplicate copies
the stream rejected, what each consumer received, and which parts are up.
"""

from __future__ import annotations

import logging
import shutil
import signal
import sys
import time
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

import attrs
import trio

if TYPE_CHECKING:
    import argparse
    from collections.abc import AsyncIterator

    from .consumer.service import ConsumerService
    from .daemon import Daemon
    from .natsserver import NatsCluster
    from .sim import SimServer

LOGGER = logging.getLogger("mdd.demo_cluster")

SYMBOLS: Final = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
PREFIX: Final = "demo.md"
STREAM: Final = "MD_DEMO_CLUSTER"
DURABLE: Final = "demo-cluster"
#: Seconds the stream gets to settle after the venue stops (after Ctrl-C: less).
SETTLE: Final = 20.0
INTERRUPTED_SETTLE: Final = 5.0


@attrs.define
class ClusterDemoOptions:
    """What ``mdd demo --cluster`` runs.

    Attributes:
        data_dir: the NATS stores, daemon state and log live under ``cluster/`` here.
        duration: seconds of market data (the settle phase comes on top).
        rate: market steps per second per symbol in the simulator.
        faults: kill daemon 1, then a NATS node, as the run goes.
        out: where the lines go.
    """

    data_dir: Path = Path("demo-data")
    duration: float = 30.0
    rate: float = 20.0
    faults: bool = True
    out: TextIO = sys.stdout


@attrs.define
class ClusterDemoResult:
    """What the run showed."""

    sent: int = 0
    stored: int = 0
    missing: int = 0
    stored_twice: int = 0
    rejected_duplicates: int = 0
    consumed: tuple[int, int] = (0, 0)
    killed_node: str | None = None

    @property
    def ok(self) -> bool:
        """Every trade sent is in the stream exactly once."""
        return self.sent > 0 and self.missing == 0 and self.stored_twice == 0


def daemon_document(
    name: str, state_dir: Path, sim_url: str, nats_url: str, symbols: tuple[str, ...]
) -> dict[str, Any]:
    """One active-active daemon's configuration (both are alike but for name and state)."""
    return {
        "daemon": {"name": name, "state_dir": str(state_dir), "shutdown_grace": 5},
        "http": {"enabled": False},
        "providers": {"binance": {"kind": "binance", "url": sim_url}},
        "feeds": [
            {
                "name": "crypto",
                "symbols": list(symbols),
                "providers": ["binance"],
                "channels": ["trade"],
            }
        ],
        "sinks": {
            "nats": {
                "url": nats_url,
                "subject_prefix": PREFIX,
                "jetstream": True,
                "stream": STREAM,
                "replicas": 3,
                "duplicate_window": 120,
            },
            "metrics": {"enabled": False},
        },
    }


#: Tries of the final read of the stream (a JetStream API timeout is retried).
READ_ATTEMPTS: Final = 5


class _Stats:
    """The demo's own NATS client: stream counts and the final read (asyncio side)."""

    def __init__(self, nc: Any) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=1.0)  # the view must not stall on a dead node

    async def ensure_stream(self) -> None:
        """Create the R3 stream, retrying until the cluster can place it."""
        import nats.errors
        from nats.js.errors import BadRequestError

        deadline = trio.current_time() + 30
        while True:
            try:
                await self._call(
                    self.js.add_stream,
                    name=STREAM,
                    subjects=[f"{PREFIX}.>"],
                    num_replicas=3,
                    duplicate_window=120,
                )
                return
            except BadRequestError:
                return  # exists
            except (nats.errors.Error, TimeoutError):
                if trio.current_time() > deadline:
                    raise
                await trio.sleep(0.25)

    async def trade_count(self) -> int | None:
        """Trades stored now (None while the stream does not answer)."""
        try:
            info = await self._call(self.js.stream_info, STREAM, f"{PREFIX}.trade.>")
        except Exception:
            return None
        return int(sum((info.state.subjects or {}).values()))

    async def leader(self) -> str | None:
        """The server name of the stream's leader."""
        try:
            info = await self._call(self.js.stream_info, STREAM)
        except Exception:
            return None
        return info.cluster.leader if info.cluster else None

    async def trades(self) -> list[tuple[str, str]]:
        """``(symbol, trade_id)`` of every stored trade, read with an ephemeral pull consumer.

        Asked again (up to :data:`READ_ATTEMPTS` times) when the JetStream API
        times out: after a node kill the stream or the meta group may still be
        electing a leader, and the read would fail though nothing is wrong.
        """
        import nats.errors
        import nats.js.errors

        transient = (TimeoutError, nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError)
        for attempt in range(1, READ_ATTEMPTS + 1):
            try:
                return await self._read_trades()
            except transient:
                if attempt == READ_ATTEMPTS:
                    raise
                await trio.sleep(1.0)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _read_trades(self) -> list[tuple[str, str]]:
        import orjson
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=30.0
        )
        sub = await self._call(
            self.js.pull_subscribe, f"{PREFIX}.trade.>", stream=STREAM, config=config
        )
        out: list[tuple[str, str]] = []
        try:
            pending = int((await self._call(sub.consumer_info)).num_pending)
            while pending > 0:
                for msg in await self._call(sub.fetch, batch=min(pending, 1000), timeout=5.0):
                    event = orjson.loads(msg.data)
                    out.append((event["symbol"], event["trade_id"]))
                    pending = int(msg.metadata.num_pending)
        finally:
            with trio.CancelScope(shield=True):
                await self._call(sub.unsubscribe)
        return out

    @staticmethod
    async def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
        import trio_asyncio

        return await trio_asyncio.aio_as_trio(fn)(*args, **kwargs)


@asynccontextmanager
async def _stats_client(url: str) -> AsyncIterator[_Stats]:
    """The demo's client, in the caller's task (whose trio-asyncio loop it needs)."""
    import trio_asyncio
    from nats.aio.client import Client as NatsClient

    nc = NatsClient()
    await trio_asyncio.aio_as_trio(nc.connect)(
        servers=url.split(","), max_reconnect_attempts=-1, reconnect_time_wait=0.2
    )
    try:
        yield _Stats(nc)
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            await trio_asyncio.aio_as_trio(nc.close)()


async def _run_part(
    run: Any,
    scopes: list[trio.CancelScope],
    done: list[trio.Event],
    *,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a daemon or consumer in a scope the storyline can cancel (a crash, not a
    stop); ``done`` gets an event set when it has ended either way."""
    finished = trio.Event()
    done.append(finished)
    try:
        with trio.CancelScope() as scope:
            scopes.append(scope)
            await run(task_status=task_status)
    finally:
        finished.set()


async def _watch_signals(stop: trio.Event) -> None:
    """Ctrl-C or SIGTERM: end the storyline early and stop everything gracefully."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            stop.set()
            return


async def run_cluster_demo(
    opts: ClusterDemoOptions, *, handle_signals: bool = False
) -> ClusterDemoResult:
    """Run the whole scale-out demo and return what it showed.

    With ``handle_signals`` (the command line), Ctrl-C or SIGTERM ends the run
    early but still gracefully, with the summary.
    """
    import trio_asyncio

    from .config import load_config
    from .consumer.config import load_consumer_config
    from .consumer.service import ConsumerService
    from .daemon import Daemon
    from .natsserver import NatsCluster
    from .sim import SimOptions, serve_sim

    base = opts.data_dir / "cluster"
    shutil.rmtree(base, ignore_errors=True)  # a fresh cluster and stream every run
    base.mkdir(parents=True)
    out = opts.out
    result = ClusterDemoResult()

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    cluster = NatsCluster(3, workdir=base / "nats", name="mdd-demo")
    await trio.to_thread.run_sync(cluster.start)
    try:
        async with (
            trio_asyncio.open_loop(),
            _stats_client(cluster.url) as stats,
            trio.open_nursery() as nursery,
        ):
            stop = trio.Event()
            if handle_signals:
                nursery.start_soon(_watch_signals, stop)
            await stats.ensure_stream()
            say(f"NATS cluster up: {cluster.url} (stream {STREAM}, R3)")
            sim: SimServer = await nursery.start(
                partial(serve_sim, "binance", SimOptions(symbols=SYMBOLS, rate=opts.rate))
            )
            scopes: list[trio.CancelScope] = []
            done: list[trio.Event] = []
            daemons: list[Daemon] = []
            for i in (1, 2):
                doc = daemon_document(
                    f"mdd-{i}", base / f"daemon-{i}", sim.url, cluster.url, SYMBOLS
                )
                daemon = Daemon(load_config(None, env={}, base=doc), install_signal_handlers=False)
                await nursery.start(_run_part, daemon.run, scopes, done)
                daemons.append(daemon)
            say("two daemons up, both reading the simulated Binance feed (active-active)")
            consumers: list[ConsumerService] = []
            for _ in (1, 2):
                cfg = load_consumer_config(
                    None,
                    env={},
                    overrides={
                        "nats.url": cluster.urls[0],
                        "nats.subject": f"{PREFIX}.>",
                        "nats.queue_group": DURABLE,
                        "nats.jetstream_durable": DURABLE,
                        "http.enabled": False,
                    },
                )
                consumer = ConsumerService(cfg)
                await nursery.start(_run_part, consumer.run, [], done)
                consumers.append(consumer)
            say(f"two consumers up, sharing the JetStream durable {DURABLE!r} (queue group)")
            await _storyline(
                opts, cluster, sim, daemons, scopes, consumers, stats, result, say, stop
            )
            for daemon in daemons:
                daemon.request_stop("demo done")
            for consumer in consumers:
                consumer.request_stop("demo done")
            with trio.move_on_after(15):  # graceful: drain, flush, unsubscribe
                for finished in done:
                    await finished.wait()
            nursery.cancel_scope.cancel("demo done")
    finally:
        # Synchronous on purpose: runs even when Ctrl-C interrupts the run, so no
        # nats-server process outlives the demo.
        cluster.close()
    return result


async def _storyline(
    opts: ClusterDemoOptions,
    cluster: NatsCluster,
    sim: SimServer,
    daemons: list[Daemon],
    scopes: list[trio.CancelScope],
    consumers: list[ConsumerService],
    stats: _Stats,
    result: ClusterDemoResult,
    say: Any,
    stop: trio.Event,
) -> None:
    started = trio.current_time()
    kill_daemon_at = opts.duration * 0.30
    kill_node_at = opts.duration * 0.55
    stop_venue_at = opts.duration * 0.85
    daemon_killed = node_killed = venue_stopped = False
    settle_until: float | None = None
    alive_nodes = 3

    def sinks_duplicates() -> int:
        total = 0
        for daemon in daemons:
            for sink in daemon._sinks:  # the daemon's (sink, section) pairs
                total += int(getattr(sink[0], "duplicates", 0))
        return total

    while True:
        with trio.move_on_after(1.0):
            await stop.wait()
        t = trio.current_time() - started
        if stop.is_set() and settle_until is None:
            say(f"t={t:4.0f}s  interrupted: the venue stops, then everything stops gracefully")
            settle_until = t + INTERRUPTED_SETTLE
            stop_venue_at = t
        faults = opts.faults and not stop.is_set()
        if faults and not daemon_killed and t >= kill_daemon_at:
            scopes[0].cancel()  # a crash: no drain, no goodbye
            daemon_killed = True
            say(f"t={t:4.0f}s  ** daemon mdd-1 killed: mdd-2's copies keep the stream whole")
        if faults and not node_killed and t >= kill_node_at:
            leader = await stats.leader()
            seed = cluster.servers[0]
            victim = next((s for s in cluster.servers if leader and leader in s.extra_args), None)
            if victim is None or victim is seed:
                victim = cluster.servers[1]
            name = victim.extra_args[victim.extra_args.index("--server_name") + 1]
            await trio.to_thread.run_sync(victim.kill)
            node_killed = True
            alive_nodes -= 1
            result.killed_node = name
            say(
                f"t={t:4.0f}s  ** NATS node {name} killed"
                f"{' (the stream leader)' if name == leader else ''}: "
                "a new leader is elected, the sink retries its batch"
            )
        if not venue_stopped and t >= stop_venue_at:
            sim.options.faults.silent = True
            venue_stopped = True
            say(f"t={t:4.0f}s  ** the venue stops sending; waiting for the stream to settle")
        stored = await stats.trade_count()
        sent = len(set(sim.sent_trades))
        daemons_up = 2 - int(daemon_killed)
        say(
            f"t={t:4.0f}s  sent={sent:5d}  stored={stored if stored is not None else '?':>5}  "
            f"rejected-copies={sinks_duplicates():5d}  "
            f"consumers={consumers[0].consumed['trade']}/{consumers[1].consumed['trade']}  "
            f"daemons={daemons_up}/2  nats={alive_nodes}/3"
        )
        if settle_until is None and venue_stopped:
            settle_until = t + SETTLE
        # Settled: every sent trade stored, and the consumers caught up with the
        # stream (their JetStream subscription resumes after a node kill too).
        consumed = consumers[0].consumed["trade"] + consumers[1].consumed["trade"]
        settled = stored == sent and consumed >= sent
        if venue_stopped and (settled or (settle_until is not None and t >= settle_until)):
            break
    trades = await stats.trades()
    sent_set = set(sim.sent_trades)
    result.sent = len(sent_set)
    result.stored = len(trades)
    result.missing = len(sent_set - set(trades))
    result.stored_twice = len(trades) - len(set(trades))
    result.rejected_duplicates = sinks_duplicates()
    result.consumed = (consumers[0].consumed["trade"], consumers[1].consumed["trade"])


def summary(r: ClusterDemoResult) -> str:
    """The closing lines."""
    verdict = "OK: every trade stored exactly once" if r.ok else "FAILED"
    return "\n".join(
        [
            f"mdd demo --cluster: {verdict}",
            f"  trades sent by the venue    {r.sent}",
            f"  trades in the R3 stream     {r.stored} (missing {r.missing}, "
            f"twice {r.stored_twice})",
            f"  second copies rejected      {r.rejected_duplicates} (Nats-Msg-Id dedup)",
            f"  consumed (queue group)      {r.consumed[0]} + {r.consumed[1]}",
            f"  NATS node killed            {r.killed_node or '-'}",
        ]
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Entry for ``mdd demo --cluster`` (``--data-dir``, ``--duration``, ``--rate``,
    ``--no-faults``, ``--log-level`` as ``mdd demo`` has them). Exit 0 when the
    stream holds every trade once, 1 otherwise."""
    from .logs import setup_logging

    setup_logging(getattr(args, "log_level", None) or "warning")
    opts = ClusterDemoOptions(
        data_dir=Path(getattr(args, "data_dir", None) or "demo-data"),
        duration=getattr(args, "duration", None) or 30.0,
        rate=getattr(args, "rate", None) or 20.0,
        faults=not getattr(args, "no_faults", False),
    )
    t0 = time.monotonic()
    try:
        result = trio.run(partial(run_cluster_demo, opts, handle_signals=True))
    except KeyboardInterrupt:
        print("mdd demo --cluster: interrupted", file=sys.stderr)
        return 1
    print(summary(result))
    print(f"  ran {time.monotonic() - t0:.0f} s")
    return 0 if result.ok else 1
