# shellcheck shell=bash
# Shared by e2e/run.sh and scripts/demo.sh: install the chart on the local control plane and run
# the operator as a local process with a token of the chart's ServiceAccount, so it has exactly
# the permissions the chart grants (the simulated nodes cannot run the operator's container).
# Sourced, not executed. Needs KUBECONFIG, SCALEDAPP_KUBECTL and SCALEDAPP_HELM (from up.sh).

LOCAL_OPERATOR_NAMESPACE=scaledapp-system
LOCAL_OPERATOR_RELEASE=scaledapp-operator
LOCAL_OPERATOR_SA=scaledapp-operator

# install_chart: helm upgrade --install with the Deployment scaled to 0, and keep the CRD current
# (helm installs crds/ only on first install).
install_chart() {
  local root=$1
  "${SCALEDAPP_HELM:-helm}" upgrade --install "${LOCAL_OPERATOR_RELEASE}" "${root}/charts/scaledapp-operator" \
    --namespace "${LOCAL_OPERATOR_NAMESPACE}" --create-namespace \
    --set localOperator.enabled=true --wait --timeout 2m >/dev/null
  "${SCALEDAPP_KUBECTL:-kubectl}" apply --server-side --force-conflicts \
    -f "${root}/crds/scaled.dev_scaledapps.yaml" >/dev/null
}

# write_operator_kubeconfig PATH: a kubeconfig for the cluster in KUBECONFIG that authenticates
# with a fresh token of the chart's ServiceAccount.
write_operator_kubeconfig() {
  local path=$1 kubectl=${SCALEDAPP_KUBECTL:-kubectl} token server ca
  token=$("${kubectl}" -n "${LOCAL_OPERATOR_NAMESPACE}" create token "${LOCAL_OPERATOR_SA}" --duration=8h)
  server=$("${kubectl}" config view --minify --raw -o jsonpath='{.clusters[0].cluster.server}')
  ca=$("${kubectl}" config view --minify --raw --flatten -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
  (
    umask 077
    cat >"${path}" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: "${server}", certificate-authority-data: "${ca}"}
users:
- name: ${LOCAL_OPERATOR_SA}
  user: {token: "${token}"}
contexts:
- name: local
  context: {cluster: local, user: ${LOCAL_OPERATOR_SA}}
current-context: local
KUBECONFIG
  )
}

# start_operator BINARY KUBECONFIG PROBE_ADDRESS IDENTITY LOG: starts it in the background,
# sets OPERATOR_PID, and waits until /readyz answers (fails with the log's tail otherwise).
start_operator() {
  local binary=$1 kubeconfig=$2 address=$3 identity=$4 log=$5
  KUBECONFIG="${kubeconfig}" POD_NAMESPACE="${LOCAL_OPERATOR_NAMESPACE}" \
    "${binary}" run --probe-address "${address}" --identity "${identity}" >"${log}" 2>&1 &
  OPERATOR_PID=$!
  local _
  for _ in $(seq 1 60); do
    if curl -fsS "http://${address}/readyz" >/dev/null 2>&1; then
      return 0
    fi
    kill -0 "${OPERATOR_PID}" 2>/dev/null || break
    sleep 1
  done
  echo "the operator did not become ready; last lines of ${log}:" >&2
  tail -n 40 "${log}" >&2 || true
  return 1
}

# stop_operator PID: SIGTERM (the operator releases its lease), then wait for it.
stop_operator() {
  local pid=$1
  if kill -0 "${pid}" 2>/dev/null; then
    kill -TERM "${pid}" 2>/dev/null || true
    while kill -0 "${pid}" 2>/dev/null; do sleep 0.2; done
  fi
}
