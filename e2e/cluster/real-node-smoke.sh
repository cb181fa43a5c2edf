#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Smoke test of the real node (`make real-node-smoke`; needs the cluster from up.sh). In a fresh
# namespace whose pods the API server pins to the real node, checks that:
#   - placement: its pods land on the real node; a pod of an ordinary namespace on a kwok node
#   - a Redis pod (localhost/scaled/redis, pulled from the local registry through containerd)
#     runs as uid 999 with fsGroup 999 on a local-path volume it writes, and its readiness probe
#     (`redis-cli ping`) really runs: it is Ready, and the same pod probing a closed port is not
#     (with the kubelet's "Readiness probe failed" event)
#   - DNS: a Service name resolves from a pod, a name outside the cluster does not
#   - kube-proxy: the Service's ClusterIP routes to the pod
#   - NetworkPolicy: a deny-all ingress policy blocks a client, a policy allowing it lets it in,
#     and another pod stays blocked (kube-router); kind's kube-network-policies is checked for
#     whether this kernel could run it, and the result is stated
#   - a pod reaches the API server through the `kubernetes` Service (with its token)
#   - the API server reaches pods: kubectl logs, exec and port-forward (through the kubelet),
#     and an APIService backed by a pod's Service becomes Available (aggregation)
#   - no packet left the machine: the egress guard counted no packet from a pod or a cluster
#     process to any interface but lo and the bridge since up.sh; no socket of a cluster
#     process has a peer outside loopback and the pod subnet; no conntrack entry from the pod
#     subnet to outside; and a pod's deliberate attempt to reach an outside address is dropped
#     and counted (the guard works)
# and prints the memory of the node's components. Prints "N passed, N failed" and exits non-zero
# on any failure (SMOKE_VERBOSE=1: also what each passing check saw). SCALEDAPP_REAL_NODE=0
# prints SKIP and exits 0.
set -euo pipefail

# shellcheck source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
# shellcheck source=real-node.sh
source "${CLUSTER_DIR}/real-node.sh"

if [[ "${REAL_NODE}" == 0 ]]; then
  echo "SKIP real-node smoke test: SCALEDAPP_REAL_NODE=0 (kwok nodes only, no pod really runs)"
  exit 0
fi
export KUBECACHEDIR="${STATE_DIR}/kube-cache"
[[ -f "${KUBECONFIG_PATH}" ]] || die "no ${KUBECONFIG_PATH}: run e2e/cluster/up.sh first"
[[ "$(cat "${STATE_DIR}/mode" 2>/dev/null)" == real-node=1 ]] ||
  die "the running cluster has no real node (started with SCALEDAPP_REAL_NODE=0?): run e2e/cluster/down.sh, then up.sh"
kubectl() { "${KUBECTL_BIN}" --kubeconfig "${KUBECONFIG_PATH}" "$@"; }
# shellcheck source=/dev/null
source "${NODE_STATE}/images.env"
[[ -n "${SCALEDAPP_REDIS_IMAGE:-}" ]] || die "no image names in ${NODE_STATE}/images.env"

NS=real-smoke-$(date +%s)
PLAIN_NS=${NS}-plain
APISERVICE=v1alpha1.smoke.scaled.dev
PASSED=0
FAILED=0
check() {
  local name=$1 out status
  shift
  # set -e inside the check (bash ignores it in an `if`): any failing step fails the check.
  set +e
  out=$(set -e; "$@" 2>&1)
  status=$?
  set -e
  if [[ ${status} -eq 0 ]]; then
    PASSED=$((PASSED + 1))
    log "ok   ${name}"
    [[ "${SMOKE_VERBOSE:-0}" != 1 ]] || printf '%s\n' "${out}" | tail -n 8 | sed 's/^/       /' >&2
  else
    FAILED=$((FAILED + 1))
    log "FAIL ${name}"
    printf '%s\n' "${out}" | tail -n 15 | sed 's/^/       /' >&2
  fi
}
info() { log "info ${*}"; }
cleanup() {
  kubectl delete apiservice "${APISERVICE}" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  kubectl delete namespace "${NS}" "${PLAIN_NS}" --wait=false >/dev/null 2>&1 || true
  kubectl -n "${NS}" delete pods --all --grace-period=0 --wait=false >/dev/null 2>&1 || true
}
trap cleanup EXIT
in_pod() { # POD COMMAND...: runs a shell command in the pod (kubectl exec)
  local pod=$1
  shift
  kubectl -n "${NS}" exec "${pod}" -- sh -c "$*"
}
retry() { # SECONDS COMMAND...: until it succeeds
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 1
  done
}

