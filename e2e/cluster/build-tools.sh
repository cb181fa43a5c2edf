#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Builds the e2e cluster tools from Go modules (no prebuilt downloads):
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (k8s.io/kubernetes)
#   etcd, etcdctl, etcdutl (go.etcd.io/etcd/{server,etcdctl,etcdutl}/v3)
#   kwok, kwokctl (sigs.k8s.io/kwok)
#   helm (helm.sh/helm/v3)
# and, unless SCALEDAPP_REAL_NODE=0, the real node's components:
#   kubelet, kube-proxy (k8s.io/kubernetes), coredns (github.com/coredns/coredns, a few plugins),
#   local-path-provisioner (github.com/rancher/local-path-provisioner),
#   kube-router (github.com/cloudnativelabs/kube-router/v2, its NetworkPolicy controller)
# into ${SCALEDAPP_CACHE:-$HOME/.cache/scaledapp-e2e}/<component>-<version>/.
# A component is rebuilt only when its pinned version (versions.env) changes.
# Prints one line per component it builds; the Go output goes to
# <cache>/logs/<component>-<version>.log, whose tail and path are printed on failure.
#
# Usage: build-tools.sh [--force]   (--force rebuilds every component)
set -euo pipefail

# shellcheck source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

FORCE=0
for arg in "$@"; do
  case "${arg}" in
    --force) FORCE=1 ;;
    -h | --help)
      sed -n '3,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *) die "unknown argument: ${arg}" ;;
  esac
done

GO_BIN=$(find_go) || die "go not found (set GO=/path/to/go or put go on PATH)"
[[ -x "${GO_BIN}" ]] || die "go binary ${GO_BIN} is not executable"

# Keep every Go artefact (module cache, build cache) under the cache dir so it
# survives between runs and never touches the user's own GOPATH.
export GOPATH="${CACHE_DIR}/go"
export GOMODCACHE="${CACHE_DIR}/go/pkg/mod"
export GOCACHE="${CACHE_DIR}/go/build-cache"
# -modcacherw: module cache stays deletable with plain rm -rf.
export GOFLAGS="-mod=mod -modcacherw"
export GOWORK=off
export CGO_ENABLED=0
export GO111MODULE=on

mkdir -p "${CACHE_DIR}" "${GOMODCACHE}" "${GOCACHE}" "${CACHE_DIR}/tmp" "${BUILD_LOG_DIR}"

# One build at a time per cache dir.
if command -v flock >/dev/null 2>&1; then
  exec 9>"${CACHE_DIR}/.build.lock"
  if ! flock -n 9; then
    log "another build-tools.sh holds ${CACHE_DIR}/.build.lock, waiting ..."
    flock 9
  fi
fi

WORK_DIRS=()
cleanup() {
  local d
  for d in "${WORK_DIRS[@]+"${WORK_DIRS[@]}"}"; do
    rm -rf "${d}"
  done
}
trap cleanup EXIT

go_() { "${GO_BIN}" "$@"; }

SECONDS_START=${SECONDS}
elapsed() { printf '%ds' "$((SECONDS - SECONDS_START))"; }

is_built() {
  [[ "${FORCE}" -eq 0 && -f "$1/${BUILD_MARKER}" ]]
}

# new_wrapper NAME: sets WRAPPER to a fresh temp dir holding an empty wrapper
# module (removed on exit). Not called in $(...): WORK_DIRS must be updated
# in this shell.
new_wrapper() {
  WRAPPER=$(mktemp -d "${CACHE_DIR}/tmp/wrap-$1-XXXXXX")
  WORK_DIRS+=("${WRAPPER}")
  (cd "${WRAPPER}" && go_ mod init "scaledapp.local/e2e-tools/$1" >/dev/null 2>&1)
}

