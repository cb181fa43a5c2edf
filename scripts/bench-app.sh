#!/usr/bin/env bash
# App benchmark (not a test): wrk against the local stack (scripts/stack.sh, release build) with
# 100,000 users, plus two ceilings measured in the same run on the same machine:
#   - nginx serving a small static JSON file (what "a cached GET" could at best be);
#   - pgbench with a one-row INSERT script at the same client count (what "a write" could be).
# Orders need a signed-in user: before the order case every seeded user gets a fresh session
# (`scaled-app open-sessions`: what a sign-in does, without 100,000 password hashes), and each
# request carries the cookie of a random one. A run where any order request is not answered 2xx,
# or no order is accepted, fails.
# After the order case it waits for the outbox and the queues to drain and checks that every
# accepted order produced exactly one e-mail and one analytics count (a run where they differ
# fails), and it reports commits and WAL flushes per order and the app's memory.
# Prints the result table to stdout and to .stack/bench/results.md.
#
# Env: CONNECTIONS (64), DURATION (20s), USERS (100000), HOT_USERS (1000), THREADS (2),
#      WARMUP (30s: uniform reads before measuring, so L2 is in its steady state),
#      DRAIN_TIMEOUT (300: seconds to wait for the queues after the order case).
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
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-300}
HTTP_PORT=${HTTP_PORT:-8080}
METRICS_PORT=${METRICS_PORT:-9090}
NGINX_PORT=${NGINX_PORT:-58080}
PG_PORT_BASE=${PG_PORT_BASE:-55432}
REDIS_PORT=${REDIS_PORT:-56379}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
SHARDS=2
APP="$ROOT/target/release/scaled-app"
BASE="http://127.0.0.1:$HTTP_PORT"

log() { printf 'bench: %s\n' "$*" >&2; }
load() { awk '{ print $1 }' /proc/loadavg; }

for tool in wrk nginx curl redis-cli; do
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

