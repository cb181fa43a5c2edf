#!/usr/bin/env bash
# Runs the end-to-end suite (`make e2e`): against the cluster KUBECONFIG names when E2E_USE_KUBECONFIG=1
# (for example a kind cluster), otherwise against the local control plane (e2e/cluster/up.sh).
#
# 1. helm lint/template, then helm install the chart (operator Deployment scaled to 0 on the
#    local control plane, whose simulated nodes run no containers);
# 2. run the operator binary as a local process with a token of the chart's ServiceAccount, so
#    the chart's RBAC is what the operator really has;
# 3. cargo test the suite and validation tests while it runs, then stop it and run the failover
#    tests, which start and kill operators themselves.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "${ROOT}"
log() { printf '[e2e %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [[ "${E2E_USE_KUBECONFIG:-0}" != 1 ]]; then
  log "starting the local control plane (a first run builds Kubernetes, etcd, kwok and helm from source: about 12 min on 2 cores)"
  eval "$(e2e/cluster/up.sh)"
fi
: "${KUBECONFIG:?KUBECONFIG must name a cluster}"
KUBECTL=${SCALEDAPP_KUBECTL:-kubectl}
HELM=${SCALEDAPP_HELM:-helm}
STATE="${ROOT}/e2e/cluster/.state"
mkdir -p "${STATE}"
NAMESPACE=scaledapp-system
RELEASE=scaledapp-operator
SA=scaledapp-operator

log "building the operator"
cargo build -q -p scaledapp-operator
export SCALEDAPP_OPERATOR_BIN="${ROOT}/target/debug/scaledapp-operator"

log "helm lint + template"
"${HELM}" lint --strict charts/scaledapp-operator >/dev/null
"${HELM}" template "${RELEASE}" charts/scaledapp-operator --set replicaCount=2,serviceMonitor.enabled=true >/dev/null

log "helm install ${RELEASE} into ${NAMESPACE}"
"${HELM}" upgrade --install "${RELEASE}" charts/scaledapp-operator --namespace "${NAMESPACE}" --create-namespace \
  --set localOperator.enabled=true --wait --timeout 2m >/dev/null
# helm installs crds/ only on first install; keep the cluster's CRD current across runs.
"${KUBECTL}" apply --server-side --force-conflicts -f crds/scaled.dev_scaledapps.yaml >/dev/null

log "writing a kubeconfig with the ${SA} ServiceAccount's token"
token=$("${KUBECTL}" -n "${NAMESPACE}" create token "${SA}" --duration=3h)
server=$("${KUBECTL}" config view --minify --raw -o jsonpath='{.clusters[0].cluster.server}')
ca=$("${KUBECTL}" config view --minify --raw --flatten -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
OPERATOR_KUBECONFIG="${STATE}/operator.kubeconfig"
umask 077
cat >"${OPERATOR_KUBECONFIG}" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: "${server}", certificate-authority-data: "${ca}"}
users:
- name: ${SA}
  user: {token: "${token}"}
contexts:
- name: e2e
  context: {cluster: e2e, user: ${SA}}
current-context: e2e
KUBECONFIG
umask 022
export SCALEDAPP_OPERATOR_KUBECONFIG="${OPERATOR_KUBECONFIG}"
export SCALEDAPP_OPERATOR_NAMESPACE="${NAMESPACE}"
export SCALEDAPP_OPERATOR_USER="system:serviceaccount:${NAMESPACE}:${SA}"
export SCALEDAPP_OPERATOR_METRICS=127.0.0.1:18081

log "starting the operator as ${SCALEDAPP_OPERATOR_USER}"
KUBECONFIG="${OPERATOR_KUBECONFIG}" "${SCALEDAPP_OPERATOR_BIN}" run --probe-address "${SCALEDAPP_OPERATOR_METRICS}" \
  --lease-namespace "${NAMESPACE}" --identity e2e-shared >"${STATE}/operator-shared.log" 2>&1 &
operator_pid=$!
stop_operator() {
  if kill -0 "${operator_pid}" 2>/dev/null; then
    kill -TERM "${operator_pid}" 2>/dev/null || true
    wait "${operator_pid}" 2>/dev/null || true
  fi
}
trap 'stop_operator' EXIT
ready=0
for _ in $(seq 1 60); do
  if curl -fsS "http://${SCALEDAPP_OPERATOR_METRICS}/readyz" >/dev/null 2>&1; then ready=1; break; fi
  kill -0 "${operator_pid}" 2>/dev/null || break
  sleep 1
done
if [[ ${ready} -ne 1 ]]; then
  log "the operator did not become ready; its log:"
  tail -n 40 "${STATE}/operator-shared.log" >&2 || true
  exit 1
fi

export RUST_BACKTRACE=0
status=0
log "running the suite and the validation tests"
cargo test -q -p scaled-e2e --test suite --test validation -- --test-threads="${E2E_THREADS:-4}" || status=$?
stop_operator
if [[ ${status} -ne 0 ]]; then
  log "suite failed; operator log: ${STATE}/operator-shared.log"
  tail -n 40 "${STATE}/operator-shared.log" >&2 || true
  exit "${status}"
fi
log "running the failover tests"
cargo test -q -p scaled-e2e --test failover -- --test-threads=1
log "e2e passed"
