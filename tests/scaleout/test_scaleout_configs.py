"""The shipped scale-out configs: sharded nodes partition the symbols, the pair matches.

deploy/cluster/node-{a,b,c}.toml must cover every symbol exactly once, each
node holding some; active-active-{1,2}.toml must agree on everything that
goes into a Nats-Msg-Id or the stream, or the stream would keep both copies.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from mdd.config import Config, load_config, shard_of
from mdd.errors import ConfigError
from mdd.sinks.nats import redact, server_list

CLUSTER = Path(__file__).resolve().parents[2] / "deploy" / "cluster"


def load(name: str) -> Config:
    return load_config(CLUSTER / name, env={})


def test_sharded_nodes_cover_every_symbol_once() -> None:
    nodes = [load(f"node-{n}.toml") for n in "abc"]
    feeds = [c.feeds[0] for c in nodes]
    everything = feeds[0].all_symbols
    assert all(f.all_symbols == everything for f in feeds), "every node lists the same symbols"
    served = [s for f in feeds for s in f.symbols]
    assert sorted(served) == sorted(everything), "each symbol on exactly one node"
    for i, feed in enumerate(feeds):
        assert feed.shard == f"{i}/3"
        assert feed.symbols, "no idle node"
        assert all(shard_of(s, 3) == i for s in feed.symbols)
    # Everything but identity, port and shard is the same on all three.
    strip = [
        attrs.evolve(
            c,
            source="",
            daemon=attrs.evolve(c.daemon, name="", state_dir=""),
            http=attrs.evolve(c.http, port=0),
            feeds=(attrs.evolve(c.feeds[0], shard=None, symbols=()),),
        )
        for c in nodes
    ]
    assert strip[0] == strip[1] == strip[2]
    nats = nodes[0].sinks.nats
    assert nats is not None
    assert nats.jetstream
    assert nats.replicas == 3
    assert len(server_list(nats.url)) == 3


def test_active_active_pair_agrees_on_ids_and_stream() -> None:
    one, two = load("active-active-1.toml"), load("active-active-2.toml")
    assert one.daemon.name != two.daemon.name
    assert one.daemon.state_dir != two.daemon.state_dir
    assert one.providers == two.providers, "provider names are part of the Nats-Msg-Id"
    assert one.feeds == two.feeds
    assert one.sinks.nats == two.sinks.nats
    nats = one.sinks.nats
    assert nats is not None
    assert nats.jetstream
    assert nats.replicas == 3
    assert nats.duplicate_window >= 120


def test_shard_that_holds_no_symbol_is_refused(tmp_path: Path) -> None:
    conf = tmp_path / "bad.toml"
    conf.write_text('[[feeds]]\nname = "x"\nsymbols = ["BTCUSDT"]\nproviders = ["sim"]\n')
    holder = shard_of("BTCUSDT", 2)
    conf.write_text(conf.read_text() + f'shard = "{1 - holder}/2"\n')
    with pytest.raises(ConfigError, match="holds no symbol"):
        load_config(conf, env={})


def test_cluster_url_is_a_server_list_and_credentials_stay_out_of_logs() -> None:
    url = "nats://u:secret@127.0.0.1:4222, nats://127.0.0.1:4223,nats://u:pw@127.0.0.1:4224"
    assert server_list(url) == [
        "nats://u:secret@127.0.0.1:4222",
        "nats://127.0.0.1:4223",
        "nats://u:pw@127.0.0.1:4224",
    ]
    safe = redact(url)
    assert "secret" not in safe
    assert "pw" not in safe
    assert safe.count("nats://") == 3