# module_file MODULE VERSION EXT -> path of the module's .mod/.info file in the
# module cache (downloads it if needed).
module_file() {
  local mod=$1 ver=$2 ext=$3 file
  go_ mod download "${mod}@${ver}" >/dev/null
  # Module cache escapes upper-case letters as '!' + lower-case.
  file="${GOMODCACHE}/cache/download/$(printf '%s' "${mod}" | sed -e 's/[A-Z]/!\L&/g')/@v/${ver}.${ext}"
  [[ -f "${file}" ]] || die "expected ${file} after go mod download ${mod}@${ver}"
  printf '%s\n' "${file}"
}

# copy_directives GOMOD WRAPPER_DIR: copy the godebug settings and every
# replace directive that points at another module version (not at a local
# path, those only make sense inside the upstream repository).
copy_directives() {
  local gomod=$1 wrapper=$2 kv rep
  while IFS= read -r kv; do
    [[ -n "${kv}" ]] || continue
    log "  godebug ${kv}"
    (cd "${wrapper}" && go_ mod edit "-godebug=${kv}")
  done < <(awk '
    /^godebug[ \t]*\(/ { b = 1; next }
    b && /^\)/ { b = 0; next }
    b && NF { sub(/\/\/.*/, ""); if (NF) print $1; next }
    /^godebug[ \t]+[^(]/ { print $2 }
  ' "${gomod}")
  while IFS= read -r rep; do
    [[ -n "${rep}" ]] || continue
    log "  replace ${rep}"
    (cd "${wrapper}" && go_ mod edit "-replace=${rep}")
  done < <(awk '
    function emit(s,   n, a, lhs, rhs) {
      sub(/\/\/.*/, "", s)
      n = split(s, a, /[ \t]*=>[ \t]*/)
      if (n != 2) return
      lhs = a[1]; rhs = a[2]
      gsub(/^[ \t]+|[ \t]+$/, "", lhs); gsub(/^[ \t]+|[ \t]+$/, "", rhs)
      # local path targets: ./x ../x /x
      if (rhs ~ /^(\.|\/)/) return
      split(lhs, l, /[ \t]+/); split(rhs, r, /[ \t]+/)
      if (r[2] == "") return
      printf "%s%s=%s@%s\n", l[1], (l[2] != "" ? "@" l[2] : ""), r[1], r[2]
    }
    /^replace[ \t]*\(/ { b = 1; next }
    b && /^\)/ { b = 0; next }
    b { emit($0); next }
    /^replace[ \t]+[^(]/ { sub(/^replace[ \t]+/, ""); emit($0) }
  ' "${gomod}")
}

# install_bins SRC_DIR DEST_DIR: atomically publish a finished build.
publish() {
  local src=$1 dest=$2 version=$3
  printf 'version=%s\nbuilt=%s\ngo=%s\n' "${version}" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    "$(go_ env GOVERSION)" >"${src}/${BUILD_MARKER}"
  rm -rf "${dest}"
  mv "${src}" "${dest}"
}

# build_component NAME VERSION DEST WRAPPER MODULES BINARY=PACKAGE...: the one build every
# component goes through. A wrapper module named WRAPPER requires each of MODULES (space-separated)
# at VERSION, with the godebug and replace directives of their go.mod files. WRAPPER's hooks (below)
# do what differs: prepare_<wrapper> VERSION GOMOD... (optional; before the download, with the
# modules' go.mod files) and configure_<wrapper> VERSION (after it; sets LDFLAGS). Each BINARY is
# built from PACKAGE ("." is the wrapper's own main package) into DEST.partial, published as DEST.
build_component() {
  local name=$1 ver=$2 dest=$3 wrapper=$4 modules m gomod gomods=() spec whose=its
  read -ra modules <<<"$5"
  shift 5
  local hook=${wrapper//-/_}
  log "${name} ${ver}: preparing wrapper module"
  new_wrapper "${wrapper}"
  for m in "${modules[@]}"; do
    gomod=$(cd "${WRAPPER}" && module_file "${m}" "${ver}" mod)
    copy_directives "${gomod}" "${WRAPPER}"
    gomods+=("${gomod}")
  done
  if declare -F "prepare_${hook}" >/dev/null; then "prepare_${hook}" "${ver}" "${gomods[@]}"; fi
  [[ ${#modules[@]} -eq 1 ]] || whose=their
  log "${name} ${ver}: downloading ${modules[*]} and ${whose} dependencies ($(elapsed))"
  (cd "${WRAPPER}" && go_ get "${modules[@]/%/@${ver}}")
  LDFLAGS=
  "configure_${hook}" "${ver}"
  local out="${dest}.partial"
  rm -rf "${out}"
  mkdir -p "${out}"
  for spec in "$@"; do
    log "building ${spec%%=*} ${ver} ... ($(elapsed) so far)"
    (cd "${WRAPPER}" && go_ build -trimpath -ldflags "${LDFLAGS}" -o "${out}/${spec%%=*}" "${spec#*=}")
  done
  publish "${out}" "${dest}" "${ver}"
}

# k8s.io/kubernetes requires its staging repositories at v0.0.0 and replaces them with
# ./staging/...; point them at the published versions.
prepare_kubernetes() {
  local ver=$1 gomod=$2 m staged=0
  local staging="v0.${ver#v1.}"
  while IFS= read -r m; do
    (cd "${WRAPPER}" && go_ mod edit "-replace=${m}=${m}@${staging}")
    staged=$((staged + 1))
  done < <(awk '
    /^require[ \t]*\(/ { b = 1; next }
    b && /^\)/ { b = 0; next }
    b && $1 ~ /^k8s\.io\// && $2 == "v0.0.0" { print $1; next }
    /^require[ \t]+k8s\.io\// && $3 == "v0.0.0" { print $2 }
  ' "${gomod}")
  [[ "${staged}" -gt 0 ]] || die "found no k8s.io/* v0.0.0 requirements in ${gomod}"
  log "  replaced ${staged} staging modules with ${staging}"
}

# The version stamp of k8s.io/kubernetes' own builds (build date: the module's release time).
configure_kubernetes() {
  local ver=$1 minor info build_date pkg
  minor=${ver#v1.}
  minor=${minor%%.*}
  info=$(cd "${WRAPPER}" && module_file k8s.io/kubernetes "${ver}" info)
  build_date=$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "${info}")
  [[ -n "${build_date}" ]] || build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  LDFLAGS="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    LDFLAGS+=" -X ${pkg}.gitVersion=${ver}"
    LDFLAGS+=" -X ${pkg}.gitMajor=1"
    LDFLAGS+=" -X ${pkg}.gitMinor=${minor}"
    LDFLAGS+=" -X ${pkg}.gitTreeState=clean"
    LDFLAGS+=" -X ${pkg}.gitCommit="
    LDFLAGS+=" -X ${pkg}.buildDate=${build_date}"
  done
}

configure_etcd() { LDFLAGS="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$1"; }

configure_kwok() {
  # consts.KubeVersion is kwokctl's default --kube-version: make it the
  # Kubernetes version built above so generated flags match the binaries.
  LDFLAGS="-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$1"
  LDFLAGS+=" -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${KUBE_VERSION}"
  # Blank every built-in binary download URL prefix (releases of kwok,
  # kubernetes, etcd, prometheus, ...): a binary path left unset then fails
  # locally instead of being fetched from the internet.
  local kwok_src var
  kwok_src=$(cd "${WRAPPER}" && go_ list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
  while IFS= read -r var; do
    LDFLAGS+=" -X sigs.k8s.io/kwok/pkg/consts.${var}="
  done < <(sed -n -E 's/^[[:space:]]*([A-Za-z]*Binary[A-Za-z]*Prefix)[[:space:]]*=[[:space:]]*"https?:.*/\1/p' \
    "${kwok_src}"/pkg/consts/*.go)
}

configure_helm() {
  # Same as helm's Makefile: the Kubernetes version helm assumes by default
  # (chartutil / lint) derives from the client-go it is built with.
  local cgo k8s_major k8s_minor
  cgo=$(cd "${WRAPPER}" && go_ list -m -f '{{.Version}}' k8s.io/client-go)
  cgo=${cgo#v}
  k8s_major=$((${cgo%%.*} + 1))
  k8s_minor=${cgo#*.}
  k8s_minor=${k8s_minor%%.*}
  LDFLAGS="-s -w"
  LDFLAGS+=" -X helm.sh/helm/v3/internal/version.version=$1"
  LDFLAGS+=" -X helm.sh/helm/v3/internal/version.metadata="
  LDFLAGS+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  LDFLAGS+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=${k8s_major}"
  LDFLAGS+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=${k8s_minor}"
  LDFLAGS+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=${k8s_major}"
  LDFLAGS+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=${k8s_minor}"
}

# CoreDNS with only the plugins this cluster needs. Upstream selects plugins with plugin.cfg and
# generated files; the documented alternative used here is a main package of our own that sets
# dnsserver.Directives (in plugin.cfg's order) and imports just those plugins. No `forward`:
# names outside the cluster's zones are refused, nothing is resolved off the machine.
COREDNS_PLUGINS=(bind ready health errors log loadbalance cache kubernetes)
prepare_coredns() {
  local plugin
  log "  plugins: ${COREDNS_PLUGINS[*]}"
  {
    printf '// Generated by e2e/cluster/build-tools.sh: CoreDNS with a fixed plugin set.\n'
    printf 'package main\n\nimport (\n'
    printf '\t"github.com/coredns/coredns/core/dnsserver"\n'
    printf '\t"github.com/coredns/coredns/coremain"\n'
    for plugin in "${COREDNS_PLUGINS[@]}"; do
      printf '\t_ "github.com/coredns/coredns/plugin/%s"\n' "${plugin}"
    done
    printf ')\n\nfunc init() {\n\tdnsserver.Directives = []string{'
    for plugin in "${COREDNS_PLUGINS[@]}"; do
      printf '"%s", ' "${plugin}"
    done
    printf '}\n}\n\nfunc main() { coremain.Run() }\n'
  } >"${WRAPPER}/main.go"
}

configure_coredns() {
  (cd "${WRAPPER}" && go_ mod tidy)
  LDFLAGS="-s -w -X github.com/coredns/coredns/coremain.GitCommit=$1"
}

configure_local_path_provisioner() { LDFLAGS="-s -w -X main.VERSION=$1"; }

configure_kube_router() {
  local mod=github.com/cloudnativelabs/kube-router/v2
  LDFLAGS="-s -w -X ${mod}/pkg/version.Version=$1 -X ${mod}/pkg/version.BuildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
}

# run_build NAME VERSION DEST WRAPPER MODULES BINARY=PACKAGE...: build_component, unless DEST
# holds a finished build. One line on the terminal ("NAME VERSION: building ... done in N s");
# everything the build prints goes to BUILD_LOG_DIR/NAME-VERSION.log.
BUILT=0
CACHED=0
run_build() {
  local name=$1 ver=$2 dest=$3 logfile started
  if is_built "${dest}"; then
    CACHED=$((CACHED + 1))
    return
  fi
  logfile="${BUILD_LOG_DIR}/${name}-${ver}.log"
  started=${SECONDS}
  printf '[e2e-cluster %s] %s %s: building from Go modules (log: %s) ...' \
    "$(date +%H:%M:%S)" "${name}" "${ver}" "${logfile}" >&2
  # A subshell of its own: the wrapper directories it creates are removed when it ends. Not in an
  # `if`: bash ignores `set -e` inside a condition, and every failing step must stop the build.
  local status
  set +e
  (
    set -e
    trap cleanup EXIT
    build_component "$@"
  ) >"${logfile}" 2>&1
  status=$?
  set -e
  if [[ ${status} -ne 0 ]]; then
    printf ' FAILED after %ss\n' "$((SECONDS - started))" >&2
    log "last lines of ${logfile}:"
    tail -n 30 "${logfile}" | sed 's/^/    /' >&2
    die "${name} ${ver} did not build; full log: ${logfile}"
  fi
  printf ' done in %ss\n' "$((SECONDS - started))" >&2
  BUILT=$((BUILT + 1))
}

# The components: NAME VERSION DEST WRAPPER MODULES BINARY=PACKAGE... (see build_component).
K8S_CMD=k8s.io/kubernetes/cmd
ETCD=go.etcd.io/etcd
KUBE_ROUTER_MODULE=github.com/cloudnativelabs/kube-router/v2
run_build kubernetes "${KUBE_VERSION}" "${KUBE_DIR}" kubernetes k8s.io/kubernetes \
  kube-apiserver="${K8S_CMD}/kube-apiserver" kube-controller-manager="${K8S_CMD}/kube-controller-manager" \
  kube-scheduler="${K8S_CMD}/kube-scheduler" kubectl="${K8S_CMD}/kubectl"
# etcd: the server; etcdctl/etcdutl: used by `kwokctl etcdctl` and snapshots.
run_build etcd "${ETCD_VERSION}" "${ETCD_DIR}" etcd "${ETCD}/server/v3 ${ETCD}/etcdctl/v3 ${ETCD}/etcdutl/v3" \
  etcd="${ETCD}/server/v3" etcdctl="${ETCD}/etcdctl/v3" etcdutl="${ETCD}/etcdutl/v3"
run_build kwok "${KWOK_VERSION}" "${KWOK_DIR}" kwok sigs.k8s.io/kwok \
  kwok=sigs.k8s.io/kwok/cmd/kwok kwokctl=sigs.k8s.io/kwok/cmd/kwokctl
run_build helm "${HELM_VERSION}" "${HELM_DIR}" helm helm.sh/helm/v3 helm=helm.sh/helm/v3/cmd/helm
if [[ "${REAL_NODE}" != 0 ]]; then
  # The real node's kubelet and kube-proxy: same module, same version stamp (the kubernetes
  # wrapper), own cache directory so that adding them never rebuilds the control plane.
  run_build kubernetes-node "${KUBE_VERSION}" "${KUBE_NODE_DIR}" kubernetes k8s.io/kubernetes \
    kubelet="${K8S_CMD}/kubelet" kube-proxy="${K8S_CMD}/kube-proxy"
  run_build coredns "${COREDNS_VERSION}" "${COREDNS_DIR}" coredns github.com/coredns/coredns coredns=.
  run_build local-path-provisioner "${LOCAL_PATH_PROVISIONER_VERSION}" "${LOCAL_PATH_DIR}" local-path-provisioner \
    github.com/rancher/local-path-provisioner local-path-provisioner=github.com/rancher/local-path-provisioner
  run_build kube-router "${KUBE_ROUTER_VERSION}" "${KUBE_ROUTER_DIR}" kube-router "${KUBE_ROUTER_MODULE}" \
    kube-router="${KUBE_ROUTER_MODULE}/cmd/kube-router"
fi
if [[ "${BUILT}" -gt 0 ]]; then
  log "tools: built ${BUILT}, cached ${CACHED} ($(elapsed) total, $(go_ version | cut -d' ' -f3), cache ${CACHE_DIR})"
fi

cat <<EOF
kube-apiserver          ${KUBE_APISERVER_BIN}
kube-controller-manager ${KUBE_CONTROLLER_MANAGER_BIN}
kube-scheduler          ${KUBE_SCHEDULER_BIN}
kubectl                 ${KUBECTL_BIN}
etcd                    ${ETCD_BIN}
etcdctl                 ${ETCDCTL_BIN}
etcdutl                 ${ETCDUTL_BIN}
kwok                    ${KWOK_BIN}
kwokctl                 ${KWOKCTL_BIN}
helm                    ${HELM_BIN}
EOF
if [[ "${REAL_NODE}" != 0 ]]; then
  cat <<EOF
kubelet                 ${KUBELET_BIN}
kube-proxy              ${KUBE_PROXY_BIN}
coredns                 ${COREDNS_BIN}
local-path-provisioner  ${LOCAL_PATH_BIN}
kube-router             ${KUBE_ROUTER_BIN}
EOF
fi
