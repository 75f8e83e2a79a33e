"""Credentials in a provider URL never reach logs, status events or the capture tap."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
from prov_rig import Rig, config, until

from mdd.events import StatusEvent
from mdd.providers.bybit import BybitProvider
from mdd.sim import SimOptions, serve_sim

PASSWORD = "URLPASSWORD777"


def _with_credentials(url: str) -> str:
    assert url.startswith("ws://127.0.0.1:")
    return url.replace("ws://", f"ws://urluser:{PASSWORD}@", 1)


def _details(rig: Rig) -> list[str]:
    return [e.detail for e in rig.events if isinstance(e, StatusEvent)]


async def test_provider_url_password_is_redacted(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rig = Rig("bybit")
    tapped: list[str] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(partial(serve_sim, "bybit", SimOptions(rate=20)))
            nursery.start_soon(rig.collect)
            provider = BybitProvider(
                config("bybit", _with_credentials(server.url)),
                ("BTCUSDT",),
                ("trade",),
                rig.health,
            )

            def tap(name: str, conn: str, ts: int, raw: Any) -> None:
                tapped.append(conn)

            provider.frame_tap = tap  # type: ignore[method-assign]
            await nursery.start(provider.run, rig.gate)
            await until(lambda: len(rig.of("trade")) >= 3)
            server.disconnect_all()
            await until(lambda: rig.statuses("BTCUSDT").count("subscribed") >= 2)
            await until(lambda: len(rig.of("trade")) >= 10)
            nursery.cancel_scope.cancel()
    statuses = rig.statuses("BTCUSDT")
    assert {"connected", "subscribed", "disconnected"} <= set(statuses)
    details = _details(rig)
    safe = server.url.replace("ws://", "ws://***@", 1)
    assert safe in details  # connected / disconnected still name the host
    assert all(PASSWORD not in d for d in details)
    assert tapped
    assert all(PASSWORD not in c for c in tapped)
    assert "provider.connected" in caplog.text
    assert "provider.subscribed" in caplog.text
    assert "provider.reconnect" in caplog.text
    assert PASSWORD not in caplog.text
    assert "urluser" not in caplog.text


async def test_connect_error_text_is_redacted(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rig = Rig("bybit")
    url = f"http://urluser:{PASSWORD}@127.0.0.1:9/v5/public/spot"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rig.collect)
            provider = BybitProvider(config("bybit", url), ("BTCUSDT",), ("trade",), rig.health)
            nursery.start_soon(partial(provider.run, rig.gate))
            await until(lambda: rig.statuses("BTCUSDT").count("error") >= 2)
            nursery.cancel_scope.cancel()
    assert "not a ws:// or wss:// URL" in caplog.text
    assert PASSWORD not in caplog.text
    assert rig.health.last_error is not None
    assert PASSWORD not in rig.health.last_error
    assert all(PASSWORD not in d for d in _details(rig))