# The namespace's pods go to the real node: PodNodeSelector adds the node selector,
# PodTolerationRestriction the toleration of the node's taint (both from these annotations).
kubectl create namespace "${NS}" >/dev/null
kubectl annotate namespace "${NS}" >/dev/null \
  "scheduler.alpha.kubernetes.io/node-selector=${NODE_LABEL_KEY}=${NODE_LABEL_VALUE}" \
  "scheduler.alpha.kubernetes.io/defaultTolerations=[{\"key\":\"${NODE_TAINT_KEY}\",\"operator\":\"Exists\",\"effect\":\"NoSchedule\"}]"
kubectl label namespace "${NS}" pod-security.kubernetes.io/enforce=restricted >/dev/null
kubectl create namespace "${PLAIN_NS}" >/dev/null

RESTRICTED='allowPrivilegeEscalation: false
        capabilities: {drop: [ALL]}'
kubectl -n "${NS}" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ConfigMap
metadata: {name: redis-conf}
data:
  redis.conf: |
    bind 0.0.0.0
    port 6379
    protected-mode no
    dir /data
    appendonly yes
    save ""
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: redis-data}
spec:
  storageClassName: ${LOCAL_PATH_STORAGE_CLASS}
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 64Mi}}
---
# As the operator runs Redis: sh -c around redis-server /conf/redis.conf, uid 999, fsGroup 999.
apiVersion: v1
kind: Pod
metadata: {name: redis, labels: {app: redis}}
spec:
  securityContext: {runAsNonRoot: true, runAsUser: 999, runAsGroup: 999, fsGroup: 999, seccompProfile: {type: RuntimeDefault}}
  terminationGracePeriodSeconds: 0
  containers:
    - name: redis
      image: ${SCALEDAPP_REDIS_IMAGE}
      command: [sh, -c, "exec redis-server /conf/redis.conf"]
      ports: [{containerPort: 6379, name: redis}]
      readinessProbe:
        exec: {command: [redis-cli, ping]}
        periodSeconds: 1
      securityContext:
        ${RESTRICTED}
      volumeMounts:
        - {name: conf, mountPath: /conf}
        - {name: data, mountPath: /data}
  volumes:
    - {name: conf, configMap: {name: redis-conf}}
    - {name: data, persistentVolumeClaim: {claimName: redis-data}}
---
apiVersion: v1
kind: Pod
metadata: {name: redis-probe-fails}
spec:
  securityContext: {runAsNonRoot: true, runAsUser: 999, runAsGroup: 999, seccompProfile: {type: RuntimeDefault}}
  terminationGracePeriodSeconds: 0
  containers:
    - name: redis
      image: ${SCALEDAPP_REDIS_IMAGE}
      command: [sh, -c, "exec redis-server --port 6379 --save ''"]
      readinessProbe:
        exec: {command: [redis-cli, -p, "6380", ping]}
        periodSeconds: 1
      securityContext:
        ${RESTRICTED}
