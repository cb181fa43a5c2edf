#!/usr/bin/env bash
# The real-pod tests on the kind cluster from e2e/kind/up.sh (e2e/kind/test.sh runs this): the
# same implementation as on the local cluster's real node, e2e/real-pods.sh (the flows of
# e2e/tests/real_pods.rs, failover and switchover, autoscaling), with kind's names for the images
# up.sh loaded, its default StorageClass and the official Postgres and Redis images (the
# operator's defaults). The parts that need the local real node (cutting a pod off from the API
# server from inside its network namespace) say SKIPPED there.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "${ROOT}"
export KUBECONFIG=${KUBECONFIG:-${ROOT}/e2e/kind/.state/kubeconfig}
kubectl get --raw /readyz >/dev/null 2>&1 \
  || { echo "[real-pods] ERROR: no cluster answers at ${KUBECONFIG}: run e2e/kind/up.sh first" >&2; exit 1; }
export SCALEDAPP_KUBECTL=${SCALEDAPP_KUBECTL:-kubectl}
export SCALEDAPP_HELM=${SCALEDAPP_HELM:-helm}
export SCALEDAPP_REAL_NODE=0
# The fencing and mid-failover hold cut a pod off from the API server from the host's side of
# its network namespace; a kind node is a container, so they are left out, and say SKIP.
export SCALEDAPP_HOST_SIDE_CHECKS=${SCALEDAPP_HOST_SIDE_CHECKS:-0}
export SCALEDAPP_IMAGE_PREFIX=${IMAGE_REGISTRY:-ghcr.io/scaled-dev}
export SCALEDAPP_STORAGE_CLASS=${E2E_KIND_STORAGE_CLASS:-standard}
export SCALEDAPP_BUSYBOX_IMAGE=${E2E_KIND_BUSYBOX_IMAGE:-busybox:1.37}
exec e2e/real-pods.sh
