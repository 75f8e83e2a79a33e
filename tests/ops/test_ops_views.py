"""The shared status views: redaction, the serving rule, the event-rate meter."""

from __future__ import annotations

from pathlib import Path

from ops_helpers import ops_config

from mdd.services import RateMeter, redact, secrets_of, serving


def test_redact_replaces_secrets_and_url_credentials() -> None:
    value = {
        "a": "auth failed for key K3Y-123 and secret S3CR3T",
        "b": ["nats://alice:pw@10.0.0.1:4222 refused", 5, None],
        "c": {"d": "wss://stream.example.com/ws fine"},
    }
    out = redact(value, ["K3Y-123", "S3CR3T"])
    assert out == {
        "a": "auth failed for key *** and secret ***",
        "b": ["nats://***@10.0.0.1:4222 refused", 5, None],
        "c": {"d": "wss://stream.example.com/ws fine"},
    }


def test_secrets_of_reads_every_provider(tmp_path: Path) -> None:
    providers = {
        "sim": {},
        "sim2": {"kind": "sim"},
        "alpaca": {"key": "short", "secret": "a-longer-secret"},
    }
    config = ops_config(tmp_path, providers=providers)
    assert secrets_of(config) == ["a-longer-secret", "short"]


def test_serving_rule() -> None:
    base = {"connected": True, "subscribed": True, "messages": 10, "last_message_age": 1.0}
    assert serving({**base, "state": "up"}, 10.0)
    # Degraded by churn but data still flowing: serves.
    assert serving({**base, "state": "degraded"}, 10.0)
    # Warming up (no data yet) or silent for too long: does not.
    assert not serving({**base, "state": "degraded", "messages": 0}, 10.0)
    assert not serving({**base, "state": "degraded", "last_message_age": 12.0}, 10.0)
    assert not serving({**base, "state": "degraded", "subscribed": False}, 10.0)
    assert not serving({**base, "state": "down"}, 10.0)


def test_rate_meter_slope_over_the_window() -> None:
    meter = RateMeter(window=3)
    assert meter.rate() == 0.0
    meter.sample(0.0, 0)
    assert meter.rate() == 0.0
    for t in range(1, 6):
        meter.sample(float(t), 100 * t)
    assert meter.rate() == 100.0
    meter.sample(6.0, 500)  # nothing new in the last second
    assert meter.rate() == (500 - 300) / 3