---
apiVersion: v1
kind: Service
metadata: {name: redis}
spec:
  selector: {app: redis}
  ports: [{port: 6379, targetPort: redis}]
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: client}
---
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {role: client}}
spec:
  serviceAccountName: client
  securityContext: {runAsNonRoot: true, runAsUser: 65534, runAsGroup: 65534, seccompProfile: {type: RuntimeDefault}}
  terminationGracePeriodSeconds: 0
  containers:
    - name: client
      image: ${SCALEDAPP_BUSYBOX_IMAGE}
      command: [sleep, "3600"]
      securityContext:
        ${RESTRICTED}
---
apiVersion: v1
kind: Pod
metadata: {name: other}
spec:
  automountServiceAccountToken: false
  securityContext: {runAsNonRoot: true, runAsUser: 65534, runAsGroup: 65534, seccompProfile: {type: RuntimeDefault}}
  terminationGracePeriodSeconds: 0
  containers:
    - name: other
      image: ${SCALEDAPP_BUSYBOX_IMAGE}
      command: [sleep, "3600"]
      securityContext:
        ${RESTRICTED}
---
# An extension API server stand-in for aggregation: openssl s_server answers every GET with 200.
apiVersion: v1
kind: Pod
metadata: {name: ext-api, labels: {app: ext-api}}
spec:
  automountServiceAccountToken: false
  securityContext: {runAsNonRoot: true, runAsUser: ${SCALEDAPP_POSTGRES_UID}, runAsGroup: ${SCALEDAPP_POSTGRES_GID}, seccompProfile: {type: RuntimeDefault}}
  terminationGracePeriodSeconds: 0
  containers:
    - name: ext-api
      image: ${SCALEDAPP_POSTGRES_IMAGE}
      command: [sh, -c, "cd /tmp && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=ext-api -days 1 -keyout key.pem -out cert.pem 2>/dev/null && exec openssl s_server -quiet -accept 8443 -www -cert cert.pem -key key.pem"]
      ports: [{containerPort: 8443, name: https}]
      securityContext:
        ${RESTRICTED}
---
apiVersion: v1
kind: Service
metadata: {name: ext-api}
spec:
  selector: {app: ext-api}
  ports: [{port: 443, targetPort: https}]
EOF
kubectl -n "${PLAIN_NS}" run plain --image="${SCALEDAPP_BUSYBOX_IMAGE}" --restart=Never --command -- sleep 3600 >/dev/null

on_real_node() {
  local pod nodes
  kubectl -n "${NS}" wait --for=condition=PodScheduled pod --all --timeout=60s >/dev/null
  nodes=$(kubectl -n "${NS}" get pods -o jsonpath='{range .items[*]}{.metadata.name}={.spec.nodeName}{"\n"}{end}')
  printf '%s\n' "${nodes}"
  ! grep -v "=${NODE_NAME}$" <<<"${nodes}"
}
plain_on_kwok() {
  kubectl -n "${PLAIN_NS}" wait --for=condition=Ready pod/plain --timeout=60s >/dev/null
  local node
  node=$(kubectl -n "${PLAIN_NS}" get pod plain -o jsonpath='{.spec.nodeName}')
  echo "plain -> ${node}"
  [[ "${node}" != "${NODE_NAME}" ]] &&
    [[ "$(kubectl get node "${node}" -o jsonpath='{.metadata.annotations.kwok\.x-k8s\.io/node}')" == fake ]]
}
check "pods of the annotated namespace land on ${NODE_NAME}" on_real_node
check "a pod of an ordinary namespace lands on a kwok node" plain_on_kwok

