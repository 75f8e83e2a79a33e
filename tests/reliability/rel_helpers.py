"""Helpers for the reliability scenarios: the daemon as a subprocess, count checks.

The daemon runs as ``python -m mdd --config FILE`` (what systemd runs), the
simulator in the test's own trio loop (so ``sent_trades`` is readable), and
every wait polls the real clock in short steps under a deadline.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw
import orjson
import trio

from mdd import storage

MDD = [sys.executable, "-m", "mdd"]

#: Environment variables a test daemon must not inherit (they override the file).
_SCRUB = ("NATS_URL", "NATS_ENABLED", "NATS_SUBJECT_PREFIX", "USE_JETSTREAM", "HTTP_PORT")


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without mdd overrides, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _SCRUB and not k.startswith(("MDD_", "ALPACA_"))
    }
    env.update(extra)
    return env


def to_toml(doc: dict[str, Any]) -> str:
    """Enough TOML for the configs here (tables, nested tables, arrays of tables)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return orjson.dumps(v).decode()
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(v)

    lines: list[str] = []

    def table(path: str, body: dict[str, Any]) -> None:
        lines.append(f"[{path}]")
        lines.extend(f"{k} = {value(v)}" for k, v in body.items() if not isinstance(v, dict))
        for k, v in body.items():
            if isinstance(v, dict):
                table(f"{path}.{k}", v)

    for key, body in doc.items():
        if isinstance(body, list):
            for item in body:
                lines.append(f"[[{key}]]")
                lines.extend(f"{k} = {value(v)}" for k, v in item.items())
        else:
            table(key, body)
    return "\n".join(lines) + "\n"


def daemon_doc(
    state: Path,
    sim_url: str,
    *,
    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT"),
    grace: float = 5.0,
    sinks: dict[str, Any] | None = None,
    **sections: Any,
) -> dict[str, Any]:
    """One Binance feed on the simulator; SQLite and JSONL sinks; no HTTP."""
    doc: dict[str, Any] = {
        "daemon": {"name": "rel", "state_dir": str(state), "shutdown_grace": grace},
        "http": {"enabled": False},
        "providers": {"binance": {"url": sim_url}},
        "feeds": [
            {
                "name": "spot",
                "symbols": list(symbols),
                "providers": ["binance"],
                "channels": ["trade", "quote"],
            }
        ],
        "sinks": sinks
        if sinks is not None
        else {
            "sqlite": {"path": "mdd.sqlite", "batch_interval": 0.2},
            "jsonl": {"path": "events.jsonl"},
            "metrics": {"enabled": False},
        },
    }
    doc.update(sections)
    return doc


class DaemonProcess:
    """``python -m mdd --config FILE`` with stderr captured to a file."""

    def __init__(self, state: Path, doc: dict[str, Any], env: dict[str, str] | None = None) -> None:
        self.state = state
        self.config = state / "node.toml"
        self.config.write_text(to_toml(doc))
        self.log = state / f"daemon-{time.monotonic_ns()}.log"
        self.env = env if env is not None else clean_env()
        self.proc: trio.Process | None = None
        self.exit_seconds: float | None = None

    async def start(self, *args: str) -> DaemonProcess:
        with open(self.log, "wb") as fh:  # noqa: ASYNC230 - a local file, once
            self.proc = await trio.lowlevel.open_process(
                [*MDD, "--config", str(self.config), *args],
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=fh,
                env=self.env,
            )
        return self

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    async def wait_ready(self, within: float = 20.0) -> None:
        await poll(lambda: "daemon.ready" in self.stderr() or self.exited(), within, "daemon.ready")
        assert not self.exited(), self.stderr()

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    async def stop(self, sig: int = signal.SIGTERM, within: float = 30.0) -> int:
        """Send ``sig``, wait for the exit; returns the code (``exit_seconds`` is set)."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        with trio.fail_after(within):
            code = await self.proc.wait()
        self.exit_seconds = time.monotonic() - t0
        return code

    async def aclose(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            with trio.CancelScope(shield=True):
                await self.proc.wait()

    def published(self) -> int:
        """``N`` of the ``daemon.stopped published=N`` line."""
        return int(self.stderr().split("daemon.stopped published=")[1].split()[0])


async def poll(pred: Callable[[], bool], within: float, what: str, step: float = 0.05) -> None:
    """Wait (real clock) until ``pred()`` holds; fail naming ``what`` after ``within`` s."""
    with trio.move_on_after(within):
        while not pred():  # noqa: ASYNC110 -- state another process updates
            await trio.sleep(step)
        return
    raise AssertionError(f"timed out after {within}s waiting for {what}")


def jsonl_rows(path: Path) -> list[dict[str, Any]]:
    """Every whole line of a JSONL file (a torn last line after kill -9 is skipped)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_bytes().splitlines():
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
    return out


def jsonl_trades(path: Path) -> list[tuple[str, str]]:
    return [(r["symbol"], r["trade_id"]) for r in jsonl_rows(path) if r["type"] == "trade"]


def jsonl_trade_count(path: Path) -> int:
    """Trade lines so far (cheap: a byte search, no decoding)."""
    return path.read_bytes().count(b'"type":"trade"') if path.exists() else 0


def sqlite_trades(path: Path) -> list[tuple[str, str]]:
    """``(symbol, trade_id)`` of every stored trade in insertion order (apsw reader)."""
    if not path.exists():
        return []
    conn = storage.open_reader(path)
    try:
        rows = conn.execute("SELECT symbol, trade_id FROM trades ORDER BY rowid").fetchall()
    except apsw.SQLError:  # the daemon has not created the schema yet
        return []
    else:
        return [(str(s), str(t)) for s, t in rows]
    finally:
        conn.close()


def duplicates(items: list[Any]) -> dict[Any, int]:
    return {k: n for k, n in collections.Counter(items).items() if n > 1}


def per_symbol(items: list[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = collections.defaultdict(list)
    for sym, tid in items:
        out[sym].append(tid)
    return out


def is_prefix_per_symbol(got: list[tuple[str, str]], sent: list[tuple[str, str]]) -> bool:
    """Whether, per symbol, ``got`` is the first ``len(got)`` trades the venue sent."""
    sent_by = per_symbol(sent)
    return all(ids == sent_by[sym][: len(ids)] for sym, ids in per_symbol(got).items())
