#!/usr/bin/env bash
# Checks that only a cluster running real pods allows (e2e/kind/test.sh runs it; needs the cluster
# from e2e/kind/up.sh). In a fresh namespace with examples/shop.yaml:
#  - the ScaledApp becomes Ready, its app pods run as 65532 with a read-only root filesystem;
#  - the app answers through its Service: POST /api/users, GET /api/users/{id}, POST /api/sessions,
#    POST /api/orders (signed in);
#  - the order reaches a worker: its confirmation e-mail row appears in sent_emails;
#  - every shard primary streams to replicasPerShard replicas (pg_stat_replication), and the
#    replicas are in recovery;
#  - the HPAs exist with the metrics the ScaledApp asks for.
# Prints PASS/FAIL per check and "N passed, N failed"; exits 1 on any failure.
# E2E_KIND_KEEP=1 keeps the namespace.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "${ROOT}"
export KUBECONFIG=${KUBECONFIG:-${ROOT}/e2e/kind/.state/kubeconfig}
NS=${E2E_KIND_NAMESPACE:-e2e-real-pods}
APP=shop
PORT=${E2E_KIND_APP_PORT:-18080}
log() { printf '[real-pods %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

passed=0 failed=0
check() { # description command...
  local what=$1
  shift
  if "$@"; then
    printf '  PASS  %s\n' "${what}"
    passed=$((passed + 1))
  else
    printf '  FAIL  %s\n' "${what}"
    failed=$((failed + 1))
  fi
}

pf_pid=""
cleanup() {
  [[ -z "${pf_pid}" ]] || kill "${pf_pid}" 2>/dev/null || true
  [[ "${E2E_KIND_KEEP:-0}" == 1 ]] || kubectl delete namespace "${NS}" --wait=false >/dev/null 2>&1 || true
}
trap cleanup EXIT

kubectl get --raw /readyz >/dev/null 2>&1 \
  || { echo "[real-pods] ERROR: no cluster answers at ${KUBECONFIG}: run e2e/kind/up.sh first" >&2; exit 1; }
kubectl create namespace "${NS}" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl label namespace "${NS}" pod-security.kubernetes.io/enforce=restricted --overwrite >/dev/null
kubectl -n "${NS}" apply -f examples/shop.yaml >/dev/null
log "waiting for ScaledApp ${NS}/${APP} to become Ready (images pull on first run)"
check "ScaledApp ${APP} becomes Ready" \
  kubectl -n "${NS}" wait "scaledapp/${APP}" --for=condition=Ready --timeout="${E2E_KIND_READY_TIMEOUT:-15m}"

pods_restricted() {
  kubectl -n "${NS}" get pods -l "app.kubernetes.io/instance=${APP},app.kubernetes.io/component=app" -o json |
    python3 -c '
import json, sys
pods = json.load(sys.stdin)["items"]
ok = bool(pods)
for pod in pods:
    ok &= pod["status"]["phase"] == "Running"
    for c in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
        ok &= c["securityContext"].get("readOnlyRootFilesystem") is True
    for c in pod["status"]["containerStatuses"]:
        ok &= c["ready"]
sys.exit(0 if ok else 1)'
}
check "app pods are Running and Ready with readOnlyRootFilesystem (image user 65532)" pods_restricted

kubectl -n "${NS}" port-forward "svc/${APP}-app" "${PORT}:80" >/dev/null 2>&1 &
pf_pid=$!
for _ in $(seq 1 30); do
  curl -fsS "http://127.0.0.1:${PORT}/health" >/dev/null 2>&1 && break
  sleep 1
done
session=""
api() { # method path [json]; sends the session cookie once there is one
  curl -fsS -X "$1" -H 'content-type: application/json' ${session:+-H "cookie: sid=${session}"} ${3:+--data "$3"} \
    "http://127.0.0.1:${PORT}$2"
}
field() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

email="kind-$(date +%s)-${RANDOM}@example.com"
credentials="\"email\": \"${email}\", \"password\": \"kind check password\""
user_id=$(api POST /api/users "{\"name\": \"Kind User\", ${credentials}}" | field id) || user_id=""
check "POST /api/users through svc/${APP}-app creates a user (id ${user_id:-none})" test -n "${user_id}"
read_back() { [[ "$(api GET "/api/users/${user_id}" | field name)" == "Kind User" ]]; }
check "GET /api/users/${user_id:-?} reads it back" read_back
# The cookie is Secure (cookieSecure defaults to true), so it is carried by hand over the port-forward.
session=$(curl -fsS -D - -o /dev/null -H 'content-type: application/json' --data "{${credentials}}" \
  "http://127.0.0.1:${PORT}/api/sessions" | sed -n 's/^[Ss]et-[Cc]ookie: sid=\([0-9a-f]*\);.*/\1/p') || session=""
check "POST /api/sessions signs in" test -n "${session}"
order_id=$(api POST /api/orders "{\"items\": [{\"sku\": \"a\", \"quantity\": 1}], \"total\": 10}" |
  field id) || order_id=""
check "POST /api/orders places an order (id ${order_id:-none})" test -n "${order_id}"

shards=$(kubectl -n "${NS}" get "scaledapp/${APP}" -o jsonpath='{.spec.database.shards}')
replicas=$(kubectl -n "${NS}" get "scaledapp/${APP}" -o jsonpath='{.spec.database.replicasPerShard}')
psql_on() { # pod database sql
  kubectl -n "${NS}" exec "$1" -c postgres -- psql -U postgres -d "$2" -tAc "$3"
}
email_sent() {
  local total=0 count shard
  for shard in $(seq 0 $((shards - 1))); do
    count=$(psql_on "${APP}-shard-${shard}-primary-0" app "select count(*) from sent_emails where order_id = ${order_id:-0}") || return 1
    total=$((total + count))
  done
  [[ ${total} -eq 1 ]]
}
order_reaches_worker() {
  for _ in $(seq 1 60); do
    email_sent && return 0
    sleep 2
  done
  return 1
}
check "the order reaches the email worker: exactly one confirmation in sent_emails" order_reaches_worker

for shard in $(seq 0 $((shards - 1))); do
  primary="${APP}-shard-${shard}-primary-0"
  streaming() {
    [[ "$(psql_on "${primary}" postgres "select count(*) from pg_stat_replication where state = 'streaming'")" == "${replicas}" ]]
  }
  check "shard ${shard}: ${primary} streams to ${replicas} replicas (pg_stat_replication)" streaming
  for replica in $(seq 0 $((replicas - 1))); do
    in_recovery() {
      [[ "$(psql_on "${APP}-shard-${shard}-replica-${replica}" postgres 'select pg_is_in_recovery()')" == t ]]
    }
    check "shard ${shard}: ${APP}-shard-${shard}-replica-${replica} is a standby" in_recovery
  done
done

hpa_matches() { # hpa-name expected-json: bounds, target and every expected metric in the HPA spec
  kubectl -n "${NS}" get hpa "$1" -o json | python3 -c '
import json, sys
spec = json.load(sys.stdin)["spec"]
want = json.loads(sys.argv[1])
SUFFIX = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}
def number(quantity):  # "1k", "1000", "500m" (the API server stores canonical forms)
    quantity = str(quantity)
    digits = quantity.rstrip("kKMGimu")
    return float(digits) * SUFFIX[quantity[len(digits):]]
def key(m):
    source = m[{"Resource": "resource", "Pods": "pods", "External": "external"}[m["type"]]]
    name = source["name"] if m["type"] == "Resource" else source["metric"]["name"]
    target = source["target"]
    value = target.get("averageUtilization", target.get("averageValue", target.get("value")))
    return (m["type"], name, target["type"], number(value))
have = {key(m) for m in spec.get("metrics", [])}
ok = (spec["minReplicas"], spec["maxReplicas"]) == (want["min"], want["max"])
ok &= spec["scaleTargetRef"]["name"] == want["target"]
missing = [w for w in want["metrics"] if (w[0], w[1], w[2], float(w[3])) not in have]
if missing or not ok:
    print(f"        HPA {spec}", file=sys.stderr)
sys.exit(0 if ok and not missing else 1)' "$2"
}
check "HPA ${APP}-app: 3-50 replicas on cpu 70%, http_requests_per_second 1000, p95 latency 0.5 s" \
  hpa_matches "${APP}-app" '{"min": 3, "max": 50, "target": "shop-app", "metrics": [
    ["Resource", "cpu", "Utilization", 70],
    ["Pods", "http_requests_per_second", "AverageValue", 1000],
    ["Pods", "http_request_duration_seconds_p95", "AverageValue", 0.5]]}'
check "HPA ${APP}-worker-email: 1-5 replicas on the email:send queue depth, 100 per replica" \
  hpa_matches "${APP}-worker-email" '{"min": 1, "max": 5, "target": "shop-worker-email", "metrics": [
    ["External", "scaledapp_queue_depth", "AverageValue", 100]]}'

echo "${passed} passed, ${failed} failed"
[[ ${failed} -eq 0 ]]
