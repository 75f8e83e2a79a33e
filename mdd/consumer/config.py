"""Configuration of ``mdd-consumer``: ``deploy/senpai.toml`` into frozen attrs classes.

The same rules as the daemon's config (and the same helpers,
:func:`mdd.config.build_attrs` / :class:`mdd.config.ConfigOrigins`): every table is
validated before anything starts, unknown keys are refused, and an error names
the file (or environment variable), the dotted key, the bad value and what is
allowed. Precedence: command-line flags beat the environment beat the file beat
the defaults. The environment variable ``NATS_URL`` overrides ``[nats] url``, as
in the seed system.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs

from ..config import ConfigOrigins, build_attrs
from ..config import non_negative as _non_negative
from ..config import positive as _positive
from ..config import tcp_port as _port
from ..errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]

#: Default consumer HTTP port (the daemon uses 8891).
DEFAULT_HTTP_PORT: Final = 8892


def _at_least_one(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 1:
        raise ValueError("must be >= 1")


def _prefix(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value or value.startswith(".") or value.endswith(".") or any(c in value for c in " *>"):
        raise ValueError("must be a NATS subject prefix like 'senpai.features' (no '*', '>', ' ')")


def _subject(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value or " " in value:
        raise ValueError("must be a NATS subject, e.g. 'md.events.>'")


@attrs.frozen
class ConsumerSection:
    """``[consumer]``: identity and logging."""

    name: str = "senpai-md"
    log_level: LogLevel = "info"
    log_format: LogFormat = "text"


@attrs.frozen
class NatsConfig:
    """``[nats]``: where the events come from.

    ``capacity`` bounds the inbox between the NATS callback and the processing
    task; the tiered drop policy applies when it fills. ``jetstream_durable``
    names a JetStream durable consumer (the stream must already cover
    ``subject``); empty means plain core NATS.
    """

    url: str = "nats://127.0.0.1:4222"
    queue_group: str = "senpai-md"
    subject: str = attrs.field(default="md.events.>", validator=_subject)
    jetstream_durable: str = ""
    capacity: int = attrs.field(default=10000, validator=_positive)
    connect_timeout: float = attrs.field(default=2.0, validator=_positive)


@attrs.frozen
class HttpConfig:
    """``[http]``: the consumer's own hypercorn endpoint, loopback by default."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = attrs.field(default=DEFAULT_HTTP_PORT, validator=_port)


@attrs.frozen
class WindowConfig:
    """``[window]``: the rolling trade window and the short return window, seconds."""

    seconds: float = attrs.field(default=60.0, validator=_positive)
    short_return_seconds: float = attrs.field(default=10.0, validator=_positive)


@attrs.frozen
class SignalsConfig:
    """``[signals]``: rule thresholds and the per-symbol cooldown.

    Long when ``return_short >= return_threshold`` and ``volume >= min_volume``
    and ``spread_bps <= max_spread_bps``; short when ``return_short <=
    -return_threshold`` with the same volume and spread conditions.
    """

    enabled: bool = True
    return_threshold: float = attrs.field(default=0.001, validator=_positive)
    min_volume: float = attrs.field(default=0.0, validator=_non_negative)
    max_spread_bps: float = attrs.field(default=10.0, validator=_non_negative)
    cooldown: float = attrs.field(default=30.0, validator=_non_negative)


@attrs.frozen
class AlertsConfig:
    """``[alerts]``: thresholds. Each alert fires when its condition starts holding."""

    stale_after: float = attrs.field(default=30.0, validator=_positive)
    latency_ms: float = attrs.field(default=2000.0, validator=_positive)
    spread_bps: float = attrs.field(default=50.0, validator=_positive)
    check_interval: float = attrs.field(default=1.0, validator=_positive)


@attrs.frozen
class PublishConfig:
    """``[publish]``: output subject prefixes and the per-symbol feature rate."""

    enabled: bool = True
    features_prefix: str = attrs.field(default="senpai.features", validator=_prefix)
    signals_prefix: str = attrs.field(default="senpai.signals", validator=_prefix)
    alerts_prefix: str = attrs.field(default="senpai.alerts", validator=_prefix)
    features_per_second: float = attrs.field(default=2.0, validator=_positive)
    features_burst: float = attrs.field(default=1.0, validator=_at_least_one)


@attrs.frozen
class ConsumerConfig:
    """The whole ``mdd-consumer`` configuration."""

    source: str = "<defaults>"
    consumer: ConsumerSection = ConsumerSection()
    nats: NatsConfig = NatsConfig()
    http: HttpConfig = HttpConfig()
    window: WindowConfig = WindowConfig()
    signals: SignalsConfig = SignalsConfig()
    alerts: AlertsConfig = AlertsConfig()
    publish: PublishConfig = PublishConfig()


#: Section name -> attrs class, in file order.
SECTIONS: Final[dict[str, type[Any]]] = {
    "consumer": ConsumerSection,
    "nats": NatsConfig,
    "http": HttpConfig,
    "window": WindowConfig,
    "signals": SignalsConfig,
    "alerts": AlertsConfig,
    "publish": PublishConfig,
}


def build_consumer_config(
    data: dict[str, Any], source: str, origins: ConfigOrigins | None = None
) -> ConsumerConfig:
    """Validate a parsed document (overrides applied) into a :class:`ConsumerConfig`.

    Raises:
        ConfigError: the first problem found, naming file and key.
    """
    origins = origins or ConfigOrigins(source)
    for key in data:
        if key not in SECTIONS:
            raise origins.error(key, f"unknown section; allowed: {', '.join(SECTIONS)}")
    sections = {
        name: build_attrs(cls, data[name], name, origins)
        for name, cls in SECTIONS.items()
        if name in data
    }
    config = ConsumerConfig(source=source, **sections)
    if config.window.short_return_seconds > config.window.seconds:
        raise origins.error(
            "window.short_return_seconds",
            f"got {config.window.short_return_seconds!r}, must be <= window.seconds "
            f"({config.window.seconds!r})",
        )
    return config


def _set(
    data: dict[str, Any], dotted: str, value: Any, origins: ConfigOrigins, origin: str
) -> None:
    section, key = dotted.split(".", 1)
    table = data.setdefault(section, {})
    if not isinstance(table, dict):
        raise ConfigError(origin, section, "is not a table")
    table[key] = value
    origins.by_key[dotted] = origin


def load_consumer_config(
    path: str | os.PathLike[str] | None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ConsumerConfig:
    """Read, override and validate the consumer configuration.

    Args:
        path: the TOML file, or None for the defaults.
        env: environment (defaults to ``os.environ``); ``NATS_URL`` overrides ``nats.url``.
        overrides: command-line values by dotted key (``"http.port"``), applied last.

    Raises:
        ConfigError: unreadable file, bad TOML, or any invalid value.
    """
    source = str(path) if path is not None else "<defaults>"
    origins = ConfigOrigins(source)
    data: dict[str, Any] = {}
    if path is not None:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(source, "<file>", f"cannot read: {exc.strerror or exc}") from None
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(source, "<toml>", f"invalid TOML: {exc}") from None
    env = os.environ if env is None else env
    if env.get("NATS_URL"):
        _set(data, "nats.url", env["NATS_URL"], origins, "environment NATS_URL")
    for dotted, value in (overrides or {}).items():
        _set(data, dotted, value, origins, "command line")
    return build_consumer_config(data, source, origins)
