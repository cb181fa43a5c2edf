#!/usr/bin/env bash
# App benchmark (not a test): wrk against the local stack (scripts/stack.sh, release build) with
# 100,000 users, plus two ceilings measured in the same run on the same machine:
#   - nginx serving a small static JSON file (what "a cached GET" could at best be);
#   - pgbench with a one-row INSERT script at the same client count (what "a write" could be).
# Prints a Markdown table (rps, p50, p99) to stdout and to .stack/bench/results.md.
#
# Env: CONNECTIONS (64), DURATION (20s), USERS (100000), HOT_USERS (1000), THREADS (2),
#      WARMUP (30s: uniform reads before measuring, so L2 is in its steady state).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STACK="$ROOT/.stack"
OUT="$STACK/bench"
CONNECTIONS=${CONNECTIONS:-64}
DURATION=${DURATION:-20s}
USERS=${USERS:-100000}
HOT_USERS=${HOT_USERS:-1000}
THREADS=${THREADS:-2}
WARMUP=${WARMUP:-30s}
HTTP_PORT=${HTTP_PORT:-8080}
NGINX_PORT=${NGINX_PORT:-58080}
PG_PORT_BASE=${PG_PORT_BASE:-55432}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
APP="$ROOT/target/release/scaled-app"
BASE="http://127.0.0.1:$HTTP_PORT"

log() { printf 'bench: %s\n' "$*" >&2; }

for tool in wrk nginx curl; do
  command -v "$tool" >/dev/null || { log "$tool missing; run scripts/install-deps.sh"; exit 1; }
done
if ! curl -fsS "$BASE/ready" >/dev/null 2>&1; then
  log "starting the stack"
  PROFILE=release "$ROOT/scripts/stack.sh" up
fi
mkdir -p "$OUT"
export SCALED_CONFIG="$STACK/config.json"
SCALED_SESSION_SECRET=$(cat "$STACK/session-secret")
export SCALED_SESSION_SECRET
# The stack's Postgres asks for passwords (SCRAM): the app role's for `seed`, psql and pgbench.
SCALED_DATABASE_PASSWORD=$(cat "$STACK/app-password")
export SCALED_DATABASE_PASSWORD PGPASSWORD="$SCALED_DATABASE_PASSWORD"

if [ ! -s "$OUT/ids.txt" ] || [ "$(wc -l < "$OUT/ids.txt")" -lt "$USERS" ]; then
  log "seeding $USERS users"
  "$APP" seed --users "$USERS" --concurrency 32 --output "$OUT/ids.txt"
fi

# wrk scripts read the ids once per thread.
lua_ids() { # count
  cat <<LUA
local ids = {}
for line in io.lines("$OUT/ids.txt") do
  ids[#ids + 1] = line
  if #ids >= $1 then break end
end
math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)"), 16) % 100000)
LUA
}
{ lua_ids "$HOT_USERS"; echo 'request = function() return wrk.format("GET", "/api/users/" .. ids[math.random(#ids)]) end'; } > "$OUT/hot.lua"
{ lua_ids "$USERS"; echo 'request = function() return wrk.format("GET", "/api/users/" .. ids[math.random(#ids)]) end'; } > "$OUT/uniform.lua"
{
  lua_ids "$USERS"
  cat <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  local body = '{"user_id":' .. ids[math.random(#ids)] .. ',"items":[{"sku":"bench","quantity":1}],"total":9.99}'
  return wrk.format("POST", "/api/orders", nil, body)
end
LUA
} > "$OUT/orders.lua"
# wrk output -> "rps p50 p99" (latencies in ms).
measure() { # name url script-or-empty
  local name=$1 url=$2 script=${3:-}
  local args=(-t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency)
  [ -n "$script" ] && args+=(-s "$script")
  log "wrk $name"
  wrk "${args[@]}" "$url" > "$OUT/$name.txt" 2>&1
  awk -v name="$name" '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /^ +50%/ { p50 = ms($2) } /^ +99%/ { p99 = ms($2) } /^Requests\/sec/ { rps = $2 }
    /Non-2xx/ { bad = $NF }
    END { printf "%s %.0f %.2f %.2f %s\n", name, rps, p50, p99, (bad == "" ? 0 : bad) }' "$OUT/$name.txt"
}

# Ceiling 1: nginx with a static JSON of the same size as a user.
sample=$(curl -fsS "$BASE/api/users/$(head -n1 "$OUT/ids.txt")")
printf '%s' "$sample" > "$OUT/user.json"
cat > "$OUT/nginx.conf" <<NGINX
worker_processes 2;
pid $OUT/nginx.pid;
error_log $OUT/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location = /user.json { default_type application/json; root $OUT; }
  }
}
NGINX
nginx -c "$OUT/nginx.conf"
trap 'nginx -c "$OUT/nginx.conf" -s stop 2>/dev/null || true' EXIT
sleep 0.5

