#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Stops the e2e cluster started by up.sh and removes its state (e2e/cluster/.state). The tool
# cache, the node images and the local registry's storage (all in ~/.cache/scaledapp-e2e) are
# kept.
#
# The real node: its pods are deleted (grace period 0) while the kubelet runs, then every
# process up.sh started is stopped (by pid, then whatever is left in the guard's cgroup), and
# every host change is undone: mounts below .state, pod network namespaces, iptables chains and
# the tables iptables created for them, ipsets, conntrack entries, the bridge, the sysctls the
# kubelet set, the entries in /var/log/containers and /var/lib/cni, host directories that did not
# exist before, the cgroups. Finally the host is compared with the snapshot taken before the
# first start (host-state.sh) and any difference is printed.
#
# Idempotent: with nothing running it says so and exits 0.
# Environment: SCALEDAPP_CLUSTER (default: scaledapp), SCALEDAPP_CACHE.
set -euo pipefail

# shellcheck source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
# shellcheck source=real-node.sh
source "${CLUSTER_DIR}/real-node.sh"
ROOT_DIR=$(cd "${CLUSTER_DIR}/../.." && pwd)

export KWOK_WORKDIR="${KWOK_WORKDIR_PATH}"
export KUBECACHEDIR="${STATE_DIR}/kube-cache"

# Serialize up.sh / down.sh runs for this checkout (up.sh calls this script holding the lock).
if [[ "${SCALEDAPP_CLUSTER_LOCKED:-0}" != 1 ]] && command -v flock >/dev/null 2>&1 && [[ -d "${STATE_DIR}" ]]; then
  exec 8>"${STATE_DIR}.lock"
  flock 8
fi
CLUSTER_WORKDIR="${KWOK_WORKDIR}/clusters/${CLUSTER_NAME}"

# The real node first: it needs the API server to delete its pods.
if [[ -d "${NODE_STATE}" ]]; then
  log "stopping the real node ${NODE_NAME}"
  node_down
fi

if [[ -f "${STATE_DIR}/simulated-pods-route" ]]; then
  ip route del unreachable "${SIMULATED_POD_RANGE}" 2>/dev/null || true
  rm -f "${STATE_DIR}/simulated-pods-route"
fi

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
    mkdir -p "${LOG_DIR}"
    "${KWOKCTL_BIN}" --name "${CLUSTER_NAME}" delete cluster --kubeconfig "${KUBECONFIG_PATH}" \
      >>"${LOG_DIR}/kwokctl.log" 2>&1 8>&- || {
      tail -n 20 "${LOG_DIR}/kwokctl.log" >&2
      die "kwokctl delete cluster failed; log: ${LOG_DIR}/kwokctl.log"
    }
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

# The guard's cgroup outlives the real node's processes until the control plane is gone too.
if [[ -d "${NODE_STATE}" ]]; then
  cgroup=$(guard_cgroup || true)
  if [[ -n "${cgroup}" && -d "${cgroup}" ]]; then
    while read -r pid; do
      stop_pid "${pid}" 5
    done < <(find "${cgroup}" -name cgroup.procs -exec cat {} + 2>/dev/null)
    # Processes that were just stopped may keep the group populated for a moment.
    for _ in $(seq 1 50); do
      find "${cgroup}" -depth -type d -exec rmdir {} + 2>/dev/null && break
      sleep 0.1
    done
    [[ ! -d "${cgroup}" ]] ||
      log "WARNING: ${cgroup} still has processes: $(find "${cgroup}" -name cgroup.procs -exec cat {} + | tr '\n' ' ')"
  fi
  if [[ -f "${NODE_STATE}/host-before/snapshot" ]]; then
    if difference=$(diff "${NODE_STATE}/host-before/snapshot" <("${CLUSTER_DIR}/host-state.sh")); then
      log "host: as before the first up.sh (host-state.sh shows no difference)"
    else
      log "WARNING: the host differs from before the first up.sh (< before, > now):"
      printf '%s\n' "${difference}" | sed 's/^/    /' >&2
    fi
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
# Nothing may still be mounted below the state directory before it is removed.
if awk -v dir="${STATE_DIR}/" 'index($2, dir) == 1 { found = 1 } END { exit !found }' /proc/self/mounts; then
  die "something is still mounted below ${STATE_DIR}; not removing it (see: findmnt | grep ${STATE_DIR})"
fi
if [[ ${#others[@]} -eq 0 ]]; then
  if [[ -d "${STATE_DIR}" ]]; then
    rm -rf --one-file-system "${STATE_DIR}"
    log "removed ${STATE_DIR}"
  fi
else
  rm -rf --one-file-system "${CLUSTER_WORKDIR}"
  log "kept ${STATE_DIR}: other clusters still exist: ${others[*]}"
fi
