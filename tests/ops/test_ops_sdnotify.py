"""sd_notify over a real AF_UNIX datagram socket, the watchdog rule, and the systemd unit."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import pytest
import trio
import trio.testing
from ops_helpers import ops_config, running, wait_for

from mdd.sdnotify import WatchdogCheck, notify_address, watchdog_interval

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _fields(datagram: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.decode().splitlines() if "=" in line)


async def _collect(sock: trio.socket.SocketType, into: list[dict[str, str]]) -> None:
    while True:
        into.append(_fields(await sock.recv(4096)))


async def test_ready_watchdog_stopping_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "notify.sock"
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await sock.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # ping every 50 ms
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    received: list[dict[str, str]] = []
    config = ops_config(tmp_path, http={"enabled": False})
    with sock:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_collect, sock, received)
            async with running(config) as (daemon, _ops):
                await wait_for(lambda: any("READY" in m for m in received))
                await wait_for(lambda: sum("WATCHDOG" in m for m in received) >= 2)
                daemon.request_stop("test")
            await wait_for(lambda: any("STOPPING" in m for m in received))
            nursery.cancel_scope.cancel()
    kinds = [k for m in received for k in ("READY", "WATCHDOG", "STOPPING") if k in m]
    first_ready = kinds.index("READY")
    first_watchdog = kinds.index("WATCHDOG")
    stopping = kinds.index("STOPPING")
    assert first_ready < first_watchdog < stopping
    assert kinds.count("READY") == 1
    assert "WATCHDOG" not in kinds[stopping:]  # no pings once stopping
    ready = next(m for m in received if "READY" in m)
    assert ready["READY"] == "1"
    assert ready["MAINPID"] == str(os.getpid())
    assert ready["STATUS"].startswith("feeds 1/1 up")
    stop = next(m for m in received if "STOPPING" in m)
    assert stop == {"STOPPING": "1", "STATUS": "stopping"}
    assert all("STATUS" in m for m in received)


async def test_no_watchdog_pings_while_the_bus_is_stuck(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "notify.sock"
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await sock.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")  # ping every 1 s; stall after 3 heartbeats
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    pings: list[float] = []

    async def collect() -> None:
        while True:
            if "WATCHDOG" in _fields(await sock.recv(4096)):
                pings.append(trio.current_time())

    config = ops_config(tmp_path, http={"enabled": False})
    with sock:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect)
            async with running(config) as (daemon, _ops):
                await trio.sleep(5)
                assert len(pings) >= 3
                # The bus stops moving (no events, no heartbeats get through).
                stuck_at = trio.current_time()
                publish = daemon.bus.publish
                daemon.bus.publish = lambda event: None  # type: ignore[method-assign]
                await trio.sleep(10)
                during = [t for t in pings if t > stuck_at + 3.5]
                assert during == []
                daemon.bus.publish = publish  # type: ignore[method-assign]  # moving again
                unstuck_at = trio.current_time()
                await trio.sleep(5)
                assert [t for t in pings if t > unstuck_at]
            nursery.cancel_scope.cancel()


async def test_abstract_namespace_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"mdd-test-{uuid.uuid4().hex}"
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await sock.bind("\0" + name)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    with sock:
        async with running(ops_config(tmp_path, http={"enabled": False})):
            with trio.fail_after(5):
                first = _fields(await sock.recv(4096))
    assert first["READY"] == "1"


async def test_without_notify_socket_nothing_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    async with running(ops_config(tmp_path, http={"enabled": False})) as (daemon, _ops):
        assert daemon.on_stopping == []


def test_environment_parsing() -> None:
    assert notify_address({}) is None
    assert notify_address({"NOTIFY_SOCKET": "/run/systemd/notify"}) == "/run/systemd/notify"
    assert notify_address({"NOTIFY_SOCKET": "@abstract"}) == "\0abstract"
    assert notify_address({"NOTIFY_SOCKET": "vsock:2:1234"}) is None
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    pid = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": pid}) == 1.0
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None


def test_watchdog_pings_only_while_the_bus_moves() -> None:
    check = WatchdogCheck(stall_after=15.0, now=0.0, published=0)
    assert check.check(5.0, 100, congested=False) == (True, "bus moving")
    # Idle venues: only the daemon's heartbeats move the bus, and that is healthy.
    assert check.check(14.0, 101, congested=False)[0]
    # Nothing at all for 15 s: the loop, the heartbeat monitor or the bus is stuck.
    healthy, reason = check.check(29.0, 101, congested=False)
    assert not healthy
    assert reason == "bus has not moved for 15.0s"
    assert check.check(30.0, 102, congested=False)[0]  # recovers when it moves again
    # A blocking sink holding producers back for too long is not healthy either.
    assert check.check(31.0, 103, congested=True)[0]
    assert check.check(40.0, 200, congested=True)[0]
    healthy, reason = check.check(46.0, 300, congested=True)
    assert not healthy
    assert reason.startswith("bus congested for 15.0s")
    assert check.check(47.0, 400, congested=False)[0]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("name", ["mdd.service", "mdd-consumer.service"])
def test_systemd_units_verify(tmp_path: Path, name: str) -> None:
    unit = tmp_path / name
    # ExecStart must exist for verify: point it at this interpreter, keep the rest.
    text = (DEPLOY / name).read_text()
    exe = shutil.which("python3") or "/bin/true"
    unit.write_text(re.sub(r"/opt/mdd/\.venv/bin/mdd(-consumer)?", exe, text))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert unit.name not in result.stderr, result.stderr


def test_systemd_unit_has_the_required_settings() -> None:
    text = (DEPLOY / "mdd.service").read_text()
    for setting in (
        "Type=notify",
        "ExecStart=/opt/mdd/.venv/bin/mdd --config /etc/mdd/node1.toml",
        "WatchdogSec=",
        "Restart=on-failure",
        "StateDirectory=mdd",
        "RuntimeDirectory=mdd",
        "User=mdd",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
    ):
        assert setting in text, setting
