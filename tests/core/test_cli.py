"""The mdd command as users run it: subprocesses, signals, exit codes."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

MDD = [sys.executable, "-m", "mdd"]

CONFIG = """
[daemon]
state_dir = "{state}"
shutdown_grace = 5
[http]
enabled = false
[providers.sim]
rate = 200
[[feeds]]
name = "synthetic"
symbols = ["BTCUSDT", "ETHUSDT"]
providers = ["sim"]
[sinks.jsonl]
path = "out/events.jsonl"
[sinks.metrics]
enabled = false
"""


def run(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MDD, *args], capture_output=True, text=True, timeout=60, **kw)  # type: ignore[call-overload]


def wait_for_lines(path: Path, n: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} did not get {n} lines in {timeout}s")


def test_daemon_subprocess_sigterm_flushes_everything(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(CONFIG.format(state=tmp_path))
    proc = subprocess.Popen([*MDD, "--config", str(config)], stderr=subprocess.PIPE, text=True)
    out = tmp_path / "out" / "events.jsonl"
    try:
        wait_for_lines(out, 300)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    published = int(stderr.split("daemon.stopped published=")[1].split()[0])
    assert len(rows) == published >= 300
    assert {r["symbol"] for r in rows if r["type"] == "trade"} == {"BTCUSDT", "ETHUSDT"}
    trade_ids = [r["trade_id"] for r in rows if r["type"] == "trade"]
    assert len(trade_ids) == len(set(trade_ids))  # nothing written twice
    for step in ("step=producers", "step=bus", "step=sinks", "step=done"):
        assert step in stderr


def read_until(proc: subprocess.Popen[str], text: str, timeout: float = 20.0) -> str:
    """Read the process's stderr line by line until ``text`` appears."""
    assert proc.stderr is not None
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.05)
        if ready:
            line = proc.stderr.readline()
            seen.append(line)
            if text in line:
                return "".join(seen)
            if not line:
                break
    raise AssertionError(f"{text!r} not seen; got:\n{''.join(seen)}")


def test_second_signal_exits_at_once(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    text = CONFIG.format(state=tmp_path).replace("shutdown_grace = 5", "shutdown_grace = 60")
    config.write_text(text)
    (tmp_path / "out").mkdir()
    # The JSONL path is a directory: the sink cannot open, so the graceful drain waits.
    env = {**os.environ, "MDD_SINKS__JSONL__PATH": str(tmp_path / "out")}
    proc = subprocess.Popen(
        [*MDD, "--config", str(config)], stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        read_until(proc, "daemon.ready")
        proc.send_signal(signal.SIGTERM)
        read_until(proc, "daemon.shutdown step=sinks")
        assert proc.poll() is None  # still draining
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    assert "daemon.forced_exit signal=SIGINT" in stderr


def test_check_config_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(CONFIG.format(state=tmp_path))
    result = run("check-config", str(good))
    assert result.returncode == 0
    assert "OK" in result.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[bus]\ncapacity = -1\n")
    result = run("check-config", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"mdd: invalid config: {bad}: bus.capacity: got -1, must be > 0"
    )


def test_daemon_refuses_bad_config_before_start(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[http]\nprot = 1\n")
    result = run("--config", str(bad))
    assert result.returncode == 2
    assert "http.prot: unknown key" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--bogus"],
        ["run"],
        ["run", "--provider", "sim"],
        ["bench", "--sinks", "none", "--json", "/nonexistent-dir/report.json"],  # before the run
        ["sim", "--port", "99999"],  # would wrap around to another port
        ["sim", "--rate", "-5"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_help_and_version() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert "check-config" in result.stdout
    assert run("--version").stdout.startswith("mdd ")
    assert run("run", "--help").returncode == 0


def test_adhoc_run_with_bad_provider_is_a_usage_error(tmp_path: Path) -> None:
    result = run("run", "--provider", "kraken", "--symbols", "X", cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown provider 'kraken'" in result.stderr


def test_run_all_takes_the_configured_providers(tmp_path: Path) -> None:
    from mdd.cli import build_parser, run_config

    base = tmp_path / "base.toml"
    base.write_text(
        "[providers.binance]\nurl = 'ws://127.0.0.1:9001'\n"
        "[providers.backup]\nkind = 'bybit'\nurl = 'ws://127.0.0.1:9002/v5/public/spot'\n"
        "[sinks.jsonl]\n"
    )
    args = build_parser().parse_args(
        ["run", "--provider", "all", "--symbols", "BTCUSDT", "--config", str(base)]
    )
    cfg = run_config(args)
    assert [f.name for f in cfg.feeds] == ["binance", "backup"]
    assert cfg.providers["binance"].url == "ws://127.0.0.1:9001"  # the file's, not the default
    assert cfg.providers["backup"].kind == "bybit"
    assert set(cfg.sinks.enabled()) == {"jsonl", "metrics"}
    args = build_parser().parse_args(["run", "--provider", "all", "--symbols", "BTCUSDT"])
    assert [f.name for f in run_config(args).feeds] == ["binance", "bybit", "alpaca"]
    args = build_parser().parse_args(
        ["run", "--provider", "bybit", "--symbols", "X", "--url", "ws://127.0.0.1:1/v5"]
    )
    assert run_config(args).providers["bybit"].url == "ws://127.0.0.1:1/v5"


def test_a_config_file_that_is_not_utf8_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b"# caf\xe9\n[http]\nport = 9\n")
    r = run("check-config", str(bad))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert f"{bad}: -: not UTF-8 text (byte 5)" in r.stderr


def test_expected_failures_of_a_command_are_one_line_not_a_traceback(tmp_path: Path) -> None:
    r = run("sim", "--replay", str(tmp_path / "missing.jsonl.gz"))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "cannot read capture" in r.stderr
    with __import__("socket").socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run("sim", "--venue", "binance", "--port", str(port))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "Address already in use" in r.stderr


def test_ctrl_c_on_a_foreground_command_exits_130_quietly(tmp_path: Path) -> None:
    from mdd.events import TradeEvent, dumps_lines

    start = 1_700_000_000_000_000_000
    events = [
        TradeEvent("bn", "BTCUSDT", None, start + i * 60_000_000_000, 1.0, 1.0, "buy", str(i))
        for i in range(3)
    ]  # a minute apart: at --speed 1 the replay waits between them
    source = tmp_path / "events.jsonl"
    source.write_bytes(dumps_lines(events))
    proc = subprocess.Popen(
        [*MDD, "replay", str(source), "--speed", "1", "--sqlite", str(tmp_path / "r.sqlite")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(3)  # a subprocess: real time is the only clock it has
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "Traceback" not in err
    assert "mdd: interrupted" in err


def test_run_rest_url_sends_book_snapshots_to_the_simulator() -> None:
    from mdd.cli import build_parser, run_config

    argv = ["run", "--provider", "binance", "--symbols", "BTCUSDT", "--channels", "trade,book"]
    argv += ["--url", "ws://127.0.0.1:19100", "--rest-url", "http://127.0.0.1:19101"]
    args = build_parser().parse_args(argv)
    cfg = run_config(args)
    assert cfg.providers["binance"].url == "ws://127.0.0.1:19100"
    assert cfg.providers["binance"].rest_url == "http://127.0.0.1:19101"
