#!/usr/bin/env bash
# `make demo`: from a fresh machine to a Ready ScaledApp on a local control plane.
#   1. build the Kubernetes tools (first run only) and start the control plane (e2e/cluster/up.sh)
#   2. build the operator, helm install its chart, run it under the chart's ServiceAccount
#   3. apply examples/shop.yaml and show it reconcile, live, until Ready
# KIND=1 uses a kind cluster instead (needs Docker): e2e/kind/up.sh.
# Stop everything with `make demo-down`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "${ROOT}"
# shellcheck source=lib/local-operator.sh
source scripts/lib/local-operator.sh
say() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }

if [[ "${KIND:-0}" == 1 ]]; then
  say "KIND=1: creating a kind cluster with the operator running in it (needs Docker)"
  exec e2e/kind/up.sh
fi

say "Starting the local control plane (etcd + kube-apiserver + controller-manager + scheduler, kwok nodes)"
echo "    A first run builds Kubernetes v1.34, etcd, kwok and helm from Go modules: about 12 minutes" >&2
echo "    on 2 cores, with progress below. Later runs start in seconds." >&2
eval "$(e2e/cluster/up.sh)"
STATE="${ROOT}/e2e/cluster/.state"

say "Building the operator"
cargo build --release -p scaledapp-operator 2>&1 | grep -E '^\s*(Compiling scaled|Finished|error)' >&2 || true
BIN="${ROOT}/target/release/scaledapp-operator"
[[ -x "${BIN}" ]] || { echo "the operator did not build" >&2; exit 1; }

say "Installing the operator chart (helm) into ${LOCAL_OPERATOR_NAMESPACE}"
install_chart "${ROOT}"

if [[ -f "${STATE}/demo-operator.pid" ]]; then
  stop_operator "$(cat "${STATE}/demo-operator.pid")" || true
fi
say "Running the operator as a local process under the chart's ServiceAccount"
write_operator_kubeconfig "${STATE}/demo-operator.kubeconfig"
start_operator "${BIN}" "${STATE}/demo-operator.kubeconfig" 127.0.0.1:18080 demo "${STATE}/demo-operator.log"
echo "${OPERATOR_PID}" >"${STATE}/demo-operator.pid"
echo "    operator pid ${OPERATOR_PID}, log ${STATE}/demo-operator.log, metrics http://127.0.0.1:18080/metrics" >&2

say "Applying examples/shop.yaml"
kubectl create namespace demo --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl label namespace demo pod-security.kubernetes.io/enforce=restricted --overwrite >/dev/null
kubectl apply -n demo -f examples/shop.yaml

say "Watching it reconcile (kubectl get sapp -n demo)"
last=""
for _ in $(seq 1 180); do
  table=$(kubectl get sapp shop -n demo 2>/dev/null || true)
  if [[ "${table}" != "${last}" ]]; then
    printf '%s\n' "${table}" | tail -n 1
    last=${table}
  fi
  if kubectl wait -n demo --for=condition=Ready --timeout=1s scaledapp/shop >/dev/null 2>&1; then
    break
  fi
done
kubectl get sapp -n demo

say "The component tree (scaledapp-operator status shop -n demo)"
"${BIN}" status shop -n demo

cat >&2 <<NEXT

Try next:
  eval "\$(e2e/cluster/up.sh)"                  # kubectl, helm and KUBECONFIG for this cluster
  kubectl get sapp -n demo -w                   # watch status
  kubectl patch sapp shop -n demo --type merge -p '{"spec":{"app":{"replicas":{"min":4,"max":20}}}}'
  ${BIN} status shop -n demo
  ${BIN} render -f examples/shop.yaml           # every child manifest, no cluster needed
  kubectl explain scaledapp.spec.database
Stop everything: make demo-down
NEXT
