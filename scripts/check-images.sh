#!/usr/bin/env bash
# Verifies the images scripts/build-images.sh wrote under target/images/ (`make images-check`).
#
#   scripts/check-images.sh [operator|app]...     (default: both)
#
# Per image:
#  - the OCI layout: every blob matches its digest and size, diff_ids match the layer;
#  - the config: User 65532:65532, Entrypoint /usr/local/bin/<name>, Cmd run|serve (the chart
#    passes args only; the operator's Deployments pass serve/migrate/worker args only), PATH with
#    /usr/local/bin (the workers' liveness probe execs plain `scaled-app`), ports, version label;
#  - the layer: binary owned by root, /tmp 1777, no setuid files, nothing else world-writable;
#  - then unpacks the rootfs and RUNS the binary from it alone, as a pod would: uid 65532, root
#    filesystem READ-ONLY, no capabilities, an empty host directory on /tmp (the emptyDir), an
#    environment of PATH only; with runc (an OCI runtime) when installed, else chroot in a private
#    mount namespace (see in_image). Needs root. The app image also migrates, serves and works
#    against real Postgres shards and Redis: those of `make stack` when it runs, else a throwaway
#    stack this script starts with `scripts/stack.sh up` on free ports and stops again with
#    `scripts/stack.sh down` (nothing is skipped).
# Prints PASS/FAIL per check and the image sizes; exits 1 if any check failed.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "${ROOT}"

REGISTRY=${IMAGE_REGISTRY:-ghcr.io/scaled-dev}
TARGET_DIR=${CARGO_TARGET_DIR:-${ROOT}/target}
OUT=${TARGET_DIR}/images
VERSION=$(python3 -c 'import tomllib; print(tomllib.load(open("Cargo.toml", "rb"))["workspace"]["package"]["version"])')

declare -A PACKAGE=([operator]=scaledapp-operator [app]=scaled-app)
declare -A CMD=([operator]=run [app]=serve)
declare -A PORTS=([operator]="8081/tcp" [app]="8080/tcp 9090/tcp")

