#!/usr/bin/env bash
# `make push [REGISTRY=host[:port]/path] [TAG=...]`: pushes the operator and app images that
# `make images` wrote under target/images/ (OCI layouts) to a registry with skopeo, no Docker;
# prints their digests and what to set so that a cluster uses them.
#
#   REGISTRY  where to push, e.g. ghcr.io/me or 127.0.0.1:5000/scaled. Default: the local e2e
#             cluster's registry (e2e/cluster/up.sh starts it with the real node).
#   TAG       default: the workspace version (Cargo.toml).
#
# Both layouts are verified completely first (every blob's digest and size, the layers against
# the config's diff_ids): if either is corrupted, nothing is pushed. http is used only for a
# registry on loopback; credentials for others come from skopeo's usual auth file
# (${XDG_RUNTIME_DIR}/containers/auth.json, `skopeo login`).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "${ROOT}"
say() { printf '[push] %s\n' "$*" >&2; }
fail() { say "ERROR: $*"; exit 1; }

TARGET_DIR=${CARGO_TARGET_DIR:-${ROOT}/target}
IMAGES=(scaledapp-operator scaled-app)
VERSION=$(python3 -c 'import tomllib; print(tomllib.load(open("Cargo.toml", "rb"))["workspace"]["package"]["version"])')
TAG=${TAG:-${VERSION}}
STATE_ENV="${ROOT}/e2e/cluster/.state/env"
LOCAL=0
if [[ -z "${REGISTRY:-}" ]]; then
  [[ -f "${STATE_ENV}" ]] && REGISTRY=$(sed -n 's/^export SCALEDAPP_REGISTRY=//p' "${STATE_ENV}")
  [[ -n "${REGISTRY:-}" ]] ||
    fail "no REGISTRY given and no local cluster registry running (start one with e2e/cluster/up.sh, or: make push REGISTRY=host[:port]/path)"
  LOCAL=1
fi
REGISTRY=${REGISTRY%/}
[[ "${REGISTRY}" =~ ^[A-Za-z0-9.-]+(:[0-9]+)?(/[a-z0-9._/-]+)?$ ]] || fail "REGISTRY must look like host[:port]/path, got '${REGISTRY}'"
[[ "${TAG}" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || fail "TAG '${TAG}' is not a valid tag"
host=${REGISTRY%%/*}
tls=(--dest-tls-verify=true)
case "${host%%:*}" in
  127.* | localhost | "[::1]") tls=(--dest-tls-verify=false) ;;
esac

command -v skopeo >/dev/null 2>&1 || fail "skopeo not found (apt-get install skopeo, or scripts/install-deps.sh)"
for image in "${IMAGES[@]}"; do
  [[ -f "${TARGET_DIR}/images/${image}/index.json" ]] || fail "no image layout ${TARGET_DIR}/images/${image}: run make images first"
done

say "verifying ${IMAGES[*]} (every blob against its digest) before pushing anything"
layouts=()
for image in "${IMAGES[@]}"; do layouts+=(--layout "${TARGET_DIR}/images/${image}"); done
if ! problems=$(python3 -B images/debian/ocipack.py verify "${layouts[@]}" 2>&1); then
  printf '%s\n' "${problems}" | sed 's/^/    /' >&2
  fail "refusing to push a corrupted image layout (rebuild with make images); nothing was pushed"
fi

declare -A DIGEST
for image in "${IMAGES[@]}"; do
  dest="${REGISTRY}/${image}:${TAG}"
  digestfile=$(mktemp)
  say "pushing ${dest}"
  if ! skopeo --insecure-policy copy --quiet "${tls[@]}" --digestfile "${digestfile}" \
    "oci:${TARGET_DIR}/images/${image}" "docker://${dest}"; then
    rm -f "${digestfile}"
    fail "skopeo could not push ${dest}"
  fi
  DIGEST[${image}]=$(<"${digestfile}")
  rm -f "${digestfile}"
done

echo
for image in "${IMAGES[@]}"; do
  printf '%-20s %s/%s:%s@%s\n' "${image}" "${REGISTRY}" "${image}" "${TAG}" "${DIGEST[${image}]}"
done
# In the local cluster, containerd reaches the registry as "localhost" (see e2e/cluster/README.md).
pull=${REGISTRY}
[[ ${LOCAL} -eq 1 ]] && pull="localhost/${REGISTRY#*/}"
cat <<EOF

To use them$([[ ${LOCAL} -eq 1 ]] && printf ' in the local cluster (pods pull them as %s/...)' "${pull}"):
  helm upgrade --install scaledapp-operator charts/scaledapp-operator --set image.registry=${pull} --set image.tag=${TAG}
    (chart value image.registry; the operator image is <image.registry>/scaledapp-operator;
     pin it with --set image.digest=${DIGEST[scaledapp-operator]})
  ScaledApp: spec.app.image: ${pull}/scaled-app:${TAG}@${DIGEST[scaled-app]}
    (and, with images of your own, spec.database.image and spec.cache.redis.image)
EOF