# psql on shard N's primary; prints the bare value.
sql() { # shard query
  "$PG_BIN/psql" -qtAX -h 127.0.0.1 -p $((PG_PORT_BASE + 2 * $1)) -U app -d app -c "$2"
}
# The sum of an integer query over every shard primary.
sql_sum() { # query
  local total=0 value shard
  for shard in $(seq 0 $((SHARDS - 1))); do
    value=$(sql "$shard" "$1")
    total=$((total + ${value:-0}))
  done
  echo "$total"
}
redis() { redis-cli -p "$REDIS_PORT" "$@"; }

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
# Orders as a random signed-in user: the buyer is the session's user (the body names none).
# sessions.txt (`<id>\t<cookie name>=<session id>` lines) is written just before the order case.
cat > "$OUT/orders.lua" <<LUA
local cookies = {}
for line in io.lines("$OUT/sessions.txt") do
  cookies[#cookies + 1] = line:match("\t(.+)\$")
  if #cookies >= $USERS then break end
end
math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)"), 16) % 100000)
local body = '{"items":[{"sku":"bench","quantity":1}],"total":9.99}'
local headers = { ["Content-Type"] = "application/json" }
request = function()
  headers["Cookie"] = cookies[math.random(#cookies)]
  return wrk.format("POST", "/api/orders", headers, body)
end
LUA
# Reads every user once (each wrk thread walks its share of the ids): fills L2. wrk runs until
# the app has counted that many reads (wrk itself only stops at the end of its duration).
{
  lua_ids "$USERS"
  cat <<LUA
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("first", threads)
end
local step = $THREADS
local next_index = nil
request = function()
  next_index = next_index or first
  local id = ids[next_index] or ids[#ids]
  next_index = next_index + step
  return wrk.format("GET", "/api/users/" .. id)
end
LUA
} > "$OUT/fill.lua"
# wrk output -> "name rps p50 p99 failed load" (latencies in ms; failed = non-2xx responses plus
# socket errors and timeouts; load = the 1-minute load average when the case started).
measure() { # name url script-or-empty
  local name=$1 url=$2 script=${3:-} started_load
  local args=(-t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency)
  [ -n "$script" ] && args+=(-s "$script")
  started_load=$(load)
  log "wrk $name (load $started_load)"
  wrk "${args[@]}" "$url" > "$OUT/$name.txt" 2>&1
  awk -v name="$name" -v load="$started_load" '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /^ +50%/ { p50 = ms($2) } /^ +99%/ { p99 = ms($2) } /^Requests\/sec/ { rps = $2 }
    /Non-2xx/ { bad += $NF }
    /Socket errors/ { gsub(",", ""); bad += $4 + $6 + $8 + $10 }
    END { printf "%s %.0f %.2f %.2f %d %s\n", name, rps, p50, p99, bad, load }' "$OUT/$name.txt"
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

# Warm the caches: every user once, so L2 holds them all (in production L2 keeps every recently
# read user for an hour), then uniform reads for the steady state, then the hot set (the
# cached-GET case measures the cache, not its first fill).
log "reading every user once to fill L2"
user_reads() {
  curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics" |
    awk '/^http_requests_total\{.*route="\/api\/users\/\{id\}"/ { total += $NF } END { printf "%d\n", total }'
}
reads_before=$(user_reads)
wrk -t"$THREADS" -c"$CONNECTIONS" -d600s -s "$OUT/fill.lua" "$BASE" > "$OUT/fill.txt" 2>&1 &
fill=$!
while kill -0 "$fill" 2>/dev/null; do
  if [ $(($(user_reads) - reads_before)) -ge "$(wc -l < "$OUT/ids.txt")" ]; then kill -INT "$fill"; break; fi
  sleep 1
done
wait "$fill" || true
log "warming with uniform reads for $WARMUP"
wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" -s "$OUT/uniform.lua" "$BASE" > /dev/null 2>&1

declare -A row
row[nginx]=$(measure nginx-static "http://127.0.0.1:$NGINX_PORT/user.json")
wrk -t"$THREADS" -c"$CONNECTIONS" -d3s -s "$OUT/hot.lua" "$BASE" > /dev/null 2>&1
row[cached]=$(measure cached-get "$BASE" "$OUT/hot.lua")
row[uniform]=$(measure uniform-get "$BASE" "$OUT/uniform.lua")

# The order case, with what it leaves behind: counts before, WAL and commit counters of every
# primary, then the drain.
# Sessions first, anew on every run (ids.txt is kept across runs, sessions expire and Redis may
# have been restarted); this ends the sessions the previous run opened. Opened just before the
# case, they only have to outlive it: the stack's sessions live an hour since their last use.
log "opening a session for every seeded user"
"$APP" open-sessions --ids "$OUT/ids.txt" --concurrency 32 --output "$OUT/sessions.txt"
orders_query="SELECT count(*) FROM orders"
emails_query="SELECT count(*) FROM sent_emails"
events_query="SELECT COALESCE(sum(count), 0) FROM analytics_counters WHERE event = 'order_created'"
commits_query="SELECT xact_commit FROM pg_stat_database WHERE datname = 'app'"
flushes_query="SELECT wal_sync FROM pg_stat_wal"
orders_before=$(sql_sum "$orders_query")
emails_before=$(sql_sum "$emails_query")
events_before=$(sql_sum "$events_query")
commits_before=$(sql_sum "$commits_query")
flushes_before=$(sql_sum "$flushes_query")
row[orders]=$(measure post-orders "$BASE" "$OUT/orders.lua")
# measure counts non-2xx together with socket errors; a non-2xx order (401: no live session, 4xx:
# a body the handler refuses) means the case did not measure orders.
orders_non2xx=$(awk '/Non-2xx/ { bad += $NF } END { printf "%d\n", bad }' "$OUT/post-orders.txt")
[ "$orders_non2xx" -eq 0 ] ||
  log "FAILED RUN: POST /api/orders got $orders_non2xx non-2xx responses (see $OUT/post-orders.txt)"
log "waiting for the outbox and the queues to drain"
drained=no
for _ in $(seq 1 "$DRAIN_TIMEOUT"); do
  backlog=$(sql_sum "SELECT count(*) FROM outbox")
  for stream in email:send analytics:track; do
    backlog=$((backlog + $(redis XLEN "$stream")))
    pending=$(redis XPENDING "$stream" scaled-workers | head -n1)
    backlog=$((backlog + ${pending:-0}))
  done
  if [ "$backlog" -eq 0 ]; then drained=yes; break; fi
  sleep 1
done
orders=$(( $(sql_sum "$orders_query") - orders_before ))
emails=$(( $(sql_sum "$emails_query") - emails_before ))
events=$(( $(sql_sum "$events_query") - events_before ))
commits=$(( $(sql_sum "$commits_query") - commits_before ))
flushes=$(( $(sql_sum "$flushes_query") - flushes_before ))
dead=$(( $(redis XLEN email:send:dead) + $(redis XLEN analytics:track:dead) ))

# Ceiling 2: pgbench, one-row INSERT, same client count, on shard 0's primary.
sql 0 'CREATE TABLE IF NOT EXISTS bench_inserts (id bigserial PRIMARY KEY, user_id bigint NOT NULL, total_cents bigint NOT NULL, created_at timestamptz NOT NULL DEFAULT now())'
cat > "$OUT/insert.sql" <<'SQL'
\set user_id random(1, 100000)
INSERT INTO bench_inserts (user_id, total_cents) VALUES (:user_id, 999);
SQL
seconds=${DURATION%s}
pgbench_load=$(load)
log "pgbench insert (load $pgbench_load)"
"$PG_BIN/pgbench" -n -c "$CONNECTIONS" -j "$THREADS" -T "$seconds" -r -f "$OUT/insert.sql" \
  -h 127.0.0.1 -p "$PG_PORT_BASE" -U app app > "$OUT/pgbench.txt" 2>&1 \
  || { log "pgbench failed: no INSERT ceiling to compare with"; tail -n 20 "$OUT/pgbench.txt" >&2; exit 1; }
pgbench_tps=$(awk '/^tps = / { printf "%.0f", $3 }' "$OUT/pgbench.txt")
[[ -n "$pgbench_tps" ]] || { log "pgbench printed no tps line"; tail -n 20 "$OUT/pgbench.txt" >&2; exit 1; }
pgbench_avg=$(awk '/^latency average/ { print $4 }' "$OUT/pgbench.txt")
sql 0 'DROP TABLE bench_inserts'

# Resident memory of the app's processes at the end of the run (now, and the peak).
memory() { # pid-file
  local pid
  pid=$(cat "$1" 2>/dev/null) || { echo "? ?"; return; }
  awk '/^VmRSS/ { rss = $2 } /^VmHWM/ { peak = $2 } END { printf "%.0f %.0f\n", rss / 1024, peak / 1024 }' "/proc/$pid/status" 2>/dev/null || echo "? ?"
}
read -r serve_rss serve_peak <<< "$(memory "$STACK/app.pid")"
read -r worker_rss worker_peak <<< "$(memory "$STACK/worker.pid")"

# One table row: case rps p50 p99 failed load ceiling-rps target-share target-rps target-p99.
table_row() { # label row-text ceiling-name ceiling-rps min-share min-rps max-p99
  local label=$1 ceiling_name=$3 ceiling=$4 min_share=$5 min_rps=$6 max_p99=$7
  local name rps p50 p99 failed started
  read -r name rps p50 p99 failed started <<< "$2"
  awk -v label="$label" -v rps="$rps" -v p50="$p50" -v p99="$p99" -v failed="$failed" \
      -v started="$started" -v ceiling_name="$ceiling_name" -v ceiling="$ceiling" \
      -v min_share="$min_share" -v min_rps="$min_rps" -v max_p99="$max_p99" '
    function comma(n,   s) { s = sprintf("%d", n); while (s ~ /[0-9][0-9][0-9][0-9]/) sub(/[0-9][0-9][0-9]($|,)/, ",&", s); return s }
    BEGIN {
      share = (ceiling > 0) ? sprintf("%.0f%%", 100 * rps / ceiling) : "";
      ceiling_text = (ceiling_name == "") ? "" : ceiling_name " " comma(ceiling);
      target = ""; met = "yes";
      if (min_share > 0) { target = target ">= " min_share "% of ceiling"; if (ceiling <= 0 || 100 * rps / ceiling < min_share) met = "no" }
      if (min_rps > 0) { target = target (target == "" ? "" : ", ") ">= " comma(min_rps) " req/s"; if (rps < min_rps) met = "no" }
      if (max_p99 > 0) { target = target (target == "" ? "" : ", ") "p99 < " max_p99 " ms"; if (p99 >= max_p99) met = "no" }
      if (failed > 0) met = "no";
      if (target == "") met = "";
      printf "| %s | %s | %.2f | %.2f | %d | %s | %s | %s | %s | %s |\n", label, comma(rps), p50, p99, failed, ceiling_text, share, target, met, started
    }'
}
read -r _ nginx_rps _ <<< "${row[nginx]}"
drain_ok=$([ "$drained" = yes ] && [ "$orders" -eq "$emails" ] && [ "$orders" -eq "$events" ] && echo yes || echo no)
orders_ok=$([ "$orders_non2xx" -eq 0 ] && [ "$orders" -gt 0 ] && echo yes || echo no)
{
  echo "| case | requests/s | p50 ms | p99 ms | non-2xx, socket errors, timeouts | ceiling in the same run | share of ceiling | target | met? | load at start |"
  echo "| --- | ---: | ---: | ---: | ---: | --- | ---: | --- | --- | ---: |"
  table_row "nginx, static JSON of one user (ceiling)" "${row[nginx]}" "" 0 0 0 0
  table_row "cached GET /api/users/{id}, hot set of $HOT_USERS" "${row[cached]}" "nginx" "$nginx_rps" 60 0 5
  table_row "uniform GET over $(wc -l < "$OUT/ids.txt") users" "${row[uniform]}" "" 0 0 20000 15
  table_row "POST /api/orders" "${row[orders]}" "pgbench" "${pgbench_tps:-0}" 50 0 30
  echo "| pgbench, one-row INSERT, $CONNECTIONS clients, shard 0 (ceiling) | ${pgbench_tps:-?} | avg ${pgbench_avg:-?} | - | - | | | | | $pgbench_load |"
  echo
  echo "POST /api/orders: $orders_non2xx non-2xx responses, $orders orders accepted: $([ "$orders_ok" = yes ] && echo "every response 2xx" || echo "FAILED RUN: requests were refused (non-2xx) or no order was accepted")."
  echo "After the order case (drained: $drained): orders accepted $orders, e-mails sent $emails, analytics events applied $events, dead letters $dead: $([ "$drain_ok" = yes ] && echo "all equal" || echo "FAILED RUN: the counts differ or the queues did not drain")."
  awk -v orders="$orders" -v commits="$commits" -v flushes="$flushes" 'BEGIN {
    if (orders > 0) printf "Per accepted order, over the order case and its drain, on all primaries: %.2f commits (pg_stat_database.xact_commit, reads included), %.3f WAL flushes (pg_stat_wal.wal_sync).\n", commits / orders, flushes / orders }'
  echo "App memory at the end: serve ${serve_rss} MiB (peak ${serve_peak} MiB), worker ${worker_rss} MiB (peak ${worker_peak} MiB); target < 100 MiB per process."
  echo
  echo "connections $CONNECTIONS, threads $THREADS, duration $DURATION, hot set $HOT_USERS, $(nproc) cores; load = 1-minute load average when the case started"
} | tee "$OUT/results.md"
[ "$drain_ok" = yes ] && [ "$orders_ok" = yes ]
