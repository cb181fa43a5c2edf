#!/usr/bin/env bash
# scripts/lib/demo-traffic.sh NAMESPACE SCALEDAPP: the end of `make demo` on the real node.
# From a throwaway pod in the cluster (busybox, restricted), through the app's Service by its DNS
# name: sign a user up, read it twice (the public representation, cacheable), sign in, place an
# order. Then waits for the order-confirmation worker's row in the user's shard and prints it.
# The e2e test real_pods checks the same flow (e2e/tests/real_pods.rs).
set -euo pipefail
NS=$1
APP=$2
KUBECTL=${SCALEDAPP_KUBECTL:-kubectl}
BUSYBOX=${SCALEDAPP_BUSYBOX_IMAGE:-localhost/scaled/busybox:1.37}
EMAIL="demo-$(date +%s)@example.com"
PASSWORD="correct horse battery staple"
POD="demo-client-$(date +%s)"

read -r -d '' SCRIPT <<FLOW || true
set -e
base=http://${APP}-app.${NS}.svc
json='Content-Type: application/json'
user=\$(wget -q -O - --header "\$json" --post-data '{"name":"Demo","email":"${EMAIL}","password":"${PASSWORD}"}' \$base/api/users)
echo "POST /api/users            -> \$user"
id=\$(echo "\$user" | sed -n 's/.*"id":\([0-9]*\).*/\1/p')
echo "GET  /api/users/\$id        -> \$(wget -q -O - \$base/api/users/\$id)"
echo "GET  /api/users/\$id again  -> \$(wget -q -O - \$base/api/users/\$id)"
cookie=\$(wget -S -q -O /dev/null --header "\$json" --post-data '{"email":"${EMAIL}","password":"${PASSWORD}"}' \$base/api/sessions 2>&1 | sed -n 's/.*[Ss]et-[Cc]ookie: \([^;]*\).*/\1/p' | head -n 1)
[ -n "\$cookie" ] || { echo "no session cookie"; exit 1; }
echo "POST /api/sessions         -> a session cookie (HttpOnly)"
order=\$(wget -q -O - --header "\$json" --header "Cookie: \$cookie" --post-data '{"items":[{"sku":"book","quantity":2}],"total":30.5}' \$base/api/orders)
echo "POST /api/orders           -> \$order"
FLOW

"${KUBECTL}" -n "${NS}" apply -f - >/dev/null <<POD_YAML
apiVersion: v1
kind: Pod
metadata:
  name: ${POD}
spec:
  restartPolicy: Never
  securityContext:
    runAsNonRoot: true
    runAsUser: 65534
    seccompProfile: {type: RuntimeDefault}
  containers:
    - name: client
      image: ${BUSYBOX}
      command: ["sh", "-c", $(python3 -c 'import json, sys; print(json.dumps(sys.argv[1]))' "${SCRIPT}")]
      resources: {requests: {cpu: 10m, memory: 8Mi}}
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities: {drop: ["ALL"]}
POD_YAML
trap '"${KUBECTL}" -n "${NS}" delete pod "${POD}" --wait=false >/dev/null 2>&1 || true' EXIT
phase=""
for _ in $(seq 1 120); do
  phase=$("${KUBECTL}" -n "${NS}" get pod "${POD}" -o jsonpath='{.status.phase}' 2>/dev/null || true)
  [[ "${phase}" == Succeeded || "${phase}" == Failed ]] && break
  sleep 1
done
output=$("${KUBECTL}" -n "${NS}" logs "${POD}" 2>&1 || true)
printf '%s\n' "${output}" | sed 's/^/    /'
[[ "${phase}" == Succeeded ]] || { echo "the client pod ended ${phase:-nowhere}" >&2; exit 1; }
order=$(printf '%s\n' "${output}" | sed -n 's/^POST \/api\/orders.*"id":\([0-9]*\).*/\1/p' | head -n 1)
[[ -n "${order}" ]] || { echo "no order id in the app's answer" >&2; exit 1; }

echo "    waiting for the worker's confirmation of order ${order} (table sent_emails, the user's shard)"
database=app   # the database the operator creates (DATABASE_NAME, operator/src/render/config.rs)
for _ in $(seq 1 90); do
  for primary in $("${KUBECTL}" -n "${NS}" get sapp "${APP}" -o jsonpath='{.status.shards[*].primaryPod}'); do
    row=$("${KUBECTL}" -n "${NS}" exec "${primary}" -c postgres -- sh -c \
      'export PGPASSWORD="$SCALED_SUPERUSER_PASSWORD"; for dir in /usr/lib/postgresql/*/bin; do PATH="$dir:$PATH"; done
       exec psql -X -q -At -h /var/run/postgresql -U postgres -d "$0" -c "SELECT recipient || '"' | '"' || subject FROM sent_emails WHERE order_id = $1"' \
      "${database}" "${order}" 2>/dev/null || true)
    if [[ -n "${row}" ]]; then
      echo "    the worker wrote, on ${primary}: ${row}"
      exit 0
    fi
  done
  sleep 1
done
echo "the worker did not confirm order ${order} within 90 s" >&2
exit 1
