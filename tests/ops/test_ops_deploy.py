"""deploy/ files: the node1 config validates, the dashboard uses real metric names."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from mdd.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def test_node1_config_passes_check_config() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mdd", "check-config", str(DEPLOY / "node1.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    config = load_config(DEPLOY / "node1.toml", env={})
    (feed,) = config.feeds
    assert feed.providers == ("binance", "bybit")
    assert feed.symbols == ("BTCUSDT", "ETHUSDT")
    assert feed.channels == ("trade", "quote")
    assert set(config.sinks.enabled()) == {"sqlite", "jsonl", "metrics", "log", "nats"}
    assert config.http.host == "127.0.0.1"
    assert str(config.resolve_path(config.daemon.control_socket)) == "/run/mdd/mdd.sock"


def test_node1_config_comments_every_key() -> None:
    for number, line in enumerate((DEPLOY / "node1.toml").read_text().splitlines(), 1):
        if re.match(r"^[a-z_]+ = ", line):
            assert "#" in line, f"node1.toml:{number}: key without a comment: {line}"


def test_dashboard_uses_metrics_mdd_defines() -> None:
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    source = (ROOT / "mdd" / "metrics.py").read_text()
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(exprs) >= 20
    names = {n for e in exprs for n in re.findall(r"\b(?:market|mdd)_[a-z_]+\b", e)}
    for required in (
        "market_events_total",
        "market_exchange_latency_ms_bucket",
        "market_events_per_second",
        "market_gaps_total",
        "mdd_failovers_total",
        "mdd_bus_fill_ratio",
        "mdd_bus_dropped_total",
        "mdd_provider_state",
    ):
        assert required in names, required
    for name in names:
        base = re.sub(r"_(total|bucket|sum|count)$", "", name)
        assert f'"{base}' in source, f"{name} is not a metric mdd defines"


def test_env_example_lists_every_variable() -> None:
    text = (ROOT / ".env.example").read_text()
    for name in (
        "NATS_URL",
        "NATS_ENABLED",
        "NATS_SUBJECT_PREFIX",
        "HTTP_PORT",
        "ALPACA_KEY",
        "ALPACA_SECRET",
        "ALPACA_DRY_RUN",
        "USE_JETSTREAM",
        "MDD_DAEMON__LOG_LEVEL",
        "MDD_SINKS__SQLITE__PATH",
    ):
        assert re.search(rf"^#? ?{name}=", text, re.MULTILINE), name
    env = {
        line.split("=", 1)[0]: line.split("=", 1)[1]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    load_config(DEPLOY / "node1.toml", env=env)  # the example values are valid


def test_compose_runs_nats_with_jetstream_and_mdd() -> None:
    text = (DEPLOY / "docker-compose.node1.yml").read_text()
    assert '"-js"' in text
    assert "nats://nats:4222" in text
    assert "dockerfile: deploy/Dockerfile" in text
    assert '"127.0.0.1:8891:8891"' in text
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "USER mdd" in dockerfile
    assert 'CMD ["--config", "/etc/mdd/node1.toml"]' in dockerfile
