"""``python -m mdd.chaos``: the soak runner (``make soak``).

Runs the daemon as a subprocess (``python -m mdd --config FILE``, as systemd
does) against the Binance simulator at a steady rate, with SQLite, JSONL and
a JetStream NATS sink on a real nats-server, and injects a fault every
``--fault-every`` seconds, in rotation:

=================  ==========================================================
``disconnect``     the venue closes every connection
``silence``        the venue sends no data for ``--fault-length`` seconds
``garbage``        every 20th data frame is garbage for ``--fault-length`` s
``nats_kill``      nats-server is killed (-9) and restarted after the fault
                   length, on the same port and store
``refuse``         the venue refuses new connections for ``--fault-length`` s,
                   then drops the open ones
=================  ==========================================================

While it runs it samples the daemon's RSS (``/proc/PID/status``) and its
``/status`` and ``/bus-stats`` (HTTP on loopback). At the end the venue goes
silent, the daemon is stopped with SIGTERM, and the count check compares the
trades the simulator sent with what SQLite, JSONL and the JetStream stream
hold. The report (printed, and as JSON with ``--json FILE``) has RSS over
time and its growth after warm-up, events/s, drops, reconnects, faults and
the counts; the exit code is 0 when the checks pass.

The simulator runs in this process's trio loop so its ``sent_trades`` is the
ground truth. The blocking :class:`~mdd.natsserver.NatsServer` start and stop
run in a worker thread (the helper is synchronous), and reading the stream
back uses nats-py under trio-asyncio, as the NATS sink does.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any, Final

import attrs
import httpx
import orjson
import trio

from . import storage
from .errors import MddError
from .natsserver import NatsServer, free_port
from .sim import SimOptions, SimServer, serve_sim

LOGGER = logging.getLogger("mdd.chaos")

#: Fault kinds, injected in this order, round robin.
FAULTS: Final = ("disconnect", "silence", "garbage", "nats_kill", "refuse")
#: Fraction of the run treated as warm-up for the RSS verdict.
WARMUP: Final = 0.25
#: RSS may grow by at most this fraction from the end of warm-up to the end.
RSS_GROWTH_LIMIT: Final = 0.10
#: Subject prefix and stream of the soak's NATS sink.
PREFIX: Final = "soak.events"
STREAM: Final = "SOAK"


class ChaosError(MddError):
    """The soak could not run (daemon failed to start, exited early, ...)."""


@attrs.define
class Sample:
    """One sample of the running daemon."""

    t: float
    rss_kib: int
    published: int
    events_per_second: float


@attrs.define
class ChaosOptions:
    """What the soak runs (the command-line flags)."""

    duration: float = 600.0
    rate: float = 100.0
    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")
    fault_every: float = 20.0
    fault_length: float = 3.0
    sample_every: float = 2.0
    workdir: Path | None = None
    seed: int = 1


@attrs.define
class ChaosReport:
    """Everything the soak measured (``as_dict`` is the JSON report)."""

    options: dict[str, Any]
    samples: list[Sample] = attrs.Factory(list)
    faults: list[tuple[float, str]] = attrs.Factory(list)
    counts: dict[str, Any] = attrs.Factory(dict)
    daemon: dict[str, Any] = attrs.Factory(dict)
    checks: dict[str, bool] = attrs.Factory(dict)
    exit_code: int | None = None
    stop_seconds: float | None = None

    def rss_summary(self) -> dict[str, Any]:
        """RSS at the end of warm-up and at the end (medians of a few samples), growth."""
        rss = [s.rss_kib for s in self.samples if s.rss_kib]
        if len(rss) < 8:
            return {"samples": len(rss), "flat": None}
        start = int(len(rss) * WARMUP)
        window = max(2, len(rss) // 10)
        after_warmup = statistics.median(rss[start : start + window])
        end = statistics.median(rss[-window:])
        growth = (end - after_warmup) / after_warmup if after_warmup else 0.0
        return {
            "samples": len(rss),
            "first_kib": rss[0],
            "after_warmup_kib": int(after_warmup),
            "end_kib": int(end),
            "max_kib": max(rss),
            "growth_after_warmup": round(growth, 4),
            "flat": growth <= RSS_GROWTH_LIMIT,
        }

    def as_dict(self) -> dict[str, Any]:
        """The JSON-ready report."""
        elapsed = self.samples[-1].t if self.samples else 0.0
        published = self.samples[-1].published if self.samples else 0
        return {
            "options": self.options,
            "elapsed_s": round(elapsed, 1),
            "events_per_second": round(published / elapsed, 1) if elapsed else 0.0,
            "rss": self.rss_summary(),
            "rss_over_time": [(round(s.t, 1), s.rss_kib) for s in self.samples],
            "rate_over_time": [(round(s.t, 1), s.events_per_second) for s in self.samples],
            "faults": Counter(kind for _, kind in self.faults),
            "fault_log": [(round(t, 1), kind) for t, kind in self.faults],
            "daemon": self.daemon,
            "counts": self.counts,
            "exit_code": self.exit_code,
            "stop_seconds": None if self.stop_seconds is None else round(self.stop_seconds, 2),
            "checks": self.checks,
            "passed": all(self.checks.values()) if self.checks else False,
        }


# -- reading what the sinks hold ---------------------------------------------------


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def sqlite_trades(path: Path) -> list[tuple[str, str]]:
    """``(symbol, trade_id)`` of every trade in the database, in insertion order."""
    if not path.exists():
        return []
    conn = storage.open_reader(path)
    try:
        rows = conn.execute("SELECT symbol, trade_id FROM trades ORDER BY rowid").fetchall()
    finally:
        conn.close()
    return [(str(s), str(t)) for s, t in rows]


def jsonl_trades(path: Path) -> list[tuple[str, str]]:
    """``(symbol, trade_id)`` of every trade line in ``path`` and its rotated files."""
    files = sorted(path.parent.glob(path.name + ".*"), key=lambda p: -int(p.suffix[1:] or 0))
    out: list[tuple[str, str]] = []
    for file in [*files, path]:
        if not file.exists():
            continue
        for line in file.read_bytes().splitlines():
            if b'"type":"trade"' not in line:
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a torn last line after a crash
            out.append((str(row["symbol"]), str(row["trade_id"])))
    return out


async def stream_trades(url: str, stream: str, subject: str) -> list[tuple[str, str]]:
    """``(symbol, trade_id)`` of every message on ``subject`` in a JetStream stream.

    Reads with an ephemeral pull consumer from the first message until nothing
    is pending (nats-py under its own trio-asyncio loop).
    """
    import trio_asyncio
    from nats.aio.client import Client as NatsClient
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
    from trio_asyncio import aio_as_trio

    out: list[tuple[str, str]] = []
    async with trio_asyncio.open_loop():
        nc = NatsClient()
        await aio_as_trio(nc.connect)(servers=[url], connect_timeout=5, max_reconnect_attempts=5)
        try:
            js = nc.jetstream(timeout=5.0)
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=30.0,
            )
            sub = await aio_as_trio(js.pull_subscribe)(subject, stream=stream, config=config)
            info = await aio_as_trio(sub.consumer_info)()
            pending = int(info.num_pending)
            while pending > 0:
                msgs = await aio_as_trio(sub.fetch)(batch=min(pending, 5000), timeout=5.0)
                for msg in msgs:
                    row = orjson.loads(msg.data)
                    out.append((str(row["symbol"]), str(row["trade_id"])))
                pending = int(msgs[-1].metadata.num_pending) if msgs else 0
            await aio_as_trio(sub.unsubscribe)()
        finally:
            with trio.CancelScope(shield=True):
                await aio_as_trio(nc.close)()
    return out


def count_check(
    sent: list[tuple[str, str]],
    sqlite: list[tuple[str, str]],
    jsonl: list[tuple[str, str]],
    nats: list[tuple[str, str]] | None,
) -> tuple[dict[str, Any], dict[str, bool]]:
    """Compare what the venue sent with what each sink holds.

    Returns the counts and the checks: nothing stored that was not sent,
    nothing stored twice (SQLite, JSONL, the stream), and every sink holding
    the same trades. Trades sent but stored nowhere were in flight when a
    fault cut the connection; they are counted (``unread_on_wire``), not failed.
    """
    sent_set = set(sent)

    def dups(items: list[tuple[str, str]]) -> int:
        return sum(n - 1 for n in Counter(items).values() if n > 1)

    counts: dict[str, Any] = {
        "sent": len(sent),
        "sqlite": len(sqlite),
        "jsonl": len(jsonl),
        "sqlite_duplicates": dups(sqlite),
        "jsonl_duplicates": dups(jsonl),
        "unread_on_wire": len(sent_set - set(sqlite)),
        "not_sent_but_stored": len(set(sqlite) - sent_set),
    }
    checks = {
        "sqlite_no_duplicates": counts["sqlite_duplicates"] == 0,
        "jsonl_no_duplicates": counts["jsonl_duplicates"] == 0,
        "stored_only_what_was_sent": counts["not_sent_but_stored"] == 0,
        "sqlite_equals_jsonl": set(sqlite) == set(jsonl),
    }
    if nats is not None:
        counts["nats"] = len(nats)
        counts["nats_duplicates"] = dups(nats)
        counts["nats_missing_vs_sqlite"] = len(set(sqlite) - set(nats))
        checks["nats_exactly_once"] = counts["nats_duplicates"] == 0
        checks["nats_equals_sqlite"] = set(nats) == set(sqlite)
    return counts, checks


# -- the run -------------------------------------------------------------------------


def daemon_config(
    work: Path, opts: ChaosOptions, sim_url: str, nats_url: str, http_port: int
) -> str:
    """The daemon's TOML for the soak."""
    symbols = ", ".join(json.dumps(s) for s in opts.symbols)
    return f"""\
[daemon]
name = "soak"
state_dir = {json.dumps(str(work))}
shutdown_grace = 10
[http]
port = {http_port}
[bus]
heartbeat_after = 1.0
[providers.binance]
url = {json.dumps(sim_url)}
[[feeds]]
name = "spot"
symbols = [{symbols}]
providers = ["binance"]
channels = ["trade", "quote"]
[sinks.sqlite]
path = "soak.sqlite"
[sinks.jsonl]
path = "soak.jsonl"
max_bytes = 67108864
backups = 100
[sinks.nats]
url = {json.dumps(nats_url)}
subject_prefix = "{PREFIX}"
jetstream = true
stream = "{STREAM}"
duplicate_window = 120
"""


