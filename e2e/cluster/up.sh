#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Starts the local e2e Kubernetes cluster: the control plane (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler as local processes, started by kwokctl's binary
# runtime), kwok simulating SCALEDAPP_NODES nodes (pods there become Running/Ready without a
# container runtime), and one REAL node (containerd, kubelet, kube-proxy, CoreDNS, a volume
# provisioner, NetworkPolicy enforcement, a local registry) where pods really run.
# See README.md for the layout and how a pod lands on the real node.
#
# Builds the tools and node images first if needed. Idempotent: if the cluster is already up
# and healthy it says so and exits 0; if it exists but is not healthy it is recreated.
#
# stdout: shell `export` lines only; progress goes to stderr (one line per step, full logs in
# e2e/cluster/.state/logs/). Exits non-zero if anything fails, so use it as
#   env=$(e2e/cluster/up.sh) && eval "${env}"
# (eval "$(e2e/cluster/up.sh)" would hide a failed start).
#
# Environment:
#   SCALEDAPP_REAL_NODE       1 (default): add the real node; 0: kwok nodes only
#   SCALEDAPP_CLUSTER         cluster name (default: scaledapp)
#   SCALEDAPP_NODES           number of kwok nodes (default: 3)
#   SCALEDAPP_APISERVER_PORT  fixed kube-apiserver port (default: a free one)
#   SCALEDAPP_REGISTRY_PORT   local registry port on 127.0.0.1 (default: 5000)
#   SCALEDAPP_CACHE           tool cache (default: ~/.cache/scaledapp-e2e)
set -euo pipefail

# shellcheck source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
# shellcheck source=real-node.sh
source "${CLUSTER_DIR}/real-node.sh"
ROOT_DIR=$(cd "${CLUSTER_DIR}/../.." && pwd)

NODES=${SCALEDAPP_NODES:-3}
APISERVER_PORT=${SCALEDAPP_APISERVER_PORT:-0}
[[ "${NODES}" =~ ^[0-9]+$ ]] || die "SCALEDAPP_NODES must be a number, got ${NODES}"
[[ "${APISERVER_PORT}" =~ ^[0-9]+$ ]] || die "SCALEDAPP_APISERVER_PORT must be a number"
[[ "${REAL_NODE}" == 0 || "${REAL_NODE}" == 1 ]] || die "SCALEDAPP_REAL_NODE must be 0 or 1, got ${REAL_NODE}"

START=${SECONDS}
mkdir -p "${STATE_DIR}"

# Serialize up.sh / down.sh runs for this checkout (down.sh run from here inherits the lock).
if [[ "${SCALEDAPP_CLUSTER_LOCKED:-0}" != 1 ]] && command -v flock >/dev/null 2>&1; then
  exec 8>"${STATE_DIR}.lock"
  flock 8
fi

# 1. Tools and node images (each prints one line per component it builds, nothing when cached).
"${CLUSTER_DIR}/build-tools.sh" >/dev/null
if [[ "${REAL_NODE}" == 1 ]]; then
  "${ROOT_DIR}/images/debian/build.sh"
fi

