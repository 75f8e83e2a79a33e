"""Alpaca provider: dry-run mode, and end to end against ``mdd.sim`` (loopback)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing
from prov_rig import Rig, config

from mdd.events import HeartbeatEvent
from mdd.providers.alpaca import AlpacaProvider

SECRET = "s3cr3t-never-logged"
KEY = "AKIAKEY-never-logged"


@pytest.mark.parametrize(
    ("keys", "reason"),
    [({}, "no ALPACA_KEY"), ({"key": KEY, "secret": SECRET, "dry_run": True}, "dry_run=true")],
)
async def test_dry_run_emits_heartbeats_and_opens_no_connection(
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    keys: dict[str, Any],
    reason: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    rig = Rig("alpaca")
    # Port 9 on loopback: nothing listens; a connection attempt would fail loudly.
    provider = AlpacaProvider(
        config("alpaca", "ws://127.0.0.1:9/v2/iex", **keys),
        ("AAPL", "MSFT"),
        ("trade",),
        rig.health,
    )
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rig.collect)
            await nursery.start(provider.run, rig.gate)
            await trio.sleep(12)
            nursery.cancel_scope.cancel()
    beats = rig.of("heartbeat")
    assert all(isinstance(b, HeartbeatEvent) for b in beats)
    assert {b.symbol for b in beats} == {"AAPL", "MSFT"}
    assert len(beats) == 2 * 3  # at 0, 5 and 10 s
    assert not rig.of("trade")
    assert rig.health.last_error.startswith("dry_run:")
    assert reason in rig.health.last_error
    assert not rig.health.connected
    assert rig.statuses() == ["down", "down"]
    assert "alpaca.dry_run" in caplog.text
    assert SECRET not in caplog.text
    assert KEY not in caplog.text
