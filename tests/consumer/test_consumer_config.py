"""deploy/senpai.toml, validation errors, the NATS_URL override and the CLI exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from mdd.consumer.cli import main
from mdd.consumer.config import ConsumerConfig, load_consumer_config
from mdd.errors import ConfigError

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "senpai.toml"


def test_deploy_file_is_valid_and_matches_defaults() -> None:
    cfg = load_consumer_config(DEPLOY, env={})
    assert attrs_equal_ignoring_source(cfg, ConsumerConfig())
    assert cfg.nats.subject == "md.events.>"
    assert cfg.nats.queue_group == "senpai-md"
    assert (cfg.http.host, cfg.http.port) == ("127.0.0.1", 8892)
    assert (cfg.window.seconds, cfg.window.short_return_seconds) == (60.0, 10.0)
    assert cfg.publish.features_prefix == "senpai.features"


def attrs_equal_ignoring_source(a: ConsumerConfig, b: ConsumerConfig) -> bool:
    import attrs

    return attrs.evolve(a, source="x") == attrs.evolve(b, source="x")


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "senpai.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[nats]\nurll = 'x'\n", "nats.urll", "unknown key; allowed keys here:"),
        ("[natz]\n", "natz", "unknown section"),
        ("[http]\nport = 70000\n", "http.port", "must be a TCP port"),
        ("[window]\nseconds = 0\n", "window.seconds", "must be > 0"),
        ("[window]\nseconds = 5\nshort_return_seconds = 10\n", "window.short_return_seconds", "<="),
        ("[signals]\ncooldown = 'soon'\n", "signals.cooldown", "expected a number"),
        ("[publish]\nfeatures_prefix = 'senpai.>'\n", "publish.features_prefix", "prefix"),
        ("[alerts]\nlatency_ms = -1\n", "alerts.latency_ms", "must be > 0"),
        ("[publish]\nfeatures_burst = 0.5\n", "publish.features_burst", "must be >= 1"),
        ("nats = 3\n", "nats", "expected a table"),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, text: str, key: str, problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_consumer_config(path, env={})
    assert info.value.source == str(path)
    assert info.value.key == key
    assert problem in info.value.problem


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_consumer_config(write(tmp_path, "[nats\n"), env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_consumer_config(tmp_path / "absent.toml", env={})


def test_env_and_flags_override(tmp_path: Path) -> None:
    path = write(tmp_path, "[nats]\nurl = 'nats://file:1'\n")
    cfg = load_consumer_config(path, env={"NATS_URL": "nats://env:2"})
    assert cfg.nats.url == "nats://env:2"
    cfg = load_consumer_config(
        path, env={"NATS_URL": "nats://env:2"}, overrides={"nats.url": "nats://flag:3"}
    )
    assert cfg.nats.url == "nats://flag:3"
    with pytest.raises(ConfigError) as info:
        load_consumer_config(None, env={}, overrides={"http.port": -5})
    assert info.value.source == "command line"


def test_cli_check_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(DEPLOY)]) == 0
    assert "valid" in capsys.readouterr().out
    bad = write(tmp_path, "[http]\nprot = 1\n")
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: http.prot: unknown key" in err


def test_cli_usage(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["--help"]) == 0
    assert "mdd-consumer" in capsys.readouterr().out
    assert main(["--bogus"]) == 2
    assert main(["check-config"]) == 2
    # An invalid config for a run is a usage error too (exit 2), before anything starts.
    assert main(["--config", str(write(tmp_path, "[window]\nseconds = -1\n"))]) == 2
    assert "window.seconds" in capsys.readouterr().err


@pytest.mark.usefixtures("restore_root_logging")
def test_cli_run_fails_with_exit_1_when_port_is_taken(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], taken_port: int
) -> None:
    port = taken_port
    conf = write(tmp_path, f"[http]\nport = {port}\n[nats]\nurl = 'nats://127.0.0.1:1'\n")
    assert main(["--config", str(conf)]) == 1
    err = capsys.readouterr().err
    assert "consumer.failed" in err
    assert f"HttpBindError: cannot listen on 127.0.0.1:{port}" in err
