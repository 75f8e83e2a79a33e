"""Config loading: defaults, every validation error path, overrides and precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from mdd.config import Config, load_config
from mdd.errors import ConfigError

GOOD = """
[daemon]
name = "node1"
state_dir = "/var/lib/mdd"
log_format = "json"

[http]
port = 9000

[bus]
capacity = 500
heartbeat_after = 2.5

[providers.binance]
url = "ws://127.0.0.1:9001"
rest_url = "http://127.0.0.1:9002"

[providers.backup]
kind = "bybit"
url = "ws://127.0.0.1:9003/v5/public/spot"
ping_interval = 5

[[feeds]]
name = "crypto"
symbols = ["btcusdt", "ETH/USDT"]
providers = ["binance", "backup"]
channels = ["trade", "quote", "book"]

[sinks.sqlite]
path = "md.sqlite"
capacity = 2000

[sinks.jsonl]
policy = "block"

[sinks.nats]
enabled = false
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mdd.toml"
    path.write_text(text)
    return path


def load(tmp_path: Path, text: str, **kw: object) -> Config:
    return load_config(write(tmp_path, text), env=kw.pop("env", {}), **kw)  # type: ignore[arg-type]


def test_good_config_loads(tmp_path: Path) -> None:
    cfg = load(tmp_path, GOOD)
    assert cfg.daemon.name == "node1"
    assert cfg.daemon.log_format == "json"
    assert cfg.http.port == 9000
    assert cfg.http.host == "127.0.0.1"
    assert cfg.bus.capacity == 500
    assert cfg.bus.heartbeat_after == 2.5
    assert cfg.providers["binance"].kind == "binance"
    assert cfg.providers["binance"].rest_url == "http://127.0.0.1:9002"
    assert cfg.providers["backup"].kind == "bybit"
    assert cfg.providers["backup"].ping_interval == 5.0
    feed = cfg.feeds[0]
    assert feed.symbols == ("BTCUSDT", "ETH/USDT")  # as the venue spells it
    assert feed.providers == ("binance", "backup")
    assert feed.channels == ("trade", "quote", "book")
    enabled = cfg.sinks.enabled()
    assert set(enabled) == {"sqlite", "jsonl", "metrics"}
    assert enabled["sqlite"].capacity == 2000
    assert enabled["jsonl"].policy == "block"
    assert cfg.resolve_path("md.sqlite") == Path("/var/lib/mdd/md.sqlite")
    assert cfg.resolve_path("/abs/x") == Path("/abs/x")


def test_defaults_without_file() -> None:
    cfg = load_config(None, env={})
    assert cfg.http.host == "127.0.0.1"
    assert cfg.http.port == 8891
    assert cfg.bus.capacity == 10000
    assert cfg.bus.heartbeat_after == 5.0
    assert cfg.daemon.control_socket == "mdd.sock"
    assert cfg.feeds == ()
    assert set(cfg.sinks.enabled()) == {"metrics"}


