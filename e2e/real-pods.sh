#!/usr/bin/env bash
# The tests on pods that really run (`make e2e` runs this after the simulated-pod suite when the
# local cluster has its real node; e2e/kind/test.sh runs it on kind):
#
# 1. images: on the local cluster, the operator and app images that `make images` wrote are
#    pushed to the cluster's registry (`make push`), from which the node's containerd pulls them;
#    on kind, e2e/kind/up.sh has loaded them (SCALEDAPP_IMAGE_PREFIX names them);
# 2. the chart is upgraded so that the operator runs as a pod in the cluster (not the local
#    process the simulated-pod suite uses), under its ServiceAccount, with the metrics APIs
#    registered; on the local cluster its namespace is annotated so its pods go to the real node;
# 3. the real-pod tests run one at a time: the flows (real_pods), failover and switchover
#    (failover_real), Redis failover under an order load (redis_failover), autoscaling on the
#    operator's own metrics (autoscaling). They are
#    `#[ignore]`d in a plain `cargo test` (reported as ignored, never as passed), so this runs
#    them with `--ignored`.
#
# Needs KUBECONFIG, SCALEDAPP_KUBECTL and SCALEDAPP_HELM (up.sh's exports). E2E_REAL_TESTS
# (default "real_pods failover_real redis_failover autoscaling") picks the test binaries.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "${ROOT}"
# shellcheck source=scripts/lib/local-operator.sh
source scripts/lib/local-operator.sh
log() { printf '[e2e-real %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
: "${KUBECONFIG:?KUBECONFIG must name the cluster}"
KUBECTL=${SCALEDAPP_KUBECTL:-kubectl}
HELM=${SCALEDAPP_HELM:-helm}
VERSION=$(python3 -c 'import tomllib; print(tomllib.load(open("Cargo.toml", "rb"))["workspace"]["package"]["version"])')
PREFIX=${SCALEDAPP_IMAGE_PREFIX:-localhost/scaled}
NAMESPACE=${LOCAL_OPERATOR_NAMESPACE}

if [[ "${SCALEDAPP_REAL_NODE:-0}" == 1 ]]; then
  log "pushing the images; helm upgrade: the operator as a pod from ${PREFIX}/scaledapp-operator:${VERSION}"
  install_operator_on_real_node "${ROOT}"
  export SCALEDAPP_APP_IMAGE="${PUSHED_APP_IMAGE}"
  export SCALEDAPP_REAL_NODE_NAMESPACE_ANNOTATIONS=1
  export SCALEDAPP_STORAGE_CLASS=${SCALEDAPP_REAL_NODE_STORAGE_CLASS:-local-path}
else
  # kind: e2e/kind/up.sh loaded the images and installed the chart with the operator as a pod.
  log "helm upgrade: the operator as a pod from ${PREFIX}/scaledapp-operator:${VERSION}"
  "${HELM}" upgrade --install "${LOCAL_OPERATOR_RELEASE}" charts/scaledapp-operator \
    --namespace "${NAMESPACE}" --create-namespace \
    --set localOperator.enabled=false \
    --set "image.registry=${PREFIX},image.tag=${VERSION},appImage.tag=${VERSION}" \
    --wait --timeout 5m >/dev/null
  "${KUBECTL}" apply --server-side --force-conflicts -f crds/scaled.dev_scaledapps.yaml >/dev/null
fi

export SCALEDAPP_REAL_PODS=1
export SCALEDAPP_OPERATOR_NAMESPACE="${NAMESPACE}"
export SCALEDAPP_APP_IMAGE="${SCALEDAPP_APP_IMAGE:-${PREFIX}/scaled-app:${VERSION}}"
status=0
for test in ${E2E_REAL_TESTS-real_pods failover_real redis_failover autoscaling}; do
  log "running ${test}"
  started=${SECONDS}
  if ! cargo test -q -p scaled-e2e --test "${test}" -- --ignored --test-threads=1 --nocapture; then
    status=1
    log "${test} failed; the operator's log:"
    "${KUBECTL}" -n "${NAMESPACE}" logs deployment/"${LOCAL_OPERATOR_RELEASE}" --tail=60 >&2 || true
  fi
  log "${test}: $((SECONDS - started))s"
done
exit "${status}"
