"""The failover supervisor inside a real Daemon: it never exits because venues are away."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import trio
import trio.testing

from mdd.bus import Bus
from mdd.config import FeedConfig, ProviderConfig, load_config
from mdd.daemon import Daemon
from mdd.failover import FailoverSupervisor
from mdd.providers.sim import reset_sim_faults, sim_faults
from mdd.supervisor import FeedGate, ProviderRunner


@pytest.fixture(autouse=True)
def _clean_faults() -> Iterator[None]:
    reset_sim_faults()
    yield
    reset_sim_faults()


async def test_daemon_survives_all_venues_away_and_records_the_switches(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    cfg = load_config(
        None,
        env={},
        base={
            "daemon": {"state_dir": str(tmp_path), "shutdown_grace": 5},
            "http": {"enabled": False},
            "bus": {"heartbeat_after": 30},
            "failover": {"stale_after": 2, "failover_after": 3, "recover_after": 10},
            "providers": {
                "p": {"kind": "sim", "rate": 10, "seed": 1},
                "b": {"kind": "sim", "rate": 10, "seed": 2},
            },
            "feeds": [{"name": "f", "symbols": ["AAA"], "providers": ["p", "b"]}],
            "sinks": {"jsonl": {}, "metrics": {"enabled": False}},
        },
    )
    sim_faults("p").crash = True
    sim_faults("b").crash = True
    daemon = Daemon(cfg, install_signal_handlers=False)
    finished = trio.Event()

    async def run_daemon(*, task_status: trio.TaskStatus[Daemon]) -> None:
        try:
            await daemon.run(task_status=task_status)
        finally:
            finished.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(run_daemon)
        sup = daemon.feeds["f"]
        assert isinstance(sup, FailoverSupervisor)
        await trio.sleep(300)
        assert not finished.is_set()  # venues away: still running, still retrying
        assert sup.state()[0] == "down"
        assert sup.as_dict()["active"] == "b"
        assert daemon.status()["feeds"]["f"]["providers"]["p"]["restarts"] >= 5
        sim_faults("p").crash = False
        sim_faults("b").crash = False
        await trio.sleep(200)
        assert sup.active == "p"
        assert sup.state()[0] == "up"
        daemon.request_stop("test")
    rows = [orjson.loads(line) for line in (tmp_path / "events.jsonl").read_bytes().splitlines()]
    switches = [(r["provider"], r["symbol"]) for r in rows if r.get("status") == "failover"]
    assert switches == [("b", "f"), ("p", "f")]


async def test_unbuildable_provider_is_retried_not_fatal(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = ProviderConfig(name="ghost", kind="ghost", url="")
    feed = FeedConfig(name="f", symbols=("S",), providers=("ghost",))
    runner = ProviderRunner(config, feed, FeedGate(Bus(), "ghost"))
    with trio.move_on_after(20):
        await runner.run()
    assert runner.runs >= 4
    assert runner.health.restarts == runner.runs
    assert "not implemented" in runner.health.last_error
