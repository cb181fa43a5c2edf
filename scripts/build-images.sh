#!/usr/bin/env bash
# Builds the operator and app images WITHOUT a container engine (`make images`).
#
#   scripts/build-images.sh [operator|app]...     (default: both)
#
# 1. cargo build --release the binaries on this machine (x86_64 glibc; dynamically linked), and
#    scaled-instance statically linked for the operator image;
# 2. writes an OCI image layout per image under target/images/<name>/ (oci-layout, index.json,
#    blobs/sha256/...) with ONE layer: the binary at /usr/local/bin/<name>, the shared libraries
#    ldd lists for it (with the dynamic loader) so that it runs on an empty base, /etc/passwd and
#    /etc/group with the nonroot user 65532, /etc/nsswitch.conf, this machine's CA bundle and an
#    empty /tmp. Config: User 65532:65532, Entrypoint /usr/local/bin/<name>, Cmd run|serve,
#    Env PATH=/usr/local/bin, version label and tag from the workspace version;
# 3. packs each layout as target/images/<name>-<version>.oci.tar, which `docker load` (Docker 25+)
#    and `kind load image-archive` accept.
# The layers are reproducible (fixed owners, SOURCE_DATE_EPOCH = the last commit's time).
# scripts/check-images.sh verifies the result. With Docker, images/*.Dockerfile build the same
# images from static musl binaries instead (see images/README.md).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "${ROOT}"
log() { printf '[images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

REGISTRY=${IMAGE_REGISTRY:-ghcr.io/scaled-dev}
TARGET_DIR=${CARGO_TARGET_DIR:-${ROOT}/target}
OUT=${TARGET_DIR}/images
VERSION=$(python3 -c 'import tomllib; print(tomllib.load(open("Cargo.toml", "rb"))["workspace"]["package"]["version"])')
# Only the layout step sees it: cc's build scripts rerun when SOURCE_DATE_EPOCH changes, so
# exporting it to cargo would rebuild ring and everything above it after every commit.
EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
REVISION=$(git rev-parse HEAD 2>/dev/null || true)
[[ -z "${REVISION}" || -z "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]] || REVISION="${REVISION}-dirty"

# name (binary and package), default Cmd, exposed ports
declare -A PACKAGE=([operator]=scaledapp-operator [app]=scaled-app)
declare -A CMD=([operator]=run [app]=serve)
declare -A PORTS=([operator]="8081/tcp" [app]="8080/tcp 9090/tcp")

images=("$@")
[[ ${#images[@]} -gt 0 ]] || images=(operator app)
packages=()
for image in "${images[@]}"; do
  [[ -n "${PACKAGE[${image}]:-}" ]] || { echo "unknown image '${image}' (operator, app)" >&2; exit 2; }
  packages+=(-p "${PACKAGE[${image}]}")
done

log "cargo build --release ${packages[*]}"
cargo build --release --locked "${packages[@]}"

# The operator image also carries scaled-instance, which an init container copies into every
# Postgres pod: it runs there as PID 1 whatever libc the Postgres image has (Alpine's musl,
# Debian's glibc), so it is linked statically. --target keeps the static flag off build scripts
# and proc macros (and gives it its own artifact directory).
INSTANCE_STATIC="${TARGET_DIR}/x86_64-unknown-linux-gnu/release/scaled-instance"
if [[ " ${images[*]} " == *" operator "* ]]; then
  log "cargo build --release --target x86_64-unknown-linux-gnu -p scaled-instance (static)"
  RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --locked --target x86_64-unknown-linux-gnu -p scaled-instance
  if ldd "${INSTANCE_STATIC}" >/dev/null 2>&1 && ! ldd "${INSTANCE_STATIC}" 2>&1 | grep -q "statically linked"; then
    log "FAILED: ${INSTANCE_STATIC} is not statically linked"
    exit 1
  fi
fi

# The files a dynamically linked binary needs at run time, as ldd resolves them on this machine.
libraries() {
  ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u
}

mkdir -p "${OUT}"
status=0
for image in "${images[@]}"; do
  name=${PACKAGE[${image}]}
  binary="${TARGET_DIR}/release/${name}"
  ref="${REGISTRY}/${name}:${VERSION}"
  args=(--name "${name}" --ref "${ref}" --version "${VERSION}" --cmd "${CMD[${image}]}"
    --out "${OUT}/${name}" --binary "${binary}" --revision "${REVISION}")
  for port in ${PORTS[${image}]}; do args+=(--port "${port}"); done
  [[ "${image}" != operator ]] || args+=(--extra-binary "${INSTANCE_STATIC}")
  if ldd "${binary}" >/dev/null 2>&1; then
    while read -r library; do args+=(--library "${library}"); done < <(libraries "${binary}")
  fi
  log "writing ${OUT#"${ROOT}"/}/${name} (${ref})"
  rm -rf "${OUT:?}/${name}"
  if SOURCE_DATE_EPOCH="${EPOCH}" python3 -B images/ocilayout.py build "${args[@]}" \
    && SOURCE_DATE_EPOCH="${EPOCH}" python3 -B images/ocilayout.py archive --layout "${OUT}/${name}" --out "${OUT}/${name}-${VERSION}.oci.tar"; then
    log "$(du -sh --apparent-size "${OUT}/${name}" | cut -f1) layout, archive ${OUT#"${ROOT}"/}/${name}-${VERSION}.oci.tar"
  else
    log "FAILED to write the ${name} image"
    status=1
  fi
done
exit "${status}"
