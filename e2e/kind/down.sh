#!/usr/bin/env bash
# Deletes the kind cluster `scaledapp` (from e2e/kind/up.sh) and its local state (kubeconfigs,
# audit log) under e2e/kind/.state/.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
command -v kind >/dev/null 2>&1 || { echo "[kind] ERROR: 'kind' is not installed" >&2; exit 1; }
# The audit log belongs to root inside the node; remove it from there so no sudo is needed here.
docker exec scaledapp-control-plane sh -c 'rm -f /var/log/kubernetes/audit/*' 2>/dev/null || true
kind delete cluster --name scaledapp
rm -rf "${ROOT}/e2e/kind/.state" || echo "[kind] could not remove e2e/kind/.state; remove it by hand" >&2