images=("$@")
[[ ${#images[@]} -gt 0 ]] || images=(operator app)

failed=0
pass() { printf '  PASS  %s\n' "$1"; }
fail() {
  printf '  FAIL  %s\n' "$1"
  [[ $# -lt 2 ]] || printf '%s\n' "${@:2}" | sed -e '/^$/d' -e 's/^/        /'
  failed=$((failed + 1))
}

WORK=$(mktemp -d)
chmod 0755 "${WORK}"
OWN_STACK=0
cleanup() {
  local id
  if [[ ${OWN_STACK} == 1 ]]; then
    "${ROOT}/scripts/stack.sh" down >/dev/null 2>&1 || true
  fi
  # Containers whose runc was killed (a binary that ignored SIGTERM) leave state behind.
  if [[ -f "${WORK}/runc-ids" ]]; then
    while read -r id; do runc delete --force "${id}" >/dev/null 2>&1 || true; done <"${WORK}/runc-ids"
  fi
  rm -rf "${WORK}"
}
trap cleanup EXIT
# runc (apt-get install runc) when it is installed, else chroot; RUNNER=runc|chroot overrides (use
# RUNNER=chroot where runc cannot create containers).
if [[ -z "${RUNNER:-}" ]]; then
  RUNNER=chroot
  command -v runc >/dev/null 2>&1 && runc --version >/dev/null 2>&1 && RUNNER=runc
fi

# in_image ROOTFS [--file SRC]... [--env NAME=VALUE]... [--timeout SECONDS] -- ARGS...:
# runs ARGS (a command name resolved on the image's PATH, or an absolute path in the image) from
# ROOTFS as a pod would: as 65532:65532, root filesystem read-only, no capabilities, an
# environment of PATH=/usr/local/bin, HOME plus the --env's, and a fresh, empty host directory on
# /tmp (an emptyDir) holding copies of the --file's; killed after SECONDS (default 120). Prints
# stdout; stderr goes to ${WORK}/stderr. The host network is shared (to reach ports from here).
#   RUNNER=runc:   an OCI runtime container (own pid, ipc, uts and mount namespaces; /proc, /dev,
#                  /sys as runc mounts them; no_new_privs; all capabilities dropped)
#   RUNNER=chroot: a private mount namespace with ROOTFS bind-mounted read-only, then
#                  `chroot --userspec=65532:65532` (no /proc, /dev or /sys at all)
in_image() {
  local rootfs=$1 files=() envs=(PATH=/usr/local/bin HOME=/home/nonroot) limit=120 tmp
  shift
  while [[ $1 != -- ]]; do
    case $1 in
      --file) files+=("$2") ;;
      --env) envs+=("$2") ;;
      --timeout) limit=$2 ;;
    esac
    shift 2
  done
  shift
  tmp=$(mktemp -d "${WORK}/emptydir.XXXXXX")
  chmod 1777 "${tmp}"
  if [[ ${#files[@]} -gt 0 ]]; then
    cp "${files[@]}" "${tmp}/"
    chmod 0644 "${tmp}"/*
  fi
  if [[ ${RUNNER} == runc ]]; then
    local bundle="${tmp}.bundle" id
    id="image-check-$$-${RANDOM}"
    echo "${id}" >>"${WORK}/runc-ids"
    mkdir -p "${bundle}"
    python3 - "${bundle}/config.json" "${rootfs}" "${tmp}" "$@" -- "${envs[@]}" <<'PY'
import json, subprocess, sys
out, rootfs, tmp, rest = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
split = rest.index("--")
args, env = rest[:split], rest[split + 1:]
bundle = out.rsplit("/", 1)[0]
subprocess.run(["runc", "spec", "--bundle", bundle], check=True)
spec = json.load(open(out))
process = spec["process"]
process.update(terminal=False, args=args, env=env, cwd="/", user={"uid": 65532, "gid": 65532},
               noNewPrivileges=True)
process["capabilities"] = {k: [] for k in ("bounding", "effective", "permitted", "ambient")}
spec["root"] = {"path": rootfs, "readonly": True}
spec["mounts"].append({"destination": "/tmp", "type": "bind", "source": tmp,
                       "options": ["rbind", "rw", "nosuid", "nodev"]})
spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"]
spec["hostname"] = "image-check"
json.dump(spec, open(out, "w"))
PY
    local code=0
    timeout "${limit}" runc run --bundle "${bundle}" "${id}" 2>"${WORK}/stderr" || code=$?
    runc delete --force "${id}" >/dev/null 2>&1 || true
    return "${code}"
  fi
  # shellcheck disable=SC2016 # expanded by the inner shell
  unshare --mount --propagation private -- /bin/sh -euc '
    rootfs=$1 tmp=$2; shift 2
    mount --bind "$rootfs" "$rootfs"
    mount -o remount,bind,ro "$rootfs"
    mount --bind "$tmp" "$rootfs/tmp"
    exec env -i "$@"
  ' in_image "${rootfs}" "${tmp}" "${envs[@]}" \
    "$(command -v timeout)" "${limit}" "$(command -v chroot)" --userspec=65532:65532 "${rootfs}" "$@" 2>"${WORK}/stderr"
}

# same DESCRIPTION IMAGE_OUTPUT HOST_OUTPUT: PASS if both are equal and not empty.
same() {
  if [[ -s $2 ]] && cmp -s "$2" "$3"; then
    pass "$1 ($(wc -l <"$2") lines)"
  else
    fail "$1" "$(wc -c <"$2") vs $(wc -c <"$3") bytes" "$(tail -n 5 "${WORK}/stderr")"
  fi
}

check_operator() {
  local rootfs=$1 host=$2 out
  out=$(in_image "${rootfs}" -- scaledapp-operator --version) || true
  if [[ ${out} == "scaledapp-operator ${VERSION}" ]]; then
    pass "runs from the read-only rootfs as 65532 (PATH lookup): --version = ${out}"
  else
    fail "scaledapp-operator --version from the rootfs" "got '${out}'" "$(tail -n 5 "${WORK}/stderr")"
  fi
  in_image "${rootfs}" -- /usr/local/bin/scaledapp-operator crd >"${WORK}/crd.image" || true
  "${host}" crd >"${WORK}/crd.host"
  same "crd from the rootfs is byte-identical to the same binary run natively" "${WORK}/crd.image" "${WORK}/crd.host"
  in_image "${rootfs}" --file examples/shop.yaml -- scaledapp-operator render -f /tmp/shop.yaml -n shop \
    >"${WORK}/render.image" || true
  "${host}" render -f examples/shop.yaml -n shop >"${WORK}/render.host"
  same "render -f shop.yaml from the rootfs (input on /tmp) matches the same binary run natively" \
    "${WORK}/render.image" "${WORK}/render.host"
  check_run "${rootfs}"
  # The instance manager every Postgres pod copies from this image, as its init container runs it
  # (no shell: the binary copies itself into the emptyDir mounted at /tmp here).
  out=$(in_image "${rootfs}" -- scaled-instance --version) || true
  if [[ ${out} == "scaled-instance ${VERSION}" ]]; then
    pass "scaled-instance runs from the rootfs as 65532 (static): --version = ${out}"
  else
    fail "scaled-instance --version from the rootfs" "got '${out}'" "$(tail -n 5 "${WORK}/stderr")"
  fi
  # The chart's exact args (leader election on): with no API server it must stop on the connection,
  # not on anything the image lacks.
  local code=0
  in_image "${rootfs}" --file "${WORK}/kubeconfig" --env KUBECONFIG=/tmp/kubeconfig --env POD_NAMESPACE=default \
    --timeout 30 -- scaledapp-operator run --log-format json >/dev/null || code=$?
  if [[ ${code} == 1 ]] && grep -q 'client error (Connect)' "${WORK}/stderr"; then
    pass "run --log-format json (the chart's args) stops only on the unreachable API server"
  else
    fail "run --log-format json (the chart's args)" "exit ${code}" "$(tail -n 3 "${WORK}/stderr")"
  fi
}

# descendants PID: PID and all its descendants (the background in_image runs the operator a few
# processes down: subshell, unshare, the chroot'd binary).
descendants() {
  local child
  for child in $(ps -o pid= --ppid "$1"); do descendants "${child}"; done
  echo "$1"
}

# stop_tree PID WHAT: stops a background in_image as a container runtime would: SIGTERM, then
# SIGKILL after 10 s (with a WARN: the binary ignored the signal).
stop_tree() {
  local tree p alive
  tree=$(descendants "$1")
  # shellcheck disable=SC2086 # a list of pids
  kill -TERM ${tree} 2>/dev/null || true
  for _ in $(seq 1 50); do
    alive=0
    for p in ${tree}; do kill -0 "${p}" 2>/dev/null && alive=1; done
    [[ ${alive} == 1 ]] || break
    sleep 0.2
  done
  for p in ${tree}; do
    if kill -0 "${p}" 2>/dev/null; then
      printf '  WARN  %s did not exit within 10 s of SIGTERM; killed\n' "$2"
      # shellcheck disable=SC2086 # a list of pids
      kill -KILL ${tree} 2>/dev/null || true
      break
    fi
  done
  wait "$1" 2>/dev/null || true
}

# `run` from the rootfs against an API server that refuses connections (there is no cluster here):
# it loads the kubeconfig and builds its rustls client; without leader election the controller
# keeps retrying while the probe server answers, and nothing may fail on the read-only root.
check_run() {
  local rootfs=$1 port pid ok=0
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  cat >"${WORK}/kubeconfig" <<'KUBECONFIG'
apiVersion: v1
kind: Config
clusters:
- name: nowhere
  cluster: {server: "https://127.0.0.1:1"}
users:
- name: nobody
  user: {token: "not-a-token"}
contexts:
- name: nowhere
  context: {cluster: nowhere, user: nobody}
current-context: nowhere
KUBECONFIG
  in_image "${rootfs}" --file "${WORK}/kubeconfig" --env KUBECONFIG=/tmp/kubeconfig --env POD_NAMESPACE=default \
    --timeout 60 -- scaledapp-operator run --no-leader-election --log-format json --probe-address "127.0.0.1:${port}" \
    >"${WORK}/run.log" &
  pid=$!
  for _ in $(seq 1 50); do
    if python3 - "${port}" <<'PY' 2>/dev/null; then ok=1; break; fi
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/healthz", timeout=1).read()
PY
    kill -0 "${pid}" 2>/dev/null || break
    sleep 0.2
  done
  if [[ ${ok} == 1 ]] && kill -0 "${pid}" 2>/dev/null; then
    pass "run --no-leader-election (read-only rootfs, uid 65532, API server unreachable): serves /healthz, keeps retrying"
  else
    fail "run from the rootfs: /healthz on 127.0.0.1:${port}" "$(tail -n 5 "${WORK}/run.log" "${WORK}/stderr")"
  fi
  stop_tree "${pid}" "run (API server unreachable)"
  if grep -qi 'read-only file system' "${WORK}/run.log" "${WORK}/stderr"; then
    fail "run tried to write to the root filesystem" "$(grep -hi 'read-only' "${WORK}/run.log" "${WORK}/stderr" | head -n 3)"
  fi
}

check_app() {
  local rootfs=$1 help
  help=$(in_image "${rootfs}" -- scaled-app --help) || true
  local missing=()
  for mode in serve worker migrate; do grep -qE "^  ${mode}( |$)" <<<"${help}" || missing+=("${mode}"); done
  if [[ ${#missing[@]} -eq 0 ]]; then
    pass "runs from the read-only rootfs as 65532 (PATH lookup): modes serve, worker, migrate"
  else
    fail "scaled-app --help from the rootfs lists serve, worker, migrate" "missing: ${missing[*]}" \
      "$(tail -n 5 "${WORK}/stderr")"
  fi
  local config
  config=$(in_image "${rootfs}" -- scaled-app local-config --shard 127.0.0.1:5432 --redis redis://127.0.0.1:6379) || true
  if python3 -c 'import json, sys; json.loads(sys.argv[1])' "${config}" 2>/dev/null; then
    pass "local-config from the rootfs prints a JSON config"
  else
    fail "scaled-app local-config from the rootfs" "$(tail -n 5 "${WORK}/stderr")"
  fi
  # Without a config file `serve` must stop with the app's own error, not a loader failure (127).
  local code=0
  in_image "${rootfs}" -- scaled-app serve >/dev/null || code=$?
  if [[ ${code} == 1 ]] && grep -q '^error:' "${WORK}/stderr"; then
    pass "serve without a config exits 1 with its own error: $(head -c 120 "${WORK}/stderr")"
  else
    fail "serve without a config: expected exit 1 and 'error: ...'" "exit ${code}" "$(tail -n 3 "${WORK}/stderr")"
  fi
}

# free_ports N: N free loopback ports on one line; free_port_run N: the first of N consecutive
# free ones.
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
PY
}
free_port_run() {
  python3 - "$1" <<'PY'
import random, socket, sys
n = int(sys.argv[1])
for _ in range(200):
    base = random.randrange(20000, 60000 - n)
    socks = []
    try:
        for port in range(base, base + n):
            s = socket.socket(); socks.append(s); s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        for s in socks: s.close()
    print(base); break
else:
    sys.exit("no run of free ports")
PY
}

# ensure_stack: the `make stack` components if they run, else a throwaway stack of our own
# (stopped by cleanup). Fails (never skips) when neither is there.
ensure_stack() {
  if [[ -f "${ROOT}/.stack/config.json" && -f "${ROOT}/.stack/session-secret" ]]; then
    echo "  ----  using the running 'make stack' components"
    return 0
  fi
  if [[ -e "${ROOT}/.stack" ]]; then
    fail "start a throwaway stack" ".stack exists but holds no config: stop it with 'scripts/stack.sh down'"
    return 1
  fi
  local ports pg_base
  read -r -a ports < <(free_ports 4)
  pg_base=$(free_port_run 4)
  echo "  ----  starting a throwaway stack (scripts/stack.sh up; Postgres from :${pg_base}, Redis :${ports[0]})"
  OWN_STACK=1
  if ! REDIS_PORT=${ports[0]} HTTP_PORT=${ports[1]} METRICS_PORT=${ports[2]} WORKER_METRICS_PORT=${ports[3]} \
    PG_PORT_BASE=${pg_base} "${ROOT}/scripts/stack.sh" up >"${WORK}/stack.log" 2>&1; then
    fail "start a throwaway stack with scripts/stack.sh up" "$(tail -n 10 "${WORK}/stack.log")"
    return 1
  fi
}

# The app image against real Postgres shards and Redis (see ensure_stack): migrate, then serve on
# other ports, sign up, read the public and (signed in) the private representation, then a worker.
check_app_stack() {
  local rootfs=$1 http metrics worker_metrics secret
  ensure_stack || return 0
  read -r http metrics worker_metrics < <(free_ports 3)
  python3 - "${ROOT}/.stack/config.json" "${http}" "${metrics}" "${WORK}/config.json" "${worker_metrics}" \
    "${WORK}/worker-config.json" <<'PY'
import json, sys
config = json.load(open(sys.argv[1]))
config["httpPort"], config["metricsPort"] = int(sys.argv[2]), int(sys.argv[3])
json.dump(config, open(sys.argv[4], "w"))
config["metricsPort"] = int(sys.argv[5])
json.dump(config, open(sys.argv[6], "w"))
PY
  secret=$(cat "${ROOT}/.stack/session-secret")
  local env=(--env SCALED_SESSION_SECRET="${secret}" --env SCALED_POD_NAME=image-check)
  # The stack's instances use SCRAM passwords; scripts/stack.sh keeps the app role's in
  # .stack/app-password.
  if [[ -f "${ROOT}/.stack/app-password" ]]; then
    env+=(--env SCALED_DATABASE_PASSWORD="$(cat "${ROOT}/.stack/app-password")")
  fi
  if in_image "${rootfs}" --file "${WORK}/config.json" --env SCALED_CONFIG=/tmp/config.json "${env[@]}" \
    -- scaled-app migrate >/dev/null; then
    pass "migrate from the image against real Postgres shards"
  else
    fail "migrate from the image against real Postgres shards" "$(tail -n 3 "${WORK}/stderr")"
  fi
  in_image "${rootfs}" --file "${WORK}/config.json" --env SCALED_CONFIG=/tmp/config.json "${env[@]}" \
    --timeout 120 -- scaled-app serve >/dev/null &
  local serve=$! ok=0
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:${http}/ready" >/dev/null 2>&1 && { ok=1; break; }
    sleep 0.2
  done
  local email id="" credentials base="http://127.0.0.1:${http}"
  email="image-check-$(date +%s%N)@example.com"
  credentials="\"email\": \"${email}\", \"password\": \"image check password\""
  if [[ ${ok} == 1 ]]; then
    id=$(curl -fsS -H 'content-type: application/json' --data "{\"name\": \"Image Check\", ${credentials}}" \
      "${base}/api/users" | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])') || id=""
  fi
  # The public representation has the name and no email; signed in, /api/me has the email.
  if [[ -n ${id} ]] && curl -fsS "${base}/api/users/${id}" >"${WORK}/public.json" \
    && grep -q '"Image Check"' "${WORK}/public.json" && ! grep -q "${email}" "${WORK}/public.json" \
    && curl -fsS -c "${WORK}/cookies" -H 'content-type: application/json' --data "{${credentials}}" \
      "${base}/api/sessions" >/dev/null \
    && curl -fsS -b "${WORK}/cookies" "${base}/api/me" | grep -q "${email}" \
    && curl -fsS "http://127.0.0.1:${metrics}/metrics" | grep -q '^http_requests_total'; then
    pass "serve from the image (read-only root, 65532): /ready, sign-up, public GET /api/users/${id}, sign-in, /api/me, /metrics"
  else
    fail "serve from the image against real Postgres and Redis (port ${http})" "$(tail -n 5 "${WORK}/stderr")"
  fi
  stop_tree "${serve}" "serve"
  in_image "${rootfs}" --file "${WORK}/worker-config.json" --env SCALED_CONFIG=/tmp/worker-config.json "${env[@]}" \
    --timeout 120 -- scaled-app worker --concurrency 1 >/dev/null &
  local worker=$!
  ok=0
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:${worker_metrics}/metrics" 2>/dev/null | grep -q '^queue_' && { ok=1; break; }
    sleep 0.2
  done
  if [[ ${ok} == 1 ]] && kill -0 "${worker}" 2>/dev/null; then
    pass "worker from the image consumes from the stack's Redis and serves /metrics"
  else
    fail "worker from the image against real Postgres and Redis" "$(tail -n 5 "${WORK}/stderr")"
  fi
  stop_tree "${worker}" "worker"
}

# The Dockerfiles (the route where Docker exists, not run here) must copy every workspace member,
# or cargo cannot load the workspace; the operator's must also build and install the instance
# manager, which every Postgres pod copies from it.
echo "== Dockerfiles"
members=$(python3 -c 'import tomllib; print(" ".join(tomllib.load(open("Cargo.toml", "rb"))["workspace"]["members"]))')
for dockerfile in images/operator.Dockerfile images/app.Dockerfile; do
  missing=()
  for member in ${members}; do
    grep -Eq "^COPY ${member} ${member}$" "${dockerfile}" || missing+=("${member}")
  done
  if [[ ${#missing[@]} -eq 0 ]]; then
    pass "${dockerfile} copies every workspace member (${members})"
  else
    fail "${dockerfile} copies every workspace member" "missing: ${missing[*]}"
  fi
done
if grep -q -- "-p scaled-instance" images/operator.Dockerfile &&
  grep -q "/rootfs/usr/local/bin/scaled-instance" images/operator.Dockerfile; then
  pass "images/operator.Dockerfile builds and installs scaled-instance"
else
  fail "images/operator.Dockerfile builds and installs scaled-instance"
fi

sizes=()
for image in "${images[@]}"; do
  name=${PACKAGE[${image}]:-}
  [[ -n "${name}" ]] || { echo "unknown image '${image}' (operator, app)" >&2; exit 2; }
  layout="${OUT}/${name}"
  echo "== ${name} (${layout#"${ROOT}"/})"
  if [[ ! -f "${layout}/index.json" ]]; then
    fail "layout exists" "run scripts/build-images.sh ${image} first"
    continue
  fi
  args=(--layout "${layout}" --name "${name}" --ref "${REGISTRY}/${name}:${VERSION}" --version "${VERSION}"
    --cmd "${CMD[${image}]}")
  for port in ${PORTS[${image}]}; do args+=(--port "${port}"); done
  python3 -B images/ocilayout.py check "${args[@]}" || failed=$((failed + 1))

  rootfs="${WORK}/${name}-rootfs"
  python3 -B images/ocilayout.py unpack --layout "${layout}" --into "${rootfs}"
  if [[ $(id -u) -ne 0 ]]; then
    fail "run the binary from the rootfs" "needs root (runc or chroot): run this script as root"
  elif [[ ${RUNNER} == chroot ]] && ! unshare --mount --propagation private true 2>/dev/null; then
    fail "run the binary from the rootfs" "unshare --mount is not permitted here"
  else
    echo "  ----  running from the rootfs with ${RUNNER}"
    # The same binary run natively on this machine: what the image's runs are compared with.
    host="${WORK}/${name}.native"
    cp "${rootfs}/usr/local/bin/${name}" "${host}"
    cmp -s "${host}" "${TARGET_DIR}/release/${name}" \
      || printf '  WARN  target/release/%s changed since this image was built: rerun scripts/build-images.sh\n' "${name}"
    case ${image} in
      operator) check_operator "${rootfs}" "${host}" ;;
      app)
        check_app "${rootfs}"
        check_app_stack "${rootfs}"
        ;;
    esac
  fi
  layer=$(python3 -c 'import json, sys
layout = sys.argv[1]
index = json.load(open(layout + "/index.json"))
digest = index["manifests"][0]["digest"].split(":")[1]
manifest = json.load(open(layout + "/blobs/sha256/" + digest))
print(sum(layer["size"] for layer in manifest["layers"]))' "${layout}")
  sizes+=("$(awk -v n="${name}" -v l="${layer}" -v u="$(du -sb "${rootfs}" | cut -f1)" \
    -v b="$(stat -c %s "${rootfs}/usr/local/bin/${name}")" \
    'BEGIN { printf "%-20s compressed %5.1f MiB   unpacked %5.1f MiB   (binary %5.1f MiB)", n, l / 1048576, u / 1048576, b / 1048576 }')")
done

echo "== sizes"
printf '  %s\n' "${sizes[@]}"
if [[ ${failed} -gt 0 ]]; then
  echo "images: ${failed} check(s) FAILED"
  exit 1
fi
echo "images: all checks passed"