# kwokctl keeps clusters, logs, pids and its cache under KWOK_WORKDIR.
export KWOK_WORKDIR="${KWOK_WORKDIR_PATH}"
CLUSTER_WORKDIR="${KWOK_WORKDIR}/clusters/${CLUSTER_NAME}"
CLUSTER_PKI="${CLUSTER_WORKDIR}/pki"
KWOKCTL_CONFIG="${STATE_DIR}/kwokctl.yaml"
ENV_FILE="${STATE_DIR}/env"
MODE_FILE="${STATE_DIR}/mode"
BIN_DIR="${STATE_DIR}/bin"
FRONT_PROXY_PKI="${STATE_DIR}/front-proxy"
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
    sleep 0.2
  done
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# API aggregation: the API server proxies to extension API servers (an APIService) with a client
# certificate of its own CA, and the extension server trusts the X-Remote-* headers because of it.
front_proxy_pki() {
  mkdir -p "${FRONT_PROXY_PKI}"
  [[ -f "${FRONT_PROXY_PKI}/client.crt" ]] && return 0
  local dir=${FRONT_PROXY_PKI}
  openssl ecparam -name prime256v1 -genkey -noout -out "${dir}/ca.key" 2>/dev/null
  openssl req -x509 -new -key "${dir}/ca.key" -subj "/CN=front-proxy-ca" -days 365 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "${dir}/ca.crt" 2>/dev/null
  openssl ecparam -name prime256v1 -genkey -noout -out "${dir}/client.key" 2>/dev/null
  openssl req -new -key "${dir}/client.key" -subj "/CN=front-proxy-client" -out "${dir}/client.csr" 2>/dev/null
  openssl x509 -req -in "${dir}/client.csr" -CA "${dir}/ca.crt" -CAkey "${dir}/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 365 \
    -extfile <(printf 'keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n') \
    -out "${dir}/client.crt" 2>/dev/null
  rm -f "${dir}/client.csr"
}

write_files() {
  mkdir -p "${STATE_DIR}" "${LOG_DIR}"
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

  # Extra kube-apiserver flags. Both modes: API aggregation (front-proxy CA, requestheader
  # flags, its own proxy client; kwokctl passes the admin certificate as proxy client, the later
  # flag wins), a Service range that no kwok pod IP falls in, and the admission plugins that let
  # a namespace pin its pods to the real node (see README.md).
  local apiserver_args=(
    "requestheader-client-ca-file=${FRONT_PROXY_PKI}/ca.crt"
    "requestheader-allowed-names=front-proxy-client"
    "requestheader-username-headers=X-Remote-User"
    "requestheader-group-headers=X-Remote-Group"
    "requestheader-extra-headers-prefix=X-Remote-Extra-"
    "proxy-client-cert-file=${FRONT_PROXY_PKI}/client.crt"
    "proxy-client-key-file=${FRONT_PROXY_PKI}/client.key"
    "enable-aggregator-routing=true"
    "service-cluster-ip-range=${SERVICE_CIDR}"
    "enable-admission-plugins=PodNodeSelector,PodTolerationRestriction"
  )
  local cert_sans=""
  if [[ "${REAL_NODE}" == 1 ]]; then
    # Pods reach the API server at the bridge address (the `kubernetes` Service's endpoint);
    # it listens on all addresses, and the raw-table guard drops the port on other interfaces.
    # It reaches the kubelet by IP (the node's InternalIP, the bridge address), with a client
    # certificate the kubelet's CA verifies.
    apiserver_args+=(
      "advertise-address=${NODE_IP}"
      "kubelet-preferred-address-types=InternalIP"
      "kubelet-client-certificate=${CLUSTER_PKI}/admin.crt"
      "kubelet-client-key=${CLUSTER_PKI}/admin.key"
    )
    cert_sans="  kubeApiserverCertSANs: [\"${KUBERNETES_SERVICE_IP}\", \"${NODE_IP}\"]"
  fi

  # kwokctl configuration. Everything also passed as a flag is repeated here
  # so that `kwokctl get artifacts` (which reads only config) shows the same.
  # kubectl / etcdctl / etcdutl / bindAddress have no create-cluster flag.
  {
    cat <<EOF
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
${cert_sans}
componentsPatches:
  # In-tree hostPath dynamic provisioner (testing only): PVCs of the default
  # "standard" StorageClass get a PV under /tmp/hostpath_pv/ and are Bound.
  # Its FlexVolume directory defaults to /usr/libexec/kubernetes/..., which it would create on
  # the host: keep it in .state.
  - name: kube-controller-manager
    extraArgs:
      - key: enable-hostpath-provisioner
        value: "true"
      - key: flex-volume-plugin-dir
        value: "${STATE_DIR}/flexvolume"
  # kwok manages only the nodes kwokctl created (annotated kwok.x-k8s.io/node=fake), never
  # the real node or its pods.
  - name: kwok-controller
    extraArgs:
      - key: manage-all-nodes
        value: "false"
        override: true
      - key: manage-nodes-with-annotation-selector
        value: kwok.x-k8s.io/node=fake
  - name: kube-apiserver
    extraArgs:
EOF
    local arg
    for arg in "${apiserver_args[@]}"; do
      printf '      - key: %s\n        value: "%s"\n' "${arg%%=*}" "${arg#*=}"
    done
    if [[ "${REAL_NODE}" == 1 ]]; then
      printf '      - key: bind-address\n        value: "0.0.0.0"\n        override: true\n'
    fi
  } >"${KWOKCTL_CONFIG}"

  # kubectl, helm, kwokctl, etcdctl of the pinned versions, for PATH.
  mkdir -p "${BIN_DIR}"
  local b
  for b in "${KUBECTL_BIN}" "${HELM_BIN}" "${KWOKCTL_BIN}" "${ETCDCTL_BIN}"; do
    ln -sfn "${b}" "${BIN_DIR}/${b##*/}"
  done
}

