# shellcheck shell=bash
# shellcheck source-path=SCRIPTDIR disable=SC2034  # variables are used by the scripts that source this file
# Shared settings for the e2e cluster scripts. Sourced, not executed.

CLUSTER_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "${CLUSTER_DIR}/versions.env"

# Build cache: outside the repository, survives `git clean` and fresh clones.
CACHE_DIR=${SCALEDAPP_CACHE:-${HOME:?HOME must be set}/.cache/scaledapp-e2e}

KUBE_DIR=${CACHE_DIR}/kubernetes-${KUBE_VERSION}
ETCD_DIR=${CACHE_DIR}/etcd-${ETCD_VERSION}
KWOK_DIR=${CACHE_DIR}/kwok-${KWOK_VERSION}
HELM_DIR=${CACHE_DIR}/helm-${HELM_VERSION}

KUBE_APISERVER_BIN=${KUBE_DIR}/kube-apiserver
KUBE_CONTROLLER_MANAGER_BIN=${KUBE_DIR}/kube-controller-manager
KUBE_SCHEDULER_BIN=${KUBE_DIR}/kube-scheduler
KUBECTL_BIN=${KUBE_DIR}/kubectl
ETCD_BIN=${ETCD_DIR}/etcd
ETCDCTL_BIN=${ETCD_DIR}/etcdctl
ETCDUTL_BIN=${ETCD_DIR}/etcdutl
KWOK_BIN=${KWOK_DIR}/kwok
KWOKCTL_BIN=${KWOK_DIR}/kwokctl
HELM_BIN=${HELM_DIR}/helm

# The real node (see README.md). SCALEDAPP_REAL_NODE=0: kwok nodes only.
REAL_NODE=${SCALEDAPP_REAL_NODE:-1}
KUBE_NODE_DIR=${CACHE_DIR}/kubernetes-node-${KUBE_VERSION}
COREDNS_DIR=${CACHE_DIR}/coredns-${COREDNS_VERSION}
LOCAL_PATH_DIR=${CACHE_DIR}/local-path-provisioner-${LOCAL_PATH_PROVISIONER_VERSION}
KUBE_ROUTER_DIR=${CACHE_DIR}/kube-router-${KUBE_ROUTER_VERSION}
KUBELET_BIN=${KUBE_NODE_DIR}/kubelet
KUBE_PROXY_BIN=${KUBE_NODE_DIR}/kube-proxy
COREDNS_BIN=${COREDNS_DIR}/coredns
LOCAL_PATH_BIN=${LOCAL_PATH_DIR}/local-path-provisioner
KUBE_ROUTER_BIN=${KUBE_ROUTER_DIR}/kube-router
# Node images (Postgres, Redis, pause, busybox) built from Debian packages.
NODE_IMAGES_DIR=${CACHE_DIR}/images
# The local registry's storage: kept between clusters, so a warm start pushes nothing.
REGISTRY_STORAGE=${CACHE_DIR}/registry

# Marker written once a component directory is completely built.
BUILD_MARKER=.build-complete

# Runtime state of the cluster: inside the repo, git-ignored.
STATE_DIR=${CLUSTER_DIR}/.state
CLUSTER_NAME=${SCALEDAPP_CLUSTER:-scaledapp}
# Pod addresses kwok gives its simulated pods (an IPv4 range no real network here uses): the
# first node's range; kwok gives each further node the next /24 (10.0.1.0/24, ...), so the route
# that keeps connections to simulated pods on this host covers the whole /16.
SIMULATED_POD_CIDR=10.0.0.0/24
SIMULATED_POD_RANGE=10.0.0.0/16
KUBECONFIG_PATH=${STATE_DIR}/kubeconfig
AUDIT_LOG_PATH=${STATE_DIR}/audit.log
AUDIT_POLICY_PATH=${STATE_DIR}/audit-policy.yaml
# kwokctl keeps everything (cluster dirs, logs, pids, etcd data) here.
KWOK_WORKDIR_PATH=${STATE_DIR}/kwok

# Logs of builds and of every component: one progress line on the terminal, the
# full output in a file whose path is printed on failure.
LOG_DIR=${STATE_DIR}/logs
BUILD_LOG_DIR=${CACHE_DIR}/logs

log() {
  printf '[e2e-cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2
}

die() {
  log "ERROR: $*"
  exit 1
}

# Pick the go binary: $GO, then go on PATH, then the usual install location.
find_go() {
  if [[ -n "${GO:-}" ]]; then
    printf '%s\n' "${GO}"
  elif command -v go >/dev/null 2>&1; then
    command -v go
  elif [[ -x /usr/local/go/bin/go ]]; then
    printf '%s\n' /usr/local/go/bin/go
  else
    return 1
  fi
}
