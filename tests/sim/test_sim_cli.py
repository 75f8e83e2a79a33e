"""``mdd sim``: flags become SimOptions; the command serves all venues and stops on SIGINT."""

from __future__ import annotations

import signal
import subprocess
import sys

import orjson
import trio

from mdd.cli import build_parser
from mdd.sim.cli import options_from_args


def test_flags_to_options():
    args = build_parser().parse_args(
        [
            "sim",
            "--venue",
            "bybit",
            "--symbols",
            "btcusdt, solusdt",
            "--rate",
            "0",
            "--drop-after",
            "7",
            "--garbage-every",
            "3",
            "--idle-timeout",
            "30",
            "--reject-subscribe",
        ]
    )
    opts = options_from_args(args)
    assert opts.symbols == ("BTCUSDT", "SOLUSDT")
    assert opts.rate == 0
    assert opts.faults.drop_after == 7
    assert opts.faults.garbage_every == 3
    assert opts.faults.idle_timeout == 30
    assert opts.faults.reject_subscribe is True
    assert opts.faults.refuse_connections is False
    assert "secret" not in repr(opts)  # credentials stay out of reprs and logs


async def test_command_serves_all_venues_until_sigint(ws_client):
    cmd = [sys.executable, "-m", "mdd", "sim", "--venue", "all", "--port", "0", "--rate", "50"]
    with trio.fail_after(30):
        proc = await trio.lowlevel.open_process(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        try:
            buf = b""
            while buf.count(b"\n") < 3:
                chunk = await proc.stdout.receive_some(4096)
                assert chunk, "mdd sim exited early"
                buf += chunk
            lines = buf.decode().splitlines()
            urls = {line.split()[0]: line.split()[1] for line in lines}
            assert set(urls) == {"binance", "bybit", "alpaca"}
            assert all(u.startswith("ws://127.0.0.1:") for u in urls.values())
            port = int(urls["bybit"].split(":")[2].split("/")[0])
            async with ws_client(port, "/v5/public/spot") as ws:
                await ws.send_message('{"op":"subscribe","args":["publicTrade.BTCUSDT"]}')
                assert orjson.loads(await ws.get_message())["success"] is True
                trade = orjson.loads(await ws.get_message())
                assert trade["topic"] == "publicTrade.BTCUSDT"
            proc.send_signal(signal.SIGINT)
            assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await proc.stdout.aclose()