class _Run:
    """One soak: the parts and the report."""

    def __init__(self, opts: ChaosOptions, work: Path) -> None:
        self.opts = opts
        self.work = work
        self.report = ChaosReport(options={**attrs.asdict(opts), "workdir": str(work)})
        self.nats = NatsServer(jetstream=True, workdir=work / "nats")
        self.sim: SimServer | None = None
        self.proc: trio.Process | None = None
        self.http = ""
        self.t0 = 0.0

    def log_path(self) -> Path:
        return self.work / "daemon.log"

    async def run(self) -> ChaosReport:
        opts = self.opts
        await trio.to_thread.run_sync(self.nats.start)
        try:
            async with trio.open_nursery() as nursery:
                sim_options = SimOptions(symbols=opts.symbols, rate=opts.rate, seed=opts.seed)
                self.sim = await nursery.start(partial(serve_sim, "binance", sim_options))
                await self._run_daemon(nursery)
                nursery.cancel_scope.cancel()
        finally:
            await trio.to_thread.run_sync(self.nats.stop)
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
        return self.report

    async def _run_daemon(self, nursery: trio.Nursery) -> None:
        assert self.sim is not None
        opts = self.opts
        port = free_port()
        self.http = f"http://127.0.0.1:{port}"
        config = self.work / "soak.toml"
        config.write_text(daemon_config(self.work, opts, self.sim.url, self.nats.url, port))
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("MDD_", "NATS_", "ALPACA_"))
        }
        with open(self.log_path(), "wb") as log:  # noqa: ASYNC230 - opened once
            self.proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "mdd", "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
            )
        LOGGER.info("chaos.started pid=%d workdir=%s", self.proc.pid, self.work)
        async with httpx.AsyncClient(base_url=self.http, timeout=5.0) as client:
            await self._wait_ready(client)
            self.t0 = time.monotonic()
            async with trio.open_nursery() as inner:
                inner.start_soon(self._inject_faults)
                await self._sample_until(client, opts.duration)
                inner.cancel_scope.cancel()
            await self._finish(client)

    async def _wait_ready(self, client: httpx.AsyncClient) -> None:
        with trio.move_on_after(30):
            while True:
                if self.proc is not None and self.proc.poll() is not None:
                    break
                try:
                    if (await client.get("/status")).status_code in (200, 503):
                        return
                except httpx.HTTPError:
                    pass
                await trio.sleep(0.05)
        raise ChaosError(f"the daemon did not start; see {self.log_path()}")

    async def _sample_until(self, client: httpx.AsyncClient, duration: float) -> None:
        assert self.proc is not None
        last_published, last_t = 0, 0.0
        while (t := time.monotonic() - self.t0) < duration:
            if self.proc.poll() is not None:
                raise ChaosError(f"the daemon exited early ({self.proc.returncode})")
            published = last_published
            try:
                stats = (await client.get("/bus-stats")).json()
                published = int(stats.get("published", last_published))
            except (httpx.HTTPError, ValueError):
                pass
            rate = (published - last_published) / (t - last_t) if t > last_t else 0.0
            sample = Sample(t, rss_kib(self.proc.pid), published, round(rate, 1))
            self.report.samples.append(sample)
            last_published, last_t = published, t
            LOGGER.info(
                "chaos.sample t=%.0f rss_kib=%d published=%d events_per_s=%.0f",
                t,
                sample.rss_kib,
                published,
                rate,
            )
            await trio.sleep(min(self.opts.sample_every, max(0.01, duration - t)))

    async def _inject_faults(self) -> None:
        sim, opts = self.sim, self.opts
        assert sim is not None
        index = 0
        while True:
            await trio.sleep(opts.fault_every)
            kind = FAULTS[index % len(FAULTS)]
            index += 1
            self.report.faults.append((time.monotonic() - self.t0, kind))
            LOGGER.info("chaos.fault kind=%s", kind)
            if kind == "disconnect":
                sim.disconnect_all()
            elif kind == "silence":
                sim.go_silent(opts.fault_length)
            elif kind == "garbage":
                sim.options.faults.garbage_every = 20
                await trio.sleep(opts.fault_length)
                sim.options.faults.garbage_every = None
            elif kind == "nats_kill":
                await trio.to_thread.run_sync(self.nats.kill)
                await trio.sleep(opts.fault_length)
                await trio.to_thread.run_sync(self.nats.start)
            elif kind == "refuse":
                sim.refuse_for(opts.fault_length)
                sim.disconnect_all()

    async def _finish(self, client: httpx.AsyncClient) -> None:
        assert self.sim is not None
        assert self.proc is not None
        # Make sure NATS is up (a fault may have just ended) and the venue is quiet,
        # so what the simulator sent is final, then let the sinks catch up.
        await trio.to_thread.run_sync(self.nats.start)
        self.sim.options.faults.silent = True
        await trio.sleep(3.0)
        try:
            status = (await client.get("/status")).json()
            stats = (await client.get("/bus-stats")).json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ChaosError(f"the daemon stopped answering: {exc}") from exc
        provider = status["feeds"]["spot"]["providers"]["binance"]
        lanes = stats["sinks"]
        self.report.daemon = {
            "published": stats["published"],
            "reconnects": provider["reconnects"],
            "restarts": provider["restarts"],
            "parse_errors": provider["parse_errors"],
            "sim_connections": self.sim.connections,
            "sim_garbage_frames": self.sim.garbage_sent,
            "dropped": {
                name: sum(lane["dropped"].values()) + sum(lane["evicted"].values())
                for name, lane in lanes.items()
            },
            "lost": {name: lane["lost"] for name, lane in lanes.items()},
            "peak_queued": {name: lane["peak_queued"] for name, lane in lanes.items()},
        }
        t_stop = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(30):
            self.report.exit_code = await self.proc.wait()
        self.report.stop_seconds = time.monotonic() - t_stop
        sent = list(self.sim.sent_trades)
        nats = await stream_trades(self.nats.url, STREAM, f"{PREFIX}.trade.>")
        counts, checks = count_check(
            sent,
            sqlite_trades(self.work / "soak.sqlite"),
            jsonl_trades(self.work / "soak.jsonl"),
            nats,
        )
        rss = self.report.rss_summary()
        checks["daemon_exit_0"] = self.report.exit_code == 0
        checks["rss_flat_after_warmup"] = bool(rss.get("flat"))
        checks["faults_counted"] = provider["reconnects"] >= sum(
            1 for _, k in self.report.faults if k in ("disconnect", "refuse")
        ) and provider["parse_errors"] >= (1 if self.sim.garbage_sent else 0)
        self.report.counts = counts
        self.report.checks = checks


