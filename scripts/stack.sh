#!/usr/bin/env bash
# Runs the app's whole topology locally under .stack/ (gitignored):
#   2 shards x (Postgres 15 primary + streaming replica made with pg_basebackup -R), one Redis,
#   then `scaled-app migrate`, `scaled-app serve` and `scaled-app worker` in the background.
#
#   scripts/stack.sh up      start everything (fresh), wait until /ready, print the endpoints
#   scripts/stack.sh down    stop everything and delete .stack/
#   scripts/stack.sh status  show what is running
#
# Ports (override with env): PG_PORT_BASE (55432: primary0, replica0, primary1, replica1),
# REDIS_PORT (56379), HTTP_PORT (8080), METRICS_PORT (9090), WORKER_METRICS_PORT (9091).
# PROFILE=release|dev picks the build (release by default; the benchmark needs it).
# Postgres refuses to run as root, so as root the servers run as user $SERVICE_USER.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STACK="$ROOT/.stack"
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PG_PORT_BASE=${PG_PORT_BASE:-55432}
REDIS_PORT=${REDIS_PORT:-56379}
HTTP_PORT=${HTTP_PORT:-8080}
METRICS_PORT=${METRICS_PORT:-9090}
WORKER_METRICS_PORT=${WORKER_METRICS_PORT:-9091}
PROFILE=${PROFILE:-release}
SERVICE_USER=${SERVICE_USER:-scaledtest}
SHARDS=2

log() { printf 'stack: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

as_service() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u "$SERVICE_USER" -- "$@"; else "$@"; fi
}

binary() {
  if [ "$PROFILE" = release ]; then echo "$ROOT/target/release/scaled-app"; else echo "$ROOT/target/debug/scaled-app"; fi
}

pg_port() { # shard role(0 primary, 1 replica)
  echo $((PG_PORT_BASE + 2 * $1 + $2))
}

start_pg() { # data-dir port
  as_service "$PG_BIN/pg_ctl" -D "$1" -l "$1.log" -w -t 60 \
    -o "-p $2 -c listen_addresses=127.0.0.1 -k $STACK/sockets -c max_connections=300 -c shared_buffers=128MB" start >/dev/null
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

up() {
  [ -d "$STACK" ] && die ".stack exists (already up?); run 'scripts/stack.sh down' first"
  command -v redis-server >/dev/null || die "redis-server missing; run scripts/install-deps.sh"
  [ -x "$PG_BIN/initdb" ] || die "Postgres 15 missing at $PG_BIN"

  log "building scaled-app ($PROFILE)"
  if [ "$PROFILE" = release ]; then
    (cd "$ROOT" && cargo build --release -q -p scaled-app)
  else
    (cd "$ROOT" && cargo build -q -p scaled-app)
  fi
  local app; app=$(binary)

  if [ "$(id -u)" -eq 0 ] && ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin "$SERVICE_USER"
  fi
  mkdir -p "$STACK/sockets"
  [ "$(id -u)" -eq 0 ] && chown -R "$SERVICE_USER:" "$STACK"

  local shard_args=()
  for shard in $(seq 0 $((SHARDS - 1))); do
    local primary="$STACK/shard$shard-primary" replica="$STACK/shard$shard-replica"
    local primary_port replica_port
    primary_port=$(pg_port "$shard" 0)
    replica_port=$(pg_port "$shard" 1)
    log "shard $shard: primary :$primary_port, replica :$replica_port"
    as_service "$PG_BIN/initdb" -D "$primary" -U app --auth=trust -E UTF8 --locale=C >/dev/null
    start_pg "$primary" "$primary_port"
    as_service "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$primary_port" -U app -D "$replica" -R -X stream -c fast
    start_pg "$replica" "$replica_port"
    "$PG_BIN/psql" -q -h 127.0.0.1 -p "$primary_port" -U app -d postgres -c 'CREATE DATABASE app'
    shard_args+=(--shard "127.0.0.1:$primary_port,127.0.0.1:$replica_port")
  done

  log "redis :$REDIS_PORT"
  # The persistence and memory policy the operator deploys by default (AOF fsynced every second).
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --appendonly yes --appendfsync everysec \
    --maxmemory 256mb --maxmemory-policy volatile-lru --daemonize yes \
    --pidfile "$STACK/redis.pid" --logfile "$STACK/redis.log" --dir "$STACK"

  "$app" local-config "${shard_args[@]}" --redis "redis://127.0.0.1:$REDIS_PORT/0" \
    --http-port "$HTTP_PORT" --metrics-port "$METRICS_PORT" > "$STACK/config.json"
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$STACK/session-secret"
  # Worker processes get their own copy so their metrics port differs from the server's.
  sed "s/\"metricsPort\": $METRICS_PORT/\"metricsPort\": $WORKER_METRICS_PORT/" "$STACK/config.json" > "$STACK/worker-config.json"

  export SCALED_SESSION_SECRET; SCALED_SESSION_SECRET=$(cat "$STACK/session-secret")
  export SCALED_CONFIG="$STACK/config.json"
  log "migrating"
  "$app" migrate
  log "serving on :$HTTP_PORT (metrics :$METRICS_PORT)"
  SCALED_POD_NAME=local-server nohup "$app" serve > "$STACK/app.log" 2>&1 &
  echo $! > "$STACK/app.pid"
  SCALED_CONFIG="$STACK/worker-config.json" SCALED_POD_NAME=local-worker \
    nohup "$app" worker --concurrency 2 > "$STACK/worker.log" 2>&1 &
  echo $! > "$STACK/worker.pid"

  for _ in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:$HTTP_PORT/ready" >/dev/null 2>&1; then
      log "ready: http://127.0.0.1:$HTTP_PORT  metrics: http://127.0.0.1:$METRICS_PORT/metrics"
      log "config: $STACK/config.json; logs: $STACK/*.log; stop: scripts/stack.sh down"
      return 0
    fi
    sleep 0.2
  done
  die "the app did not become ready; see $STACK/app.log"
}

down() {
  [ -d "$STACK" ] || { log "nothing to stop"; return 0; }
  for name in app worker; do
    if running "$STACK/$name.pid"; then
      kill -TERM "$(cat "$STACK/$name.pid")"
      for _ in $(seq 1 50); do running "$STACK/$name.pid" || break; sleep 0.1; done
    fi
  done
  for data in "$STACK"/shard*-replica "$STACK"/shard*-primary; do
    [ -d "$data" ] && as_service "$PG_BIN/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1 || true
  done
  if running "$STACK/redis.pid"; then
    kill -TERM "$(cat "$STACK/redis.pid")"
    for _ in $(seq 1 50); do running "$STACK/redis.pid" || break; sleep 0.1; done
  fi
  rm -rf "$STACK"
  log "stopped"
}

status() {
  [ -d "$STACK" ] || { log "down"; return 0; }
  for name in app worker redis; do
    if running "$STACK/$name.pid"; then log "$name: running (pid $(cat "$STACK/$name.pid"))"; else log "$name: stopped"; fi
  done
  for data in "$STACK"/shard*-primary "$STACK"/shard*-replica; do
    if as_service "$PG_BIN/pg_ctl" -D "$data" status >/dev/null 2>&1; then log "$(basename "$data"): running"; else log "$(basename "$data"): stopped"; fi
  done
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) die "usage: $0 up|down|status" ;;
esac
