#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Starts the local e2e Kubernetes control plane (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler as local processes, started by
# kwokctl's binary runtime) with kwok simulating the nodes, so pods become
# Running/Ready without a container runtime.
#
# Builds the tools first if needed (build-tools.sh). Idempotent: if the cluster
# is already up it says so and exits 0.
#
# stdout: shell `export` lines only (eval "$(e2e/cluster/up.sh)" works);
# progress goes to stderr.
#
# Environment:
#   SCALEDAPP_CLUSTER         cluster name (default: scaledapp)
#   SCALEDAPP_NODES           number of kwok nodes (default: 3)
#   SCALEDAPP_APISERVER_PORT  fixed kube-apiserver port (default: a free one)
#   SCALEDAPP_CACHE           tool cache (default: ~/.cache/scaledapp-e2e)
set -euo pipefail

# shellcheck source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

NODES=${SCALEDAPP_NODES:-3}
APISERVER_PORT=${SCALEDAPP_APISERVER_PORT:-0}
[[ "${NODES}" =~ ^[0-9]+$ ]] || die "SCALEDAPP_NODES must be a number, got ${NODES}"
[[ "${APISERVER_PORT}" =~ ^[0-9]+$ ]] || die "SCALEDAPP_APISERVER_PORT must be a number"

START=${SECONDS}

# Serialize up.sh / down.sh runs for this checkout.
if command -v flock >/dev/null 2>&1; then
  exec 8>"${STATE_DIR}.lock"
  flock 8
fi

# 1. Tools. build-tools.sh logs to stderr and prints the paths on stdout.
"${CLUSTER_DIR}/build-tools.sh" >/dev/null

# kwokctl keeps clusters, logs, pids and its cache under KWOK_WORKDIR.
export KWOK_WORKDIR="${KWOK_WORKDIR_PATH}"
CLUSTER_WORKDIR="${KWOK_WORKDIR}/clusters/${CLUSTER_NAME}"
KWOKCTL_CONFIG="${STATE_DIR}/kwokctl.yaml"
ENV_FILE="${STATE_DIR}/env"
BIN_DIR="${STATE_DIR}/bin"
# kubectl's discovery/http cache: keep it in .state instead of ~/.kube/cache.
export KUBECACHEDIR="${STATE_DIR}/kube-cache"

# 8>&-: the components kwokctl starts live on; they must not inherit the lock.
kwokctl() {
  "${KWOKCTL_BIN}" --name "${CLUSTER_NAME}" --config "${KWOKCTL_CONFIG}" "$@" 8>&-
}

kubectl() {
  "${KUBECTL_BIN}" --kubeconfig "${KUBECONFIG_PATH}" "$@"
}

api_ready() {
  [[ -f "${KUBECONFIG_PATH}" ]] &&
    kubectl get --raw /readyz --request-timeout=5s >/dev/null 2>&1
}

print_exports() {
  cat "${ENV_FILE}"
}

dump_logs() {
  local f
  for f in "${CLUSTER_WORKDIR}"/logs/*.log; do
    [[ -f "${f}" && "${f##*/}" != audit.log ]] || continue
    log "---- last lines of ${f}"
    tail -n 20 "${f}" >&2 || true
  done
}

# wait_for DESCRIPTION TIMEOUT_SECONDS COMMAND...
wait_for() {
  local what=$1 timeout=$2 deadline
  shift 2
  deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "timed out after ${timeout}s waiting for ${what}"
      return 1
    fi
    sleep 1
  done
}

