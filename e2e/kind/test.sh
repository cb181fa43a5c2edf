#!/usr/bin/env bash
# Runs the end-to-end suite against the kind cluster from e2e/kind/up.sh, with the operator
# running IN the cluster from its image (unlike e2e/run.sh, which runs it as a local process):
#
# 1. the suite and validation tests (cargo test -p scaled-e2e), talking to the in-cluster
#    operator's metrics through `kubectl port-forward` and reading the API server's audit log;
# 2. e2e/kind/real-pods.sh: what only real pods show (the app answers through its Service, an
#    order reaches a worker, replicas stream from their primary, the HPAs);
# 3. the failover tests, which start and kill operator processes themselves: the in-cluster
#    operator is scaled to 0 meanwhile (localOperator.enabled) and restored afterwards.
#
#   E2E_THREADS (default 2), E2E_KIND_FAILOVER=0 skips step 3, E2E_KIND_REAL_PODS=0 skips step 2.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "${ROOT}"
log() { printf '[kind-e2e %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[kind-e2e] ERROR: %s\n' "$*" >&2; exit 1; }

CLUSTER=scaledapp
NAMESPACE=scaledapp-system
RELEASE=scaledapp-operator
SA=scaledapp-operator
STATE="${ROOT}/e2e/kind/.state"
export KUBECONFIG=${KUBECONFIG:-${STATE}/kubeconfig}
METRICS_PORT=${E2E_KIND_METRICS_PORT:-18081}

for tool in docker kind kubectl helm cargo curl; do
  command -v "${tool}" >/dev/null 2>&1 || die "'${tool}' is not installed"
done
[[ -f "${KUBECONFIG}" ]] || die "no kubeconfig at ${KUBECONFIG}: run e2e/kind/up.sh first"
kubectl get --raw /readyz >/dev/null || die "the cluster in ${KUBECONFIG} does not answer: run e2e/kind/up.sh"
kubectl -n "${NAMESPACE}" rollout status "deployment/${RELEASE}" --timeout 2m >/dev/null \
  || die "the operator Deployment ${NAMESPACE}/${RELEASE} is not available: run e2e/kind/up.sh"

AUDIT_LOG="${STATE}/audit/audit.log"
docker exec "${CLUSTER}-control-plane" chmod 0644 /var/log/kubernetes/audit/audit.log 2>/dev/null || true
[[ -r "${AUDIT_LOG}" && -s "${AUDIT_LOG}" ]] \
  || die "the API server audit log ${AUDIT_LOG} is missing, empty or unreadable (see kind-config.yaml)"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "${pid}" 2>/dev/null || true; done
}
trap cleanup EXIT

log "port-forward svc/${RELEASE}-metrics to 127.0.0.1:${METRICS_PORT}"
kubectl -n "${NAMESPACE}" port-forward "svc/${RELEASE}-metrics" "${METRICS_PORT}:8081" >"${STATE}/port-forward-metrics.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 30); do
  curl -fsS "http://127.0.0.1:${METRICS_PORT}/readyz" >/dev/null 2>&1 && break
  sleep 1
done
curl -fsS "http://127.0.0.1:${METRICS_PORT}/readyz" >/dev/null || die "the operator's /readyz does not answer through the port-forward"

log "building the operator (the render test and the failover tests run the binary)"
cargo build -q -p scaledapp-operator
export SCALEDAPP_OPERATOR_BIN="${ROOT}/target/debug/scaledapp-operator"
export SCALEDAPP_OPERATOR_NAMESPACE="${NAMESPACE}"
export SCALEDAPP_OPERATOR_USER="system:serviceaccount:${NAMESPACE}:${SA}"
export SCALEDAPP_OPERATOR_METRICS="127.0.0.1:${METRICS_PORT}"
export SCALEDAPP_AUDIT_LOG="${AUDIT_LOG}"

log "running the suite and the validation tests against the in-cluster operator"
cargo test -q -p scaled-e2e --test suite --test validation -- --test-threads="${E2E_THREADS:-2}"

if [[ "${E2E_KIND_REAL_PODS:-1}" == 1 ]]; then
  log "running the real-pod checks"
  e2e/kind/real-pods.sh
fi

if [[ "${E2E_KIND_FAILOVER:-1}" == 1 ]]; then
  log "scaling the in-cluster operator to 0 for the failover tests"
  helm upgrade "${RELEASE}" charts/scaledapp-operator --namespace "${NAMESPACE}" --reuse-values \
    --set localOperator.enabled=true --wait --timeout 3m >/dev/null
  restore() {
    helm upgrade "${RELEASE}" charts/scaledapp-operator --namespace "${NAMESPACE}" --reuse-values \
      --set localOperator.enabled=false --wait --timeout 3m >/dev/null
  }
  trap 'cleanup; restore' EXIT
  for _ in $(seq 1 60); do
    [[ -z "$(kubectl -n "${NAMESPACE}" get pods -l "app.kubernetes.io/instance=${RELEASE}" -o name)" ]] && break
    sleep 2
  done

  token=$(kubectl -n "${NAMESPACE}" create token "${SA}" --duration=2h)
  server=$(kubectl config view --minify --raw -o jsonpath='{.clusters[0].cluster.server}')
  ca=$(kubectl config view --minify --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
  (
    umask 077
    cat >"${STATE}/operator.kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: kind
  cluster: {server: "${server}", certificate-authority-data: "${ca}"}
users:
- name: ${SA}
  user: {token: "${token}"}
contexts:
- name: kind
  context: {cluster: kind, user: ${SA}}
current-context: kind
KUBECONFIG
  )
  export SCALEDAPP_OPERATOR_KUBECONFIG="${STATE}/operator.kubeconfig"
  log "running the failover tests (operators as local processes with the chart's ServiceAccount)"
  cargo test -q -p scaled-e2e --test failover -- --test-threads=1
  log "restoring the in-cluster operator"
  trap cleanup EXIT
  restore
fi
log "kind e2e passed"
