"""Configuration: TOML into frozen attrs classes, validated before anything starts.

Precedence: command-line flags beat environment variables beat the file beat
defaults. Every error names where the value came from (the file or the
environment variable), the dotted key, the bad value and what is allowed;
unknown keys are errors, so a typo is never silently ignored.

Environment variables:
    the seed system's names (``NATS_URL``, ``NATS_ENABLED``, ``NATS_SUBJECT_PREFIX``,
    ``HTTP_PORT``, ``ALPACA_KEY``, ``ALPACA_SECRET``, ``ALPACA_DRY_RUN``,
    ``USE_JETSTREAM``) and ``MDD_<SECTION>__<KEY>`` for everything else, with
    ``__`` between levels: ``MDD_DAEMON__LOG_LEVEL=debug``,
    ``MDD_SINKS__SQLITE__PATH=/var/lib/mdd/md.sqlite``,
    ``MDD_PROVIDERS__BINANCE__URL=ws://127.0.0.1:9001``. Values are read as TOML
    literals where they parse (``10``, ``true``, ``["a","b"]``), else as strings.
"""

from __future__ import annotations

import os
import tomllib
import types
import typing
import zlib
from pathlib import Path
from typing import Any, Final, Literal

import attrs

from .errors import ConfigError
from .redact import redact_text

if typing.TYPE_CHECKING:
    from collections.abc import Mapping

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]
Policy = Literal["tiered", "block"]
Channel = Literal["trade", "quote", "book"]
Transport = Literal["trio-websocket", "picows"]

#: Provider kinds mdd knows, and the keys each accepts besides the common ones.
PROVIDER_KINDS: Final[dict[str, frozenset[str]]] = {
    "binance": frozenset(
        {"rest_url", "max_streams_per_connection", "depth_interval_ms", "book_levels", "book_rate"}
    ),
    "bybit": frozenset({"ping_interval", "book_depth", "book_levels", "book_rate"}),
    "alpaca": frozenset({"key", "secret", "dry_run"}),
    "sim": frozenset({"rate", "seed"}),
}
_COMMON_PROVIDER_KEYS: Final = frozenset({"kind", "url", "transport", "enabled"})

#: Default endpoints, used when a provider table gives no ``url``.
DEFAULT_URLS: Final[dict[str, str]] = {
    "binance": "wss://stream.binance.com:9443",
    "bybit": "wss://stream.bybit.com/v5/public/spot",
    "alpaca": "wss://stream.data.alpaca.markets/v2/iex",
    "sim": "",
}
DEFAULT_BINANCE_REST: Final = "https://api.binance.com"


def positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    """attrs validator: the value must be > 0."""
    if value <= 0:
        raise ValueError("must be > 0")


