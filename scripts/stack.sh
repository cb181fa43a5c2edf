#!/usr/bin/env bash
# Runs the app's whole topology locally under .stack/ (gitignored):
#   2 shards x (Postgres 15 primary + streaming replica, each run by `scaled-instance run` as in a
#   pod: SCRAM passwords, the replica cloned through its own slot), one Redis,
#   then `scaled-app migrate`, `scaled-app serve` and `scaled-app worker` in the background.
#
#   scripts/stack.sh up      start everything (fresh), wait until /ready, print the endpoints
#   scripts/stack.sh down    stop everything and delete .stack/
#   scripts/stack.sh status  show what is running
#
# Ports (override with env): PG_PORT_BASE (55432: primary0, replica0, primary1, replica1),
# STATUS_PORT_BASE (58008: the instance managers' /status, same order), REDIS_PORT (56379),
# HTTP_PORT (8080), METRICS_PORT (9090), WORKER_METRICS_PORT (9091).
# PROFILE=release|dev picks the build (release by default; the benchmark needs it).
# Passwords are generated into .stack/passwords.env (mode 0600); the app role's alone is in
# .stack/app-password (`PGPASSWORD=$(cat .stack/app-password) psql -h 127.0.0.1 -p 55432 -U app app`).
# Postgres refuses to run as root, so as root the servers run as user $SERVICE_USER.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STACK="$ROOT/.stack"
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PG_PORT_BASE=${PG_PORT_BASE:-55432}
STATUS_PORT_BASE=${STATUS_PORT_BASE:-58008}
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

# Like as_service, but exec'ing (no runuser parent that would SIGKILL the child 2 s after
# forwarding a SIGTERM): the pid of the background job is the program's own.
exec_as_service() {
  if [ "$(id -u)" -eq 0 ]; then
    exec setpriv --reuid="$SERVICE_USER" --regid="$SERVICE_USER" --init-groups -- "$@"
  else
    exec "$@"
  fi
}

binary() { # name
  if [ "$PROFILE" = release ]; then echo "$ROOT/target/release/$1"; else echo "$ROOT/target/debug/$1"; fi
}

pg_port() { # shard ordinal(0 primary, 1 replica)
  echo $((PG_PORT_BASE + 2 * $1 + $2))
}

status_port() { # shard ordinal
  echo $((STATUS_PORT_BASE + 2 * $1 + $2))
}