ready() { kubectl -n "${NS}" wait --for=condition=Ready "pod/$1" --timeout="${2:-120s}"; }
redis_ready() {
  ready redis
  # Pulled by containerd from the registry (the first of the two redis pods pulls it).
  kubectl -n "${NS}" get events --field-selector reason=Pulled -o jsonpath='{range .items[*]}{.message}{"\n"}{end}' |
    grep -E "Successfully pulled image \"${SCALEDAPP_REDIS_IMAGE}\"|already present on machine"
  ctr --address "${NODE_STATE}/containerd/containerd.sock" -n k8s.io images ls -q | grep -x "${SCALEDAPP_REDIS_IMAGE}"
}
check "redis (${SCALEDAPP_REDIS_IMAGE} from the local registry) becomes Ready through its redis-cli ping probe" redis_ready
probe_fails() {
  kubectl -n "${NS}" wait --for=jsonpath='{.status.containerStatuses[0].started}'=true pod/redis-probe-fails --timeout=60s
  retry 20 sh -c "'${KUBECTL_BIN}' --kubeconfig '${KUBECONFIG_PATH}' -n '${NS}' get events \
    --field-selector involvedObject.name=redis-probe-fails -o jsonpath='{.items[*].message}' | grep 'Readiness probe failed' >/dev/null"
  [[ "$(kubectl -n "${NS}" get pod redis-probe-fails -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == False ]]
}
check "the same pod probing a closed port stays not Ready (kubelet event: Readiness probe failed)" probe_fails
redis_writes_volume() {
  in_pod redis 'id -u; redis-cli set smoke ok; redis-cli bgrewriteaof; sleep 1; ls -ln /data /data/appendonlydir; touch /data/written-by-$(id -u)'
  [[ "$(in_pod redis 'stat -c %u /data/written-by-999')" == 999 ]]
  local pv path
  pv=$(kubectl -n "${NS}" get pvc redis-data -o jsonpath='{.spec.volumeName}')
  path=$(kubectl get pv "${pv}" -o jsonpath='{.spec.local.path}{.spec.hostPath.path}')
  echo "volume ${pv} at ${path} on the host"
  [[ "${path}" == "${NODE_STATE}/volumes/"* && -f "${path}/written-by-999" ]]
}
check "redis (uid 999, fsGroup 999) writes its local-path volume" redis_writes_volume

check "client pod Ready" ready client
# The NetworkPolicy check below connects from the other pod (the one without the allowed
# label): it must run too, or "stays blocked" would prove nothing.
check "the other pod Ready" ready other
dns_service() {
  in_pod client "nslookup redis.${NS}.svc.${CLUSTER_DOMAIN}" | tee /dev/stderr |
    grep "$(kubectl -n "${NS}" get svc redis -o jsonpath='{.spec.clusterIP}')" >/dev/null
  in_pod client "nslookup kubernetes.default.svc.${CLUSTER_DOMAIN}" | grep "${KUBERNETES_SERVICE_IP}" >/dev/null
}
check "DNS resolves Service names from a pod" dns_service
dns_outside() {
  local out
  if out=$(in_pod client 'nslookup example.com 2>&1'); then
    echo "resolved: ${out}"
    return 1
  fi
  echo "${out}"
  grep -Eiq 'REFUSED|can.t find|NXDOMAIN|SERVFAIL' <<<"${out}"
}
check "DNS does not resolve a name outside the cluster (REFUSED: no forward plugin)" dns_outside
redis_ping() { # POD: PING through the Service's ClusterIP (kube-proxy), 3 s timeout
  in_pod "$1" "printf 'PING\r\n' | nc -w 3 redis.${NS}.svc.${CLUSTER_DOMAIN} 6379" | grep PONG >/dev/null
}
check "the redis Service's ClusterIP routes to the pod (kube-proxy)" retry 10 redis_ping client

# NetworkPolicy: deny all ingress to redis, then allow role=client.
policies() {
  kubectl -n "${NS}" apply -f - <<EOF
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: redis-deny}
spec:
  podSelector: {matchLabels: {app: redis}}
  policyTypes: [Ingress]
EOF
}
denied() { ! redis_ping "$1"; }
policies >/dev/null
check "a deny-all ingress NetworkPolicy blocks the client (kube-router)" retry 20 denied client
kubectl -n "${NS}" apply -f - >/dev/null <<EOF
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: redis-allow-clients}
spec:
  podSelector: {matchLabels: {app: redis}}
  policyTypes: [Ingress]
  ingress:
    - from: [{podSelector: {matchLabels: {role: client}}}]
      ports: [{port: 6379}]
