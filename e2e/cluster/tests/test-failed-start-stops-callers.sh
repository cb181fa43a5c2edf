#!/usr/bin/env bash
# Issue 13 item 11: when e2e/cluster/up.sh fails, e2e/run.sh, scripts/demo.sh and
# e2e/bench-scale.sh stop, and nothing (kubectl, helm, cargo tests, the operator) runs against the
# KUBECONFIG they inherited, even if up.sh printed export lines before failing.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
copy_repo e2e/run.sh scripts/demo.sh e2e/bench-scale.sh scripts/lib/local-operator.sh scripts/lib/local-cluster.sh
mkdir -p "${SCRATCH}/repo/e2e/cluster" "${SCRATCH}/repo/target/release"
# up.sh that prints a partial environment (as a start failing half-way could) and fails.
cat >"${SCRATCH}/repo/e2e/cluster/up.sh" <<'UP'
#!/usr/bin/env bash
echo "export SCALEDAPP_HELM=helm"
echo "[e2e-cluster] ERROR: the control plane did not start" >&2
exit 1
UP
chmod +x "${SCRATCH}/repo/e2e/cluster/up.sh"
printf '#!/bin/sh\nexit 0\n' >"${SCRATCH}/repo/target/release/scaledapp-operator"
chmod +x "${SCRATCH}/repo/target/release/scaledapp-operator"
for tool in kubectl helm curl; do stub "${tool}"; done
stub cargo 0
export PATH="${SCRATCH}/bin:${PATH}"
export KUBECONFIG="${SCRATCH}/someone-elses-kubeconfig"
echo "apiVersion: v1" >"${KUBECONFIG}"

for script in e2e/run.sh scripts/demo.sh e2e/bench-scale.sh; do
  : >"${SCRATCH}/calls"
  if (cd "${SCRATCH}/repo" && "${script}") >"${SCRATCH}/out" 2>&1; then
    cat "${SCRATCH}/out"
    fail "${script} succeeded although up.sh failed"
  fi
  grep -q "the local cluster did not start" "${SCRATCH}/out" || { cat "${SCRATCH}/out"; fail "${script} did not say the cluster did not start"; }
  if grep -E '^(kubectl|helm) ' "${SCRATCH}/calls"; then
    fail "${script} called kubectl/helm after a failed start"
  fi
  # (Building the operator before the start is fine: cargo build talks to no cluster.)
  if grep -F "KUBECONFIG=${KUBECONFIG}" "${SCRATCH}/calls" | grep -v '^cargo KUBECONFIG=[^ ]* build '; then
    fail "${script} ran something with the inherited KUBECONFIG"
  fi
  echo "${script}: stopped, nothing ran against the inherited kubeconfig"
done
