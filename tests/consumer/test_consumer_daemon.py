"""The real pipeline: mdd daemon (sim provider -> NATS sink) -> nats-server -> mdd-consumer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from mdd.config import load_config
from mdd.consumer.config import load_consumer_config
from mdd.consumer.service import ConsumerService
from mdd.daemon import Daemon

PREFIX = "itmd.events"


def daemon_config(tmp_path: Path, url: str) -> Any:
    base = {
        "daemon": {"state_dir": str(tmp_path), "shutdown_grace": 5},
        "http": {"enabled": False},
        "providers": {"sim": {"rate": 200, "seed": 11}},
        "feeds": [{"name": "f", "symbols": ["AAA", "BBB"], "providers": ["sim"]}],
        "sinks": {"nats": {"url": url, "subject_prefix": PREFIX}},
    }
    return load_config(None, base=base, env={})


async def test_daemon_to_consumer(nats_server_session, tmp_path: Path) -> None:
    url = nats_server_session.url
    consumer = ConsumerService(
        load_consumer_config(
            None,
            env={},
            overrides={
                "nats.url": url,
                "nats.subject": f"{PREFIX}.>",
                "nats.queue_group": "it-daemon",
                "http.enabled": False,
            },
        )
    )
    daemon = Daemon(daemon_config(tmp_path, url), install_signal_handlers=False)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(consumer.run)
            async with trio.open_nursery() as dn:
                await dn.start(daemon.run)
                with trio.fail_after(10):
                    while consumer.consumed["trade"] < 50:  # noqa: ASYNC110 -- polling counters
                        await trio.sleep(0.05)
                daemon.request_stop("test")
            # The daemon drained its NATS sink on the way out: everything it
            # accepted for NATS reaches the consumer.
            lane = next(lane for lane in daemon.bus.stats().lanes if lane.sink == "nats")
            assert lane.total_dropped == 0
            assert lane.lost == 0
            sent = lane.offered
            with trio.fail_after(10):
                while consumer.consumed["trade"] < sent["trade"]:  # noqa: ASYNC110
                    await trio.sleep(0.05)
            await trio.sleep(0.1)
            consumer.request_stop("test")
    assert consumer.consumed["trade"] == sent["trade"]
    assert consumer.consumed.get("quote", 0) == sent.get("quote", 0)
    assert consumer.parse_errors == 0
    assert set(consumer.latest_features) == {"AAA", "BBB"}
    f = consumer.latest_features["AAA"]
    assert f.last_price is not None
    assert f.volume_60s > 0
    assert f.trades_60s > 0
