#!/usr/bin/env bash
# `make demo`: from a fresh machine to a Ready ScaledApp.
#   1. build the operator; build the Kubernetes tools (first run only) and start the local
#      control plane (e2e/cluster/up.sh), or with KIND=1 a kind cluster (needs Docker)
#   2. helm install the operator chart. With the local cluster's real node (the default where it
#      can run): build the images, push them to the cluster's registry and run the operator as
#      the chart's pod; without it (SCALEDAPP_REAL_NODE=0): run the operator as a local process
#      under the chart's ServiceAccount, since kwok nodes run no containers
#   3. apply examples/shop.yaml (on the real node: fitted to it, scripts/lib/fit-to-real-node.py)
#      and show it reconcile, live, until Ready, then the component tree
#   4. on the real node: create a user and an order through the app's Service and print what
#      the order-confirmation worker wrote
# Stop everything with `make demo-down` (`KIND=1 make demo-down` for kind).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "${ROOT}"
# shellcheck source=scripts/lib/local-operator.sh
source scripts/lib/local-operator.sh
# shellcheck source=scripts/lib/local-cluster.sh
source scripts/lib/local-cluster.sh
say() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }

say "Building the operator and the app"
echo "    (a first build compiles about 300 crates: a few minutes on 2 cores)" >&2
# The same package set as scripts/build-images.sh, so the images reuse this build.
# A failed build stops the demo: a binary left from an earlier build must not stand in for it.
if ! cargo build --release --locked -p scaledapp-operator -p scaled-app 2>&1 |
  awk '/Compiling/ { n++; if (n % 25 == 0) { printf "    compiled %d crates...\n", n; fflush() } }
       /Finished|^error|^ *-->/ { print "    " $0; fflush() }' >&2; then
  echo "the operator and the app did not build (the errors are above; cargo build --release -p scaledapp-operator shows them all)" >&2
  exit 1
fi
BIN="${ROOT}/target/release/scaledapp-operator"

if [[ "${KIND:-0}" == 1 ]]; then
  say "KIND=1: a kind cluster with the operator running in it and real pods (needs Docker)"
  e2e/kind/up.sh
  export KUBECONFIG="${ROOT}/e2e/kind/.state/kubeconfig"
  STOP_HINT="KIND=1 make demo-down"
else
  say "Starting the local cluster (etcd + kube-apiserver + controller-manager + scheduler, kwok nodes and, where it can run, one real node)"
  echo "    A first run builds Kubernetes v1.34, etcd, kwok and helm from Go modules (about 15 minutes" >&2
  echo "    on 2 cores), then the real node's components and images (about 10 more), with progress" >&2
  echo "    below. Later runs start in seconds." >&2
  start_local_cluster "${ROOT}" || exit 1
  STATE="${ROOT}/e2e/cluster/.state"

  if [[ "${SCALEDAPP_REAL_NODE:-0}" == 1 ]]; then
    say "Building the operator and app images (no Docker: OCI layouts) for the real node"
    scripts/build-images.sh 2>&1 | awk '/Compiling/ { n++; if (n % 25 == 0) { printf "    compiled %d crates...\n", n; fflush() } }
      /^\[images / { print "    " $0; fflush() }' >&2
    [[ ${PIPESTATUS[0]} -eq 0 ]] || { echo "the images did not build" >&2; exit 1; }
    say "Pushing them to the cluster's registry; helm install: the operator as a pod on the real node"
    install_operator_on_real_node "${ROOT}"
    "${SCALEDAPP_KUBECTL}" -n "${LOCAL_OPERATOR_NAMESPACE}" get pods -o wide
  else
    say "Installing the operator chart (helm) into ${LOCAL_OPERATOR_NAMESPACE}"
    install_chart "${ROOT}"
    if [[ -f "${STATE}/demo-operator.pid" ]]; then
      stop_operator "$(cat "${STATE}/demo-operator.pid")" || true
    fi
    say "Running the operator as a local process under the chart's ServiceAccount"
    echo "    (SCALEDAPP_REAL_NODE=0: kwok nodes run no containers, so the chart's Deployment is scaled to 0)" >&2
    write_operator_kubeconfig "${STATE}/demo-operator.kubeconfig"
    start_operator "${BIN}" "${STATE}/demo-operator.kubeconfig" 127.0.0.1:18080 demo "${STATE}/demo-operator.log"
    echo "${OPERATOR_PID}" >"${STATE}/demo-operator.pid"
    echo "    operator pid ${OPERATOR_PID}, log ${STATE}/demo-operator.log, metrics http://127.0.0.1:18080/metrics" >&2
  fi
  STOP_HINT="make demo-down"
fi

REAL=0
[[ "${KIND:-0}" != 1 && "${SCALEDAPP_REAL_NODE:-0}" == 1 ]] && REAL=1
kubectl create namespace demo --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl label namespace demo pod-security.kubernetes.io/enforce=restricted --overwrite >/dev/null
if [[ ${REAL} -eq 1 ]]; then
  say "Applying examples/shop.yaml on the real node (its images and small requests: scripts/lib/fit-to-real-node.py)"
  put_namespace_on_real_node demo
  kubectl create --dry-run=client -o json -n demo -f examples/shop.yaml |
    python3 scripts/lib/fit-to-real-node.py | kubectl apply -n demo -f -
else
  say "Applying examples/shop.yaml"
  kubectl apply -n demo -f examples/shop.yaml
fi

say "Watching it reconcile (kubectl get sapp -n demo)"
last=""
ready=0
for _ in $(seq 1 300); do
  # Print a row when something but the age changed.
  row=$(kubectl get sapp shop -n demo --no-headers 2>/dev/null | awk '{$NF=""; print}' || true)
  if [[ -n "${row}" && "${row}" != "${last}" ]]; then
    [[ -n "${last}" ]] || kubectl get sapp shop -n demo 2>/dev/null | head -n 1
    printf '%s\n' "${row}"
    last=${row}
  fi
  if kubectl wait -n demo --for=condition=Ready --timeout=1s scaledapp/shop >/dev/null 2>&1; then
    ready=1
    break
  fi
done
kubectl get sapp -n demo
if [[ ${ready} -ne 1 ]]; then
  echo "shop did not become Ready within 5 minutes; see the conditions below" >&2
fi

say "The component tree (scaledapp-operator status shop -n demo)"
"${BIN}" status shop -n demo

if [[ ${REAL} -eq 1 && ${ready} -eq 1 ]]; then
  say "Traffic through the app's Service: a user signs up and signs in, reads, and orders"
  scripts/lib/demo-traffic.sh demo shop || ready=0
fi

cat >&2 <<NEXT

Try next:
  export KUBECONFIG=${KUBECONFIG}
  kubectl get sapp -n demo -w                   # watch status
  kubectl patch sapp shop -n demo --type merge -p '{"spec":{"app":{"replicas":{"min":4,"max":20}}}}'
  ${BIN} status shop -n demo
  ${BIN} render -f examples/shop.yaml           # every child manifest, no cluster needed
  kubectl explain scaledapp.spec.database
Stop everything: ${STOP_HINT}
NEXT
[[ ${ready} -eq 1 ]]