# The export lines up.sh prints (and .state/env keeps), written once the cluster is up.
write_env() {
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
    if [[ "${REAL_NODE}" == 1 ]]; then
      node_exports
    else
      printf 'export SCALEDAPP_REAL_NODE=0\n'
    fi
  } >"${ENV_FILE}.partial"
  mv "${ENV_FILE}.partial" "${ENV_FILE}"
}

# Fails if any artifact kwokctl would use is not a local absolute path.
check_artifacts() {
  local artifacts bad
  artifacts=$(kwokctl get artifacts --runtime binary 2>>"${LOG_DIR}/kwokctl.log")
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
  local started=${SECONDS}
  printf '[e2e-cluster %s] control plane: kube %s, etcd %s, kwok %s (log: %s) ...' "$(date +%H:%M:%S)" \
    "${KUBE_VERSION}" "${ETCD_VERSION}" "${KWOK_VERSION}" "${LOG_DIR}/kwokctl.log" >&2
  if ! kwokctl "${args[@]}" >>"${LOG_DIR}/kwokctl.log" 2>&1; then
    printf ' FAILED\n' >&2
    tail -n 20 "${LOG_DIR}/kwokctl.log" | sed 's/^/    /' >&2
    dump_logs
    die "kwokctl create cluster failed; full log: ${LOG_DIR}/kwokctl.log (clean up: e2e/cluster/down.sh)"
  fi
  printf ' up in %ss\n' "$((SECONDS - started))" >&2
}

post_setup() {
  # The audit log lives in kwokctl's cluster dir; expose it next to the kubeconfig.
  ln -sfn "kwok/clusters/${CLUSTER_NAME}/logs/audit.log" "${AUDIT_LOG_PATH}"

  # Node addresses on loopback and IPv4 pod ranges only: kwokctl's defaults (192.0.2.x,
  # 2001:db8::x, fd00::/64) are real networks on some machines, this one included.
  kwokctl scale node --replicas "${NODES}" --param '.nodeIPs = ["127.0.100.1"]' \
    --param ".podCIDRs = [\"${SIMULATED_POD_CIDR}\"]" >>"${LOG_DIR}/kwokctl.log" 2>&1 ||
    die "kwokctl scale node failed; log: ${LOG_DIR}/kwokctl.log"
  # Simulated pods' addresses answer nothing; make connecting to them fail at once on this host
  # instead of sending packets out of the default route (the operator asks every Postgres pod
  # for its instance manager's /status, simulated ones too). down.sh removes the route.
  if [[ "$(id -u)" -eq 0 ]] && command -v ip >/dev/null 2>&1; then
    ip route replace unreachable "${SIMULATED_POD_RANGE}" &&
      touch "${STATE_DIR}/simulated-pods-route"
  else
    log "not root: connections to simulated pods (${SIMULATED_POD_RANGE}) are not short-circuited"
  fi

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
}

