#!/usr/bin/env bash
# Runs the end-to-end suite (`make e2e`): against the local cluster (e2e/cluster/up.sh, whose
# kubeconfig it uses, never an inherited KUBECONFIG), or against a cluster named explicitly with
# E2E_KUBECONFIG=/path/to/kubeconfig. A failed start of the local cluster stops it.
#
# 1. helm lint/template, then helm install the chart (the operator Deployment scaled to 0: the
#    local control plane's simulated nodes run no containers);
# 2. run the operator binary as a local process with a token of the chart's ServiceAccount, so
#    the chart's RBAC is what the operator really has;
# 3. cargo test the suite and the validation tests while it runs, then stop it and run the
#    failover tests, which start and kill operators themselves;
# 4. with the local cluster's real node (or E2E_REAL_PODS=1 on another cluster that can pull the
#    images): e2e/real-pods.sh, the tests on pods that really run, with the operator as the
#    chart's pod (`make images` must have run; `make test` runs it first).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "${ROOT}"
# shellcheck source=scripts/lib/local-operator.sh
source scripts/lib/local-operator.sh
# shellcheck source=scripts/lib/local-cluster.sh
source scripts/lib/local-cluster.sh
log() { printf '[e2e %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [[ "${E2E_USE_KUBECONFIG:-0}" == 1 ]]; then
  log "E2E_USE_KUBECONFIG=1 is gone: name the cluster explicitly with E2E_KUBECONFIG=/path/to/kubeconfig"
  exit 2
fi
if [[ -n "${E2E_KUBECONFIG:-}" ]]; then
  [[ -f "${E2E_KUBECONFIG}" ]] || { log "E2E_KUBECONFIG=${E2E_KUBECONFIG} does not exist"; exit 2; }
  export KUBECONFIG="${E2E_KUBECONFIG}"
  log "running against the cluster in ${KUBECONFIG} (E2E_KUBECONFIG)"
else
  log "starting the local cluster (a first run builds Kubernetes, etcd, kwok, helm and the real node's components from source and its images from Debian packages: about 26 min on 2 cores, see docs/BENCHMARKS.md)"
  start_local_cluster "${ROOT}" || exit 1
fi
HELM=${SCALEDAPP_HELM:-helm}
STATE="${ROOT}/e2e/cluster/.state"
mkdir -p "${STATE}"

log "building the operator and the tests"
cargo build -q -p scaledapp-operator
cargo test -q -p scaled-e2e --no-run 2>/dev/null
export SCALEDAPP_OPERATOR_BIN="${ROOT}/target/debug/scaledapp-operator"

log "helm lint + template"
"${HELM}" lint --strict charts/scaledapp-operator >/dev/null
"${HELM}" template scaledapp-operator charts/scaledapp-operator --set replicaCount=2,serviceMonitor.enabled=true >/dev/null

log "helm install the chart into ${LOCAL_OPERATOR_NAMESPACE}"
install_chart "${ROOT}"
write_operator_kubeconfig "${STATE}/operator.kubeconfig"
export SCALEDAPP_OPERATOR_KUBECONFIG="${STATE}/operator.kubeconfig"
export SCALEDAPP_OPERATOR_NAMESPACE="${LOCAL_OPERATOR_NAMESPACE}"
export SCALEDAPP_OPERATOR_USER="system:serviceaccount:${LOCAL_OPERATOR_NAMESPACE}:${LOCAL_OPERATOR_SA}"
export SCALEDAPP_OPERATOR_METRICS=127.0.0.1:18081
export RUST_BACKTRACE=0

log "starting the operator as ${SCALEDAPP_OPERATOR_USER}"
start_operator "${SCALEDAPP_OPERATOR_BIN}" "${SCALEDAPP_OPERATOR_KUBECONFIG}" "${SCALEDAPP_OPERATOR_METRICS}" \
  e2e-shared "${STATE}/operator-shared.log"
shared_pid=${OPERATOR_PID}
trap 'stop_operator "${shared_pid}"' EXIT

status=0
log "running the suite and the validation tests"
cargo test -q -p scaled-e2e --test suite --test validation -- --test-threads="${E2E_THREADS:-4}" || status=$?
stop_operator "${shared_pid}"
if [[ ${status} -ne 0 ]]; then
  log "suite failed; last lines of the operator log (${STATE}/operator-shared.log):"
  tail -n 40 "${STATE}/operator-shared.log" >&2 || true
  exit "${status}"
fi
log "running the failover tests"
cargo test -q -p scaled-e2e --test failover -- --test-threads=1
if [[ "${E2E_REAL_PODS:-${SCALEDAPP_REAL_NODE:-0}}" == 1 ]]; then
  log "running the tests on real pods (e2e/real-pods.sh)"
  started=${SECONDS}
  e2e/real-pods.sh
  log "real pods: $((SECONDS - started))s"
elif [[ "${SCALEDAPP_REAL_NODE:-0}" == 1 ]]; then
  log "SKIP the tests on real pods: E2E_REAL_PODS=${E2E_REAL_PODS:-} was set, although this cluster has its real node"
elif [[ -n "${E2E_KUBECONFIG:-}" ]]; then
  log "SKIP the tests on real pods: E2E_REAL_PODS=1 was not set for the cluster in E2E_KUBECONFIG"
else
  log "SKIP the tests on real pods: the local cluster has no real node (started with SCALEDAPP_REAL_NODE=0)"
fi
log "e2e passed"
