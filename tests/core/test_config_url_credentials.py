"""Config errors and the redaction helpers never echo a URL's user and password."""

from __future__ import annotations

from pathlib import Path

import pytest

from mdd.config import load_config
from mdd.consumer.config import load_consumer_config
from mdd.errors import ConfigError
from mdd.redact import redact_text, redact_url
from mdd.sinks.nats import redact

LEAK = "NATSLEAK2"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (f'[sinks.nats]\nurl = ["nats://u:{LEAK}@127.0.0.1:4222"]\n', "sinks.nats.url"),
        (f'[sinks.nats]\nurl = ["nats://u:{LEAK}@x@127.0.0.1:4222"]\n', "sinks.nats.url"),
        (f'[providers.bybit]\nurl = ["ws://u:{LEAK}@127.0.0.1:1/v5"]\n', "providers.bybit.url"),
        (
            f'[providers.binance]\nrest_url = ["http://u:{LEAK}@127.0.0.1:1"]\n',
            "providers.binance.rest_url",
        ),
        (f'[providers]\nbybit = "ws://u:{LEAK}@127.0.0.1:1/v5"\n', "providers.bybit"),
        (f'[sinks]\nnats = "nats://u:{LEAK}@127.0.0.1:4222"\n', "sinks.nats"),
    ],
)
def test_daemon_config_errors_hide_url_credentials(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "mdd.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.key == key
    assert "***@127.0.0.1:" in info.value.problem  # the host is still shown
    assert LEAK not in str(info.value)


def test_daemon_config_error_from_env_hides_url_credentials() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={}, overrides={"sinks.nats.url": [f"nats://u:{LEAK}@127.0.0.1:1"]})
    assert LEAK not in str(info.value)


def test_consumer_config_error_hides_url_credentials(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'[nats]\nurl = ["nats://u:{LEAK}@127.0.0.1:4222"]\n')
    with pytest.raises(ConfigError) as info:
        load_consumer_config(path, env={})
    assert info.value.key == "nats.url"
    assert LEAK not in str(info.value)


def test_redact_helpers() -> None:
    assert redact is redact_url  # mdd.sinks.nats.redact stays importable
    assert redact_url("nats://user:secret@127.0.0.1:4222") == "nats://***@127.0.0.1:4222"
    assert redact_url("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"
    assert redact_url("ws://u:p@ss@127.0.0.1:9/a?b=c") == "ws://***@127.0.0.1:9/a?b=c"
    assert redact_url("ws://u:p@[::1]:9/a") == "ws://***@[::1]:9/a"
    assert redact_url("nats://a:b@h1:1, nats://h2:2,c:d@h3") == "nats://***@h1:1,nats://h2:2,***@h3"
    assert redact_url("ws://u:p@host:notaport/x") == "ws://***@host:notaport/x"
    assert redact_text("GET https://k:s@api.example/x failed, see wss://h/y") == (
        "GET https://***@api.example/x failed, see wss://h/y"
    )
    assert redact_text("got ['nats://u:pw@127.0.0.1:1']") == "got ['nats://***@127.0.0.1:1']"
    assert redact_text("user@example.com") == "user@example.com"
