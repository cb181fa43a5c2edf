#!/usr/bin/env bash
# Instruction profile of the app's serve process under one wrk load (not a test, not a timing):
# restarts the stack's `scaled-app serve` under callgrind, warms up, zeroes the counters, runs wrk,
# dumps, and prints instructions per request. Instruction counts do not depend on what else the
# machine runs, so they compare builds even on a busy machine. Afterwards the normal server runs
# again. Needs `make stack` up and valgrind; symbols need a release build with debug info:
#   CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=line-tables-only make stack
#
#   scripts/profile-app.sh NAME TARGET [SECONDS]
#     TARGET: a path (/health) or a wrk Lua script (.stack/bench/hot.lua from scripts/bench-app.sh)
#     PORT=9090 profiles the same process through its metrics port instead.
# The profile is .stack/profile/NAME.<pid>.out*; read it with callgrind_annotate --inclusive=yes.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STACK="$ROOT/.stack"
OUT="$STACK/profile"
HTTP_PORT=${HTTP_PORT:-8080}
APP="$ROOT/target/release/scaled-app"
name=${1:?name} target=${2:?target} seconds=${3:-10}
port=${PORT:-$HTTP_PORT}

log() { printf 'profile: %s\n' "$*" >&2; }
command -v valgrind >/dev/null || { log "valgrind missing (apt-get install valgrind)"; exit 1; }
[ -f "$STACK/app.pid" ] || { log "the stack is not up (make stack)"; exit 1; }
mkdir -p "$OUT"
export SCALED_CONFIG="$STACK/config.json"
SCALED_SESSION_SECRET=$(cat "$STACK/session-secret")
export SCALED_SESSION_SECRET

restart_plain() {
  SCALED_POD_NAME=local-server nohup "$APP" serve > "$STACK/app.log" 2>&1 < /dev/null &
  echo $! > "$STACK/app.pid"
}
kill "$(cat "$STACK/app.pid")" 2>/dev/null || true
sleep 1
SCALED_POD_NAME=local-server valgrind --tool=callgrind --callgrind-out-file="$OUT/$name.%p.out" \
  "$APP" serve > "$OUT/$name.log" 2>&1 < /dev/null &
profiled=$!
echo "$profiled" > "$STACK/app.pid"
trap 'kill "$profiled" 2>/dev/null || true; sleep 2; restart_plain' EXIT
for _ in $(seq 1 300); do
  curl -fsS "http://127.0.0.1:$HTTP_PORT/health" >/dev/null 2>&1 && break
  sleep 0.5
done
args=(-t2 -c16 -d"${seconds}s" --timeout 10s)
if [ -f "$target" ]; then
  args+=(-s "$target"); url="http://127.0.0.1:$port"
else
  url="http://127.0.0.1:$port$target"
fi
log "warming up for ${seconds}s"
wrk "${args[@]}" "$url" > /dev/null 2>&1
callgrind_control -z "$profiled" > /dev/null
log "measuring for ${seconds}s"
wrk "${args[@]}" "$url" > "$OUT/$name.wrk.txt" 2>&1
callgrind_control -d "$profiled" > /dev/null
requests=$(awk '/requests in/ { print $1 }' "$OUT/$name.wrk.txt")
file=$(ls -t "$OUT/$name.$profiled".out* | head -1)
instructions=$(callgrind_annotate "$file" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
echo "$name: $requests requests, $instructions instructions, $((instructions / requests)) per request ($file)"