EOF
check "a NetworkPolicy allowing role=client lets the client in" retry 20 redis_ping client
check "... and a pod without that label stays blocked" denied other
if nft add table inet scaledapp-queue-probe 2>/dev/null &&
  nft add chain inet scaledapp-queue-probe c '{ type filter hook forward priority 0; }' 2>/dev/null &&
  nft add rule inet scaledapp-queue-probe c ip daddr 192.0.2.254 queue num 100 bypass 2>/dev/null; then
  info "nftables 'queue' works here: kind's kube-network-policies could run too"
else
  info "kind's kube-network-policies cannot run on this kernel: nftables rejects its 'queue' statement (no CONFIG_NFT_QUEUE); enforcement here is kube-router's (iptables + ipset)"
fi
nft delete table inet scaledapp-queue-probe 2>/dev/null || true

api_from_pod() {
  in_pod client 'wget -qO- --no-check-certificate --header "Authorization: Bearer $(cat /var/run/secrets/kubernetes.io/serviceaccount/token)" https://kubernetes.default.svc/version' |
    tee /dev/stderr | grep "\"gitVersion\": \"${KUBE_VERSION}\"" >/dev/null
  kubectl get endpointslices -n default -l kubernetes.io/service-name=kubernetes -o jsonpath='{.items[*].endpoints[*].addresses[*]}' | grep -x "${NODE_IP}" >/dev/null
}
check "a pod reaches the API server through the kubernetes Service (${KUBERNETES_SERVICE_IP} -> ${NODE_IP})" api_from_pod

logs_exec() {
  kubectl -n "${NS}" logs redis | grep "Ready to accept connections" >/dev/null
  [[ "$(kubectl -n "${NS}" exec redis -- redis-cli get smoke)" == ok ]]
}
check "kubectl logs and exec reach the pod (API server -> kubelet ${NODE_IP}:10250)" logs_exec
ping_local() { # PORT: PING to a local port with bash's /dev/tcp
  timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1 && printf 'PING\r\n' >&3 && head -c 7 <&3" 2>/dev/null | grep PONG >/dev/null
}
# check runs this in a subshell: the port-forward is stopped here, before it returns, or it
# would outlive the script holding the caller's output open (a `make test | tee` never ends).
port_forward() {
  local port forward status=0
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  kubectl -n "${NS}" port-forward pod/redis "${port}:6379" </dev/null >/dev/null 2>&1 &
  forward=$!
  retry 10 ping_local "${port}" || status=$?
  kill "${forward}" 2>/dev/null || true
  wait "${forward}" 2>/dev/null || true
  return "${status}"
}
check "kubectl port-forward reaches the pod" port_forward

aggregation() {
  ready ext-api 180s >/dev/null
  kubectl apply -f - <<EOF
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: ${APISERVICE}}
spec:
  group: smoke.scaled.dev
  version: v1alpha1
  groupPriorityMinimum: 1000
  versionPriority: 15
  insecureSkipTLSVerify: true
  service: {namespace: ${NS}, name: ext-api, port: 443}
EOF
  kubectl wait --for=condition=Available "apiservice/${APISERVICE}" --timeout=60s
  kubectl get --raw /apis/smoke.scaled.dev/v1alpha1 >/dev/null
  kubectl delete apiservice "${APISERVICE}" --wait=false
}
check "an APIService backed by a pod's Service becomes Available (API server -> ${NODE_IP%.*}.x, aggregation)" aggregation

