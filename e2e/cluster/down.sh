#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Stops the e2e cluster started by up.sh (kwokctl delete cluster) and removes
# its state (e2e/cluster/.state). The tool cache is kept.
#
# Environment: SCALEDAPP_CLUSTER (default: scaledapp), SCALEDAPP_CACHE.
set -euo pipefail

# shellcheck source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

export KWOK_WORKDIR="${KWOK_WORKDIR_PATH}"

# Serialize up.sh / down.sh runs for this checkout.
if command -v flock >/dev/null 2>&1; then
  exec 8>"${STATE_DIR}.lock"
  flock 8
fi
CLUSTER_WORKDIR="${KWOK_WORKDIR}/clusters/${CLUSTER_NAME}"

if [[ ! -d "${CLUSTER_WORKDIR}" ]]; then
  log "no cluster ${CLUSTER_NAME} under ${KWOK_WORKDIR}"
else
  # Dynamically provisioned hostPath volumes live in /tmp/hostpath_pv/<uid>
  # on this machine; remove the ones that belong to this cluster.
  if [[ -x "${KUBECTL_BIN}" && -f "${KUBECONFIG_PATH}" ]]; then
    paths=$("${KUBECTL_BIN}" --kubeconfig "${KUBECONFIG_PATH}" --request-timeout=5s \
      get pv -o jsonpath='{range .items[*]}{.spec.hostPath.path}{"\n"}{end}' 2>/dev/null || true)
    while IFS= read -r p; do
      if [[ "${p}" =~ ^/tmp/hostpath_pv/[A-Za-z0-9-]+$ ]]; then
        rm -rf -- "${p}"
      fi
    done <<<"${paths}"
  fi

  if [[ -x "${KWOKCTL_BIN}" ]]; then
    log "deleting cluster ${CLUSTER_NAME}"
    "${KWOKCTL_BIN}" --name "${CLUSTER_NAME}" delete cluster --kubeconfig "${KUBECONFIG_PATH}" >&2 8>&-
  else
    # kwokctl is gone (cache deleted): stop the components by their pid files.
    log "kwokctl not found at ${KWOKCTL_BIN}; stopping components from pid files"
    for pidfile in "${CLUSTER_WORKDIR}"/pids/*.pid; do
      [[ -f "${pidfile}" ]] || continue
      pid=$(<"${pidfile}")
      if [[ "${pid}" =~ ^[0-9]+$ ]] && kill -0 "${pid}" 2>/dev/null; then
        log "stopping ${pidfile##*/} (pid ${pid})"
        kill "${pid}" || true
      fi
    done
  fi
fi

# Remove the state unless another cluster still lives in the same workdir.
others=()
if [[ -d "${KWOK_WORKDIR}/clusters" ]]; then
  for d in "${KWOK_WORKDIR}"/clusters/*/; do
    [[ -d "${d}" ]] || continue
    name=$(basename "${d}")
    [[ "${name}" == "${CLUSTER_NAME}" ]] || others+=("${name}")
  done
fi
if [[ ${#others[@]} -eq 0 ]]; then
  rm -rf "${STATE_DIR}"
  log "removed ${STATE_DIR}"
else
  rm -rf "${CLUSTER_WORKDIR}"
  log "kept ${STATE_DIR}: other clusters still exist: ${others[*]}"
fi
