#!/usr/bin/env bash
# Issue 15: `make push` (scripts/push-images.sh) pushes both images from their OCI layouts with
# skopeo and prints their digests; a corrupted layout fails with a clear error and pushes
# nothing, not even the intact image. Uses a real registry (Debian's docker-registry) on a free
# loopback port and two small layouts made by images/debian/ocipack.py.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
if ! command -v docker-registry >/dev/null 2>&1 || ! command -v skopeo >/dev/null 2>&1; then
  [[ "${SCALEDAPP_REAL_NODE:-1}" == 0 ]] && { echo "SKIP: no docker-registry/skopeo (SCALEDAPP_REAL_NODE=0)"; exit 0; }
  fail "docker-registry and skopeo are needed (scripts/install-deps.sh)"
fi
copy_repo scripts/push-images.sh images/debian/ocipack.py Cargo.toml
cd "${SCRATCH}/repo" || exit 1
for name in scaledapp-operator scaled-app; do
  mkdir -p "${SCRATCH}/rootfs-${name}"
  echo "${name}" >"${SCRATCH}/rootfs-${name}/hello"
  tar --owner=0 --group=0 --mtime=@0 -C "${SCRATCH}/rootfs-${name}" -cf "${SCRATCH}/${name}.tar" .
  echo '{"Cmd": ["/hello"]}' >"${SCRATCH}/config.json"
  python3 -B images/debian/ocipack.py pack --rootfs "${SCRATCH}/${name}.tar" --out "target/images/${name}" \
    --config "${SCRATCH}/config.json" --ref "example/${name}:0" >/dev/null
done
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"${SCRATCH}/registry.yml" <<YML
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: ${SCRATCH}/registry}}
http: {addr: 127.0.0.1:${port}}
YML
docker-registry serve "${SCRATCH}/registry.yml" >"${SCRATCH}/registry.log" 2>&1 &
registry_pid=$!
trap 'kill "${registry_pid}" 2>/dev/null; wait "${registry_pid}" 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do curl -fsS "http://127.0.0.1:${port}/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
catalog() { curl -fsS "http://127.0.0.1:${port}/v2/_catalog"; }

# Corrupt one byte of the app image's layer: the operator image is intact, yet nothing is pushed.
layer=$(python3 -c 'import json, sys; m = json.load(open(sys.argv[1])); print(m["manifests"][0]["digest"])' target/images/scaled-app/index.json)
manifest="target/images/scaled-app/blobs/sha256/${layer#sha256:}"
layer=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["layers"][0]["digest"])' "${manifest}")
blob="target/images/scaled-app/blobs/sha256/${layer#sha256:}"
cp "${blob}" "${SCRATCH}/good-blob"
printf 'X' | dd of="${blob}" bs=1 seek=20 conv=notrunc status=none
if REGISTRY="127.0.0.1:${port}/scaled" scripts/push-images.sh >"${SCRATCH}/out" 2>&1; then
  cat "${SCRATCH}/out"; fail "pushing a corrupted layout succeeded"
fi
cat "${SCRATCH}/out"
grep -q "refusing to push a corrupted image layout" "${SCRATCH}/out" || fail "no clear error"
grep -q "scaled-app.*has digest" "${SCRATCH}/out" || fail "the error does not name the corrupted blob"
[[ "$(catalog)" == '{"repositories":[]}' ]] || fail "something was pushed: $(catalog)"
echo "corrupted: refused, registry catalog $(catalog)"

cp "${SCRATCH}/good-blob" "${blob}"
REGISTRY="127.0.0.1:${port}/scaled" TAG=9.9.9 scripts/push-images.sh >"${SCRATCH}/out" 2>&1 || { cat "${SCRATCH}/out"; fail "push failed"; }
cat "${SCRATCH}/out"
grep -Eq "^scaled-app +127.0.0.1:${port}/scaled/scaled-app:9.9.9@sha256:[0-9a-f]{64}$" "${SCRATCH}/out" || fail "no digest printed"
{ grep -q "image.registry" "${SCRATCH}/out" && grep -q "spec.app.image" "${SCRATCH}/out"; } || fail "does not say what to set"
[[ "$(catalog)" == '{"repositories":["scaled/scaled-app","scaled/scaledapp-operator"]}' ]] || fail "catalog: $(catalog)"
echo "intact: both pushed, $(catalog)"