# No packet left the machine. The guard's count since up.sh, less the packets of this test's own
# deliberate attempts (its last check; earlier runs on this cluster add theirs to PROBES_FILE).
PROBES_FILE="${NODE_STATE}/guard-probe-packets"
leaks_now=$(leak_count)
probes=$(cat "${PROBES_FILE}" 2>/dev/null || echo 0)
no_leaks() {
  echo "packets the egress guard dropped since up.sh: ${leaks_now}, of them ${probes} from earlier runs' deliberate attempts"
  [[ $((leaks_now - probes)) -eq 0 ]]
}
check "no pod or cluster process sent a packet to any interface but lo and ${BRIDGE} since up.sh" no_leaks
outside_peers() {
  local cgroup pids pid bad
  cgroup=$(guard_cgroup)
  pids=$(find "${cgroup}" -name cgroup.procs -exec cat {} + | sort -u | tr '\n' ' ')
  bad=$(ss -Htunp 2>/dev/null | awk -v pids=" ${pids}" '
    { peer = $6; proc = $7
      n = split(proc, parts, /pid=/); owned = 0
      for (i = 2; i <= n; i++) { split(parts[i], p, ","); if (index(pids, " " p[1] " ")) owned = 1 }
      if (!owned) next
      if (peer ~ /^127\./ || peer ~ /^\[::1\]/ || peer ~ /^\[::ffff:127\./ || peer ~ /^10\.244\.0\./ || peer ~ /^\[::ffff:10\.244\.0\./ || peer ~ /^\*/ || peer ~ /^0\.0\.0\.0/ || peer ~ /^\[::\]/) next
      print }')
  echo "sockets of ${pids:0:80}... with a peer outside lo/${POD_SUBNET}: ${bad:-none}"
  [[ -z "${bad}" ]]
}
check "no socket of a cluster process has a peer outside loopback and ${POD_SUBNET}" outside_peers
conntrack_clean() {
  local entries
  local all
  # conntrack's own failure fails the check (an empty table read is not a clean one); only the
  # filter may find nothing.
  all=$(conntrack -L -s "${POD_SUBNET}" 2>/dev/null) || { echo "conntrack -L failed"; return 1; }
  entries=$(awk '!/dst=(10\.244\.0\.|10\.96\.|127\.)/' <<<"${all}")
  echo "conntrack entries from ${POD_SUBNET} to elsewhere: ${entries:-none}"
  [[ -z "${entries}" ]]
}
check "no connection from a pod to outside the pod subnet and Services (conntrack)" conntrack_clean
guard_works() {
  local before after
  before=$(leak_count)
  if in_pod client 'nc -w 2 192.0.2.1 80 </dev/null'; then
    echo "the pod connected to 192.0.2.1:80"
    return 1
  fi
  after=$(leak_count)
  echo "a pod's connection attempt to 192.0.2.1:80 failed; guard count ${before} -> ${after}"
  echo $((probes + after - before)) >"${PROBES_FILE}"
  ((after > before))
}
check "a pod's attempt to reach an outside address is dropped and counted (the guard works)" guard_works

# Memory of the node's components (VmRSS), and of the pods' runc shims together.
memory() {
  local name pid rss shims=0
  for name in "${NODE_COMPONENTS[@]}"; do
    pid=$(cat "${NODE_STATE}/pids/${name}.pid" 2>/dev/null) || continue
    rss=$(awk '/^VmRSS/ { print int($2 / 1024) }' "/proc/${pid}/status" 2>/dev/null) || continue
    printf '%s %s MiB, ' "${name}" "${rss}"
  done
  for pid in $(pgrep -f containerd-shim-runc-v2 || true); do
    rss=$(awk '/^VmRSS/ { print int($2 / 1024) }' "/proc/${pid}/status" 2>/dev/null) || continue
    shims=$((shims + rss))
  done
  printf 'runc shims (%s pods) %s MiB\n' "$(pgrep -fc containerd-shim-runc-v2 || true)" "${shims}"
}
info "memory (RSS): $(memory)"

echo "${PASSED} passed, ${FAILED} failed"
[[ "${FAILED}" -eq 0 ]]
