"""Reliability: security checks on a running daemon (subprocess, real sockets).

A planted Alpaca key and secret go in through the environment (accepted by
one simulated venue) and through the config file (refused by another, so the
auth-failure path logs too). Neither may appear in the daemon's logs, any
HTTP endpoint, ``mdd-ctl`` output, or the one-line errors of a refused
second daemon and a bad config file. The control socket is mode 0600 and the
HTTP API listens on 127.0.0.1 by default.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from rel_helpers import MDD, DaemonProcess, clean_env, poll, to_toml

from mdd.config import HttpConfig
from mdd.natsserver import free_port
from mdd.sim import SimOptions, serve_sim

KEY = "PKPLANTED7Q3KEYZZ9"
SECRET = "sEcReTpLaNtEd4f1e2d3c4b5a6978"
KEY2 = "PKSECONDPLANTED000"
SECRET2 = "sEcOnDsEcReTpLaNtEd99887766"
PLANTED = (KEY, SECRET, KEY2, SECRET2)


def leaks(text: str) -> list[str]:
    return [p for p in PLANTED if p in text]


def listening_addresses(port: int) -> set[str]:
    """Local addresses of TCP sockets listening on ``port`` (from /proc/net/tcp{,6})."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                out.add(address)
    return out


async def run(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run a command without blocking the loop (the simulators live in it)."""
    with trio.fail_after(30):
        done = await trio.run_process(
            args, capture_stdout=True, capture_stderr=True, check=False, env=env
        )
    return done.returncode, (done.stdout + done.stderr).decode(errors="replace")


async def ctl(socket: Path, *args: str) -> str:
    code = "import sys; from mdd.ctl import main; sys.exit(main())"
    return (await run([sys.executable, "-c", code, "--socket", str(socket), *args]))[1]


async def test_no_secrets_anywhere_socket_0600_http_on_loopback(tmp_path: Path) -> None:
    assert HttpConfig().host == "127.0.0.1"
    port = free_port()
    async with trio.open_nursery() as nursery:
        good = await nursery.start(
            partial(
                serve_sim,
                "alpaca",
                SimOptions(symbols=("AAPL",), rate=20, alpaca_key=KEY, alpaca_secret=SECRET),
            )
        )
        bad = await nursery.start(partial(serve_sim, "alpaca", SimOptions(symbols=("MSFT",))))
        doc = {
            "daemon": {"name": "sec", "state_dir": str(tmp_path), "shutdown_grace": 5},
            "http": {"port": port},  # host left at its default
            "providers": {
                "alpaca": {"url": good.url},
                "alpaca2": {"kind": "alpaca", "url": bad.url, "key": KEY2, "secret": SECRET2},
            },
            "feeds": [
                {"name": "stocks", "symbols": ["AAPL"], "providers": ["alpaca"]},
                {"name": "stocks2", "symbols": ["MSFT"], "providers": ["alpaca2"]},
            ],
            "sinks": {"jsonl": {"path": "events.jsonl"}},
        }
        env = clean_env(ALPACA_KEY=KEY, ALPACA_SECRET=SECRET, MDD_DAEMON__LOG_LEVEL="debug")
        daemon = DaemonProcess(tmp_path, doc, env=env)
        await daemon.start()
        try:
            await daemon.wait_ready()
            events = tmp_path / "events.jsonl"
            await poll(
                lambda: events.exists() and b'"type":"trade"' in events.read_bytes(), 30, "trades"
            )
            await poll(lambda: "auth" in daemon.stderr().lower(), 30, "auth failure logged")
            sock = tmp_path / "mdd.sock"
            assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
            assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1 only
            served = []
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                for path in ("/health", "/status", "/providers", "/bus-stats", "/metrics"):
                    served.append(f"{path}: {(await client.get(path)).text}")
                served.append((await client.get("/latest?symbol=AAPL")).text)
            outputs = [
                await ctl(sock, *args)
                for args in (["status"], ["status", "--json"], ["providers", "--json"])
            ]
            assert "alpaca2" in outputs[0]
            # A second daemon on the same socket refuses with one line.
            second_code, second = await run(
                [*MDD, "--config", str(daemon.config), "--no-http"], env
            )
            code = await daemon.stop(within=20)
        finally:
            await daemon.aclose()
        nursery.cancel_scope.cancel()
    log = daemon.stderr()
    assert code == 0, log
    assert "alpaca2" in log
    assert second_code == 1
    assert "mdd:" in second
    for name, text in [
        ("daemon log", log),
        *[(f"http {i}", t) for i, t in enumerate(served)],
        *[(f"mdd-ctl {i}", t) for i, t in enumerate(outputs)],
        ("second daemon", second),
        ("events", (tmp_path / "events.jsonl").read_text()),
    ]:
        assert not leaks(text), f"{name} leaks {leaks(text)}"
    assert any("AAPL" in t for t in served)


@pytest.mark.parametrize(
    "doc",
    [
        pytest.param(
            {"providers": {"alpaca": {"key": [KEY], "secret": SECRET}}},
            id="wrongly-typed-key",
        ),
        pytest.param({"providers": {"alpaca": {"kee": KEY, "secret": SECRET}}}, id="misspelled"),
        pytest.param({"providers": {"alpaca": {"key": KEY, "secret": 5}}}, id="other-key-bad"),
    ],
)
def test_config_errors_do_not_echo_secrets(tmp_path: Path, doc: dict[str, Any]) -> None:
    """A config refused for a secret-bearing table does not print the secret."""
    config = tmp_path / "node.toml"
    config.write_text(to_toml(doc))
    result = subprocess.run(
        [*MDD, "check-config", str(config)],
        capture_output=True, text=True, env=clean_env(), timeout=30,
    )  # fmt: skip
    text = result.stdout + result.stderr
    assert result.returncode == 2, text
    assert "invalid config" in text
    assert not [p for p in (KEY, SECRET) if p in text], text
