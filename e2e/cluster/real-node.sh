# shellcheck shell=bash
# shellcheck disable=SC2034  # variables are used by the scripts that source this file
# The real node beside the kwok nodes: sourced by up.sh, down.sh and the smoke test.
#
# Layout (every path below .state/node unless it says otherwise):
#   network   bridge scaledapp0 10.244.0.1/24 (the node's IP; pods get 10.244.0.2-254 from
#             host-local IPAM in network namespaces containerd creates); Services 10.96.0.0/16
#             (kubernetes 10.96.0.1); cluster DNS = CoreDNS on 10.244.0.1:53
#   guard     iptables: mangle POSTROUTING drops and counts anything a pod or a cluster process
#             sends out of an interface other than lo and the bridge (SCALEDAPP-LEAK); raw
#             PREROUTING drops anything reaching the API server's port or the pod subnet from
#             another interface. "Cluster process" = a process in the cgroup v2 group
#             scaledapp-<cluster>, which up.sh joins before it starts anything.
#   processes containerd (+ runc shims), kubelet, kube-proxy, coredns, local-path-provisioner,
#             kube-router (firewall only), docker-registry on 127.0.0.1:5000
#   images    localhost/<repo> resolves to the registry on 127.0.0.1 (containerd hosts.toml);
#             containerd has an unreachable proxy for everything else, so no pull leaves.
# down.sh undoes all of it (see node_down) and checks the host against the snapshot taken
# before the first start (host-state.sh).

NODE_NAME=${CLUSTER_NAME}-real
NODE_STATE=${STATE_DIR}/node
NODE_LABEL_KEY=scaled.dev/node
NODE_LABEL_VALUE=real
NODE_TAINT_KEY=scaled.dev/real-node
BRIDGE=scaledapp0
POD_SUBNET=10.244.0.0/24
NODE_IP=10.244.0.1
SERVICE_CIDR=10.96.0.0/16
KUBERNETES_SERVICE_IP=10.96.0.1
CLUSTER_DOMAIN=cluster.local
REGISTRY_PORT=${SCALEDAPP_REGISTRY_PORT:-5000}
REGISTRY_ADDRESS=127.0.0.1:${REGISTRY_PORT}
# In the cluster, images are named localhost/scaled/<name>:<tag>; containerd maps the host
# "localhost" to the registry above, wherever it listens.
IMAGE_PREFIX=localhost/scaled
REGISTRY_REPOSITORY_PREFIX=scaled
PAUSE_IMAGE=${IMAGE_PREFIX}/pause:1
LOCAL_PATH_NAMESPACE=local-path-storage
LOCAL_PATH_STORAGE_CLASS=local-path
# Health/metrics ports: loopback only.
COREDNS_HEALTH_PORT=10054
COREDNS_READY_PORT=10055
KUBE_ROUTER_HEALTH_PORT=20244
# One real node per machine (kube-proxy's chains, /var/log/containers and the CNI cache are
# machine-wide): this file names the state directory that owns it.
NODE_OWNER_FILE=/run/scaledapp-real-node.owner
GUARD_CGROUP_NAME=scaledapp-${CLUSTER_NAME}
NODE_COMPONENTS=(containerd kubelet kube-proxy coredns local-path-provisioner kube-router registry)
# Sysctls the kubelet sets at start-up (protectKernelDefaults: false), restored by down.sh.
KUBELET_SYSCTLS=(vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops
  kernel/keys/root_maxkeys kernel/keys/root_maxbytes)
# Host paths some component uses whatever it is configured with (the kubelet's device-plugin
# socket is always in /var/lib/kubelet/device-plugins, containerd's shim sockets in
# /run/containerd/s, ...); down.sh removes what it made.
HOST_PATHS=(/var/log/containers /var/lib/cni /run/containerd /run/netns /var/lib/kubelet)
# The node's configuration files, with ${VAR} placeholders (see render_template).
NODE_TEMPLATES=${CLUSTER_DIR}/real-node

cgroup2_root() {
  awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts
}
guard_cgroup() {
  local root
  root=$(cgroup2_root)
  [[ -n "${root}" ]] || return 1
  printf '%s/%s\n' "${root}" "${GUARD_CGROUP_NAME}"
}

node_kubectl() { "${KUBECTL_BIN}" --kubeconfig "${KUBECONFIG_PATH}" "$@"; }

