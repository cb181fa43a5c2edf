#!/usr/bin/env bash
# `make demo-down`: stops the demo's operator process and the local control plane.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "${ROOT}"
# shellcheck source=scripts/lib/local-operator.sh
source scripts/lib/local-operator.sh
STATE="${ROOT}/e2e/cluster/.state"
if [[ "${KIND:-0}" == 1 ]]; then
  exec e2e/kind/down.sh
fi
if [[ -f "${STATE}/demo-operator.pid" ]]; then
  stop_operator "$(cat "${STATE}/demo-operator.pid")"
  rm -f "${STATE}/demo-operator.pid"
  echo "operator stopped" >&2
fi
e2e/cluster/down.sh
