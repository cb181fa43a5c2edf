# shellcheck shell=bash
# Helpers for the script tests: a copy of the repository's scripts in $SCRATCH/repo with stubs in
# front of PATH. Sourced by each test-*.sh.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
: "${SCRATCH:?run through e2e/cluster/tests/run.sh}"

fail() { echo "FAILED: $*" >&2; exit 1; }

# copy_repo FILE...: copies those repository files into $SCRATCH/repo (same paths).
copy_repo() {
  local file
  for file in "$@"; do
    mkdir -p "${SCRATCH}/repo/$(dirname "${file}")"
    cp -p "${REPO}/${file}" "${SCRATCH}/repo/${file}"
  done
}

# stub NAME [EXIT_CODE]: a command on PATH that records "NAME KUBECONFIG=<value> args..." in
# $SCRATCH/calls and exits with EXIT_CODE (default 0).
stub() {
  mkdir -p "${SCRATCH}/bin"
  cat >"${SCRATCH}/bin/$1" <<STUB
#!/usr/bin/env bash
printf '%s KUBECONFIG=%s %s\n' "$1" "\${KUBECONFIG:-<unset>}" "\$*" >>"${SCRATCH}/calls"
exit ${2:-0}
STUB
  chmod +x "${SCRATCH}/bin/$1"
}