# render_template TEMPLATE OUTPUT NAME...: real-node/TEMPLATE with each ${NAME} replaced by the
# value of that shell variable, written to OUTPUT. Only the listed names are replaced; any other
# ${...} in the template, or a listed variable that is unset, stops here, so that a typo never
# reaches a component's configuration. Everything else ($VAR without braces, backslashes, quotes)
# is copied as it is, and a value is inserted as it is (never expanded again).
render_template() {
  local template=${NODE_TEMPLATES}/$1 output=$2 text rendered='' name
  shift 2
  [[ -f "${template}" ]] || die "no template ${template}"
  IFS= read -r -d '' text <"${template}" || true
  while [[ "${text}" == *\$\{* ]]; do
    rendered+=${text%%\$\{*}
    text=${text#*\$\{}
    name=${text%%\}*}
    if [[ "${text}" != *\}* || ! "${name}" =~ ^[A-Za-z_][A-Za-z0-9_]*$ || " $* " != *" ${name} "* ]]; then
      die "${template}: \${${name:0:40}} is not one of the names it is rendered with ($*)"
    fi
    [[ -v "${name}" ]] || die "${template}: ${name} is not set"
    rendered+=${!name}
    text=${text#*\}}
  done
  printf '%s' "${rendered}${text}" >"${output}"
}

# ---------------------------------------------------------------------------------------------
# checks before anything is changed

node_preflight() {
  [[ "$(id -u)" -eq 0 ]] || die "the real node needs root (set SCALEDAPP_REAL_NODE=0 for kwok nodes only)"
  local tool missing=()
  for tool in containerd runc ctr iptables ip6tables ipset ip conntrack openssl skopeo docker-registry curl python3; do
    command -v "${tool}" >/dev/null 2>&1 || missing+=("${tool}")
  done
  [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback && -x /usr/lib/cni/portmap ]] ||
    missing+=("containernetworking-plugins (/usr/lib/cni)")
  [[ ${#missing[@]} -eq 0 ]] || die "missing for the real node: ${missing[*]} (run scripts/install-deps.sh, or SCALEDAPP_REAL_NODE=0)"
  [[ -n "$(cgroup2_root)" ]] || die "no cgroup v2 hierarchy mounted: the egress guard needs one (SCALEDAPP_REAL_NODE=0 to skip the real node)"
  node_check_owner
  if ip link show "${BRIDGE}" >/dev/null 2>&1 && [[ ! -f "${NODE_STATE}/bridge" ]]; then
    die "a bridge ${BRIDGE} exists that this checkout did not create; remove it or set SCALEDAPP_REAL_NODE=0"
  fi
  local port
  for port in "${REGISTRY_PORT}" 10248 10249 10250 10256 "${COREDNS_HEALTH_PORT}" "${COREDNS_READY_PORT}" "${KUBE_ROUTER_HEALTH_PORT}"; do
    if ss -Htln "sport = :${port}" | grep . >/dev/null; then
      die "port ${port} is in use: $(ss -Htlnp "sport = :${port}" | head -n1)"
    fi
  done
}

# One real node per machine. The owner file names the checkout whose node it is; another
# checkout's node is refused while any of its processes runs, and removed (with that checkout's
# down.sh, which has the records of what it changed) when none does.
node_check_owner() {
  [[ -f "${NODE_OWNER_FILE}" ]] || return 0
  local owner down
  owner=$(<"${NODE_OWNER_FILE}")
  [[ "${owner}" != "${STATE_DIR}" && -d "${owner}" ]] || return 0
  if owner_node_alive "${owner}"; then
    die "the machine's real node belongs to another checkout (${owner}); stop it with its e2e/cluster/down.sh, or set SCALEDAPP_REAL_NODE=0"
  fi
  down=$(dirname "${owner}")/down.sh
  log "the real node of ${owner} is stale (none of its processes runs): removing it with ${down}"
  [[ -x "${down}" ]] ||
    die "the stale real node of ${owner} has no down.sh to remove it; remove ${NODE_OWNER_FILE}, the bridge ${BRIDGE} and its iptables chains by hand"
  env -u SCALEDAPP_CLUSTER_LOCKED "${down}" 8>&- 9>&- || die "could not remove the stale real node of ${owner} (see above)"
}

# ---------------------------------------------------------------------------------------------
# host changes, recorded so that down.sh can undo exactly them

node_record_host() {
  mkdir -p "${NODE_STATE}/host-before" "${NODE_STATE}/pids" "${LOG_DIR}"
  [[ -f "${NODE_STATE}/host-before/recorded" ]] && return 0
  local s p
  for s in "${KUBELET_SYSCTLS[@]}"; do
    printf '%s=%s\n' "${s}" "$(cat "/proc/sys/${s}")"
  done >"${NODE_STATE}/host-before/sysctls"
  for p in "${HOST_PATHS[@]}"; do
    [[ -e "${p}" ]] && printf '%s\n' "${p}"
  done >"${NODE_STATE}/host-before/paths" || true
  "${CLUSTER_DIR}/host-state.sh" >"${NODE_STATE}/host-before/snapshot"
  printf '%s\n' "${STATE_DIR}" >"${NODE_OWNER_FILE}"
  touch "${NODE_STATE}/host-before/recorded"
}

# node_join_cgroup PART: this shell, and every process it starts from now on, joins the guard's
# cgroup <guard>/PART (control-plane or node); all of them may talk to loopback and the bridge
# only. down.sh stops what is left in <guard>/node (and the pods' groups) with the node, and the
# control plane's group after kwokctl stopped it.
node_join_cgroup() {
  local cgroup
  cgroup=$(guard_cgroup)/$1
  mkdir -p "${cgroup}"
  echo "$$" >"${cgroup}/cgroup.procs"
}

node_network_up() { # API_SERVER_PORT
  if ! ip link show "${BRIDGE}" >/dev/null 2>&1; then
    ip link add "${BRIDGE}" type bridge
  fi
  touch "${NODE_STATE}/bridge"
  # br_netfilter for this bridge only (per-bridge setting, gone with the bridge): Service replies
  # and NetworkPolicy rules see bridged pod-to-pod traffic. Forwarding is enabled on the bridge
  # only, so packets arriving elsewhere are never routed (the global ip_forward stays as it was).
  ip link set "${BRIDGE}" type bridge nf_call_iptables 1 nf_call_ip6tables 1
  echo 1 >"/proc/sys/net/ipv6/conf/${BRIDGE}/disable_ipv6"
  echo 1 >"/proc/sys/net/ipv4/conf/${BRIDGE}/forwarding"
  ip addr replace "${NODE_IP}/24" dev "${BRIDGE}"
  ip link set "${BRIDGE}" up
  node_guard_up "$1"
}

# The egress guard. Rules are (re)installed at position 1 of their hooks; the chains are ours.
node_guard_up() {
  local api_port=$1
  local t
  for t in iptables ip6tables; do
    "${t}" -w -t mangle -N SCALEDAPP-GUARD 2>/dev/null || "${t}" -w -t mangle -F SCALEDAPP-GUARD
    "${t}" -w -t mangle -N SCALEDAPP-LEAK 2>/dev/null || "${t}" -w -t mangle -F SCALEDAPP-LEAK
    "${t}" -w -t mangle -A SCALEDAPP-GUARD -o lo -j RETURN
    "${t}" -w -t mangle -A SCALEDAPP-GUARD -o "${BRIDGE}" -j RETURN
    "${t}" -w -t mangle -A SCALEDAPP-GUARD -m cgroup --path "${GUARD_CGROUP_NAME}" -j SCALEDAPP-LEAK
    "${t}" -w -t mangle -A SCALEDAPP-LEAK -j LOG --log-prefix "scaledapp-leak: "
    "${t}" -w -t mangle -A SCALEDAPP-LEAK -j DROP
    "${t}" -w -t mangle -C POSTROUTING -j SCALEDAPP-GUARD 2>/dev/null ||
      "${t}" -w -t mangle -I POSTROUTING 1 -j SCALEDAPP-GUARD
  done
  # Pods' packets are forwarded, not sent by a local process: match their source subnet.
  iptables -w -t mangle -I SCALEDAPP-GUARD 3 -s "${POD_SUBNET}" -j SCALEDAPP-LEAK
  # Inbound: the pod subnet and the API server port (it listens on all addresses so that pods
  # can reach it on the bridge) only from lo and the bridge.
  iptables -w -t raw -N SCALEDAPP-INBOUND 2>/dev/null || iptables -w -t raw -F SCALEDAPP-INBOUND
  iptables -w -t raw -A SCALEDAPP-INBOUND -i lo -j RETURN
  iptables -w -t raw -A SCALEDAPP-INBOUND -i "${BRIDGE}" -j RETURN
  iptables -w -t raw -A SCALEDAPP-INBOUND -d "${POD_SUBNET}" -j DROP
  if [[ -n "${api_port}" ]]; then
    iptables -w -t raw -A SCALEDAPP-INBOUND -p tcp --dport "${api_port}" -j DROP
    ip6tables -w -t raw -N SCALEDAPP-INBOUND 2>/dev/null || ip6tables -w -t raw -F SCALEDAPP-INBOUND
    ip6tables -w -t raw -A SCALEDAPP-INBOUND -i lo -j RETURN
    ip6tables -w -t raw -A SCALEDAPP-INBOUND -p tcp --dport "${api_port}" -j DROP
    ip6tables -w -t raw -C PREROUTING -j SCALEDAPP-INBOUND 2>/dev/null ||
      ip6tables -w -t raw -I PREROUTING 1 -j SCALEDAPP-INBOUND
  fi
  iptables -w -t raw -C PREROUTING -j SCALEDAPP-INBOUND 2>/dev/null ||
    iptables -w -t raw -I PREROUTING 1 -j SCALEDAPP-INBOUND
}

# leak_count: packets the guard dropped (IPv4 + IPv6) since it was installed.
leak_count() {
  local t total=0 n
  for t in iptables ip6tables; do
    n=$("${t}" -w -t mangle -L SCALEDAPP-LEAK -v -x -n 2>/dev/null | awk '$3 == "DROP" { print $1 }')
    total=$((total + ${n:-0}))
  done
  printf '%s\n' "${total}"
}

# ---------------------------------------------------------------------------------------------
# certificates and kubeconfigs: one client certificate per node component, signed by the
# cluster CA kwokctl generated

new_cert() { # NAME SUBJECT CA_CRT CA_KEY EXT
  local name=$1 subject=$2 ca_crt=$3 ca_key=$4 ext=$5 dir=${NODE_STATE}/pki
  mkdir -p "${dir}"
  openssl ecparam -name prime256v1 -genkey -noout -out "${dir}/${name}.key" 2>/dev/null
  openssl req -new -key "${dir}/${name}.key" -subj "${subject}" -out "${dir}/${name}.csr" 2>/dev/null
  openssl x509 -req -in "${dir}/${name}.csr" -CA "${ca_crt}" -CAkey "${ca_key}" -set_serial "0x$(openssl rand -hex 16)" \
    -days 30 -extfile <(printf '%s\n' "${ext}") -out "${dir}/${name}.crt" 2>/dev/null
  rm -f "${dir}/${name}.csr"
}

write_kubeconfig() { # PATH CERT KEY
  local API_SERVER CLIENT_CERT=$2 CLIENT_KEY=$3
  API_SERVER=$(awk '/server:/ { print $2; exit }' "${KUBECONFIG_PATH}")
  render_template kubeconfig.yaml "$1" CLUSTER_NAME API_SERVER CLUSTER_PKI CLIENT_CERT CLIENT_KEY
}

# After the control plane started (its CA exists): one identity per component.
node_component_pki() {
  local dir=${NODE_STATE}/pki ext=$'keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth' name subject
  for name in kubelet kube-proxy coredns local-path-provisioner kube-router; do
    case "${name}" in
      kubelet) subject="/O=system:nodes/CN=system:node:${NODE_NAME}" ;;
      kube-proxy) subject="/CN=system:kube-proxy" ;;
      *) subject="/CN=scaledapp:${name}" ;;
    esac
    new_cert "${name}" "${subject}" "${CLUSTER_PKI}/ca.crt" "${CLUSTER_PKI}/ca.key" "${ext}"
    write_kubeconfig "${NODE_STATE}/${name}.kubeconfig" "${dir}/${name}.crt" "${dir}/${name}.key"
  done
}

# ---------------------------------------------------------------------------------------------
# registry and images

node_registry_up() {
  mkdir -p "${REGISTRY_STORAGE}" "${NODE_STATE}/registry"
  render_template registry-config.yml "${NODE_STATE}/registry/config.yml" REGISTRY_STORAGE REGISTRY_ADDRESS
  # Debian's docker-registry is the CNCF distribution registry (v2.8).
  start_daemon registry docker-registry serve "${NODE_STATE}/registry/config.yml"
}

# node_push_images: every node image into the registry, unless the registry already holds that
# exact manifest (a stamp per image in the registry's storage, so a warm start pushes nothing);
# then images.env, the file tests read: each image's reference and the uids it runs as.
node_push_images() {
  local names=(pause busybox postgres postgres-official-layout redis) env_files i
  mapfile -t env_files < <("${ROOT_DIR}/images/debian/build.sh" --print "${names[@]}")
  [[ ${#env_files[@]} -eq ${#names[@]} ]] || die "the node images are not built (images/debian/build.sh)"
  for i in "${!names[@]}"; do
    (
      # shellcheck source=/dev/null
      source "${env_files[i]}"
      local ref repo tag stamp
      for ref in ${IMAGE_REFS}; do
        repo=${ref#"${IMAGE_PREFIX}/"}
        tag=${repo##*:}
        repo=${repo%:*}
        stamp="${REGISTRY_STORAGE}/pushed/${repo}/${tag}"
        if [[ -f "${stamp}" && "$(<"${stamp}")" == "${IMAGE_DIGEST}" ]]; then
          continue
        fi
        skopeo --insecure-policy copy --quiet --dest-tls-verify=false \
          "oci:${IMAGE_LAYOUT}:${tag}" "docker://${REGISTRY_ADDRESS}/${REGISTRY_REPOSITORY_PREFIX}/${repo}:${tag}" \
          >>"${LOG_DIR}/push.log" 2>&1 || exit 1
        mkdir -p "$(dirname "${stamp}")"
        printf '%s\n' "${IMAGE_DIGEST}" >"${stamp}"
        log "pushed ${ref} (${IMAGE_DIGEST:0:19}) to the local registry"
      done
    ) || {
      tail -n 20 "${LOG_DIR}/push.log" >&2
      die "pushing ${names[i]} to the local registry failed (log: ${LOG_DIR}/push.log)"
    }
  done
  # shellcheck source=/dev/null
  (
    image_var() { (source "${env_files[$1]}" && printf '%s' "${!2}"); }
    printf '# The real node'"'"'s images (localhost/scaled/... = the local registry) and the ids they run as.\n'
    printf 'export SCALEDAPP_PAUSE_IMAGE=%q\n' "$(image_var 0 IMAGE_REF)"
    printf 'export SCALEDAPP_BUSYBOX_IMAGE=%q\n' "$(image_var 1 IMAGE_REF)"
    printf 'export SCALEDAPP_POSTGRES_IMAGE=%q\n' "$(image_var 2 IMAGE_REF)"
    printf 'export SCALEDAPP_POSTGRES_UID=%q\n' "$(image_var 2 POSTGRES_UID)"
    printf 'export SCALEDAPP_POSTGRES_GID=%q\n' "$(image_var 2 POSTGRES_GID)"
    printf 'export SCALEDAPP_POSTGRES_BINDIR=%q\n' "$(image_var 2 POSTGRES_BINDIR)"
    printf 'export SCALEDAPP_POSTGRES_VERSION=%q\n' "$(image_var 2 PACKAGE_VERSION)"
    printf 'export SCALEDAPP_POSTGRES_OFFICIAL_LAYOUT_IMAGE=%q\n' "$(image_var 3 IMAGE_REF)"
    printf 'export SCALEDAPP_POSTGRES_OFFICIAL_LAYOUT_UID=%q\n' "$(image_var 3 POSTGRES_UID)"
    printf 'export SCALEDAPP_POSTGRES_OFFICIAL_LAYOUT_GID=%q\n' "$(image_var 3 POSTGRES_GID)"
    printf 'export SCALEDAPP_POSTGRES_OFFICIAL_LAYOUT_PGDATA=%q\n' "$(image_var 3 PGDATA)"
    printf 'export SCALEDAPP_REDIS_IMAGE=%q\n' "$(image_var 4 IMAGE_REF)"
    printf 'export SCALEDAPP_REDIS_UID=%q\n' "$(image_var 4 REDIS_UID)"
    printf 'export SCALEDAPP_REDIS_VERSION=%q\n' "$(image_var 4 PACKAGE_VERSION)"
  ) >"${NODE_STATE}/images.env"
}

# ---------------------------------------------------------------------------------------------
# node components

start_daemon() { # NAME COMMAND...
  local name=$1
  shift
  setsid "$@" >>"${LOG_DIR}/${name}.log" 2>&1 </dev/null 8>&- 9>&- &
  echo "$!" >"${NODE_STATE}/pids/${name}.pid"
}

# running PID: alive and not a zombie (an exited daemon whose parent, up.sh, is gone may stay a
# zombie for a while if the machine's init does not reap it; kill -0 succeeds on zombies).
running() {
  local state
  [[ "$1" =~ ^[0-9]+$ ]] || return 1
  state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n "${state}" && "${state}" != Z && "${state}" != X ]]
}

# owner_node_alive STATE_DIR: does any process of the real node recorded under STATE_DIR still run?
# A recorded pid counts only while it is in the guard's cgroup: after a restart the number may
# belong to something else.
owner_node_alive() {
  local pidfile pid
  for pidfile in "$1"/node/pids/*.pid; do
    [[ -f "${pidfile}" ]] || continue
    pid=$(<"${pidfile}")
    running "${pid}" && grep -q "/${GUARD_CGROUP_NAME}/" "/proc/${pid}/cgroup" 2>/dev/null && return 0
  done
  return 1
}

daemon_alive() {
  local pidfile=${NODE_STATE}/pids/$1.pid
  [[ -f "${pidfile}" ]] && running "$(<"${pidfile}")"
}

component_failed() { # NAME WHAT
  printf '\n' >&2
  log "$1: $2; last lines of ${LOG_DIR}/$1.log:"
  tail -n 25 "${LOG_DIR}/$1.log" 2>/dev/null | sed 's/^/    /' >&2 || true
  die "the real node did not start ($1); full log: ${LOG_DIR}/$1.log (clean up: e2e/cluster/down.sh)"
}

wait_component() { # NAME TIMEOUT COMMAND...
  local name=$1 timeout=$2 deadline
  shift 2
  deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    daemon_alive "${name}" || component_failed "${name}" "exited"
    ((SECONDS < deadline)) || component_failed "${name}" "not ready after ${timeout}s"
    sleep 0.2
  done
}

node_containerd_up() {
  local dir=${NODE_STATE}/containerd
  mkdir -p "${dir}/certs.d/localhost" "${NODE_STATE}/cni/net.d" "${NODE_STATE}/cni/ipam"
  local RUNC_BIN
  RUNC_BIN=$(command -v runc) || true # (node_preflight checked it is there)
  render_template containerd-config.toml "${dir}/config.toml" NODE_STATE PAUSE_IMAGE RUNC_BIN
  # localhost/<repo> is the local registry, over http on loopback.
  render_template containerd-hosts.toml "${dir}/certs.d/localhost/hosts.toml" REGISTRY_ADDRESS
  render_template cni-10-scaledapp.conflist "${NODE_STATE}/cni/net.d/10-scaledapp.conflist" \
    BRIDGE NODE_STATE POD_SUBNET NODE_IP
  # An unreachable proxy for every registry but the loopback one: an image from outside the
  # machine fails at once ("proxyconnect ... connection refused") instead of being resolved.
  HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY=127.0.0.1,localhost \
    start_daemon containerd containerd --config "${dir}/config.toml"
}

ctr_node() { ctr --address "${NODE_STATE}/containerd/containerd.sock" "$@"; }

node_kubelet_up() {
  local dir=${NODE_STATE}/kubelet hierarchy
  mkdir -p "${dir}" "${NODE_STATE}/pod-logs" "${NODE_STATE}/volume-plugins"
  # The kubelet's cgroupRoot must exist in every cgroup v1 hierarchy (it is the guard's group in
  # the v2 one); cpuset needs its cpus and mems before anything can join.
  if [[ "$(stat -f -c %T /sys/fs/cgroup)" != cgroup2fs ]]; then
    for hierarchy in /sys/fs/cgroup/*/; do
      [[ "${hierarchy%/}" != "$(cgroup2_root)" && -f "${hierarchy}cgroup.procs" ]] || continue
      mkdir -p "${hierarchy}${GUARD_CGROUP_NAME}"
    done
    if [[ -f /sys/fs/cgroup/cpuset/cpuset.cpus ]]; then
      cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset/${GUARD_CGROUP_NAME}/cpuset.cpus"
      cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset/${GUARD_CGROUP_NAME}/cpuset.mems"
    fi
  fi
  printf 'nameserver %s\n' "${NODE_IP}" >"${NODE_STATE}/resolv.conf"
  render_template kubelet.yaml "${NODE_STATE}/kubelet.yaml" GUARD_CGROUP_NAME NODE_STATE NODE_IP \
    CLUSTER_PKI CLUSTER_DOMAIN NODE_TAINT_KEY POD_SUBNET
  start_daemon kubelet "${KUBELET_BIN}" --config "${NODE_STATE}/kubelet.yaml" \
    --kubeconfig "${NODE_STATE}/kubelet.kubeconfig" --root-dir "${dir}" --cert-dir "${dir}/pki" \
    --hostname-override "${NODE_NAME}" --node-ip "${NODE_IP}" \
    --node-labels "${NODE_LABEL_KEY}=${NODE_LABEL_VALUE}" --v=1
}

node_kube_proxy_up() {
  render_template kube-proxy.yaml "${NODE_STATE}/kube-proxy.yaml" NODE_STATE NODE_NAME NODE_IP POD_SUBNET
  start_daemon kube-proxy "${KUBE_PROXY_BIN}" --config "${NODE_STATE}/kube-proxy.yaml" --v=1
}

node_coredns_up() {
  render_template Corefile "${NODE_STATE}/Corefile" CLUSTER_DOMAIN NODE_IP COREDNS_READY_PORT \
    COREDNS_HEALTH_PORT NODE_STATE CLUSTER_NAME
  start_daemon coredns "${COREDNS_BIN}" -conf "${NODE_STATE}/Corefile"
}

node_local_path_up() {
  mkdir -p "${NODE_STATE}/volumes"
  local BUSYBOX_IMAGE
  # shellcheck source=/dev/null
  BUSYBOX_IMAGE=$(source "${NODE_STATE}/images.env" && printf '%s' "${SCALEDAPP_BUSYBOX_IMAGE}")
  render_template local-path.json "${NODE_STATE}/local-path.json" NODE_STATE
  # The helper pod and the setup/teardown scripts are the upstream defaults: the setup creates
  # the directory 0777, so any uid writes; nothing changes permissions afterwards.
  render_template local-path.yaml "${NODE_STATE}/local-path.yaml" LOCAL_PATH_NAMESPACE BUSYBOX_IMAGE \
    LOCAL_PATH_STORAGE_CLASS NODE_NAME
  node_kubectl apply -f "${NODE_STATE}/local-path.yaml" >/dev/null
  start_daemon local-path-provisioner "${LOCAL_PATH_BIN}" --debug start \
    --kubeconfig "${NODE_STATE}/local-path-provisioner.kubeconfig" \
    --namespace "${LOCAL_PATH_NAMESPACE}" --config "${NODE_STATE}/local-path.json" \
    --service-account-name local-path-provisioner --provisioner-name rancher.io/local-path \
    --helper-image "${BUSYBOX_IMAGE}" --configmap-name local-path-config
}

node_kube_router_up() {
  start_daemon kube-router "${KUBE_ROUTER_BIN}" --run-firewall=true --run-router=false \
    --run-service-proxy=false --run-loadbalancer=false --enable-cni=false \
    --kubeconfig "${NODE_STATE}/kube-router.kubeconfig" --hostname-override "${NODE_NAME}" \
    --service-cluster-ip-range "${SERVICE_CIDR}" --enable-ipv6=false \
    --health-port "${KUBE_ROUTER_HEALTH_PORT}" --metrics-port 0 --v=1
}

# RBAC for the components' identities (the kubelet and kube-proxy have built-in roles).
node_rbac() {
  node_kubectl apply -f "${NODE_TEMPLATES}/rbac.yaml" >/dev/null
}

node_ready() {
  [[ "$(node_kubectl get node "${NODE_NAME}" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

node_registered() { node_kubectl get node "${NODE_NAME}" >/dev/null 2>&1; }

# node_start: certificates, RBAC, containerd ready, then the kubelet, CoreDNS, the provisioner and
# kube-proxy started; node_wait starts kube-router once the node exists (it looks the node up when
# it starts) and waits for everything. The caller does other work in between.
node_start() {
  node_component_pki
  node_rbac
  wait_component containerd 20 ctr_node version
  node_kubelet_up
  node_coredns_up
  node_local_path_up
  # kube-proxy waits (up to 30 s) for its Node to appear; kube-router gives up at once.
  node_kube_proxy_up
}

node_wait() {
  wait_component kubelet 60 node_registered
  node_kube_router_up
  wait_component kubelet 60 node_ready
  wait_component kube-proxy 30 curl -fsS "http://127.0.0.1:10256/healthz"
  wait_component coredns 30 curl -fsS "http://127.0.0.1:${COREDNS_READY_PORT}/ready"
  wait_component kube-router 30 curl -fsS "http://127.0.0.1:${KUBE_ROUTER_HEALTH_PORT}/healthz"
  daemon_alive local-path-provisioner || component_failed local-path-provisioner "exited"
}

node_alive() {
  local name
  for name in "${NODE_COMPONENTS[@]}"; do
    daemon_alive "${name}" || return 1
  done
  node_ready
}

node_exports() {
  printf 'export SCALEDAPP_REAL_NODE=1\n'
  printf 'export SCALEDAPP_REAL_NODE_NAME=%q\n' "${NODE_NAME}"
  printf 'export SCALEDAPP_REAL_NODE_SELECTOR=%q\n' "${NODE_LABEL_KEY}=${NODE_LABEL_VALUE}"
  printf 'export SCALEDAPP_REAL_NODE_TAINT=%q\n' "${NODE_TAINT_KEY}=true:NoSchedule"
  printf 'export SCALEDAPP_REAL_NODE_STORAGE_CLASS=%q\n' "${LOCAL_PATH_STORAGE_CLASS}"
  printf 'export SCALEDAPP_REGISTRY=%q\n' "${REGISTRY_ADDRESS}/${REGISTRY_REPOSITORY_PREFIX}"
  printf 'export SCALEDAPP_IMAGE_PREFIX=%q\n' "${IMAGE_PREFIX}"
  printf 'export SCALEDAPP_NODE_IMAGES_ENV=%q\n' "${NODE_STATE}/images.env"
  grep '^export ' "${NODE_STATE}/images.env"
}

# ---------------------------------------------------------------------------------------------
# teardown: stop exactly what up.sh started, then undo every host change it made

stop_pid() { # PID TIMEOUT_SECONDS
  local pid=$1 timeout=$2 deadline
  running "${pid}" || return 0
  kill -TERM "${pid}" 2>/dev/null || return 0
  deadline=$((SECONDS + timeout))
  while running "${pid}"; do
    if ((SECONDS >= deadline)); then
      kill -KILL "${pid}" 2>/dev/null || true
      break
    fi
    sleep 0.1
  done
}

stop_daemon() {
  local pidfile=${NODE_STATE}/pids/$1.pid pid
  [[ -f "${pidfile}" ]] || return 0
  pid=$(<"${pidfile}")
  [[ "${pid}" =~ ^[0-9]+$ ]] && stop_pid "${pid}" "${2:-10}"
  rm -f "${pidfile}"
}

node_down() {
  [[ -d "${NODE_STATE}" ]] || return 0
  local cgroup kubectl_ok=0 t
  cgroup=$(guard_cgroup || true)
  if [[ -x "${KUBECTL_BIN}" && -f "${KUBECONFIG_PATH}" ]] && daemon_alive kubelet &&
    node_kubectl get --raw /readyz --request-timeout=3s >/dev/null 2>&1; then
    kubectl_ok=1
  fi
  # 1. Pods on the real node: deleted with no grace period while the kubelet still runs, so it
  #    stops their containers and releases their network namespaces through CNI.
  if [[ ${kubectl_ok} -eq 1 ]]; then
    node_kubectl delete pods --all-namespaces --field-selector "spec.nodeName=${NODE_NAME}" \
      --grace-period=0 --wait=false >/dev/null 2>&1 || true
    local deadline=$((SECONDS + 30))
    while [[ -n "$(node_kubectl get pods -A --field-selector "spec.nodeName=${NODE_NAME}" -o name 2>/dev/null)" ]]; do
      ((SECONDS < deadline)) || { log "pods on ${NODE_NAME} still terminating after 30s; stopping the node anyway"; break; }
      sleep 0.5
    done
    node_kubectl delete node "${NODE_NAME}" --wait=false >/dev/null 2>&1 || true
  fi
  # 2. The components, each by its pid; then whatever is left in the guard's cgroup (runc shims,
  #    containers): that cgroup holds exactly what up.sh started.
  stop_daemon kubelet
  for t in kube-router kube-proxy coredns local-path-provisioner registry; do stop_daemon "${t}"; done
  if daemon_alive containerd; then
    local id
    for id in $(ctr_node -n k8s.io tasks list -q 2>/dev/null); do
      ctr_node -n k8s.io tasks kill -s SIGKILL "${id}" >/dev/null 2>&1 || true
    done
  fi
  stop_daemon containerd
  if [[ -n "${cgroup}" && -d "${cgroup}" ]]; then
    local procs pid
    while IFS= read -r procs; do
      [[ "${procs}" == "${cgroup}/control-plane/"* ]] && continue
      # shellcheck disable=SC2013  # one pid per line; a file already gone reads as none
      for pid in $(cat "${procs}" 2>/dev/null); do
        [[ "${pid}" == "$$" ]] || stop_pid "${pid}" 5
      done
    done < <(find "${cgroup}" -name cgroup.procs 2>/dev/null)
  fi
  # 3. Network namespaces of pods (containerd names them cni-*) that hold an address of ours.
  local ns
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
    if ip -n "${ns}" -4 addr show 2>/dev/null | grep "inet ${POD_SUBNET%.*}\." >/dev/null; then
      ip netns delete "${ns}" 2>/dev/null || true
    fi
  done
  # 4. Mounts below the state directory (kubelet volumes, overlay root filesystems), deepest first.
  local mnt
  while IFS= read -r mnt; do
    umount -l "${mnt}" 2>/dev/null || true
  done < <(awk -v dir="${STATE_DIR}/" 'index($2, dir) == 1 { print $2 }' /proc/self/mounts | sort -r)
  # 5. iptables: kube-proxy's and kube-router's own cleanup, then what is left of theirs, the
  #    kubelet's and ours; kube-router's ipsets.
  if [[ -x "${KUBE_PROXY_BIN}" ]]; then
    "${KUBE_PROXY_BIN}" --cleanup >>"${LOG_DIR}/kube-proxy.log" 2>&1 || true
  fi
  if [[ -x "${KUBE_ROUTER_BIN}" ]]; then
    "${KUBE_ROUTER_BIN}" --cleanup-config >>"${LOG_DIR}/kube-router.log" 2>&1 || true
  fi
  node_remove_chains
  local set
  for set in $(ipset list -n 2>/dev/null); do
    case "${set}" in
      KUBE-* | kube-router-*) ipset destroy "${set}" 2>/dev/null || true ;;
    esac
  done
  conntrack -D -s "${POD_SUBNET}" >/dev/null 2>&1 || true
  conntrack -D -d "${POD_SUBNET}" >/dev/null 2>&1 || true
  conntrack -D -d "${SERVICE_CIDR}" >/dev/null 2>&1 || true
  # 6. The bridge (its addresses, forwarding and netfilter settings go with it).
  ip link del "${BRIDGE}" 2>/dev/null || true
  # 7. Sysctls the kubelet set, back to their values before.
  local line
  if [[ -f "${NODE_STATE}/host-before/sysctls" ]]; then
    while IFS='=' read -r key value; do
      [[ -n "${key}" && "$(cat "/proc/sys/${key}")" != "${value}" ]] && printf '%s\n' "${value}" >"/proc/sys/${key}"
    done <"${NODE_STATE}/host-before/sysctls"
  fi
  # 8. Host paths the components use whatever they are told: our entries, and the directory if
  #    it did not exist before.
  local p created
  if [[ -d /var/log/containers ]]; then
    find /var/log/containers -maxdepth 1 -type l -lname "${NODE_STATE}/*" -delete 2>/dev/null || true
  fi
  if [[ -d /var/lib/cni ]]; then
    find /var/lib/cni -maxdepth 2 -name 'scaledapp-*' -exec rm -rf {} + 2>/dev/null || true
  fi
  for p in "${HOST_PATHS[@]}"; do
    created=1
    grep -qxF "${p}" "${NODE_STATE}/host-before/paths" 2>/dev/null && created=0
    [[ ${created} -eq 1 && -e "${p}" ]] || continue
    case "${p}" in
      /run/containerd | /var/lib/kubelet) rm -rf --one-file-system "${p}" ;;
      *) find "${p}" -depth -type d -empty -delete 2>/dev/null || true ;;
    esac
  done
  # 9. cgroups: the kubelet's pod hierarchy in every v1 controller; in the v2 hierarchy the node's
  #    part of the guard's group (down.sh removes the rest once the control plane is stopped).
  local hierarchy
  for hierarchy in /sys/fs/cgroup/*/; do
    [[ "${hierarchy%/}" != "$(cgroup2_root)" && -d "${hierarchy}${GUARD_CGROUP_NAME}" ]] || continue
    find "${hierarchy}${GUARD_CGROUP_NAME}" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  if [[ -n "${cgroup}" && -d "${cgroup}" ]]; then
    find "${cgroup}" -mindepth 1 -depth -type d ! -path "${cgroup}/control-plane" -exec rmdir {} + 2>/dev/null || true
  fi
  rm -f "${NODE_OWNER_FILE}"
}

# Chains named KUBE-*, KUBE-ROUTER-* (kube-proxy, kubelet, kube-router) and SCALEDAPP-* (ours),
# with every rule that jumps to them, in both address families; then the tables iptables-nft
# created for them, if they did not exist before and are empty now.
node_remove_chains() {
  local t table chain
  for t in iptables ip6tables; do
    for table in raw mangle nat filter; do
      { "${t}" -w -t "${table}" -S 2>/dev/null || true; } |
        { grep -E '^-A (PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING) .*-[jg] (KUBE-|SCALEDAPP-)' || true; } |
        while IFS= read -r rule; do
          # iptables-save output quotes like a shell (comments): let the shell split it.
          eval "\"\${t}\" -w -t \"\${table}\" ${rule/-A/-D}" 2>/dev/null || true
        done
      for chain in $("${t}" -w -t "${table}" -S 2>/dev/null | awk '$1 == "-N" && ($2 ~ /^KUBE-/ || $2 ~ /^SCALEDAPP-/) { print $2 }'); do
        "${t}" -w -t "${table}" -F "${chain}" 2>/dev/null || true
      done
      for chain in $("${t}" -w -t "${table}" -S 2>/dev/null | awk '$1 == "-N" && ($2 ~ /^KUBE-/ || $2 ~ /^SCALEDAPP-/) { print $2 }'); do
        "${t}" -w -t "${table}" -X "${chain}" 2>/dev/null || true
      done
    done
  done
  if command -v nft >/dev/null 2>&1 && [[ -f "${NODE_STATE}/host-before/snapshot" ]]; then
    local family name
    while read -r _ family name; do
      grep -qxF "nft-table ${family} ${name}" "${NODE_STATE}/host-before/snapshot" && continue
      # Created since, and without a single rule now: iptables-nft's leftover base chains.
      # (With -a every rule ends in "# handle N"; so do chain lines, which open a block.)
      if [[ "$(nft -a list table "${family}" "${name}" 2>/dev/null | grep '# handle' | grep -vc '{')" == 0 ]]; then
        nft delete table "${family}" "${name}" 2>/dev/null || true
      fi
    done < <(nft list tables 2>/dev/null)
  fi
}