def test_provider_without_table_gets_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[[feeds]]\nname="f"\nsymbols=["BTCUSDT"]\nproviders=["binance"]\n')
    assert cfg.providers["binance"].url == "wss://stream.binance.com:9443"
    assert cfg.providers["binance"].rest_url == "https://api.binance.com"


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("[http]\nprot = 1\n", "http.prot", "unknown key; allowed keys here: enabled, host, port"),
        ("[htp]\n", "htp", "unknown section"),
        ("[bus]\ncapacity = 0\n", "bus.capacity", "got 0, must be > 0"),
        ("[bus]\ncapacity = 'big'\n", "bus.capacity", "expected an integer"),
        ("[bus]\ncapacity = 1.5\n", "bus.capacity", "expected an integer"),
        ("[bus]\nheartbeat_after = -1\n", "bus.heartbeat_after", "must be > 0"),
        ("[http]\nport = 70000\n", "http.port", "0..65535"),
        ("[http]\nenabled = 'yes'\n", "http.enabled", "expected true or false"),
        ("[daemon]\nlog_level = 'loud'\n", "daemon.log_level", "one of 'debug'"),
        ("[daemon]\nlog_format = 'xml'\n", "daemon.log_format", "one of 'text', 'json'"),
        ("[failover]\nfailover_after = -2\n", "failover.failover_after", "must be >= 0"),
        ("daemon = 3\n", "daemon", "expected a table"),
        ("[providers.kraken]\n", "providers.kraken", "unknown provider 'kraken'"),
        ("[providers.x]\nkind = 'kraken'\n", "providers.x.kind", "unknown provider 'kraken'"),
        (
            "[providers.binance]\nping_interval = 3\n",
            "providers.binance.ping_interval",
            "unknown key",
        ),
        (
            "[providers.bybit]\ntransport = 'curl'\n",
            "providers.bybit.transport",
            "'trio-websocket'",
        ),
        (
            "[[feeds]]\nname='f'\nsymbols=[]\nproviders=['sim']\n",
            "feeds[0].symbols",
            "at least one symbol",
        ),
        (
            "[[feeds]]\nname='f'\nsymbols=['A']\nproviders=[]\n",
            "feeds[0].providers",
            "at least one provider",
        ),
        (
            "[[feeds]]\nname='f'\nsymbols=['A']\nproviders=['sim','sim']\n",
            "feeds[0].providers",
            "twice",
        ),
        (
            "[[feeds]]\nname='f'\nsymbols=['A']\nproviders=['nope']\n",
            "feeds[0].providers[0]",
            "unknown provider 'nope'",
        ),
        (
            "[[feeds]]\nname='f'\nsymbols=['A']\nproviders=['sim']\nchannels=['trades']\n",
            "feeds[0].channels[0]",
            "'trade', 'quote', 'book'",
        ),
        (
            "[[feeds]]\nname='f'\nsymbols=['A']\nproviders=['sim']\nchannels=[]\n",
            "feeds[0].channels",
            "at least one",
        ),
        ("[[feeds]]\nsymbols=['A']\nproviders=['sim']\n", "feeds[0]", "name"),
        (
            "[[feeds]]\nname='f'\nsymbols=['A']\nproviders=['sim']\ncolour=1\n",
            "feeds[0].colour",
            "unknown key",
        ),
        (
            "[[feeds]]\nname='f'\nsymbols=['A']\nproviders=['sim']\n"
            "[[feeds]]\nname='f'\nsymbols=['B']\nproviders=['sim']\n",
            "feeds[1].name",
            "twice",
        ),
        ("[sinks.sqlite]\npolicy = 'drop'\n", "sinks.sqlite.policy", "'tiered', 'block'"),
        ("[sinks.kafka]\n", "sinks.kafka", "unknown key"),
        ("[sinks.log]\nsample_every = 0\n", "sinks.log.sample_every", "must be > 0"),
        ("[sinks.nats]\nack_timeout = 0\n", "sinks.nats.ack_timeout", "must be > 0"),
        ("feeds = 3\n", "feeds", "array"),
    ],
)
def test_validation_errors_name_file_key_and_allowed(
    tmp_path: Path, text: str, key: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    err = info.value
    assert err.source == str(tmp_path / "mdd.toml")
    assert err.key == key
    assert fragment in err.problem
    assert str(err).startswith(f"{tmp_path / 'mdd.toml'}: {key}: ")


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml", env={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(tmp_path, "[daemon\n")


def test_env_overrides_file_and_flags_override_env(tmp_path: Path) -> None:
    env = {
        "HTTP_PORT": "7000",
        "NATS_URL": "nats://127.0.0.1:4333",
        "NATS_ENABLED": "true",
        "USE_JETSTREAM": "1",
        "NATS_SUBJECT_PREFIX": "md.test",
        "MDD_DAEMON__LOG_LEVEL": "debug",
        "MDD_BUS__CAPACITY": "123",
        "MDD_PROVIDERS__BINANCE__URL": "ws://127.0.0.1:1",
    }
    cfg = load(tmp_path, GOOD, env=env)
    assert cfg.http.port == 7000
    assert cfg.daemon.log_level == "debug"
    assert cfg.bus.capacity == 123
    assert cfg.providers["binance"].url == "ws://127.0.0.1:1"
    nats = cfg.sinks.enabled()["nats"]
    assert nats.url == "nats://127.0.0.1:4333"
    assert nats.jetstream is True
    assert nats.subject_prefix == "md.test"
    cfg = load(tmp_path, GOOD, env=env, overrides={"http.port": 7100})
    assert cfg.http.port == 7100


def test_env_errors_name_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, GOOD, env={"MDD_BUS__CAPACITY": "-5"})
    assert info.value.source == "environment MDD_BUS__CAPACITY"
    assert info.value.key == "bus.capacity"
    with pytest.raises(ConfigError, match="NATS_ENABLED"):
        load(tmp_path, GOOD, env={"NATS_ENABLED": "maybe"})
    with pytest.raises(ConfigError) as info:
        load(tmp_path, GOOD, env={"MDD_HTTP__PROT": "1"})
    assert info.value.key == "http.prot"


def test_alpaca_secrets_from_env_never_in_repr(tmp_path: Path) -> None:
    text = "[[feeds]]\nname='s'\nsymbols=['AAPL']\nproviders=['alpaca']\n"
    env = {
        "ALPACA_KEY": "PKPLANTEDKEY123",
        "ALPACA_SECRET": "s3cr3tPLANTED",
        "ALPACA_DRY_RUN": "no",
    }
    cfg = load(tmp_path, text, env=env)
    alpaca = cfg.providers["alpaca"]
    assert alpaca.key == "PKPLANTEDKEY123"
    assert alpaca.secret == "s3cr3tPLANTED"
    assert alpaca.dry_run is False
    assert "PLANTED" not in repr(cfg)


def test_sharding_splits_symbols_stably_and_completely(tmp_path: Path) -> None:
    symbols = [f"SYM{i}USDT" for i in range(30)]
    shards = []
    for i in range(3):
        text = f"[[feeds]]\nname='f'\nsymbols={symbols!r}\nproviders=['sim']\nshard='{i}/3'\n"
        feed = load(tmp_path, text).feeds[0]
        assert feed.all_symbols == tuple(symbols)
        shards.append(set(feed.symbols))
    assert set().union(*shards) == set(symbols)
    assert sum(len(s) for s in shards) == len(symbols)
    assert all(shards)


@pytest.mark.parametrize(
    ("shard", "fragment"), [("3/3", "0 <= i < n"), ("x", 'expected "i/n"'), ("1/0", "0 <= i")]
)
def test_bad_shard(tmp_path: Path, shard: str, fragment: str) -> None:
    text = f"[[feeds]]\nname='f'\nsymbols=['A']\nproviders=['sim']\nshard='{shard}'\n"
    with pytest.raises(ConfigError, match=fragment):
        load(tmp_path, text)


def test_shard_with_no_symbols_is_refused(tmp_path: Path) -> None:
    from mdd.config import shard_of

    other = 1 - shard_of("A", 2)
    text = f"[[feeds]]\nname='f'\nsymbols=['A']\nproviders=['sim']\nshard='{other}/2'\n"
    with pytest.raises(ConfigError, match="holds no symbol"):
        load(tmp_path, text)


def test_symbols_are_validated(tmp_path: Path) -> None:
    for bad, key in ((["BTC USDT"], "feeds[0].symbols[0]"), (["A", "a"], "feeds[0].symbols")):
        text = f"[[feeds]]\nname='f'\nsymbols={bad!r}\nproviders=['sim']\n"
        with pytest.raises(ConfigError) as info:
            load(tmp_path, text)
        assert info.value.key == key


def test_book_keys_reach_the_provider(tmp_path: Path) -> None:
    cfg = load(tmp_path, "[providers.binance]\nbook_levels = 5\nbook_rate = 2.5\n")
    assert cfg.providers["binance"].book_levels == 5
    assert cfg.providers["binance"].book_rate == 2.5
    with pytest.raises(ConfigError, match="book_levels: got 0, must be > 0"):
        load(tmp_path, "[providers.bybit]\nbook_levels = 0\n")


@pytest.mark.parametrize("kind", ["[]", "3", "{a=1}"])
def test_provider_kind_must_be_a_string(tmp_path: Path, kind: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, f"[providers.bybit]\nkind = {kind}\n")
    assert info.value.key == "providers.bybit.kind"
    assert "expected a string" in info.value.problem


def test_nats_ack_timeout_reaches_the_sink(tmp_path: Path) -> None:
    from mdd.sinks import SINK_FACTORIES

    env = {"NATS_ENABLED": "true", "MDD_SINKS__NATS__ACK_TIMEOUT": "1.5"}
    cfg = load(tmp_path, GOOD, env=env)
    section = cfg.sinks.enabled()["nats"]
    assert section.ack_timeout == 1.5
    assert SINK_FACTORIES["nats"](cfg, section).ack_timeout == 1.5  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("value", "kind"), [("5", "an integer"), ("[1]", "a list"), ("true", "a boolean")]
)
def test_a_secret_of_the_wrong_type_is_named_by_kind_not_value(
    tmp_path: Path, value: str, kind: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, f"[providers.alpaca]\nsecret = {value}\n")
    assert f"providers.alpaca.secret: got {kind} (value hidden), expected a string" in str(
        info.value
    )
