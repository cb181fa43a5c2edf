#!/usr/bin/env bash
# One real node per machine: another checkout's node is refused only while one of its processes
# runs. A node whose processes are all gone (the machine restarted, a session was killed) is
# removed with that checkout's own down.sh, so CI on a fresh clone does not stop at a dead node
# a previous checkout left behind. (The refusal of a live node needs root and a running node:
# real-node-smoke.sh covers the real node itself.)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=../lib.sh
source "${REPO}/e2e/cluster/lib.sh"
# shellcheck source=../real-node.sh
source "${REPO}/e2e/cluster/real-node.sh"
NODE_OWNER_FILE=${SCRATCH}/owner
STATE_DIR=${SCRATCH}/mine/.state
other=${SCRATCH}/other/.state
mkdir -p "${other}/node/pids"
cat >"${SCRATCH}/other/down.sh" <<DOWN
#!/usr/bin/env bash
echo "down.sh of the other checkout" >>"${SCRATCH}/calls"
rm -f "${NODE_OWNER_FILE}"
DOWN
chmod +x "${SCRATCH}/other/down.sh"

# A recorded pid of a process that has exited, and one that runs but is not in the guard's
# cgroup (a reused number after a restart): both mean "stale".
sleep 0 &
dead=$!
wait "${dead}"
echo "${dead}" >"${other}/node/pids/containerd.pid"
echo "$$" >"${other}/node/pids/kubelet.pid"
owner_node_alive "${other}" && fail "a dead pid and a pid outside the guard's cgroup counted as a live node"

echo "${other}" >"${NODE_OWNER_FILE}"
(node_check_owner) 2>"${SCRATCH}/out" || { cat "${SCRATCH}/out"; fail "a stale node of another checkout stopped the start"; }
grep -q "down.sh of the other checkout" "${SCRATCH}/calls" 2>/dev/null || fail "the other checkout's down.sh was not run"
grep -q "is stale" "${SCRATCH}/out" || { cat "${SCRATCH}/out"; fail "no line saying the node was stale"; }
echo "a stale node of another checkout is removed with its down.sh"

# The owner file names this checkout, or a checkout that no longer exists: nothing to do.
: >"${SCRATCH}/calls"
echo "${STATE_DIR}" >"${NODE_OWNER_FILE}"
(node_check_owner) || fail "this checkout's own owner file stopped the start"
echo "${SCRATCH}/gone/.state" >"${NODE_OWNER_FILE}"
(node_check_owner) || fail "the owner file of a removed checkout stopped the start"
[[ ! -s "${SCRATCH}/calls" ]] || fail "down.sh ran for a node that is this checkout's or gone"
echo "own or vanished owner: nothing run"

# A stale node whose checkout has no down.sh: a clear error that says what to remove.
rm "${SCRATCH}/other/down.sh"
echo "${other}" >"${NODE_OWNER_FILE}"
(node_check_owner) 2>"${SCRATCH}/out" && fail "a stale node without down.sh was ignored"
grep -q "by hand" "${SCRATCH}/out" || { cat "${SCRATCH}/out"; fail "the error does not say what to remove"; }
echo "no down.sh: refused with what to remove"
