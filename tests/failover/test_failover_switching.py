"""FailoverSupervisor under virtual time with the in-process sim provider and its fault switches."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest
import trio
import trio.testing
from failover_helpers import failovers_metric, make_config, running_feed, wait_until

from mdd.failover import FailoverSupervisor
from mdd.health import HEALTH_WINDOW
from mdd.providers.sim import reset_sim_faults, sim_faults
from mdd.supervisor import BACKOFF_MAX, JITTER, UnknownProviderError


@pytest.fixture(autouse=True)
def _clean_faults() -> Iterator[None]:
    reset_sim_faults()
    yield
    reset_sim_faults()


async def test_silent_primary_fails_over_within_failover_after_plus_one_check(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    cfg = make_config(feed="silent")
    fo = cfg.failover
    before = failovers_metric("silent", "p", "b")
    async with running_feed(cfg) as (sup, probe):
        await trio.sleep(5)
        assert sup.active == "p"
        assert not sup.running("b")  # on demand: not started while the primary is fine
        assert sup.state()[0] == "up"
        sim_faults("p").silent = True
        await trio.sleep(0.2)
        last_data = sup.runners["p"].health.last_data
        assert last_data is not None
        unhealthy_at = last_data + fo.stale_after
        switched_at = await wait_until(lambda: sup.active == "b", within=30)
        assert (
            fo.failover_after
            <= switched_at - unhealthy_at
            <= (fo.failover_after + fo.check_interval + 0.05)
        )
        assert sup.running("b")
        # The feed is degraded/up on the backup; b's trades flow, p's gate is closed.
        await trio.sleep(2)
        assert sup.state() == ("up", "b (backup): data flowing")
        assert sup.runners["b"].gate.active
        assert not sup.runners["p"].gate.active
    statuses = probe.statuses()
    assert len(statuses) == 1
    status = statuses[0]
    assert (status.status, status.symbol, status.provider) == ("failover", "silent", "b")
    assert status.detail.startswith("p -> b: p unhealthy for ")
    assert failovers_metric("silent", "p", "b") == before + 1
    assert any(
        "feed.failover" in r.getMessage() and "p unhealthy" in r.getMessage()
        for r in caplog.records
    )
    # Only the active provider's events reached the bus: p's before, b's after the switch.
    kinds = [e.provider for e in probe.events if e.type == "trade"]
    assert kinds == sorted(kinds, key=lambda p: p == "b")
    assert probe.trades("p")
    assert probe.trades("b")


async def test_recovered_primary_is_reactivated_only_after_recover_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cfg = make_config(feed="recover")
    fo = cfg.failover
    async with running_feed(cfg) as (sup, _probe):
        p = sup.runners["p"].health
        await trio.sleep(3)
        sim_faults("p").silent = True
        await wait_until(lambda: sup.active == "b", within=30)
        await trio.sleep(20)
        assert sup.active == "b"
        assert p.restarts >= 2  # the silent primary is being restarted with backoff
        sim_faults("p").silent = False
        up_at = await wait_until(lambda: p.delivering(fo.stale_after), within=BACKOFF_MAX * 2)
        back_at = await wait_until(lambda: sup.active == "p", within=fo.recover_after * 3)
        assert fo.recover_after <= back_at - up_at <= fo.recover_after + fo.check_interval + 0.05
        # On demand: the backup is cancelled once the primary is back.
        assert not sup.running("b")
        await trio.sleep(1)
        assert not sup.runners["b"].health.connected
        assert sup.failovers == 2
        assert [(s.from_, s.to) for s in sup.switches] == [("p", "b"), ("b", "p")]
        assert "healthy for" in sup.switches[-1].reason


async def test_flapping_primary_does_not_flap_the_feed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cfg = make_config(feed="flap")
    fo = cfg.failover
    faults = sim_faults("p")
    async with running_feed(cfg) as (sup, _probe):
        await trio.sleep(3)
        # Short outages (silent for stale_after + less than failover_after): no switch.
        for _ in range(5):
            faults.silent = True
            await trio.sleep(fo.stale_after + fo.failover_after - 0.6)
            faults.silent = False
            await trio.sleep(6)
        assert sup.failovers == 0
        assert sup.active == "p"
        # A real outage: one switch away.
        faults.silent = True
        await wait_until(lambda: sup.active == "b", within=30)
        # Now the primary flaps: live 4 s, silent 4 s, for two minutes. It is never up
        # for recover_after at a stretch, so the feed stays on the backup.
        end = trio.current_time() + 120
        while trio.current_time() < end:
            faults.silent = False
            await trio.sleep(4)
            faults.silent = True
            await trio.sleep(4)
        assert sup.failovers == 1
        assert sup.active == "b"
        stable_from = trio.current_time()
        faults.silent = False
        await wait_until(lambda: sup.active == "p", within=BACKOFF_MAX * 2 + fo.recover_after)
        assert trio.current_time() - stable_from >= fo.recover_after
        await trio.sleep(60)
        assert sup.failovers == 2
        assert sup.active == "p"


async def test_hot_standby_switch_loses_no_backup_trade(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cfg = make_config(feed="hot", hot_standby=True)
    async with running_feed(cfg) as (sup, probe):
        assert sup.running("b")  # hot standby: connected from the start
        await trio.sleep(5.01)
        assert sup.runners["b"].gate.held > 0  # b's data is held while p is active
        sim_faults("p").silent = True
        p_last = sup.runners["p"].health.last_data
        b_emitted_before = sup.runners["b"].health.events
        stale_after = cfg.failover.stale_after
        await wait_until(lambda: not sup.runners["p"].health.delivering(stale_after), within=5)
        state, reason = sup.state()
        assert state == "degraded"
        assert "b delivers, switch pending" in reason
        await wait_until(lambda: sup.active == "b", within=30)
        snapshot = sup.as_dict()
        assert snapshot["state"] == "up"
        assert snapshot["hot_standby"] is True
        assert snapshot["failovers"] == 1
        last = snapshot["last_switch"]
        assert isinstance(last, dict)
        assert (last["from"], last["to"], last["forced"]) == ("p", "b", False)
        await trio.sleep(5)
        b_emitted = sup.runners["b"].health.events
        replayed = sup.runners["b"].gate.replayed
    ids = [int(t.trade_id) for t in probe.trades("b")]
    # b's trades on the bus: contiguous, from the batch at p's last data to the last b sent.
    assert ids == list(range(ids[0], ids[-1] + 1))
    assert ids[-1] == b_emitted
    assert ids[0] == b_emitted_before  # b's batch at the same instant as p's last one
    assert replayed > 0
    # Nothing of b's from before p's last data (only the active provider's events).
    assert p_last is not None
    assert len(ids) == b_emitted - b_emitted_before + 1
    assert probe.lane.stats().total_dropped == 0


async def test_same_venue_hot_standby_forced_switch_publishes_each_trade_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Same seed: the two sims are replicas of one venue (same trade ids in lockstep).
    providers = {
        "p": {"kind": "sim", "rate": 20, "seed": 7},
        "b": {"kind": "sim", "rate": 20, "seed": 7},
    }
    cfg = make_config(feed="dedup", providers=providers, hot_standby=True)
    async with running_feed(cfg) as (sup, probe):
        await trio.sleep(5)
        assert sup.force("b", "test") is True
        assert sup.pinned == "b"
        await trio.sleep(5)
        dropped = sup.runners["b"].gate.dedup.dropped
    ids = [int(t.trade_id) for t in probe.trades()]
    assert ids == list(range(1, len(ids) + 1))  # no duplicate, no gap across the switch
    assert {t.provider for t in probe.trades()} == {"p", "b"}
    assert dropped >= 1


async def test_different_venues_are_different_trades(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cfg = make_config(feed="venues", hot_standby=True)
    async with running_feed(cfg) as (sup, probe):
        await trio.sleep(5)
        sup.force("b")
        await trio.sleep(5)
        assert sup.runners["b"].gate.dedup.keys is None
        assert sup.runners["b"].gate.dedup.dropped == 0
    # Both sims number their trades 1, 2, ... in lockstep. At the switch, b's trade from
    # the instant of p's last data is replayed: same id as p's last trade, but another
    # venue's trade, so it is kept (the same-seed test above shows it dropped).
    p_ids = [int(t.trade_id) for t in probe.trades("p")]
    b_ids = [int(t.trade_id) for t in probe.trades("b")]
    assert set(p_ids) & set(b_ids) == {p_ids[-1]}
    assert b_ids == list(range(p_ids[-1], p_ids[-1] + len(b_ids)))


async def test_force_holds_the_backup_until_the_primary_is_forced_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cfg = make_config(feed="force")
    async with running_feed(cfg) as (sup, probe):
        await trio.sleep(2)
        with pytest.raises(UnknownProviderError, match="'nope' is not in feed 'force'"):
            sup.force("nope")
        assert sup.force("p") is False  # already active
        assert sup.force("b") is True  # starts the on-demand backup
        assert sup.running("b")
        await trio.sleep(fo_long := 60)
        assert sup.active == "b"  # held: no automatic return to a healthy primary
        assert sup.force("p", "maintenance over") is True
        assert sup.pinned is None
        await trio.sleep(1)
        assert not sup.running("b")
    details = [s.detail for s in probe.statuses()]
    assert details == ["p -> b: forced", "b -> p: maintenance over"]
    assert [s.forced for s in sup.switches] == [True, True]
    assert fo_long > cfg.failover.recover_after


async def test_all_providers_down_retries_with_capped_backoff_then_recovers(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mdd.supervisor")
    sim_faults("p").crash = True
    sim_faults("b").crash = True
    cfg = make_config(feed="alldown")
    async with running_feed(cfg) as (sup, _probe):
        await trio.sleep(10)
        assert sup.running("b")  # started on demand although nothing is healthy
        await trio.sleep(590)
        state, reason = sup.state()
        assert state == "down"
        assert "no provider delivers" in reason
        assert sup.as_dict()["state"] == "down"
        delays = [
            float(m.group(1))
            for r in caplog.records
            if "provider.restart provider=p " in r.getMessage()
            and (m := re.search(r"delay=([\d.]+)", r.getMessage()))
        ]
        assert len(delays) >= 12
        assert max(delays) <= BACKOFF_MAX
        assert min(delays[-4:]) >= BACKOFF_MAX * (1 - JITTER)  # capped, and still retrying
        assert sup.runners["p"].health.restarts == len(delays)
        sim_faults("p").crash = False
        sim_faults("b").crash = False
        # Data flows again after at most one capped backoff delay; the crash churn keeps
        # the provider "degraded" until it leaves the health window, then "up".
        await wait_until(lambda: sup.state()[0] != "down", within=BACKOFF_MAX + 5)
        await wait_until(lambda: sup.state()[0] == "up", within=HEALTH_WINDOW + 5)
        await wait_until(lambda: sup.active == "p", within=BACKOFF_MAX + HEALTH_WINDOW + 20)
        assert sup.state()[0] == "up"


async def test_single_provider_feed_reports_and_restarts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cfg = make_config(feed="single", order=("p",))
    async with running_feed(cfg) as (sup, _probe):
        assert isinstance(sup, FailoverSupervisor)
        await trio.sleep(3)
        assert sup.state()[0] == "up"
        sim_faults("p").silent = True
        await trio.sleep(cfg.failover.stale_after + 1)
        assert sup.state()[0] == "down"
        assert sup.active == "p"
        assert sup.failovers == 0
        sim_faults("p").silent = False
        await wait_until(lambda: sup.state()[0] == "up", within=BACKOFF_MAX)
