"""mdd-consumer never shows the user and password of its NATS URL."""

from __future__ import annotations

import logging
import socket
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from mdd.consumer.cli import main
from mdd.consumer.config import load_consumer_config
from mdd.consumer.service import ConsumerService
from mdd.consumer.subscriber import NatsUnavailableError

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "senpai.toml"
PASSWORD = "CONSLEAK"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _url(port: int) -> str:
    return f"nats://u:{PASSWORD}@127.0.0.1:{port}"


def _drive(coro: Coroutine[Any, Any, None]) -> None:
    """Run a callback coroutine that never awaits anything."""
    with pytest.raises(StopIteration):
        coro.send(None)


def test_check_config_hides_nats_env_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NATS_URL", _url(4222))
    assert main(["check-config", str(DEPLOY)]) == 0
    out = capsys.readouterr()
    assert "nats://***@127.0.0.1:4222" in out.out
    assert PASSWORD not in out.out + out.err


@pytest.mark.usefixtures("restore_root_logging")
def test_cli_run_log_hides_nats_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], taken_port: int
) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(f"[http]\nport = {taken_port}\n")
    assert main(["--config", str(conf), "--nats-url", _url(_closed_port())]) == 1
    err = capsys.readouterr().err
    assert "consumer.starting" in err
    assert "nats=nats://***@127.0.0.1:" in err
    assert PASSWORD not in err


def test_subscriber_logs_and_errors_hide_password(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    svc = ConsumerService(load_consumer_config(None, env={}, overrides={"nats.url": _url(4222)}))
    _drive(svc.nats._on_disconnected())
    _drive(svc.nats._on_reconnected())
    assert "nats.disconnected url=nats://***@127.0.0.1:4222" in caplog.text
    assert "nats.reconnected" in caplog.text
    assert PASSWORD not in caplog.text
    assert svc.stats()["nats"]["url"] == "nats://***@127.0.0.1:4222"
    exc = NatsUnavailableError(_url(4222), f"OSError: connect to {_url(4222)} failed")
    assert PASSWORD not in str(exc)
    assert PASSWORD not in exc.url


async def test_stats_and_connect_failure_hide_password(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    cfg = load_consumer_config(
        None,
        env={},
        overrides={"nats.url": _url(_closed_port()), "http.port": 0, "nats.connect_timeout": 0.5},
    )
    svc = ConsumerService(cfg)
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(svc.run)
            while not svc.http_binds:  # noqa: ASYNC110 -- run() starts HTTP first
                await trio.sleep(0.01)
            async with httpx.AsyncClient(base_url=svc.http_binds[0]) as client:
                r = await client.get("/stats")
            svc.request_stop("test")
    assert r.status_code == 200
    assert r.json()["nats"]["url"].startswith("nats://***@127.0.0.1:")
    assert PASSWORD not in r.text
    assert PASSWORD not in caplog.text
