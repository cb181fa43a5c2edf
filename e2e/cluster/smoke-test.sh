#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Checks that the cluster started by up.sh does what the e2e tests need:
#   - server version is the pinned one, nodes are Ready
#   - PodSecurity admission enforces "restricted"
#   - a restricted-compliant Deployment and a StatefulSet with a
#     volumeClaimTemplate become Ready (PVCs Bound through the default
#     StorageClass)
#   - deleting the Deployment garbage-collects its ReplicaSet and pods
#   - the audit log records writes
# Works in its own namespace and deletes it at the end.
# Prints "N passed, N failed" and exits non-zero on any failure.
set -euo pipefail

# shellcheck source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

export KUBECACHEDIR="${STATE_DIR}/kube-cache"
[[ -f "${KUBECONFIG_PATH}" ]] || die "no ${KUBECONFIG_PATH}: run up.sh first"
kubectl() { "${KUBECTL_BIN}" --kubeconfig "${KUBECONFIG_PATH}" "$@"; }

NS=smoke-$(date +%s)-$$
PASSED=0
FAILED=0
check() {
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then
    PASSED=$((PASSED + 1))
    log "ok   ${name}"
  else
    FAILED=$((FAILED + 1))
    log "FAIL ${name}"
    printf '%s\n' "${out}" | sed 's/^/       /' >&2
  fi
}
cleanup() { kubectl delete namespace "${NS}" --wait=false >/dev/null 2>&1 || true; }
trap cleanup EXIT

server_version() {
  kubectl version -o json | grep "\"gitVersion\": \"${KUBE_VERSION}\"" >/dev/null
}
nodes_ready() {
  kubectl wait --for=condition=Ready node --all --timeout=60s
}
pod_security_rejects() {
  ! kubectl -n "${NS}" run privileged --image=example.invalid/x --restart=Never --dry-run=server
}
rollout() {
  kubectl -n "${NS}" rollout status "$1" --timeout=120s
}
pvcs_bound() {
  kubectl -n "${NS}" wait --for=jsonpath='{.status.phase}'=Bound pvc/data-db-0 pvc/data-db-1 --timeout=60s
}
gc_collects() {
  kubectl -n "${NS}" delete deployment web --wait=true
  local _i
  for _i in $(seq 1 60); do
    if [[ -z "$(kubectl -n "${NS}" get replicasets,pods -l app=web -o name)" ]]; then
      return 0
    fi
    sleep 1
  done
  kubectl -n "${NS}" get replicasets,pods -l app=web
  return 1
}
audit_logged() {
  grep -q "\"verb\":\"create\".*\"namespace\":\"${NS}\"" "${AUDIT_LOG_PATH}"
}

kubectl create namespace "${NS}" >/dev/null
kubectl label namespace "${NS}" pod-security.kubernetes.io/enforce=restricted >/dev/null

check "server version is ${KUBE_VERSION}" server_version
check "nodes Ready" nodes_ready
check "PodSecurity restricted rejects a non-compliant pod" pod_security_rejects

kubectl -n "${NS}" apply -f - >/dev/null <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      securityContext:
        runAsNonRoot: true
        runAsUser: 1000
        seccompProfile: {type: RuntimeDefault}
      containers:
        - name: web
          image: example.invalid/web:1
          securityContext:
            allowPrivilegeEscalation: false
            capabilities: {drop: ["ALL"]}
---
apiVersion: v1
kind: Service
metadata:
  name: db
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{port: 5432}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: db
spec:
  serviceName: db
  replicas: 2
  selector:
    matchLabels: {app: db}
  template:
    metadata:
      labels: {app: db}
    spec:
      securityContext:
        runAsNonRoot: true
        runAsUser: 1000
        fsGroup: 1000
        seccompProfile: {type: RuntimeDefault}
      containers:
        - name: db
          image: example.invalid/db:1
          securityContext:
            allowPrivilegeEscalation: false
            capabilities: {drop: ["ALL"]}
          volumeMounts:
            - {name: data, mountPath: /data}
  volumeClaimTemplates:
    - metadata:
        name: data
      spec:
        accessModes: ["ReadWriteOnce"]
        resources:
          requests:
            storage: 1Gi
EOF

check "Deployment web Ready" rollout deployment/web
check "StatefulSet db Ready" rollout statefulset/db
check "PVCs of StatefulSet db Bound" pvcs_bound
check "deleting Deployment garbage-collects ReplicaSet and pods" gc_collects
check "audit log records the writes" audit_logged

# Delete the StatefulSet's claims explicitly so their hostPath PVs are deleted.
kubectl -n "${NS}" delete statefulset db --wait=true >/dev/null 2>&1 || true
kubectl -n "${NS}" delete pvc --all --wait=false >/dev/null 2>&1 || true

echo "${PASSED} passed, ${FAILED} failed"
[[ "${FAILED}" -eq 0 ]]
