#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Builds the real node's images from Debian packages, without a container engine:
#
#   localhost/scaled/pause:1                        the pod sandbox (pause.c, static)
#   localhost/scaled/busybox:<1.x>                  Debian's busybox-static (volume helper, tests)
#   localhost/scaled/postgres:17                    Debian trixie's postgresql-17, Debian's layout
#   localhost/scaled/postgres-official-layout:17    the same packages arranged like the official
#                                                   Debian-based postgres image (uid 999, PATH, PGDATA)
#   localhost/scaled/redis:<major>                  Debian trixie's redis-server, uid 999
#
# Each is an OCI image layout with one layer, in ${SCALEDAPP_CACHE:-~/.cache/scaledapp-e2e}/images/
# <name>-<recipe hash>/ with an image.env describing it (references, digest, package version,
# uids). An image is rebuilt only when its recipe (its build function and the helpers it uses
# here, ocipack.py, pause.c) changes.
# Root filesystems come from mmdebstrap (Debian's apt mirror only); nothing is pulled.
#
#   images/debian/build.sh [--force] [NAME...]     (default: all five)
#   images/debian/build.sh --print [NAME...]       print each image's image.env path (built ones)
#
# One progress line per image; mmdebstrap's output goes to <cache>/logs/image-<name>.log.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "${HERE}/../.." && pwd)
# shellcheck source=../../e2e/cluster/lib.sh
source "${ROOT}/e2e/cluster/lib.sh"

SUITE=trixie
MIRROR=${SCALEDAPP_DEBIAN_MIRROR:-http://deb.debian.org/debian}
POSTGRES_MAJOR=17
ALL=(pause busybox postgres postgres-official-layout redis)

FORCE=0
PRINT=0
names=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --force) FORCE=1 ;;
    --print) PRINT=1 ;;
    -h | --help) sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) names+=("$1") ;;
  esac
  shift
