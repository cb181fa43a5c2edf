#!/usr/bin/env bash
# Installs what the tests and the demo need on a fresh Debian machine, and nothing twice.
# Debian packages: Postgres 15 (server, client, pgbench), Redis, wrk and nginx for benchmarks;
# for the e2e cluster's real node (skipped with SCALEDAPP_REAL_NODE=0): containerd, runc, the CNI
# plugins, iptables/ipset/conntrack/nftables, mmdebstrap and a C compiler (node images), skopeo
# and docker-registry (the local registry), openssl (certificates).
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
have openssl || need+=(openssl)
if [ "${SCALEDAPP_REAL_NODE:-1}" != 0 ]; then
  have containerd || need+=(containerd)
  have runc || need+=(runc)
  [ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
  have iptables || need+=(iptables)
  have ipset || need+=(ipset)
  have conntrack || need+=(conntrack)
  have nft || need+=(nftables)
  have ip || need+=(iproute2)
  have mmdebstrap || need+=(mmdebstrap)
  have gcc || need+=(gcc)
  [ -f /usr/lib/x86_64-linux-gnu/libc.a ] || need+=(libc6-dev)
  have skopeo || need+=(skopeo)
  have docker-registry || need+=(docker-registry)
fi

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
# The packages start system services we do not use; tests run their own instances (the system
# registry would also take the port the e2e cluster's registry uses).
for service in redis-server nginx postgresql containerd docker-registry; do
  $SUDO service "$service" stop >/dev/null 2>&1 || true
done
echo "deps: done"