secret() { head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

start_instance() { # shard ordinal
  local shard=$1 ordinal=$2 pod="shard$1-$2" instance
  instance=$(binary scaled-instance)
  mkdir -p "$STACK/$pod" "$STACK/sockets/$pod"
  cat > "$STACK/$pod.json" <<JSON
{"schemaVersion": 1, "scaledApp": "stack", "dataDir": "$STACK/$pod/pgdata", "binDir": "$PG_BIN",
 "database": "app", "appUser": "app", "replicationUser": "replicator", "instances": 2,
 "parameters": {"max_connections": "300", "shared_buffers": "128MB"},
 "synchronousReplication": false, "fenceAfterSeconds": 3600,
 "postgresPort": $(pg_port "$shard" "$ordinal"), "statusPort": $(status_port "$shard" "$ordinal")}
JSON
  [ "$(id -u)" -eq 0 ] && chown -R "$SERVICE_USER:" "$STACK/$pod" "$STACK/sockets/$pod"
  (
    set -a
    # shellcheck disable=SC1091
    . "$STACK/passwords.env"
    set +a
    SCALED_POD_NAME=$pod SCALED_NAMESPACE=local SCALED_SHARD=$shard \
      exec_as_service "$instance" run --config "$STACK/$pod.json" \
      --primary-file "$STACK/shard$shard.primary" --socket-dir "$STACK/sockets/$pod" \
      --http-address 127.0.0.1 --listen-addresses 127.0.0.1 \
      --peer "shard$shard-0=127.0.0.1:$(pg_port "$shard" 0)" \
      --peer "shard$shard-1=127.0.0.1:$(pg_port "$shard" 1)"
  ) > "$STACK/$pod.log" 2>&1 < /dev/null &
  echo $! > "$STACK/$pod.pid"
}

wait_ready() { # shard ordinal
  local pod="shard$1-$2"
  for _ in $(seq 1 600); do
    curl -fsS "http://127.0.0.1:$(status_port "$1" "$2")/readyz" >/dev/null 2>&1 && return 0
    running "$STACK/$pod.pid" || die "$pod's instance manager exited; see $STACK/$pod.log"
    sleep 0.2
  done
  die "$pod did not become ready; see $STACK/$pod.log"
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

up() {
  [ -d "$STACK" ] && die ".stack exists (already up?); run 'scripts/stack.sh down' first"
  command -v redis-server >/dev/null || die "redis-server missing; run scripts/install-deps.sh"
  [ -x "$PG_BIN/postgres" ] || die "Postgres 15 missing at $PG_BIN"

  log "building scaled-app and scaled-instance ($PROFILE)"
  if [ "$PROFILE" = release ]; then
    (cd "$ROOT" && cargo build --release -q -p scaled-app -p scaled-instance)
  else
    (cd "$ROOT" && cargo build -q -p scaled-app -p scaled-instance)
  fi
  local app; app=$(binary scaled-app)

  if [ "$(id -u)" -eq 0 ] && ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin "$SERVICE_USER"
  fi
  mkdir -p "$STACK/sockets"
  [ "$(id -u)" -eq 0 ] && chown "$SERVICE_USER:" "$STACK" "$STACK/sockets"
  local app_password; app_password=$(secret)
  (
    umask 077
    printf '%s' "$app_password" > "$STACK/app-password"
    printf 'SCALED_SUPERUSER_PASSWORD=%s\nSCALED_REPLICATION_PASSWORD=%s\nSCALED_DATABASE_PASSWORD=%s\n' \
      "$(secret)" "$(secret)" "$app_password" > "$STACK/passwords.env"
  )

  local shard_args=()
  for shard in $(seq 0 $((SHARDS - 1))); do
    log "shard $shard: primary :$(pg_port "$shard" 0), replica :$(pg_port "$shard" 1) (instance managers :$(status_port "$shard" 0), :$(status_port "$shard" 1))"
    echo "shard$shard-0" > "$STACK/shard$shard.primary"
    start_instance "$shard" 0
    start_instance "$shard" 1
    shard_args+=(--shard "127.0.0.1:$(pg_port "$shard" 0),127.0.0.1:$(pg_port "$shard" 1)")
  done
  for shard in $(seq 0 $((SHARDS - 1))); do
    wait_ready "$shard" 0
    wait_ready "$shard" 1
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
  export SCALED_DATABASE_PASSWORD="$app_password"
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
      log "config: $STACK/config.json; logs: $STACK/*.log; app role's password: $STACK/app-password; stop: scripts/stack.sh down"
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
  # SIGTERM: each instance manager stops its Postgres with a fast shutdown, then exits.
  for pidfile in "$STACK"/shard*-1.pid "$STACK"/shard*-0.pid; do
    [ -f "$pidfile" ] && running "$pidfile" && kill -TERM "$(cat "$pidfile")"
  done
  for pidfile in "$STACK"/shard*-?.pid; do
    [ -f "$pidfile" ] || continue
    for _ in $(seq 1 600); do running "$pidfile" || break; sleep 0.1; done
    running "$pidfile" && log "$(basename "$pidfile" .pid) did not stop; killing it" && kill -KILL "$(cat "$pidfile")"
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
  for shard in $(seq 0 $((SHARDS - 1))); do
    for ordinal in 0 1; do
      local pod="shard$shard-$ordinal" document
      if document=$(curl -fsS "http://127.0.0.1:$(status_port "$shard" "$ordinal")/status" 2>/dev/null); then
        log "$pod: $document"
      else
        log "$pod: not answering"
      fi
    done
  done
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) die "usage: $0 up|down|status" ;;
esac
