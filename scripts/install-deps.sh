#!/usr/bin/env bash
# Installs what the tests and the demo need on a fresh Debian machine, and nothing twice.
# Debian packages: Postgres 15 (server, client, pgbench), Redis, wrk and nginx for benchmarks.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
[ -x /usr/lib/postgresql/15/bin/pg_basebackup ] || need+=(postgresql-15 postgresql-client-15)
[ -x /usr/lib/postgresql/15/bin/pgbench ] || need+=(postgresql-contrib)
have redis-server || need+=(redis-server)
have redis-cli || need+=(redis-tools)
have wrk || need+=(wrk)
have nginx || need+=(nginx-light)
have curl || need+=(curl)

if [ "${#need[@]}" -eq 0 ]; then
  echo "deps: all present"
  exit 0
fi
echo "deps: installing ${need[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The packages start system services we do not use; tests run their own instances.
for service in redis-server nginx postgresql; do
  $SUDO service "$service" stop >/dev/null 2>&1 || true
done
echo "deps: done"