# Warm the caches: the hot set (the cached-GET case measures the cache, not its first fill) and
# L2 for the uniform case (in production L2 holds every recently read user for an hour).
wrk -t"$THREADS" -c"$CONNECTIONS" -d3s -s "$OUT/hot.lua" "$BASE" > /dev/null 2>&1
log "warming L2 for $WARMUP"
wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" -s "$OUT/uniform.lua" "$BASE" > /dev/null 2>&1

results=()
results+=("$(measure nginx-static "http://127.0.0.1:$NGINX_PORT/user.json")")
results+=("$(measure cached-get "$BASE" "$OUT/hot.lua")")
results+=("$(measure uniform-get "$BASE" "$OUT/uniform.lua")")
results+=("$(measure post-orders "$BASE" "$OUT/orders.lua")")

# Ceiling 2: pgbench, one-row INSERT, same client count, on shard 0's primary.
"$PG_BIN/psql" -q -h 127.0.0.1 -p "$PG_PORT_BASE" -U app -d app \
  -c 'CREATE TABLE IF NOT EXISTS bench_inserts (id bigserial PRIMARY KEY, user_id bigint NOT NULL, total_cents bigint NOT NULL, created_at timestamptz NOT NULL DEFAULT now())'
cat > "$OUT/insert.sql" <<'SQL'
\set user_id random(1, 100000)
INSERT INTO bench_inserts (user_id, total_cents) VALUES (:user_id, 999);
SQL
seconds=${DURATION%s}
log "pgbench insert"
"$PG_BIN/pgbench" -n -c "$CONNECTIONS" -j "$THREADS" -T "$seconds" -r -f "$OUT/insert.sql" \
  -h 127.0.0.1 -p "$PG_PORT_BASE" -U app app > "$OUT/pgbench.txt" 2>&1 || true
pgbench_tps=$(awk '/^tps = / { printf "%.0f", $3 }' "$OUT/pgbench.txt")
pgbench_avg=$(awk '/^latency average/ { print $4 }' "$OUT/pgbench.txt")
"$PG_BIN/psql" -q -h 127.0.0.1 -p "$PG_PORT_BASE" -U app -d app -c 'DROP TABLE bench_inserts'

{
  echo "| case | requests/s | p50 ms | p99 ms | non-2xx |"
  echo "| --- | ---: | ---: | ---: | ---: |"
  for row in "${results[@]}"; do
    read -r name rps p50 p99 bad <<< "$row"
    echo "| $name | $rps | $p50 | $p99 | $bad |"
  done
  echo "| pgbench-insert (one row, shard 0) | ${pgbench_tps:-?} | avg ${pgbench_avg:-?} | - | - |"
  echo
  echo "connections $CONNECTIONS, threads $THREADS, duration $DURATION, users $(wc -l < "$OUT/ids.txt"), hot set $HOT_USERS, $(nproc) cores"
} | tee "$OUT/results.md"
