#!/usr/bin/env bash
# Scale benchmark (not a test): apply N ScaledApps (2 shards, 2 worker pools each) at once to the
# local control plane and measure the time until all are Ready, the operator's peak RSS, and the
# operator's API requests during convergence and in the 60 s after (from the API server's audit
# log, which records every request of the operator's ServiceAccount).
#   e2e/bench-scale.sh [N]      (default 100)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "${ROOT}"
# shellcheck source=scripts/lib/local-operator.sh
source scripts/lib/local-operator.sh
# shellcheck source=scripts/lib/local-cluster.sh
source scripts/lib/local-cluster.sh
COUNT=${1:-100}
QUIET=${BENCH_QUIET_SECONDS:-60}
NAMESPACE=bench-scale
log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Enough simulated nodes for ~8 pods per ScaledApp at 110 pods per node. No real node by default:
# its kube-proxy, CoreDNS and kube-router would watch all 2,300 objects on the same 2 cores and
# the numbers would not compare with earlier runs (SCALEDAPP_REAL_NODE=1 to include it).
export SCALEDAPP_NODES=${SCALEDAPP_NODES:-$(( COUNT * 8 / 100 + 2 ))}
export SCALEDAPP_REAL_NODE=${SCALEDAPP_REAL_NODE:-0}
start_local_cluster "${ROOT}" || exit 1
STATE="${ROOT}/e2e/cluster/.state"
cargo build -q --release -p scaledapp-operator
BIN="${ROOT}/target/release/scaledapp-operator"
install_chart "${ROOT}"
write_operator_kubeconfig "${STATE}/bench-operator.kubeconfig"
start_operator "${BIN}" "${STATE}/bench-operator.kubeconfig" 127.0.0.1:18090 bench "${STATE}/bench-operator.log"
trap 'stop_operator "${OPERATOR_PID}"; kubectl delete namespace "${NAMESPACE}" --wait=false >/dev/null 2>&1 || true' EXIT

kubectl create namespace "${NAMESPACE}" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
manifest=$(mktemp)
for i in $(seq 1 "${COUNT}"); do
  cat >>"${manifest}" <<APP
---
apiVersion: scaled.dev/v1alpha1
kind: ScaledApp
metadata: {name: app-${i}}
spec:
  app: {replicas: {min: 1, max: 5}}
  database: {shards: 2, replicasPerShard: 1, pool: {size: 5, maxOverflow: 5}}
  cache: {redis: {persistence: {enabled: false}}}
  workers:
    - {name: email, queues: ["email:send"], replicas: {min: 1, max: 2}}
    - {name: analytics, queues: ["analytics:track"], replicas: {min: 1, max: 2}}
APP
done

audit() { # summary of the operator's requests received in [$1, $2): see the printout below
  # The API server rotates its audit log at 100 MB; read every file of it.
  local files=("$(dirname "$(readlink -f "${SCALEDAPP_AUDIT_LOG}")")"/audit*.log)
  python3 - "$1" "$2" "${files[@]}" <<'PY'
import json, sys
from datetime import datetime
start, end, *paths = sys.argv[1:]
user = "system:serviceaccount:scaledapp-system:scaledapp-operator"
reads = writes = leases = 0
last_child = start
for path in paths:
    for line in open(path):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("user", {}).get("username") != user or event.get("stage") != "ResponseComplete":
            continue
        at = event.get("requestReceivedTimestamp", "")
        if not (start <= at < end):
            continue
        resource = event.get("objectRef", {}).get("resource")
        write = event.get("verb") in ("create", "update", "patch", "delete", "deletecollection")
        if resource == "leases":
            leases += write
        elif write:
            writes += 1
            if resource in ("deployments", "statefulsets"):
                last_child = max(last_child, at)
        else:
            reads += 1
parse = lambda text: datetime.fromisoformat(text.replace("Z", "+00:00"))
print(reads, writes, leases, f"{(parse(last_child) - parse(start)).total_seconds():.1f}")
PY
}

start_ts=$(date -u +%Y-%m-%dT%H:%M:%S.%6NZ)
start=$(date +%s.%N)
log "applying ${COUNT} ScaledApps"
kubectl apply -n "${NAMESPACE}" -f "${manifest}" >/dev/null
while :; do
  ready=$(kubectl get sapp -n "${NAMESPACE}" -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True || true)
  now=$(date +%s.%N)
  if [[ "${ready}" -ge "${COUNT}" ]]; then break; fi
  if awk -v a="${now}" -v b="${start}" 'BEGIN { exit !(a - b > 900) }'; then
    log "not all Ready after 900 s (${ready}/${COUNT})"
    exit 1
  fi
  sleep 1
done
ready_ts=$(date -u +%Y-%m-%dT%H:%M:%S.%6NZ)
elapsed=$(awk -v a="${now}" -v b="${start}" 'BEGIN { printf "%.1f", a - b }')
rss_kib=$(awk '/VmHWM/ {print $2}' "/proc/${OPERATOR_PID}/status")
log "all ${COUNT} Ready after ${elapsed} s; waiting ${QUIET} s for stragglers"
sleep "${QUIET}"
end_ts=$(date -u +%Y-%m-%dT%H:%M:%S.%6NZ)
read -r conv_reads conv_writes conv_leases children_done < <(audit "${start_ts}" "${ready_ts}")
read -r quiet_reads quiet_writes quiet_leases _ < <(audit "${ready_ts}" "${end_ts}")
rss_after=$(awk '/VmHWM/ {print $2}' "/proc/${OPERATOR_PID}/status")
cat <<RESULT
scaledapps:                 ${COUNT} (2 shards x 1 replica, 2 worker pools each)
all Ready after:            ${elapsed} s
operator peak RSS:          $(( rss_after / 1024 )) MiB (VmHWM; ${rss_kib} KiB when all were Ready)
operator applied every workload within ${children_done} s (the rest is the control plane starting pods)
requests while converging:  ${conv_reads} reads, ${conv_writes} writes (+ ${conv_leases} leader-lease renewals)
requests in the ${QUIET} s after: ${quiet_reads} reads, ${quiet_writes} writes (+ ${quiet_leases} leader-lease renewals)
RESULT
