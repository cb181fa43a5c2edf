# shellcheck shell=bash
# Shared by e2e/run.sh, e2e/real-pods.sh and scripts/demo.sh: install the chart on the local
# control plane and run the operator either as a local process with a token of the chart's
# ServiceAccount, so it has exactly the permissions the chart grants (kwok nodes run no
# containers), or, when the cluster has its real node, as the chart's own pod on that node.
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

# install_operator_on_real_node ROOT: pushes the operator and app images (`make images` wrote
# them) to the cluster's registry, puts the operator's namespace on the real node, and upgrades
# the chart so the operator runs as its pod, from those images, under its ServiceAccount.
# The images are pinned by digest (PUSHED_OPERATOR_IMAGE, PUSHED_APP_IMAGE are set): a tag that
# the node already holds is not pulled again, so a rebuilt image under the same tag would
# otherwise never reach the pods (the Postgres pods' instance manager comes from the operator
# image too).
install_operator_on_real_node() {
  local root=$1 kubectl=${SCALEDAPP_KUBECTL:-kubectl} version prefix=${SCALEDAPP_IMAGE_PREFIX:-localhost/scaled}
  version=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["workspace"]["package"]["version"])' "${root}/Cargo.toml")
  local image pushed operator_digest app_digest
  for image in scaledapp-operator scaled-app; do
    [[ -f "${root}/target/images/${image}/index.json" ]] ||
      { echo "target/images/${image} is missing: run make images first" >&2; return 1; }
  done
  pushed=$("${root}/scripts/push-images.sh") || return 1
  operator_digest=$(awk '$1 == "scaledapp-operator" { sub(/.*@/, "", $2); print $2 }' <<<"${pushed}")
  app_digest=$(awk '$1 == "scaled-app" { sub(/.*@/, "", $2); print $2 }' <<<"${pushed}")
  [[ "${operator_digest}" == sha256:* && "${app_digest}" == sha256:* ]] ||
    { echo "push-images.sh printed no digests:" >&2; printf '%s\n' "${pushed}" >&2; return 1; }
  PUSHED_OPERATOR_IMAGE="${prefix}/scaledapp-operator@${operator_digest}"
  PUSHED_APP_IMAGE="${prefix}/scaled-app@${app_digest}"
  "${kubectl}" create namespace "${LOCAL_OPERATOR_NAMESPACE}" --dry-run=client -o yaml | "${kubectl}" apply -f - >/dev/null
  put_namespace_on_real_node "${LOCAL_OPERATOR_NAMESPACE}"
  "${SCALEDAPP_HELM:-helm}" upgrade --install "${LOCAL_OPERATOR_RELEASE}" "${root}/charts/scaledapp-operator" \
    --namespace "${LOCAL_OPERATOR_NAMESPACE}" --create-namespace \
    --set localOperator.enabled=false \
    --set "image.registry=${prefix},image.tag=${version},image.digest=${operator_digest}" \
    --set "appImage.tag=${version},appImage.digest=${app_digest}" \
    --wait --timeout 5m >/dev/null
  "${kubectl}" apply --server-side --force-conflicts -f "${root}/crds/scaled.dev_scaledapps.yaml" >/dev/null
  "${kubectl}" -n "${LOCAL_OPERATOR_NAMESPACE}" rollout status deployment/"${LOCAL_OPERATOR_RELEASE}" --timeout=5m >/dev/null
}

# put_namespace_on_real_node NAMESPACE: the PodNodeSelector/PodTolerationRestriction annotations
# that send every pod of the namespace to the real node (e2e/cluster/README.md).
put_namespace_on_real_node() {
  "${SCALEDAPP_KUBECTL:-kubectl}" annotate namespace "$1" --overwrite \
    "scheduler.alpha.kubernetes.io/node-selector=${SCALEDAPP_REAL_NODE_SELECTOR:-scaled.dev/node=real}" \
    'scheduler.alpha.kubernetes.io/defaultTolerations=[{"key":"scaled.dev/real-node","operator":"Exists","effect":"NoSchedule"}]' >/dev/null
}
