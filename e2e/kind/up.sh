#!/usr/bin/env bash
# Creates the kind cluster `scaledapp` (1 control plane + 2 workers, Kubernetes v1.34, API audit
# log under e2e/kind/.state/audit/), builds and loads both images, and helm-installs the chart with
# the operator running IN the cluster (`make e2e-kind` runs this, then e2e/kind/test.sh).
#
# Needs Docker (a running engine), kind (v0.30+), kubectl and helm on PATH. Re-running reuses the
# cluster and upgrades the release. e2e/kind/down.sh deletes the cluster.
#
#   E2E_KIND_IMAGES=docker (default)  docker build -f images/{operator,app}.Dockerfile (static musl)
#   E2E_KIND_IMAGES=local             scripts/build-images.sh (this machine's glibc binaries),
#                                     loaded as OCI archives with `kind load image-archive`
#   KIND_NODE_IMAGE=kindest/node:...  another node image than the one in kind-config.yaml
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "${ROOT}"
log() { printf '[kind %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[kind] ERROR: %s\n' "$*" >&2; exit 1; }

CLUSTER=scaledapp
NAMESPACE=scaledapp-system
RELEASE=scaledapp-operator
STATE=e2e/kind/.state
VERSION=$(python3 -c 'import tomllib; print(tomllib.load(open("Cargo.toml", "rb"))["workspace"]["package"]["version"])')
REGISTRY=${IMAGE_REGISTRY:-ghcr.io/scaled-dev}
OPERATOR_IMAGE="${REGISTRY}/scaledapp-operator:${VERSION}"
APP_IMAGE="${REGISTRY}/scaled-app:${VERSION}"

for tool in docker kind kubectl helm; do
  command -v "${tool}" >/dev/null 2>&1 || die "'${tool}' is not installed; this route needs docker, kind, kubectl and helm (nothing was created)"
done
docker info >/dev/null 2>&1 || die "the Docker engine does not answer ('docker info' failed): start Docker first (nothing was created)"

mkdir -p "${STATE}/audit"
if kind get clusters 2>/dev/null | grep -qx "${CLUSTER}"; then
  log "cluster ${CLUSTER} exists; reusing it"
else
  log "creating cluster ${CLUSTER} (e2e/kind/kind-config.yaml)"
  kind create cluster --config e2e/kind/kind-config.yaml ${KIND_NODE_IMAGE:+--image "${KIND_NODE_IMAGE}"} --wait 3m
fi
kind get kubeconfig --name "${CLUSTER}" >"${STATE}/kubeconfig"
export KUBECONFIG="${ROOT}/${STATE}/kubeconfig"
# The API server creates its audit log 0600 as root; let the tests (maybe not root) read it.
docker exec "${CLUSTER}-control-plane" sh -c 'chmod 0755 /var/log/kubernetes/audit && chmod 0644 /var/log/kubernetes/audit/audit.log' \
  || die "no audit log on ${CLUSTER}-control-plane: was the cluster created from e2e/kind/kind-config.yaml?"

case ${E2E_KIND_IMAGES:-docker} in
  docker)
    log "docker build ${OPERATOR_IMAGE}"
    docker build -f images/operator.Dockerfile --build-arg "VERSION=${VERSION}" -t "${OPERATOR_IMAGE}" .
    log "docker build ${APP_IMAGE}"
    docker build -f images/app.Dockerfile --build-arg "VERSION=${VERSION}" -t "${APP_IMAGE}" .
    log "kind load docker-image"
    kind load docker-image --name "${CLUSTER}" "${OPERATOR_IMAGE}" "${APP_IMAGE}"
    ;;
  local)
    scripts/build-images.sh
    for name in scaledapp-operator scaled-app; do
      kind load image-archive --name "${CLUSTER}" "target/images/${name}-${VERSION}.oci.tar"
    done
    ;;
  *) die "E2E_KIND_IMAGES must be docker or local" ;;
esac

# The stack's default Redis and Postgres images (operator/src/crd/defaults.rs) and the tests' client
# pods' busybox, pulled once here so that the
# suite's Ready timeouts measure the operator, not the nodes' first pulls.
for image in ${E2E_KIND_PRELOAD:-redis:7.4-alpine postgres:17-alpine busybox:1.37}; do
  if ! { docker image inspect "${image}" >/dev/null 2>&1 || docker pull -q "${image}" >/dev/null; } \
    || ! kind load docker-image --name "${CLUSTER}" "${image}"; then
    log "could not preload ${image}; the nodes will pull it themselves"
  fi
done

log "helm install ${RELEASE} into ${NAMESPACE} (operator in-cluster, image ${OPERATOR_IMAGE})"
helm upgrade --install "${RELEASE}" charts/scaledapp-operator --namespace "${NAMESPACE}" --create-namespace \
  --set "image.registry=${REGISTRY},image.tag=${VERSION},appImage.tag=${VERSION},image.pullPolicy=IfNotPresent" \
  --set localOperator.enabled=false --wait --timeout 5m
# helm installs crds/ only on first install; keep the cluster's CRD current across runs.
kubectl apply --server-side --force-conflicts -f crds/scaled.dev_scaledapps.yaml >/dev/null
# Same tag, new image on a re-run: restart so the pods run what was just loaded.
kubectl -n "${NAMESPACE}" rollout restart "deployment/${RELEASE}" >/dev/null
kubectl -n "${NAMESPACE}" rollout status "deployment/${RELEASE}" --timeout 3m

log "ready. Use the cluster with:  export KUBECONFIG=${KUBECONFIG}"
log "next: e2e/kind/test.sh (suite + real pods + failover); e2e/kind/down.sh deletes the cluster"
