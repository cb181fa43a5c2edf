#!/usr/bin/env bash
# Checks what the chart renders for the values a user sets (`make chart-check`): helm lint, then
# `helm template` with each case and assertions on the output. No cluster needed.
#
# Usage: charts/check.sh [HELM]   (default: the helm that e2e/cluster/build-tools.sh builds)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CHART="${ROOT}/charts/scaledapp-operator"
HELM=${1:-${SCALEDAPP_HELM:-}}
if [[ -z "${HELM}" ]]; then
  HELM=$("${ROOT}/e2e/cluster/build-tools.sh" | awk '$1 == "helm" { print $2 }')
fi
[[ -x "${HELM}" ]] || { echo "chart-check: helm not found (${HELM})" >&2; exit 1; }

failures=0
pass() { printf 'PASS %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*"; failures=$((failures + 1)); }
render() { "${HELM}" template scaledapp-operator "${CHART}" --namespace scaledapp-system "$@"; }
# expect DESCRIPTION PATTERN OUTPUT: the rendered output contains a line matching PATTERN.
expect() {
  if grep -Eq -- "$2" <<<"$3"; then pass "$1"; else fail "$1 (no line matches: $2)"; fi
}
reject() {
  if grep -Eq -- "$2" <<<"$3"; then fail "$1 (a line matches: $2)"; else pass "$1"; fi
}

"${HELM}" lint --strict "${CHART}" >/dev/null && pass "helm lint --strict" || fail "helm lint --strict"

version=$(awk '$1 == "appVersion:" { gsub(/"/, "", $2); print $2 }' "${CHART}/Chart.yaml")
out=$(render)
expect "default: the operator image comes from ghcr.io/scaled-dev" \
  "image: \"ghcr.io/scaled-dev/scaledapp-operator:${version}\"" "${out}"
expect "default: the default app image comes from the same registry" \
  "value: \"ghcr.io/scaled-dev/scaled-app:${version}\"" "${out}"

out=$(render --set image.registry=localhost:5000/scaled)
expect "one registry value moves the operator image" \
  "image: \"localhost:5000/scaled/scaledapp-operator:${version}\"" "${out}"
expect "... and the instance manager image" \
  "SCALEDAPP_INSTANCE_IMAGE" "${out}"
expect "... and the default app image" \
  "value: \"localhost:5000/scaled/scaled-app:${version}\"" "${out}"
reject "... and nothing still names ghcr.io" "ghcr\.io" "${out}"

digest="sha256:$(printf '%064d' 7)"
out=$(render --set image.registry=localhost:5000/scaled --set "image.digest=${digest}" --set "appImage.digest=${digest}")
expect "a digest pins the operator image" "image: \"localhost:5000/scaled/scaledapp-operator@${digest}\"" "${out}"
expect "a digest pins the default app image" "value: \"localhost:5000/scaled/scaled-app@${digest}\"" "${out}"

out=$(render --set 'imagePullSecrets[0].name=registry-login')
expect "imagePullSecrets reach the operator pod" "- name: registry-login" "${out}"

out=$(render)
expect "default: the operator's rules are a ClusterRole" "^kind: ClusterRole$" "${out}"
expect "... with Secrets get/create/patch, by name only" 'resources: \["secrets"\]' "${out}"
reject "... and never list or watch on Secrets" 'resources: \["secrets"\]' "$(grep -A1 'resources: \["secrets"\]' <<<"${out}" | grep -E 'list|watch' || true)"

out=$(render --set 'watchNamespaces={shop,blog}')
roles=$(awk '/^kind: Role$/ { role = 1 } role && /^  namespace:/ { print $2; role = 0 }' <<<"${out}" | sort | tr '\n' ' ')
if [[ "${roles}" == "blog scaledapp-system shop " ]]; then
  pass "watchNamespaces: a Role in each watched namespace (and the leader-election one)"
else
  fail "watchNamespaces: Roles in ${roles}"
fi
expect "... the operator is told the namespaces" 'value: "shop,blog"' "${out}"
operator_rules=$(awk '/^kind: ClusterRole$/ { keep = 1 } /^---/ { keep = 0 } keep' <<<"${out}")
reject "... and no ClusterRole grants Secrets, Pods or children" 'secrets|pods|deployments' "${operator_rules}"
if render --set 'watchNamespaces={Not_A_Namespace}' >/dev/null 2>&1; then
  fail "a malformed namespace in watchNamespaces is refused by values.schema.json"
else
  pass "a malformed namespace in watchNamespaces is refused by values.schema.json"
fi

if render --set image.registry='Not A Registry' >/dev/null 2>&1; then
  fail "a malformed registry is refused by values.schema.json"
else
  pass "a malformed registry is refused by values.schema.json"
fi

if ((failures > 0)); then
  echo "chart-check: ${failures} failed" >&2
  exit 1
fi
echo "chart-check: all passed"