async def run_chaos(opts: ChaosOptions) -> ChaosReport:
    """Run one soak; the work directory is kept when given, else a temp one is removed."""
    if opts.workdir is not None:
        opts.workdir.mkdir(parents=True, exist_ok=True)
        return await _Run(opts, opts.workdir).run()
    with tempfile.TemporaryDirectory(prefix="mdd-soak-") as tmp:
        return await _Run(opts, Path(tmp)).run()


def format_report(report: dict[str, Any]) -> str:
    """A short human summary of :meth:`ChaosReport.as_dict`."""
    rss = report["rss"]
    lines = [
        f"soak: {report['elapsed_s']} s, {report['events_per_second']} events/s, "
        f"faults {dict(report['faults'])}",
        f"rss: first {rss.get('first_kib')} KiB, after warm-up {rss.get('after_warmup_kib')} KiB, "
        f"end {rss.get('end_kib')} KiB, growth {rss.get('growth_after_warmup')} "
        f"({'flat' if rss.get('flat') else 'NOT flat'})",
        f"daemon: {report['daemon']}",
        f"counts: {report['counts']}",
        f"exit {report['exit_code']} in {report['stop_seconds']} s; checks {report['checks']}",
        "PASS" if report["passed"] else "FAIL",
    ]
    return "\n".join(lines)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The soak's flags (also used by ``add_parser``)."""
    p = parser or argparse.ArgumentParser(
        prog="python -m mdd.chaos", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    p.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    p.add_argument("--rate", type=float, default=100.0, help="market steps/s per symbol")
    p.add_argument("--symbols", default="BTCUSDT,ETHUSDT")
    p.add_argument("--fault-every", type=float, default=20.0, help="seconds between faults")
    p.add_argument("--fault-length", type=float, default=3.0, help="seconds a fault lasts")
    p.add_argument("--sample-every", type=float, default=2.0, help="seconds between samples")
    p.add_argument("--workdir", type=Path, default=None, help="keep files here (default: temp)")
    p.add_argument("--json", type=Path, default=None, help="write the JSON report here")
    p.add_argument("--seed", type=int, default=1)
    return p


def options_from_args(args: argparse.Namespace) -> ChaosOptions:
    """:class:`ChaosOptions` from parsed flags."""
    return ChaosOptions(
        duration=args.duration,
        rate=args.rate,
        symbols=tuple(s.strip().upper() for s in args.symbols.split(",") if s.strip()),
        fault_every=args.fault_every,
        fault_length=args.fault_length,
        sample_every=args.sample_every,
        workdir=args.workdir,
        seed=args.seed,
    )


def _run_from_args(args: argparse.Namespace) -> int:
    opts = options_from_args(args)
    try:
        report = trio.run(run_chaos, opts).as_dict()
    except ChaosError as exc:
        print(f"mdd chaos: {exc}", file=sys.stderr)
        return 1
    print(format_report(report))
    if args.json is not None:
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return 0 if report["passed"] else 1


def add_parser(subparsers: Any) -> None:
    """``mdd chaos`` (for :data:`mdd.cli.COMMANDS`)."""
    p = subparsers.add_parser("chaos", help="soak the daemon against the simulator with faults")
    build_parser(p)
    p.set_defaults(func=_run_from_args)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m mdd.chaos``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return _run_from_args(build_parser().parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