write_files() {
  mkdir -p "${STATE_DIR}"
  # Audit: every write (create/update/patch/delete/deletecollection) at
  # Metadata level, nothing else. Node heartbeats and the control plane's
  # leader-election leases are dropped: they are noise for tests.
  cat >"${AUDIT_POLICY_PATH}" <<'EOF'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages:
  - RequestReceived
rules:
  - level: None
    resources:
      - group: coordination.k8s.io
        resources: ["leases"]
    namespaces: ["kube-node-lease", "kube-system"]
  # Every request of the operator's ServiceAccount (reads too), for the scale benchmark.
  - level: Metadata
    users: ["system:serviceaccount:scaledapp-system:scaledapp-operator"]
  - level: Metadata
    verbs: ["create", "update", "patch", "delete", "deletecollection"]
  - level: None
EOF

  # kwokctl configuration. Everything also passed as a flag is repeated here
  # so that `kwokctl get artifacts` (which reads only config) shows the same.
  # kubectl / etcdctl / etcdutl / bindAddress have no create-cluster flag.
  cat >"${KWOKCTL_CONFIG}" <<EOF
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokctlConfiguration
options:
  runtime: binary
  bindAddress: 127.0.0.1
  kubeVersion: ${KUBE_VERSION}
  etcdVersion: ${ETCD_VERSION#v}
  kwokVersion: ${KWOK_VERSION}
  kubeApiserverBinary: ${KUBE_APISERVER_BIN}
  kubeControllerManagerBinary: ${KUBE_CONTROLLER_MANAGER_BIN}
  kubeSchedulerBinary: ${KUBE_SCHEDULER_BIN}
  kubectlBinary: ${KUBECTL_BIN}
  etcdBinary: ${ETCD_BIN}
  etcdctlBinary: ${ETCDCTL_BIN}
  etcdutlBinary: ${ETCDUTL_BIN}
  kwokControllerBinary: ${KWOK_BIN}
componentsPatches:
  # In-tree hostPath dynamic provisioner (testing only): PVCs of the default
  # "standard" StorageClass get a PV under /tmp/hostpath_pv/ and are Bound.
  - name: kube-controller-manager
    extraArgs:
      - key: enable-hostpath-provisioner
        value: "true"
EOF

  # kubectl, helm, kwokctl, etcdctl of the pinned versions, for PATH.
  mkdir -p "${BIN_DIR}"
  local b
  for b in "${KUBECTL_BIN}" "${HELM_BIN}" "${KWOKCTL_BIN}" "${ETCDCTL_BIN}"; do
    ln -sfn "${b}" "${BIN_DIR}/${b##*/}"
  done

  {
    printf 'export KUBECONFIG=%q\n' "${KUBECONFIG_PATH}"
    printf 'export KUBECACHEDIR=%q\n' "${KUBECACHEDIR}"
    printf 'export KWOK_WORKDIR=%q\n' "${KWOK_WORKDIR}"
    printf 'export SCALEDAPP_AUDIT_LOG=%q\n' "${AUDIT_LOG_PATH}"
    printf 'export SCALEDAPP_KUBECTL=%q\n' "${KUBECTL_BIN}"
    printf 'export SCALEDAPP_HELM=%q\n' "${HELM_BIN}"
    # helm's repository cache/config/data: inside .state too.
    printf 'export HELM_CACHE_HOME=%q\n' "${STATE_DIR}/helm/cache"
    printf 'export HELM_CONFIG_HOME=%q\n' "${STATE_DIR}/helm/config"
    printf 'export HELM_DATA_HOME=%q\n' "${STATE_DIR}/helm/data"
    # shellcheck disable=SC2016 # ${PATH} is expanded by whoever sources this
    printf 'export PATH=%q:"${PATH}"\n' "${BIN_DIR}"
  } >"${ENV_FILE}"
}

# Fails if any artifact kwokctl would use is not a local absolute path.
check_artifacts() {
  local artifacts bad
  artifacts=$(kwokctl get artifacts --runtime binary)
  bad=$(grep -E '://' <<<"${artifacts}" || true)
  if [[ -n "${bad}" ]]; then
    log "kwokctl would download:"
    printf '%s\n' "${bad}" >&2
    die "some kwokctl artifact is not a local path"
  fi
}

create_cluster() {
  local args=(
    create cluster
    --runtime binary
    --kubeconfig "${KUBECONFIG_PATH}"
    --kube-apiserver-binary "${KUBE_APISERVER_BIN}"
    --kube-controller-manager-binary "${KUBE_CONTROLLER_MANAGER_BIN}"
    --kube-scheduler-binary "${KUBE_SCHEDULER_BIN}"
    --etcd-binary "${ETCD_BIN}"
    --kwok-controller-binary "${KWOK_BIN}"
    --kube-audit-policy "${AUDIT_POLICY_PATH}"
    --kube-authorization=true
    --kube-admission=true
    --wait 120s
    --timeout 300s
  )
  if [[ "${APISERVER_PORT}" != 0 ]]; then
    args+=(--kube-apiserver-port "${APISERVER_PORT}")
  fi
  log "creating cluster ${CLUSTER_NAME} (kwokctl, binary runtime, kube ${KUBE_VERSION}, etcd ${ETCD_VERSION}, kwok ${KWOK_VERSION})"
  if ! kwokctl "${args[@]}" >&2; then
    dump_logs
    die "kwokctl create cluster failed"
  fi
}

post_setup() {
  wait_for "kube-apiserver /readyz" 120 api_ready || {
    dump_logs
    die "kube-apiserver did not become ready"
  }
  # The audit log lives in kwokctl's cluster dir; expose it next to the kubeconfig.
  ln -sfn "kwok/clusters/${CLUSTER_NAME}/logs/audit.log" "${AUDIT_LOG_PATH}"

  log "scaling to ${NODES} kwok nodes"
  kwokctl scale node --replicas "${NODES}" >&2

  log "installing default StorageClass 'standard' (kubernetes.io/host-path, Immediate)"
  kubectl apply -f - >/dev/null <<'EOF'
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: kubernetes.io/host-path
reclaimPolicy: Delete
volumeBindingMode: Immediate
EOF

  if [[ "${NODES}" -gt 0 ]]; then
    log "waiting for ${NODES} nodes to be Ready"
    wait_for "${NODES} nodes" 120 nodes_registered || die "nodes did not register"
    kubectl wait --for=condition=Ready node --all --timeout=120s >/dev/null ||
      die "nodes did not become Ready"
  fi
  # kube-controller-manager is up once it created the default ServiceAccount
  # (pods cannot be admitted before that).
  log "waiting for kube-controller-manager (default ServiceAccount)"
  wait_for "serviceaccount default/default" 120 kubectl -n default get serviceaccount default ||
    die "kube-controller-manager did not create the default ServiceAccount"
}

nodes_registered() {
  local n
  n=$(kubectl get nodes --no-headers 2>/dev/null | wc -l)
  [[ "${n}" -ge "${NODES}" ]]
}

# ---------------------------------------------------------------------------

if [[ -f "${CLUSTER_WORKDIR}/kwok.yaml" ]]; then
  if api_ready; then
    log "cluster ${CLUSTER_NAME} is already up (kubeconfig ${KUBECONFIG_PATH})"
    print_exports
    exit 0
  fi
  # E.g. after a reboot, or a component died. `kwokctl start cluster` is not
  # reliable here (stale pid files, half-stopped processes); a fresh cluster
  # takes seconds, so delete (stops whatever is left) and create it again.
  log "cluster ${CLUSTER_NAME} exists but is not answering: deleting and recreating it"
  kwokctl delete cluster --kubeconfig "${KUBECONFIG_PATH}" >&2 || true
fi

write_files
check_artifacts
create_cluster
post_setup
log "cluster ${CLUSTER_NAME} is up ($((SECONDS - START))s)"
log "audit log: ${AUDIT_LOG_PATH}"
log "run: export KUBECONFIG=${KUBECONFIG_PATH}"
print_exports
