#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Builds the e2e cluster tools from Go modules (no prebuilt downloads):
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (k8s.io/kubernetes)
#   etcd, etcdctl, etcdutl (go.etcd.io/etcd/{server,etcdctl,etcdutl}/v3)
#   kwok, kwokctl (sigs.k8s.io/kwok)
#   helm (helm.sh/helm/v3)
# into ${SCALEDAPP_CACHE:-$HOME/.cache/scaledapp-e2e}/<component>-<version>/.
# A component is rebuilt only when its pinned version (versions.env) changes.
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
      sed -n '3,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
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

mkdir -p "${CACHE_DIR}" "${GOMODCACHE}" "${GOCACHE}" "${CACHE_DIR}/tmp"

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

build_kubernetes() {
  local ver=${KUBE_VERSION} dest=${KUBE_DIR}
  if is_built "${dest}"; then
    log "kubernetes ${ver}: cached in ${dest}"
    return
  fi
  local minor=${ver#v1.}
  minor=${minor%%.*}
  local staging="v0.${ver#v1.}"
  log "kubernetes ${ver}: preparing wrapper module (staging modules at ${staging})"
  local w gomod info build_date
  new_wrapper kubernetes
  w=${WRAPPER}
  gomod=$(cd "${w}" && module_file k8s.io/kubernetes "${ver}" mod)
  info=$(cd "${w}" && module_file k8s.io/kubernetes "${ver}" info)
  copy_directives "${gomod}" "${w}"
  # k8s.io/kubernetes requires its staging repositories at v0.0.0 and
  # replaces them with ./staging/...; point them at the published versions.
  local m staged=0
  while IFS= read -r m; do
    (cd "${w}" && go_ mod edit "-replace=${m}=${m}@${staging}")
    staged=$((staged + 1))
  done < <(awk '
    /^require[ \t]*\(/ { b = 1; next }
    b && /^\)/ { b = 0; next }
    b && $1 ~ /^k8s\.io\// && $2 == "v0.0.0" { print $1; next }
    /^require[ \t]+k8s\.io\// && $3 == "v0.0.0" { print $2 }
  ' "${gomod}")
  [[ "${staged}" -gt 0 ]] || die "found no k8s.io/* v0.0.0 requirements in ${gomod}"
  log "  replaced ${staged} staging modules with ${staging}"
  log "kubernetes ${ver}: downloading k8s.io/kubernetes and its dependencies ($(elapsed))"
  (cd "${w}" && go_ get "k8s.io/kubernetes@${ver}")

  build_date=$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "${info}")
  [[ -n "${build_date}" ]] || build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local ldflags="-s -w" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X ${pkg}.gitVersion=${ver}"
    ldflags+=" -X ${pkg}.gitMajor=1"
    ldflags+=" -X ${pkg}.gitMinor=${minor}"
    ldflags+=" -X ${pkg}.gitTreeState=clean"
    ldflags+=" -X ${pkg}.gitCommit="
    ldflags+=" -X ${pkg}.buildDate=${build_date}"
  done
  local out="${dest}.partial" bin
  rm -rf "${out}"
  mkdir -p "${out}"
  for bin in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    log "building ${bin} ${ver} ... ($(elapsed) so far)"
    (cd "${w}" && go_ build -trimpath -ldflags "${ldflags}" -o "${out}/${bin}" "k8s.io/kubernetes/cmd/${bin}")
  done
  publish "${out}" "${dest}" "${ver}"
  log "kubernetes ${ver}: done ($(elapsed))"
}

build_etcd() {
  local ver=${ETCD_VERSION} dest=${ETCD_DIR}
  if is_built "${dest}"; then
    log "etcd ${ver}: cached in ${dest}"
    return
  fi
  log "etcd ${ver}: preparing wrapper module"
  local w gomod m
  new_wrapper etcd
  w=${WRAPPER}
  for m in server etcdctl etcdutl; do
    gomod=$(cd "${w}" && module_file "go.etcd.io/etcd/${m}/v3" "${ver}" mod)
    copy_directives "${gomod}" "${w}"
  done
  log "etcd ${ver}: downloading go.etcd.io/etcd/{server,etcdctl,etcdutl}/v3 and their dependencies ($(elapsed))"
  (cd "${w}" && go_ get "go.etcd.io/etcd/server/v3@${ver}" \
    "go.etcd.io/etcd/etcdctl/v3@${ver}" "go.etcd.io/etcd/etcdutl/v3@${ver}")
  local out="${dest}.partial" bin pkg
  rm -rf "${out}"
  mkdir -p "${out}"
  # etcd: the server; etcdctl/etcdutl: used by `kwokctl etcdctl` and snapshots.
  for bin in etcd etcdctl etcdutl; do
    pkg=go.etcd.io/etcd/${bin}/v3
    [[ "${bin}" == etcd ]] && pkg=go.etcd.io/etcd/server/v3
    log "building ${bin} ${ver} ... ($(elapsed) so far)"
    (cd "${w}" && go_ build -trimpath \
      -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${ver}" \
      -o "${out}/${bin}" "${pkg}")
  done
  publish "${out}" "${dest}" "${ver}"
  log "etcd ${ver}: done ($(elapsed))"
}

build_kwok() {
  local ver=${KWOK_VERSION} dest=${KWOK_DIR}
  if is_built "${dest}"; then
    log "kwok ${ver}: cached in ${dest}"
    return
  fi
  log "kwok ${ver}: preparing wrapper module"
  local w gomod
  new_wrapper kwok
  w=${WRAPPER}
  gomod=$(cd "${w}" && module_file sigs.k8s.io/kwok "${ver}" mod)
  copy_directives "${gomod}" "${w}"
  log "kwok ${ver}: downloading sigs.k8s.io/kwok and its dependencies ($(elapsed))"
  (cd "${w}" && go_ get "sigs.k8s.io/kwok@${ver}")
  # consts.KubeVersion is kwokctl's default --kube-version: make it the
  # Kubernetes version built above so generated flags match the binaries.
  local ldflags="-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${ver}"
  ldflags+=" -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${KUBE_VERSION}"
  # Blank every built-in binary download URL prefix (releases of kwok,
  # kubernetes, etcd, prometheus, ...): a binary path left unset then fails
  # locally instead of being fetched from the internet.
  local kwok_src var
  kwok_src=$(cd "${w}" && go_ list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
  while IFS= read -r var; do
    ldflags+=" -X sigs.k8s.io/kwok/pkg/consts.${var}="
  done < <(sed -n -E 's/^[[:space:]]*([A-Za-z]*Binary[A-Za-z]*Prefix)[[:space:]]*=[[:space:]]*"https?:.*/\1/p' \
    "${kwok_src}"/pkg/consts/*.go)
  local out="${dest}.partial" bin
  rm -rf "${out}"
  mkdir -p "${out}"
  for bin in kwok kwokctl; do
    log "building ${bin} ${ver} ... ($(elapsed) so far)"
    (cd "${w}" && go_ build -trimpath -ldflags "${ldflags}" -o "${out}/${bin}" "sigs.k8s.io/kwok/cmd/${bin}")
  done
  publish "${out}" "${dest}" "${ver}"
  log "kwok ${ver}: done ($(elapsed))"
}

build_helm() {
  local ver=${HELM_VERSION} dest=${HELM_DIR}
  if is_built "${dest}"; then
    log "helm ${ver}: cached in ${dest}"
    return
  fi
  log "helm ${ver}: preparing wrapper module"
  local w gomod
  new_wrapper helm
  w=${WRAPPER}
  gomod=$(cd "${w}" && module_file helm.sh/helm/v3 "${ver}" mod)
  copy_directives "${gomod}" "${w}"
  log "helm ${ver}: downloading helm.sh/helm/v3 and its dependencies ($(elapsed))"
  (cd "${w}" && go_ get "helm.sh/helm/v3@${ver}")
  # Same as helm's Makefile: the Kubernetes version helm assumes by default
  # (chartutil / lint) derives from the client-go it is built with.
  local cgo k8s_major k8s_minor
  cgo=$(cd "${w}" && go_ list -m -f '{{.Version}}' k8s.io/client-go)
  cgo=${cgo#v}
  k8s_major=$((${cgo%%.*} + 1))
  k8s_minor=${cgo#*.}
  k8s_minor=${k8s_minor%%.*}
  local ldflags="-s -w"
  ldflags+=" -X helm.sh/helm/v3/internal/version.version=${ver}"
  ldflags+=" -X helm.sh/helm/v3/internal/version.metadata="
  ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  ldflags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=${k8s_major}"
  ldflags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=${k8s_minor}"
  ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=${k8s_major}"
  ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=${k8s_minor}"
  local out="${dest}.partial"
  rm -rf "${out}"
  mkdir -p "${out}"
  log "building helm ${ver} ... ($(elapsed) so far)"
  (cd "${w}" && go_ build -trimpath -ldflags "${ldflags}" -o "${out}/helm" helm.sh/helm/v3/cmd/helm)
  publish "${out}" "${dest}" "${ver}"
  log "helm ${ver}: done ($(elapsed))"
}

log "using $(go_ version) (${GO_BIN}), cache ${CACHE_DIR}"
build_kubernetes
build_etcd
build_kwok
build_helm
log "all tools ready ($(elapsed) total)"

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
