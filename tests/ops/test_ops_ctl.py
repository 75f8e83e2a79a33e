"""mdd-ctl and the control socket against a running in-process daemon."""

from __future__ import annotations

import io
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import trio
from ops_helpers import leaves, ops_config, running, start_daemon, wait_for

from mdd import ctl
from mdd.control import MAX_LINE
from mdd.daemon import Daemon
from mdd.errors import ControlError
from mdd.services import install


async def ctl_main(*argv: str) -> tuple[int, str, str]:
    """Run ``mdd-ctl`` (a blocking CLI) in a thread; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = await trio.to_thread.run_sync(lambda: ctl.main(list(argv), stdout=out, stderr=err))
    return code, out.getvalue(), err.getvalue()


async def test_every_command_against_a_running_daemon(tmp_path: Path) -> None:
    config = ops_config(tmp_path, http={"enabled": False})
    sock = str(tmp_path / "mdd.sock")
    async with running(config) as (daemon, ops):
        assert ops.control_path == tmp_path / "mdd.sock"

        code, out, err = await ctl_main("--socket", sock, "status")
        assert (code, err) == (0, "")
        assert out.startswith("opsd: healthy, up ")
        assert "events/s" in out
        for heading in ("FEEDS", "PROVIDERS", "BUS AND SINKS"):
            assert heading in out
        assert "crypto" in out
        feed_rows = [line.split() for line in out.splitlines() if line.startswith("crypto")]
        assert feed_rows[0][:4] == ["crypto", "up", "sim", "BTCUSDT,ETHUSDT"]
        provider_rows = [line.split() for line in out.splitlines() if line.startswith("sim")]
        assert ["sim", "crypto", "active", "up"] == provider_rows[0][:4]
        sink_rows = [line.split() for line in out.splitlines() if line.startswith("jsonl")]
        assert sink_rows[0][:3] == ["jsonl", "ok", "tiered"]

        code, out, _ = await ctl_main("--socket", sock, "status", "--json")
        assert code == 0
        status = orjson.loads(out)
        assert status["name"] == "opsd"
        assert status["healthy"] is True
        assert status["feeds"]["crypto"]["active"] == "sim"
        assert status["feeds"]["crypto"]["primary"] == "sim"
        assert status["feeds"]["crypto"]["state"] == "up"
        assert "jsonl" in status["bus"]["sinks"]
        assert status["events_per_second"] is not None

        code, out, _ = await ctl_main("--socket", sock, "providers")
        assert code == 0
        assert out.splitlines()[0].split()[:5] == ["provider", "kind", "feed", "role", "state"]
        assert any(
            line.split()[:4] == ["sim2", "sim", "crypto", "standby"] for line in out.splitlines()
        )
        code, out, _ = await ctl_main("--socket", sock, "providers", "--json")
        assert orjson.loads(out)["feeds"]["crypto"]["providers"]["sim"]["role"] == "active"

        # The backup is idle (not hot standby): nothing to reconnect yet.
        code, _, err = await ctl_main("--socket", sock, "reconnect", "sim2")
        assert code == 1
        assert "provider 'sim2' is not running (an idle backup in crypto)" in err

        code, out, err = await ctl_main("--socket", sock, "failover", "crypto", "sim2")
        assert (code, err) == (0, "")
        assert out.strip() == "feed crypto: active provider sim -> sim2"
        assert daemon.feeds["crypto"].active == "sim2"

        code, out, err = await ctl_main("--socket", sock, "failover", "crypto", "kraken")
        assert code == 1
        assert out == ""
        assert err.strip() == (
            "mdd-ctl: failover failed: provider 'kraken' is not in feed 'crypto'; "
            "its providers: sim, sim2"
        )
        code, _, err = await ctl_main("--socket", sock, "failover", "nofeed", "sim")
        assert code == 1
        assert "unknown feed 'nofeed'; feeds: crypto" in err

        runner = daemon.feeds["crypto"].runners["sim2"]
        runs = runner.runs
        code, out, _ = await ctl_main("--socket", sock, "reconnect", "sim2")
        assert code == 0
        assert out.strip() == "reconnecting sim2 (feeds: crypto)"
        await wait_for(lambda: runner.runs > runs)
        code, _, err = await ctl_main("--socket", sock, "reconnect", "nope")
        assert code == 1
        assert "unknown provider 'nope'" in err

        code, out, _ = await ctl_main("--socket", sock, "stop")
        assert code == 0
        assert out.strip() == "stopping"
        await wait_for(lambda: daemon.stopping)
    # Graceful stop done: the socket file is gone.
    assert not (tmp_path / "mdd.sock").exists()


async def test_socket_path_from_config_file_and_mode_0600(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg_file = tmp_path / "node.toml"
    cfg_file.write_text(
        f'[daemon]\nstate_dir = "{state}"\ncontrol_socket = "run/ctl.sock"\n'
        "[http]\nenabled = false\n"
        '[[feeds]]\nname = "f"\nsymbols = ["BTCUSDT"]\nproviders = ["sim"]\n'
    )
    from mdd.config import load_config

    config = load_config(cfg_file, env={})
    async with running(config):
        path = state / "run" / "ctl.sock"
        mode = os.stat(path).st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o600
        code, out, _ = await ctl_main("--config", str(cfg_file), "status", "--json")
        assert code == 0
        assert orjson.loads(out)["feeds"]["f"]["symbols"] == ["BTCUSDT"]
        assert not list((state / "run").glob(".*.tmp"))


async def test_missing_daemon_is_one_clear_line(tmp_path: Path) -> None:
    code, out, err = await ctl_main("--socket", str(tmp_path / "none.sock"), "status")
    assert code == 1
    assert out == ""
    missing = tmp_path / "none.sock"
    assert err == f"mdd-ctl: no mdd daemon at {missing}: socket not found (is mdd running?)\n"

    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(stale))
    code, _, err = await ctl_main("--socket", str(stale), "stop")
    assert code == 1
    assert err.count("\n") == 1
    assert "connection refused (stale socket?)" in err


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    err = io.StringIO()
    assert ctl.main(["failover", "onlyfeed"], stdout=io.StringIO(), stderr=err) == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("[daemon]\nnmae = 1\n")
    err = io.StringIO()
    assert ctl.main(["--config", str(bad), "status"], stdout=io.StringIO(), stderr=err) == 2
    assert "invalid config" in err.getvalue()
    for timeout in ("-1", "0", "soon"):
        args = ["--socket", str(tmp_path / "none.sock"), "--timeout", timeout, "status"]
        assert ctl.main(args, stdout=io.StringIO(), stderr=io.StringIO()) == 2


async def _exchange(stream: trio.SocketStream, line: bytes) -> dict[str, object]:
    await stream.send_all(line)
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some(65536)
        assert chunk, "daemon closed the connection"
        data += chunk
    reply = orjson.loads(data)
    assert isinstance(reply, dict)
    return reply


async def test_malformed_requests_get_errors_and_the_daemon_carries_on(tmp_path: Path) -> None:
    config = ops_config(tmp_path, http={"enabled": False})
    async with running(config) as (daemon, ops):
        assert ops.control_path is not None
        stream = await trio.open_unix_socket(str(ops.control_path))
        async with stream:
            cases = {
                b"this is not json\n": "malformed request: not JSON",
                b"[1, 2]\n": "malformed request: expected an object",
                b'{"cmd": 5}\n': 'malformed request: missing "cmd"',
                b'{"nocmd": true}\n': 'malformed request: missing "cmd"',
                b'{"cmd": "explode"}\n': "unknown command 'explode'; commands: ping, status",
                b'{"cmd": "failover"}\n': "missing or invalid argument: feed",
                b'{"cmd": "failover", "feed": "crypto", "provider": 7}\n': "argument: provider",
                b'{"cmd": "reconnect"}\n': "missing or invalid argument: provider",
                b"\xff\xfe\n": "malformed request: not JSON",
            }
            for line, message in cases.items():
                reply = await _exchange(stream, line)
                assert reply["ok"] is False, line
                assert message in str(reply["error"]), (line, reply)
            # Same connection, still served; two requests in one write both answered.
            await stream.send_all(b'{"cmd": "ping"}\n\n{"cmd": "bus-stats"}\n')
            data = b""
            while data.count(b"\n") < 2:
                data += await stream.receive_some(65536)
            first, second = (orjson.loads(x) for x in data.splitlines())
            assert first == {"ok": True, "result": {"pong": True, "name": "opsd"}}
            assert "jsonl" in second["result"]["sinks"]

        # An endless line: an error reply, then the daemon hangs up on that client only.
        stream = await trio.open_unix_socket(str(ops.control_path))
        async with stream:
            reply = await _exchange(stream, b"x" * (MAX_LINE + 10))
            assert reply == {"ok": False, "error": f"request line over {MAX_LINE} bytes"}
            with trio.fail_after(5):
                while await stream.receive_some(100):
                    pass

        # A whole line over the limit in one write (newline included) is refused too.
        stream = await trio.open_unix_socket(str(ops.control_path))
        async with stream:
            pad = b"x" * (MAX_LINE + 10)
            reply = await _exchange(stream, b'{"cmd":"ping","pad":"' + pad + b'"}\n')
            assert reply == {"ok": False, "error": f"request line over {MAX_LINE} bytes"}

        assert not daemon.stopping
        code, out, _ = await ctl_main("--socket", str(ops.control_path), "status", "--json")
        assert code == 0
        assert orjson.loads(out)["healthy"] is True


async def test_stale_socket_is_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "mdd.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as crashed:
        crashed.bind(str(path))  # left behind, as by a killed daemon
    assert path.exists()
    config = ops_config(tmp_path, http={"enabled": False})
    async with running(config):
        assert "control.stale_socket" in caplog.text
        code, _, _ = await ctl_main("--socket", str(path), "status")
        assert code == 0
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


async def test_live_socket_makes_a_second_daemon_refuse(tmp_path: Path) -> None:
    config = ops_config(tmp_path, http={"enabled": False})
    async with running(config) as (first, ops):
        second = Daemon(config, install_signal_handlers=False)
        install(second)
        with pytest.raises(BaseExceptionGroup) as info:
            await start_daemon(second)
        errors = [e for e in leaves(info.value) if isinstance(e, ControlError)]
        assert len(errors) == 1
        assert str(errors[0]).startswith("another mdd is already running: control socket ")
        # The first daemon keeps its socket and keeps answering.
        code, _, _ = await ctl_main("--socket", str(ops.control_path), "status")
        assert code == 0
        assert not first.stopping


async def test_non_socket_file_is_not_clobbered(tmp_path: Path) -> None:
    (tmp_path / "mdd.sock").write_text("precious")
    daemon = Daemon(ops_config(tmp_path, http={"enabled": False}), install_signal_handlers=False)
    install(daemon)
    with pytest.raises(BaseExceptionGroup) as info:
        await start_daemon(daemon)
    assert any("exists and is not a socket" in str(e) for e in leaves(info.value))
    assert (tmp_path / "mdd.sock").read_text() == "precious"


def test_second_daemon_process_refuses_with_one_line(tmp_path: Path) -> None:
    """The real command line: a live socket -> one clear line on stderr, exit 1."""
    cfg_file = tmp_path / "node.toml"
    cfg_file.write_text(
        f'[daemon]\nstate_dir = "{tmp_path}"\n[http]\nenabled = false\n'
        '[[feeds]]\nname = "f"\nsymbols = ["BTCUSDT"]\nproviders = ["sim"]\n'
    )
    path = tmp_path / "mdd.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(path))
        live.listen()
        result = subprocess.run(
            [sys.executable, "-m", "mdd", "--config", str(cfg_file), "--log-level", "error"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("mdd: ")]
    assert lines == [
        f"mdd: another mdd is already running: control socket {path} is live "
        "(stop it with `mdd-ctl stop`, or give this one another [daemon] control_socket)"
    ]
    assert "Traceback" not in result.stderr


def test_default_socket_is_in_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("MDD_")]:
        monkeypatch.delenv(name)
    err = io.StringIO()
    assert ctl.main(["status"], stdout=io.StringIO(), stderr=err) == 1
    assert err.getvalue() == (
        "mdd-ctl: no mdd daemon at ./mdd.sock: socket not found (is mdd running?)\n"
    )