wait_kwok_nodes() {
  if [[ "${NODES}" -gt 0 ]]; then
    wait_for "${NODES} kwok nodes" 120 nodes_registered || die "kwok nodes did not register"
    kubectl wait --for=condition=Ready node -l type=kwok --timeout=120s >/dev/null ||
      die "kwok nodes did not become Ready"
  fi
  # kube-controller-manager is up once it created the default ServiceAccount
  # (pods cannot be admitted before that).
  wait_for "serviceaccount default/default" 120 kubectl -n default get serviceaccount default ||
    die "kube-controller-manager did not create the default ServiceAccount"
}

nodes_registered() {
  local n
  n=$(kubectl get nodes -l type=kwok --no-headers 2>/dev/null | wc -l)
  [[ "${n}" -ge "${NODES}" ]]
}

healthy() {
  api_ready || return 1
  [[ -f "${MODE_FILE}" && "$(<"${MODE_FILE}")" == "real-node=${REAL_NODE}" ]] || return 1
  [[ "${REAL_NODE}" == 0 ]] || node_alive
}

# ---------------------------------------------------------------------------

# Something of an earlier start exists (a cluster, or a real node whose start failed half-way).
if [[ -f "${CLUSTER_WORKDIR}/kwok.yaml" || -d "${NODE_STATE}" ]]; then
  if healthy; then
    log "cluster ${CLUSTER_NAME} is already up ($(<"${MODE_FILE}"), kubeconfig ${KUBECONFIG_PATH})"
    print_exports
    exit 0
  fi
  # E.g. after a reboot, a component died, or the other mode was asked for. A fresh cluster
  # takes seconds: tear everything down (down.sh, under this script's lock) and create it again.
  log "cluster ${CLUSTER_NAME} exists but is not healthy (or was started in the other mode): recreating it"
  SCALEDAPP_CLUSTER_LOCKED=1 "${CLUSTER_DIR}/down.sh" 8>&- || die "could not tear down the old cluster"
  mkdir -p "${STATE_DIR}"
fi

mkdir -p "${LOG_DIR}"
if [[ "${REAL_NODE}" == 1 ]]; then
  node_preflight
  [[ "${APISERVER_PORT}" != 0 ]] || APISERVER_PORT=$(free_port)
fi
front_proxy_pki
write_files
check_artifacts
if [[ "${REAL_NODE}" == 1 ]]; then
  # From here on every process this script starts is inside the egress guard.
  node_record_host
  node_join_cgroup node
  node_network_up "${APISERVER_PORT}"
  node_registry_up
  node_containerd_up
  node_join_cgroup control-plane
fi
create_cluster
printf 'real-node=%s\n' "${REAL_NODE}" >"${MODE_FILE}"
wait_for "kube-apiserver /readyz" 120 api_ready || {
  dump_logs
  die "kube-apiserver did not become ready"
}
if [[ "${REAL_NODE}" == 1 ]]; then
  node_join_cgroup node
  wait_component registry 20 curl -fsS "http://${REGISTRY_ADDRESS}/v2/"
  node_push_images
  started=${SECONDS}
  printf '[e2e-cluster %s] real node %s: containerd, kubelet, kube-proxy, coredns, local-path-provisioner, kube-router (logs: %s) ...' \
    "$(date +%H:%M:%S)" "${NODE_NAME}" "${LOG_DIR}" >&2
  node_start
fi
post_setup
if [[ "${REAL_NODE}" == 1 ]]; then
  node_wait
  printf ' Ready in %ss\n' "$((SECONDS - started))" >&2
fi
wait_kwok_nodes
write_env
log "cluster ${CLUSTER_NAME} is up in $((SECONDS - START))s: ${NODES} kwok nodes$([[ "${REAL_NODE}" == 1 ]] && printf ', real node %s' "${NODE_NAME}"); kubeconfig ${KUBECONFIG_PATH}"
print_exports