def non_negative(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    """attrs validator: the value must be >= 0."""
    if value < 0:
        raise ValueError("must be >= 0")


def tcp_port(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    """attrs validator: a TCP port number (0 lets the OS choose)."""
    if not 0 <= value <= 65535:
        raise ValueError("must be a TCP port, 0..65535")


@attrs.frozen
class DaemonConfig:
    """``[daemon]``: identity, files and logging."""

    name: str = "mdd"
    state_dir: str = "."
    control_socket: str = "mdd.sock"
    log_level: LogLevel = "info"
    log_format: LogFormat = "text"
    shutdown_grace: float = attrs.field(default=10.0, validator=positive)
    watchdog: bool = True


@attrs.frozen
class HttpConfig:
    """``[http]``: the hypercorn endpoint. Loopback by default."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = attrs.field(default=8891, validator=tcp_port)


@attrs.frozen
class BusConfig:
    """``[bus]``: per-sink channel capacity and the heartbeat cadence."""

    capacity: int = attrs.field(default=10000, validator=positive)
    heartbeat_after: float = attrs.field(default=5.0, validator=positive)


@attrs.frozen
class FailoverConfig:
    """``[failover]``: health thresholds and switching hysteresis, seconds."""

    stale_after: float = attrs.field(default=10.0, validator=positive)
    failover_after: float = attrs.field(default=5.0, validator=non_negative)
    recover_after: float = attrs.field(default=30.0, validator=non_negative)
    hot_standby: bool = False
    check_interval: float = attrs.field(default=1.0, validator=positive)


@attrs.frozen
class ProviderConfig:
    """``[providers.<name>]``: one venue connection. Keys depend on ``kind``."""

    name: str
    kind: str
    url: str
    enabled: bool = True
    transport: Transport | None = None
    # binance
    rest_url: str = DEFAULT_BINANCE_REST
    max_streams_per_connection: int = attrs.field(default=1024, validator=positive)
    depth_interval_ms: int = 100
    # binance and bybit local books: levels per published snapshot, snapshots/s per symbol
    book_levels: int = attrs.field(default=20, validator=positive)
    book_rate: float = attrs.field(default=10.0, validator=positive)
    # bybit
    ping_interval: float = attrs.field(default=20.0, validator=positive)
    book_depth: int = 50
    # alpaca (secrets: never in repr, logs or status output)
    key: str | None = attrs.field(default=None, repr=False)
    secret: str | None = attrs.field(default=None, repr=False)
    dry_run: bool = False
    # sim
    rate: float = attrs.field(default=50.0, validator=positive)
    seed: int | None = None


@attrs.frozen
class FeedConfig:
    """``[[feeds]]``: symbols served by an ordered list of providers (first = primary)."""

    name: str
    symbols: tuple[str, ...]
    providers: tuple[str, ...]
    channels: tuple[Channel, ...] = ("trade", "quote")
    #: ``"i/n"``: serve only the symbols whose stable hash falls in shard i of n.
    shard: str | None = None
    #: Every configured symbol, before sharding (set by the loader).
    all_symbols: tuple[str, ...] = ()


@attrs.frozen
class SqliteSinkConfig:
    """``[sinks.sqlite]``."""

    path: str = "mdd.sqlite"
    enabled: bool = True
    policy: Policy = "tiered"
    capacity: int | None = None
    batch_size: int = attrs.field(default=1000, validator=positive)
    batch_interval: float = attrs.field(default=0.2, validator=non_negative)
    retain_days: float | None = None
    book_levels: int = attrs.field(default=10, validator=positive)
    book_interval: float = attrs.field(default=1.0, validator=non_negative)


@attrs.frozen
class JsonlSinkConfig:
    """``[sinks.jsonl]``."""

    path: str = "events.jsonl"
    enabled: bool = True
    policy: Policy = "tiered"
    capacity: int | None = None
    max_bytes: int = attrs.field(default=100 * 1024 * 1024, validator=positive)
    backups: int = attrs.field(default=5, validator=non_negative)
    batch_size: int = attrs.field(default=1000, validator=positive)


@attrs.frozen
class NatsSinkConfig:
    """``[sinks.nats]``."""

    url: str = "nats://127.0.0.1:4222"
    enabled: bool = True
    policy: Policy = "tiered"
    capacity: int | None = None
    subject_prefix: str = "md.events"
    jetstream: bool = False
    stream: str = "MD_EVENTS"
    duplicate_window: float = attrs.field(default=120.0, validator=positive)
    #: Replicas of the stream when the sink creates it (3 on a 3-node cluster).
    replicas: int = attrs.field(default=1, validator=positive)
    batch_size: int = attrs.field(default=500, validator=positive)
    #: Seconds to wait for a batch's JetStream acks (or a core flush) before it
    #: is sent again; also how long a dead stream leader stalls publishing.
    ack_timeout: float = attrs.field(default=5.0, validator=positive)


@attrs.frozen
class LogSinkConfig:
    """``[sinks.log]``: one sampled line per ``sample_every`` events."""

    sample_every: int = attrs.field(default=1000, validator=positive)
    enabled: bool = True
    policy: Policy = "tiered"
    capacity: int | None = None


@attrs.frozen
class MetricsSinkConfig:
    """``[sinks.metrics]``: Prometheus counters. On unless ``enabled = false``."""

    enabled: bool = True
    policy: Policy = "tiered"
    capacity: int | None = None


@attrs.frozen
class SinksConfig:
    """``[sinks]``: a table present turns that sink on (metrics is on by default)."""

    sqlite: SqliteSinkConfig | None = None
    jsonl: JsonlSinkConfig | None = None
    nats: NatsSinkConfig | None = None
    log: LogSinkConfig | None = None
    metrics: MetricsSinkConfig | None = MetricsSinkConfig()

    def enabled(self) -> dict[str, Any]:
        """The sink configs that are on, by sink name."""
        out: dict[str, Any] = {}
        for field in attrs.fields(SinksConfig):
            value = getattr(self, field.name)
            if value is not None and value.enabled:
                out[field.name] = value
        return out


@attrs.frozen
class Config:
    """The whole daemon configuration."""

    source: str = "<defaults>"
    daemon: DaemonConfig = DaemonConfig()
    http: HttpConfig = HttpConfig()
    bus: BusConfig = BusConfig()
    failover: FailoverConfig = FailoverConfig()
    providers: dict[str, ProviderConfig] = attrs.field(factory=dict)
    feeds: tuple[FeedConfig, ...] = ()
    sinks: SinksConfig = SinksConfig()

    def resolve_path(self, path: str) -> Path:
        """A sink or socket path, relative ones taken against ``daemon.state_dir``."""
        p = Path(path)
        return p if p.is_absolute() else Path(self.daemon.state_dir) / p

    def provider(self, name: str) -> ProviderConfig:
        """The named provider's config (defaults when it has no table)."""
        return self.providers[name]


# ---------------------------------------------------------------------------
# Loading


class ConfigOrigins:
    """Remembers which environment variable or flag set a key, for error messages."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.by_key: dict[str, str] = {}

    def of(self, key: str) -> str:
        return self.by_key.get(key, self.source)

    def error(self, key: str, problem: str) -> ConfigError:
        # ``problem`` may echo the offending value (``got [...]``): a URL in it
        # keeps its host but loses its user and password.
        return ConfigError(self.of(key), key, redact_text(problem))


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (types.UnionType, typing.Union):
        parts = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_describe(p) for p in parts)
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if tp is float:
        return "a number"
    if tp is int:
        return "an integer"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, key: str, origins: ConfigOrigins) -> Any:
    """Check ``value`` against the annotation ``tp``; return it in the field's type."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        real = [a for a in args if a is not type(None)]
        if len(real) == 1:
            return _coerce(real[0], value, key, origins)
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key, origins)
            except ConfigError:
                continue
        raise origins.error(key, f"got {value!r}, expected {_describe(tp)}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise origins.error(key, f"got {value!r}, expected {_describe(tp)}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise origins.error(key, f"got {value!r}, expected {_describe(tp)}")
        item = typing.get_args(tp)[0]
        return tuple(_coerce(item, v, f"{key}[{i}]", origins) for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise origins.error(key, f"got {value!r}, expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise origins.error(key, f"got {value!r}, expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise origins.error(key, f"got {value!r}, expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise origins.error(key, f"got {value!r}, expected a string")
        return value
    if attrs.has(tp):
        return build_attrs(tp, value, key, origins)
    raise TypeError(f"config type {tp!r} not handled")  # pragma: no cover


def build_attrs(
    cls: type[Any],
    data: Any,
    prefix: str,
    origins: ConfigOrigins,
    extra: Mapping[str, Any] | None = None,
    allowed: frozenset[str] | None = None,
) -> Any:
    """Build attrs class ``cls`` from a TOML table, refusing unknown keys."""
    if not isinstance(data, dict):
        raise origins.error(prefix, f"got {data!r}, expected a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in attrs.fields(cls)}
    names = allowed if allowed is not None else frozenset(fields) - set(extra or ())
    kwargs: dict[str, Any] = dict(extra or {})
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in names:
            raise origins.error(
                dotted, f"unknown key; allowed keys here: {', '.join(sorted(names))}"
            )
        try:
            kwargs[key] = _coerce(hints[key], value, dotted, origins)
        except ConfigError:
            if key not in fields or fields[key].repr:
                raise
            # A secret (repr=False): say what is wrong without echoing the value.
            raise origins.error(
                dotted, f"got {_kind_of(value)} (value hidden), expected a string"
            ) from None
    missing = [
        name
        for name, field in fields.items()
        if field.default is attrs.NOTHING and name not in kwargs
    ]
    if missing:
        raise origins.error(prefix, f"missing required key(s): {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except ValueError as exc:
        # attrs validators raise ValueError("must be ..."): find which field.
        for name, value in kwargs.items():
            validator = fields[name].validator
            if validator is None:
                continue
            try:
                validator(None, fields[name], value)
            except ValueError as inner:
                raise origins.error(f"{prefix}.{name}", f"got {value!r}, {inner}") from None
        raise origins.error(prefix, str(exc)) from None


def _build_provider(name: str, data: Any, origins: ConfigOrigins) -> ProviderConfig:
    key = f"providers.{name}"
    if not isinstance(data, dict):
        raise origins.error(key, f"got {data!r}, expected a table")
    kind = data.get("kind", name)
    if not isinstance(kind, str):
        raise origins.error(f"{key}.kind", f"got {kind!r}, expected a string")
    if kind not in PROVIDER_KINDS:
        raise origins.error(
            f"{key}.kind" if "kind" in data else key,
            f"unknown provider {kind!r}; known providers: {', '.join(sorted(PROVIDER_KINDS))}"
            + ("" if "kind" in data else " (or set kind = ...)"),
        )
    allowed = _COMMON_PROVIDER_KEYS | PROVIDER_KINDS[kind]
    body = {k: v for k, v in data.items() if k != "kind"}
    extra: dict[str, Any] = {"name": name, "kind": kind}
    if "url" not in body:
        extra["url"] = DEFAULT_URLS[kind]
    return typing.cast(
        "ProviderConfig", build_attrs(ProviderConfig, body, key, origins, extra, allowed - {"kind"})
    )


def _build_feed(index: int, data: Any, origins: ConfigOrigins) -> FeedConfig:
    key = f"feeds[{index}]"
    allowed = frozenset(f.name for f in attrs.fields(FeedConfig)) - {"all_symbols"}
    feed = typing.cast("FeedConfig", build_attrs(FeedConfig, data, key, origins, None, allowed))
    if not feed.symbols:
        raise origins.error(f"{key}.symbols", "must list at least one symbol")
    if not feed.providers:
        raise origins.error(f"{key}.providers", "must list at least one provider")
    if len(set(feed.providers)) != len(feed.providers):
        raise origins.error(f"{key}.providers", f"lists a provider twice: {list(feed.providers)}")
    if not feed.channels:
        raise origins.error(f"{key}.channels", "must list at least one of trade, quote, book")
    symbols = tuple(s.strip().upper() for s in feed.symbols)
    for i, symbol in enumerate(symbols):
        if not symbol or not all(c.isalnum() or c in "/-_." for c in symbol):
            raise origins.error(
                f"{key}.symbols[{i}]",
                f"got {feed.symbols[i]!r}, expected a venue symbol (letters, digits, / - _ .)",
            )
    if len(set(symbols)) != len(symbols):
        raise origins.error(f"{key}.symbols", f"lists a symbol twice: {list(symbols)}")
    if feed.shard is not None:
        index, count = parse_shard(feed.shard, f"{key}.shard", origins)
        mine = tuple(s for s in symbols if shard_of(s, count) == index)
        if not mine:
            raise origins.error(
                f"{key}.shard", f"shard {feed.shard} of {list(symbols)} holds no symbol"
            )
        return attrs.evolve(feed, symbols=mine, all_symbols=symbols)
    return attrs.evolve(feed, symbols=symbols, all_symbols=symbols)


def normalize_symbol(symbol: str) -> str:
    """The symbol as events carry it: upper case, separators removed (``BTC/USD`` -> ``BTCUSD``)."""
    return symbol.upper().replace("/", "").replace("-", "").replace("_", "").replace(".", "")


def shard_of(symbol: str, count: int) -> int:
    """The shard (0 .. count-1) a symbol belongs to: a stable CRC-32 of its normalized form."""
    return zlib.crc32(normalize_symbol(symbol).encode()) % count


def parse_shard(text: str, key: str, origins: ConfigOrigins) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n."""
    try:
        left, right = text.split("/")
        index, count = int(left), int(right)
    except ValueError:
        raise origins.error(key, f'got {text!r}, expected "i/n" such as "0/3"') from None
    if count < 1 or not 0 <= index < count:
        raise origins.error(key, f"got {text!r}, expected 0 <= i < n")
    return index, count


def build_config(data: dict[str, Any], source: str, origins: ConfigOrigins | None = None) -> Config:
    """Validate a parsed TOML document (with overrides applied) into a :class:`Config`.

    Raises:
        ConfigError: the first problem found.
    """
    origins = origins or ConfigOrigins(source)
    known = {"daemon", "http", "bus", "failover", "providers", "feeds", "sinks"}
    for key in data:
        if key not in known:
            raise origins.error(key, f"unknown section; allowed: {', '.join(sorted(known))}")
    sections: dict[str, Any] = {}
    for name, cls in (
        ("daemon", DaemonConfig),
        ("http", HttpConfig),
        ("bus", BusConfig),
        ("failover", FailoverConfig),
    ):
        if name in data:
            sections[name] = build_attrs(cls, data[name], name, origins)
    raw_providers = data.get("providers", {})
    if not isinstance(raw_providers, dict):
        raise origins.error("providers", "expected a table of [providers.<name>] tables")
    providers = {n: _build_provider(n, v, origins) for n, v in raw_providers.items()}
    raw_feeds = data.get("feeds", [])
    if not isinstance(raw_feeds, list):
        raise origins.error("feeds", "expected an array of [[feeds]] tables")
    feeds = tuple(_build_feed(i, f, origins) for i, f in enumerate(raw_feeds))
    seen: set[str] = set()
    for i, feed in enumerate(feeds):
        if feed.name in seen:
            raise origins.error(f"feeds[{i}].name", f"feed name {feed.name!r} is used twice")
        seen.add(feed.name)
        for j, provider in enumerate(feed.providers):
            if provider not in providers:
                if provider in PROVIDER_KINDS:
                    providers[provider] = _build_provider(provider, {}, origins)
                else:
                    raise origins.error(
                        f"feeds[{i}].providers[{j}]",
                        f"unknown provider {provider!r}; define [providers.{provider}] "
                        f"or use one of {', '.join(sorted(PROVIDER_KINDS))}",
                    )
    sinks = SinksConfig()
    if "sinks" in data:
        sinks = build_attrs(SinksConfig, data["sinks"], "sinks", origins)
        if "metrics" not in data["sinks"]:
            sinks = attrs.evolve(sinks, metrics=MetricsSinkConfig())
    config = Config(source=source, providers=providers, feeds=feeds, sinks=sinks, **sections)
    if config.daemon.log_level not in typing.get_args(LogLevel):  # pragma: no cover
        raise origins.error("daemon.log_level", "invalid")
    return config


def _env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _truthy(name: str, raw: str) -> bool:
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"environment {name}", name, f"got {raw!r}, expected true or false")


def _set(
    data: dict[str, Any], path: list[str], value: Any, origins: ConfigOrigins, origin: str
) -> None:
    node = data
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(origin, ".".join(path), f"{part} is not a table")
        node = child
    node[path[-1]] = value
    origins.by_key[".".join(path)] = origin


def apply_env(data: dict[str, Any], env: Mapping[str, str], origins: ConfigOrigins) -> None:
    """Apply environment overrides to a parsed document, in place."""
    if "NATS_ENABLED" in env:
        on = _truthy("NATS_ENABLED", env["NATS_ENABLED"])
        _set(data, ["sinks", "nats", "enabled"], on, origins, "environment NATS_ENABLED")
    seed = {
        "NATS_URL": ["sinks", "nats", "url"],
        "NATS_SUBJECT_PREFIX": ["sinks", "nats", "subject_prefix"],
        "HTTP_PORT": ["http", "port"],
    }
    for name, path in seed.items():
        if name in env:
            value: Any = env[name]
            if name == "HTTP_PORT":
                value = _env_value(env[name])
            _set(data, path, value, origins, f"environment {name}")
    if "USE_JETSTREAM" in env:
        js = _truthy("USE_JETSTREAM", env["USE_JETSTREAM"])
        _set(data, ["sinks", "nats", "jetstream"], js, origins, "environment USE_JETSTREAM")
    providers = data.get("providers")
    # (a malformed [providers] is reported by the build, not crashed on here)
    alpaca = [
        n
        for n, p in (providers.items() if isinstance(providers, dict) else ())
        if isinstance(p, dict) and p.get("kind", n) == "alpaca"
    ] or ["alpaca"]
    for name in alpaca:
        for var, key in (("ALPACA_KEY", "key"), ("ALPACA_SECRET", "secret")):
            if env.get(var):
                _set(data, ["providers", name, key], env[var], origins, f"environment {var}")
        if "ALPACA_DRY_RUN" in env:
            dry = _truthy("ALPACA_DRY_RUN", env["ALPACA_DRY_RUN"])
            _set(data, ["providers", name, "dry_run"], dry, origins, "environment ALPACA_DRY_RUN")
    for name, raw in env.items():
        if not name.startswith("MDD_") or "__" not in name:
            continue
        path = [p.lower() for p in name[4:].split("__")]
        _set(data, path, _env_value(raw), origins, f"environment {name}")


_KINDS: Final[dict[type, str]] = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    list: "a list",
    dict: "a table",
}


def _kind_of(value: object) -> str:
    """``an integer``, ``a list``...: what a TOML value is, in words, without the value."""
    return _KINDS.get(type(value), f"a {type(value).__name__}")


def read_document(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML file into a dict (no validation).

    Raises:
        ConfigError: missing or unreadable file, or not valid TOML.
    """
    source = str(path)
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(source, "-", "file not found") from None
    except OSError as exc:
        raise ConfigError(source, "-", f"cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "-", f"not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            source, "-", f"not UTF-8 text (byte {exc.start}): TOML files must be UTF-8"
        ) from None


def load_config(
    path: str | os.PathLike[str] | None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    base: dict[str, Any] | None = None,
) -> Config:
    """Load, override and validate a configuration.

    Args:
        path: the TOML file; None for none (defaults, or ``base``).
        env: environment variables to apply (defaults to ``os.environ``).
        overrides: command-line values by dotted key (``"http.port"``), applied last.
        base: a document to start from when there is no file (``mdd run``).

    Raises:
        ConfigError: unreadable file, bad TOML, or any invalid value.
    """
    source = str(path) if path is not None else "<command line>"
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        data = read_document(path)
    origins = ConfigOrigins(source)
    apply_env(data, os.environ if env is None else env, origins)
    for dotted, value in (overrides or {}).items():
        _set(data, dotted.split("."), value, origins, "command line")
    return build_config(data, source, origins)
