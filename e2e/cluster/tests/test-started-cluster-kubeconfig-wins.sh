#!/usr/bin/env bash
# Issue 13 item 11: when the local cluster starts, the callers use ITS kubeconfig, not the one
# they inherited; the suite against another cluster needs it named (E2E_KUBECONFIG), and the old
# E2E_USE_KUBECONFIG=1 is refused rather than silently using the inherited one.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
copy_repo e2e/run.sh scripts/lib/local-operator.sh scripts/lib/local-cluster.sh
mkdir -p "${SCRATCH}/repo/e2e/cluster"
cat >"${SCRATCH}/repo/e2e/cluster/up.sh" <<UP
#!/usr/bin/env bash
echo "export KUBECONFIG=${SCRATCH}/repo/e2e/cluster/.state/kubeconfig"
UP
chmod +x "${SCRATCH}/repo/e2e/cluster/up.sh"
stub kubectl
stub helm
stub cargo 1 # stops run.sh at its first build, after the cluster started
export PATH="${SCRATCH}/bin:${PATH}"
export KUBECONFIG="${SCRATCH}/someone-elses-kubeconfig"

: >"${SCRATCH}/calls"
(cd "${SCRATCH}/repo" && e2e/run.sh) >"${SCRATCH}/out" 2>&1 && fail "run.sh should stop at the failing cargo stub"
grep -q "^cargo KUBECONFIG=${SCRATCH}/repo/e2e/cluster/.state/kubeconfig " "${SCRATCH}/calls" ||
  { cat "${SCRATCH}/calls" "${SCRATCH}/out"; fail "run.sh did not use the local cluster's kubeconfig"; }
echo "run.sh: used the kubeconfig up.sh made"

(cd "${SCRATCH}/repo" && E2E_USE_KUBECONFIG=1 e2e/run.sh) >"${SCRATCH}/out" 2>&1 && fail "E2E_USE_KUBECONFIG=1 was accepted"
grep -q "E2E_KUBECONFIG=" "${SCRATCH}/out" || { cat "${SCRATCH}/out"; fail "no hint at E2E_KUBECONFIG"; }
echo "run.sh: E2E_USE_KUBECONFIG=1 refused with a hint"

: >"${SCRATCH}/calls"
echo "apiVersion: v1" >"${SCRATCH}/named"
(cd "${SCRATCH}/repo" && E2E_KUBECONFIG="${SCRATCH}/named" e2e/run.sh) >"${SCRATCH}/out" 2>&1 || true
grep -q "^cargo KUBECONFIG=${SCRATCH}/named " "${SCRATCH}/calls" || { cat "${SCRATCH}/calls"; fail "E2E_KUBECONFIG not used"; }
echo "run.sh: E2E_KUBECONFIG names the cluster"
