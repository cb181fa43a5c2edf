# shellcheck shell=bash
# Shared by e2e/run.sh, scripts/demo.sh and e2e/bench-scale.sh: start the local cluster and use
# the kubeconfig it made, and nothing else. Sourced, not executed.

# start_local_cluster ROOT: runs e2e/cluster/up.sh and exports what it prints (KUBECONFIG, PATH,
# SCALEDAPP_*). The caller's KUBECONFIG is dropped first and the result is checked, so a failed
# start stops the caller instead of leaving it pointed at whatever cluster it inherited.
# (`eval "$(e2e/cluster/up.sh)"` cannot do that: eval succeeds whatever up.sh returned.)
start_local_cluster() {
  local root=$1 exports
  unset KUBECONFIG
  if ! exports=$("${root}/e2e/cluster/up.sh"); then
    echo "the local cluster did not start (see the messages above; logs in ${root}/e2e/cluster/.state/logs)" >&2
    return 1
  fi
  eval "${exports}"
  if [[ "${KUBECONFIG:-}" != "${root}/e2e/cluster/.state/kubeconfig" ]]; then
    echo "e2e/cluster/up.sh did not export the local cluster's kubeconfig (got '${KUBECONFIG:-}')" >&2
    return 1
  fi
}