done
[[ ${#names[@]} -gt 0 ]] || names=("${ALL[@]}")
for name in "${names[@]}"; do
  [[ " ${ALL[*]} " == *" ${name} "* ]] || die "unknown image ${name} (${ALL[*]})"
done


need_root_tools() {
  [[ "$(id -u)" -eq 0 ]] || die "building the node images needs root (mmdebstrap's root mode)"
  local tool
  for tool in mmdebstrap gcc python3 tar; do
    command -v "${tool}" >/dev/null 2>&1 || die "${tool} not found: run scripts/install-deps.sh"
  done
}

# Debian documentation, manuals and translations are not needed in a container.
DPKG_EXCLUDES=(
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-exclude=/usr/share/lintian/*'
)
# Postgres without its LLVM JIT (libLLVM and z3 are 160 MB of the 450 MB image): the server then
# reports pg_jit_available() = false and never JIT-compiles; nothing else changes.
NO_JIT=(
  --dpkgopt='path-exclude=/usr/lib/postgresql/*/lib/llvmjit*'
  --dpkgopt='path-exclude=/usr/lib/postgresql/*/lib/bitcode/*'
  --dpkgopt='path-exclude=/usr/lib/x86_64-linux-gnu/libLLVM*'
  --dpkgopt='path-exclude=/usr/lib/x86_64-linux-gnu/libz3*'
)
# Files no image should carry: apt state, logs, the snakeoil key ssl-cert generates at install,
# and the build machine's resolv.conf and hostname (the runtime provides both).
CLEANUP='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/cache/debconf/*-old \
  "$1"/var/log/* "$1"/etc/ssl/private/ssl-cert-snakeoil.key "$1"/etc/ssl/certs/ssl-cert-snakeoil.pem \
  "$1"/etc/machine-id "$1"/var/lib/dbus/machine-id "$1"/etc/resolv.conf "$1"/etc/hostname \
  "$1"/etc/passwd- "$1"/etc/group- "$1"/etc/shadow- "$1"/etc/gshadow-; \
  find "$1"/etc/ssl/certs -xtype l -delete 2>/dev/null; mkdir -p "$1"/tmp; chmod 1777 "$1"/tmp'

debian() { # OUT.tar PACKAGES VARIANT [mmdebstrap options...]
  local out=$1 packages=$2 variant=$3
  shift 3
  mmdebstrap --variant="${variant}" --include="${packages}" --components=main \
    --aptopt='Acquire::Languages "none"' "${DPKG_EXCLUDES[@]}" \
    "$@" --customize-hook="${CLEANUP}" "${SUITE}" "${out}" "${MIRROR}"
}

# version_of ROOTFS.tar PACKAGE: the installed (or extracted) version, from dpkg's status or the
# package's changelog-free control data.
version_of() {
  python3 - "$1" "$2" <<'PY'
import sys, tarfile
rootfs, package = sys.argv[1:]
with tarfile.open(rootfs) as tar:
    for name in ("./var/lib/dpkg/status", "var/lib/dpkg/status"):
        try:
            status = tar.extractfile(name).read().decode()
        except KeyError:
            continue
        for stanza in status.split("\n\n"):
            fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line.startswith(" "))
            if fields.get("Package") == package:
                print(fields["Version"])
                sys.exit(0)
sys.exit(f"{package} is not in {rootfs}")
PY
}

# upstream VERSION: "5:8.0.2-3" -> "8.0.2"
upstream() {
  local version=${1#*:}
  printf '%s\n' "${version%-*}"
}

config_json() { # KEY=JSON ... -> the image config object
  python3 - "$@" <<'PY'
import json, sys
config = {}
for arg in sys.argv[1:]:
    key, _, value = arg.partition("=")
    config[key] = json.loads(value)
print(json.dumps(config, sort_keys=True))
PY
}

# pack NAME ROOTFS.tar CONFIG_JSON REF... -> the layout and image.env in the work dir
pack() {
  local name=$1 rootfs=$2 config=$3 work=$4
  shift 4
  local refs=("$@") args=() ref digest
  printf '%s\n' "${config}" >"${work}/config.json"
  for ref in "${refs[@]}"; do args+=(--ref "${ref}"); done
  digest=$(python3 -B "${HERE}/ocipack.py" pack --rootfs "${rootfs}" --out "${work}/layout" \
    --config "${work}/config.json" --history "images/debian/build.sh ${name} (recipe $(recipe_hash "${name}"))" "${args[@]}")
  {
    printf 'IMAGE_NAME=%q\n' "${name}"
    printf 'IMAGE_REF=%q\n' "${refs[0]}"
    printf 'IMAGE_REFS=%q\n' "${refs[*]}"
    printf 'IMAGE_DIGEST=%q\n' "${digest}"
    printf 'IMAGE_LAYOUT=%q\n' "${FINAL_DIR}/layout"
    printf 'IMAGE_RECIPE=%q\n' "$(recipe_hash "${name}")"
  } >>"${work}/image.env"
  rm -f "${rootfs}"
}

build_pause() {
  local work=$1
  mkdir -p "${work}/rootfs"
  gcc -Os -static -Wall -Wextra -o "${work}/rootfs/pause" "${HERE}/pause.c"
  strip "${work}/rootfs/pause"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "${work}/rootfs" -cf "${work}/rootfs.tar" pause
  rm -rf "${work}/rootfs"
  pack pause "${work}/rootfs.tar" \
    "$(config_json 'Entrypoint=["/pause"]' 'User="65535:65535"' \
      'Labels={"org.opencontainers.image.title":"pause","org.opencontainers.image.source":"images/debian/pause.c"}')" \
    "${work}" localhost/scaled/pause:1
}

build_busybox() {
  local work=$1 version applet
  # extract: the package's files only (no Debian base, no maintainer scripts); the image is then
  # the static binary, its applet links, and the few files a pod expects.
  debian "${work}/extract.tar" busybox-static extract
  mkdir -p "${work}/rootfs/usr/bin" "${work}/rootfs/usr/sbin" "${work}/rootfs/etc" "${work}/rootfs/tmp"
  tar -xf "${work}/extract.tar" -C "${work}/rootfs" ./usr/bin/busybox
  rm -f "${work}/extract.tar"
  # "BusyBox v1.37.0 (Debian 1:1.37.0-6+b3) multi-call binary."
  version=$("${work}/rootfs/usr/bin/busybox" 2>&1 | sed -n '1s/^BusyBox v\([0-9.]*\).*/\1/p')
  [[ -n "${version}" ]] || die "cannot read the busybox version"
  # Every applet as a link in /usr/bin or /usr/sbin (/bin and /sbin link there, merged /usr).
  local dir
  while IFS= read -r applet; do
    case "${applet}" in
      usr/sbin/* | sbin/*) dir=usr/sbin ;;
      *) dir=usr/bin ;;
    esac
    [[ "${applet##*/}" == busybox || -e "${work}/rootfs/${dir}/${applet##*/}" ]] ||
      ln -s /usr/bin/busybox "${work}/rootfs/${dir}/${applet##*/}"
  done < <("${work}/rootfs/usr/bin/busybox" --list-full)
  ln -s usr/bin "${work}/rootfs/bin"
  ln -s usr/sbin "${work}/rootfs/sbin"
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"${work}/rootfs/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"${work}/rootfs/etc/group"
  chmod 1777 "${work}/rootfs/tmp"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "${work}/rootfs" -cf "${work}/rootfs.tar" .
  rm -rf "${work}/rootfs"
  printf 'PACKAGE_VERSION=%q\n' "${version}" >"${work}/image.env"
  pack busybox "${work}/rootfs.tar" \
    "$(config_json 'Cmd=["sh"]' 'Env=["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]' \
      "Labels={\"org.opencontainers.image.title\":\"busybox\",\"org.opencontainers.image.version\":\"${version}\",\"org.opencontainers.image.description\":\"Debian ${SUITE} busybox-static\"}")" \
    "${work}" "localhost/scaled/busybox:${version%.*}" "localhost/scaled/busybox:${version}"
}

# Debian's own layout: binaries in /usr/lib/postgresql/17/bin (not on PATH), the postgres user
# with the uid Debian's postinst gives it, no cluster created.
NO_MAIN_CLUSTER='mkdir -p "$1"/etc/postgresql-common/createcluster.d &&
  echo "create_main_cluster = false" >"$1"/etc/postgresql-common/createcluster.d/scaled.conf'
build_postgres() {
  local work=$1 version uid gid
  debian "${work}/rootfs.tar" "postgresql-${POSTGRES_MAJOR}" essential "${NO_JIT[@]}" --setup-hook="${NO_MAIN_CLUSTER}"
  version=$(upstream "$(version_of "${work}/rootfs.tar" "postgresql-${POSTGRES_MAJOR}")")
  read -r uid gid < <(python3 -B "${HERE}/ocipack.py" passwd --rootfs "${work}/rootfs.tar" --user postgres)
  {
    printf 'PACKAGE_VERSION=%q\nPOSTGRES_UID=%q\nPOSTGRES_GID=%q\n' "${version}" "${uid}" "${gid}"
    printf 'POSTGRES_BINDIR=%q\n' "/usr/lib/postgresql/${POSTGRES_MAJOR}/bin"
  } >"${work}/image.env"
  pack postgres "${work}/rootfs.tar" \
    "$(config_json 'Env=["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","LANG=C.UTF-8"]' \
      'ExposedPorts={"5432/tcp":{}}' 'StopSignal="SIGINT"' 'WorkingDir="/var/lib/postgresql"' \
      "Labels={\"org.opencontainers.image.title\":\"postgres\",\"org.opencontainers.image.version\":\"${version}\",\"org.opencontainers.image.description\":\"Debian ${SUITE} postgresql-${POSTGRES_MAJOR}, Debian layout, no JIT\",\"dev.scaled.postgres.uid\":\"${uid}\",\"dev.scaled.postgres.gid\":\"${gid}\",\"dev.scaled.postgres.bindir\":\"/usr/lib/postgresql/${POSTGRES_MAJOR}/bin\"}")" \
    "${work}" "localhost/scaled/postgres:${POSTGRES_MAJOR}" "localhost/scaled/postgres:${version}"
}

# The official image's arrangement: postgres is uid/gid 999 (created before the packages, so
# their postinst keeps it), the bin directory on PATH, PGDATA=/var/lib/postgresql/data (1777) and
# /var/run/postgresql (3777), as that image's Dockerfile makes them.
USER_999='printf "%s:x:999:999::%s:/bin/sh\n" "$NAME" "$HOME_DIR" >>"$1"/etc/passwd &&
  printf "%s:x:999:\n" "$NAME" >>"$1"/etc/group'
build_postgres_official_layout() {
  local work=$1 version bindir=/usr/lib/postgresql/${POSTGRES_MAJOR}/bin uid gid
  debian "${work}/rootfs.tar" "postgresql-${POSTGRES_MAJOR}" essential "${NO_JIT[@]}" \
    --setup-hook="${NO_MAIN_CLUSTER}" --essential-hook="NAME=postgres HOME_DIR=/var/lib/postgresql; ${USER_999}" \
    --customize-hook='mkdir -p "$1"/var/lib/postgresql/data "$1"/var/run/postgresql &&
      chown 999:999 "$1"/var/lib/postgresql "$1"/var/lib/postgresql/data "$1"/var/run/postgresql &&
      chmod 1777 "$1"/var/lib/postgresql/data && chmod 3777 "$1"/var/run/postgresql'
  version=$(upstream "$(version_of "${work}/rootfs.tar" "postgresql-${POSTGRES_MAJOR}")")
  read -r uid gid < <(python3 -B "${HERE}/ocipack.py" passwd --rootfs "${work}/rootfs.tar" --user postgres)
  [[ "${uid}:${gid}" == 999:999 ]] || die "postgres is ${uid}:${gid} in the official layout, expected 999:999"
  {
    printf 'PACKAGE_VERSION=%q\nPOSTGRES_UID=%q\nPOSTGRES_GID=%q\n' "${version}" "${uid}" "${gid}"
    printf 'POSTGRES_BINDIR=%q\nPGDATA=%q\n' "${bindir}" /var/lib/postgresql/data
  } >"${work}/image.env"
  pack postgres-official-layout "${work}/rootfs.tar" \
    "$(config_json "Env=[\"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${bindir}\",\"PG_MAJOR=${POSTGRES_MAJOR}\",\"PG_VERSION=${version}\",\"PGDATA=/var/lib/postgresql/data\",\"LANG=C.UTF-8\"]" \
      'ExposedPorts={"5432/tcp":{}}' 'StopSignal="SIGINT"' 'Volumes={"/var/lib/postgresql/data":{}}' \
      "Labels={\"org.opencontainers.image.title\":\"postgres-official-layout\",\"org.opencontainers.image.version\":\"${version}\",\"org.opencontainers.image.description\":\"Debian ${SUITE} postgresql-${POSTGRES_MAJOR}, arranged like the official postgres image, no JIT\",\"dev.scaled.postgres.uid\":\"999\",\"dev.scaled.postgres.gid\":\"999\",\"dev.scaled.postgres.bindir\":\"${bindir}\"}")" \
    "${work}" "localhost/scaled/postgres-official-layout:${POSTGRES_MAJOR}" "localhost/scaled/postgres-official-layout:${version}"
}

# Redis as the operator runs it: `sh -c` a script that starts `redis-server /conf/redis.conf`,
# probed with `redis-cli ping`, as uid 999 with fsGroup 999 (the official image's redis user).
build_redis() {
  local work=$1 version major
  debian "${work}/rootfs.tar" redis-server essential \
    --essential-hook="NAME=redis HOME_DIR=/var/lib/redis; ${USER_999}" \
    --customize-hook='mkdir -p "$1"/data && chown 999:999 "$1"/data'
  version=$(upstream "$(version_of "${work}/rootfs.tar" redis-server)")
  major=${version%%.*}
  printf 'PACKAGE_VERSION=%q\nREDIS_UID=999\nREDIS_GID=999\n' "${version}" >"${work}/image.env"
  pack redis "${work}/rootfs.tar" \
    "$(config_json 'Cmd=["redis-server"]' 'Env=["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]' \
      'ExposedPorts={"6379/tcp":{}}' 'WorkingDir="/data"' \
      "Labels={\"org.opencontainers.image.title\":\"redis\",\"org.opencontainers.image.version\":\"${version}\",\"org.opencontainers.image.description\":\"Debian ${SUITE} redis-server\",\"dev.scaled.redis.uid\":\"999\"}")" \
    "${work}" "localhost/scaled/redis:${major}" "localhost/scaled/redis:${version}"
}

# An image's recipe: its build function, the helpers and settings it uses, ocipack.py (and
# pause.c). A change to it rebuilds that image only (the hash is part of the image's directory).
recipe_hash() {
  {
    declare -f "build_${1//-/_}" debian pack config_json version_of upstream
    printf '%s\n' "${SUITE}" "${POSTGRES_MAJOR}" "${DPKG_EXCLUDES[@]}" "${NO_JIT[@]}" "${CLEANUP}" \
      "${USER_999}" "${NO_MAIN_CLUSTER}"
    cat "${HERE}/ocipack.py"
    [[ "$1" != pause ]] || cat "${HERE}/pause.c"
  } | sha256sum | cut -c1-12
}
image_dir() { printf '%s/%s-%s\n' "${NODE_IMAGES_DIR}" "$1" "$(recipe_hash "$1")"; }

if [[ "${PRINT}" == 1 ]]; then
  for name in "${names[@]}"; do
    [[ -f "$(image_dir "${name}")/image.env" ]] || die "image ${name} is not built (run $0 ${name})"
    printf '%s\n' "$(image_dir "${name}")/image.env"
  done
  exit 0
fi

# One build at a time per cache (up.sh runs this too).
mkdir -p "${NODE_IMAGES_DIR}"
exec 9>"${NODE_IMAGES_DIR}/.build.lock"
flock 9

built=0
for name in "${names[@]}"; do
  FINAL_DIR=$(image_dir "${name}")
  if [[ "${FORCE}" -eq 0 && -f "${FINAL_DIR}/image.env" ]]; then
    continue
  fi
  need_root_tools
  mkdir -p "${NODE_IMAGES_DIR}/tmp" "${BUILD_LOG_DIR}"
  work=$(mktemp -d "${NODE_IMAGES_DIR}/tmp/${name}-XXXXXX")
  logfile="${BUILD_LOG_DIR}/image-${name}.log"
  started=${SECONDS}
  printf '[images %s] %s: building from Debian %s packages (log: %s) ...' \
    "$(date +%H:%M:%S)" "${name}" "${SUITE}" "${logfile}" >&2
  # Not in an `if`: bash ignores `set -e` inside a condition, and every failing step must count.
  set +e
  (
    set -e
    "build_${name//-/_}" "${work}"
  ) >"${logfile}" 2>&1
  status=$?
  set -e
  if [[ ${status} -ne 0 ]]; then
    printf ' FAILED after %ss\n' "$((SECONDS - started))" >&2
    tail -n 30 "${logfile}" | sed 's/^/    /' >&2
    rm -rf "${work}"
    die "image ${name} did not build; full log: ${logfile}"
  fi
  rm -rf "${FINAL_DIR}"
  mv "${work}" "${FINAL_DIR}"
  # Older recipes of this image are not needed any more.
  for old in "${NODE_IMAGES_DIR}/${name}"-*; do
    [[ "${old}" == "${FINAL_DIR}" || ! -d "${old}" ]] || rm -rf "${old}"
  done
  # shellcheck source=/dev/null
  ref=$(source "${FINAL_DIR}/image.env" && printf '%s' "${IMAGE_REF}")
  printf ' done in %ss: %s, %s\n' "$((SECONDS - started))" "${ref}" \
    "$(du -sh --apparent-size "${FINAL_DIR}/layout" | cut -f1) compressed" >&2
  built=$((built + 1))
done
# The postgres uid Debian gave its user (the tests read it from image.env; printed once here).
if [[ " ${names[*]} " == *" postgres "* && ${built} -gt 0 && -f "$(image_dir postgres)/image.env" ]]; then
  # shellcheck source=/dev/null
  (source "$(image_dir postgres)/image.env" &&
    log "postgres ${PACKAGE_VERSION}: Debian's postgres user is uid ${POSTGRES_UID}, gid ${POSTGRES_GID} (label dev.scaled.postgres.uid)")
fi
