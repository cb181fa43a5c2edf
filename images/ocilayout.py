#!/usr/bin/env python3
"""Writes and checks OCI image layouts without a container engine (standard library only).

  ocilayout.py build  --out DIR --binary PATH --name NAME --ref REF --version V --cmd ARG...
                      [--port 8080/tcp ...] [--library PATH ...] [--extra-binary PATH ...]
                      [--ca-bundle PATH]
  ocilayout.py check  --layout DIR --name NAME --ref REF --version V --cmd ARG... [--port ...]
  ocilayout.py unpack --layout DIR --into DIR
  ocilayout.py archive --layout DIR --out FILE.tar

`build` writes one image with ONE layer: the binary at /usr/local/bin/NAME, the shared libraries
it needs at the paths ldd reported (the binary is dynamically linked against glibc), /etc/passwd
and /etc/group with the nonroot user 65532, /etc/nsswitch.conf, the CA bundle and /tmp (1777).
The layer is reproducible: entries sorted, owner 0:0 (numeric, no names), mtime SOURCE_DATE_EPOCH
(default 0), gzip without a name or timestamp. Same inputs, same digests.

`check` verifies the layout against the OCI image spec (every digest and size, the layer's
diff_id) and the config against what the chart and the operator expect; it prints one line per
check and exits 1 on any failure. `unpack` extracts the rootfs (as root: owners kept).
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile
import time

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
BIN_DIR = "/usr/local/bin"
NONROOT = 65532
PASSWD = "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
GROUP = "root:x:0:\nnonroot:x:65532:\n"
# glibc reads this for getaddrinfo; without it hosts would be "dns files" (DNS before /etc/hosts).
NSSWITCH = "hosts: files dns\n"


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def epoch():
    return int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


def rfc3339(seconds):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


# ---------------------------------------------------------------------------------------------
# build


def layer_tar(entries, mtime):
    """entries: {path: (kind, mode, uid, gid, data)}; parents are added as 0755 root dirs."""
    full = dict(entries)
    for path in list(entries):
        parent = os.path.dirname(path)
        while parent not in ("", "/") and parent not in full:
            full[parent] = ("dir", 0o755, 0, 0, None)
            parent = os.path.dirname(parent)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(full):
            kind, mode, uid, gid, data = full[path]
            info = tarfile.TarInfo(path.lstrip("/") + ("/" if kind == "dir" else ""))
            info.mode, info.uid, info.gid, info.mtime = mode, uid, gid, mtime
            info.uname = info.gname = ""
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def gzip_bytes(data):
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    return out.getvalue()


def write_blob(layout, data):
    digest = sha256(data)
    path = os.path.join(layout, "blobs", "sha256", digest.split(":", 1)[1])
    with open(path, "wb") as f:
        f.write(data)
    return {"digest": digest, "size": len(data)}


def read(path):
    with open(path, "rb") as f:
        return f.read()


def build(args):
    mtime = epoch()
    entries = {}
    entries[f"{BIN_DIR}/{args.name}"] = ("file", 0o755, 0, 0, read(args.binary))
    for extra in args.extra_binary:
        # Statically linked helpers the image carries for other pods (the Postgres instance
        # manager, copied into Postgres pods by an init container).
        entries[f"{BIN_DIR}/{os.path.basename(extra)}"] = ("file", 0o755, 0, 0, read(extra))
    for library in args.library:
        # Stored as regular files at the path ldd printed (symlinks resolved).
        entries[library] = ("file", 0o755, 0, 0, read(os.path.realpath(library)))
    entries["/etc/passwd"] = ("file", 0o644, 0, 0, PASSWD.encode())
    entries["/etc/group"] = ("file", 0o644, 0, 0, GROUP.encode())
    entries["/etc/nsswitch.conf"] = ("file", 0o644, 0, 0, NSSWITCH.encode())
    entries["/etc/ssl/certs/ca-certificates.crt"] = ("file", 0o644, 0, 0, read(args.ca_bundle))
    entries["/home/nonroot"] = ("dir", 0o755, NONROOT, NONROOT, None)
    entries["/tmp"] = ("dir", 0o1777, 0, 0, None)
    tar = layer_tar(entries, mtime)
    layer = gzip_bytes(tar)

    os.makedirs(os.path.join(args.out, "blobs", "sha256"), exist_ok=True)
    for stale in os.listdir(os.path.join(args.out, "blobs", "sha256")):
        os.remove(os.path.join(args.out, "blobs", "sha256", stale))
    layer_desc = dict(mediaType=LAYER, **write_blob(args.out, layer))
    created = rfc3339(mtime)
    labels = {
        "org.opencontainers.image.title": args.name,
        "org.opencontainers.image.version": args.version,
        "org.opencontainers.image.licenses": "Apache-2.0",
    }
    if args.revision:
        labels["org.opencontainers.image.revision"] = args.revision
    config = {
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": f"{NONROOT}:{NONROOT}",
            "Env": [f"PATH={BIN_DIR}", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
            "Entrypoint": [f"{BIN_DIR}/{args.name}"],
            "Cmd": args.cmd,
            "WorkingDir": "/",
            "ExposedPorts": {port: {} for port in args.port},
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [sha256(tar)]},
        "history": [{"created": created, "created_by": "scripts/build-images.sh"}],
    }
    config_desc = dict(mediaType=CONFIG, **write_blob(args.out, canonical(config)))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": config_desc,
        "layers": [layer_desc],
        "annotations": {
            "org.opencontainers.image.created": created,
            "org.opencontainers.image.version": args.version,
        },
    }
    manifest_desc = dict(mediaType=MANIFEST, **write_blob(args.out, canonical(manifest)))
    manifest_desc["platform"] = {"architecture": "amd64", "os": "linux"}
    # The full reference in both annotations: containerd (`ctr import`, `kind load image-archive`)
    # reads io.containerd.image.name, other tools org.opencontainers.image.ref.name.
    manifest_desc["annotations"] = {
        "org.opencontainers.image.ref.name": args.ref,
        "io.containerd.image.name": args.ref,
    }
    index = {"schemaVersion": 2, "mediaType": INDEX, "manifests": [manifest_desc]}
    with open(os.path.join(args.out, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    with open(os.path.join(args.out, "index.json"), "wb") as f:
        f.write(canonical(index))
    total = sum(d["size"] for d in (layer_desc, config_desc, manifest_desc))
    print(f"{args.ref}  {manifest_desc['digest']}  {total} bytes "
          f"(layer {len(layer)} gzip, {len(tar)} tar)")


# ---------------------------------------------------------------------------------------------
# check


class Checks:
    def __init__(self):
        self.failed = 0

    def check(self, ok, what, detail=""):
        print(f"  {'PASS' if ok else 'FAIL'}  {what}" + (f": {detail}" if detail and not ok else ""))
        if not ok:
            self.failed += 1
        return ok


def blob(layout, desc):
    path = os.path.join(layout, "blobs", *desc["digest"].split(":", 1))
    return read(path) if os.path.isfile(path) else None


def verified(checks, layout, desc, what):
    data = blob(layout, desc)
    ok = data is not None and len(data) == desc["size"] and sha256(data) == desc["digest"]
    checks.check(ok, f"{what} blob {desc['digest'][:19]}... matches its digest and size",
                 "missing" if data is None else f"size {len(data)}, digest {sha256(data)}")
    return data if ok else None


def check(args):
    c = Checks()
    layout = args.layout
    try:
        marker = json.loads(read(os.path.join(layout, "oci-layout")))
        c.check(marker.get("imageLayoutVersion") == "1.0.0", "oci-layout declares version 1.0.0")
        index = json.loads(read(os.path.join(layout, "index.json")))
    except (OSError, ValueError) as error:
        c.check(False, "oci-layout and index.json are readable JSON", str(error))
        return 1
    manifests = index.get("manifests", [])
    c.check(index.get("schemaVersion") == 2 and len(manifests) == 1,
            "index.json: schemaVersion 2, one manifest")
    if not manifests:
        return 1
    desc = manifests[0]
    ref = desc.get("annotations", {}).get("org.opencontainers.image.ref.name")
    c.check(ref == args.ref, f"tagged {args.ref} (org.opencontainers.image.ref.name)", f"got {ref}")
    c.check(desc.get("platform") == {"architecture": "amd64", "os": "linux"}, "platform linux/amd64")
    data = verified(c, layout, desc, "manifest")
    if data is None:
        return 1
    manifest = json.loads(data)
    c.check(manifest.get("mediaType") == MANIFEST and manifest.get("schemaVersion") == 2,
            "manifest media type and schemaVersion")
    config_data = verified(c, layout, manifest["config"], "config")
    layers = manifest.get("layers", [])
    c.check(len(layers) == 1 and layers[0].get("mediaType") == LAYER, "one gzip layer")
    layer_data = [verified(c, layout, layer, "layer") for layer in layers]
    referenced = {d["digest"].split(":", 1)[1] for d in [desc, manifest["config"], *layers]}
    stray = set(os.listdir(os.path.join(layout, "blobs", "sha256"))) - referenced
    c.check(not stray, "no unreferenced blobs", ", ".join(sorted(stray)))
    if config_data is None or None in layer_data:
        return 1
    config = json.loads(config_data)
    tars = [gzip.decompress(layer) for layer in layer_data]
    c.check(config.get("rootfs", {}).get("diff_ids") == [sha256(t) for t in tars],
            "config rootfs.diff_ids match the uncompressed layers")
    c.check(config.get("os") == "linux" and config.get("architecture") == "amd64", "config linux/amd64")

    cfg = config.get("config", {})
    user = cfg.get("User", "")
    uid = user.split(":", 1)[0]
    c.check(user == f"{NONROOT}:{NONROOT}", f"User {NONROOT}:{NONROOT} (non-root, numeric: "
            "runAsNonRoot can verify it)", f"got {user!r}")
    entrypoint = [f"{BIN_DIR}/{args.name}"]
    c.check(cfg.get("Entrypoint") == entrypoint, f"Entrypoint {entrypoint}", f"got {cfg.get('Entrypoint')}")
    c.check(cfg.get("Cmd") == args.cmd, f"Cmd {args.cmd}", f"got {cfg.get('Cmd')}")
    env = dict(e.split("=", 1) for e in cfg.get("Env", []))
    c.check(BIN_DIR in env.get("PATH", "").split(":"),
            f"PATH contains {BIN_DIR} (exec probes name the binary without a path)", f"got {env.get('PATH')}")
    ports = sorted(cfg.get("ExposedPorts", {}))
    c.check(ports == sorted(args.port), f"ExposedPorts {sorted(args.port)}", f"got {ports}")
    version = cfg.get("Labels", {}).get("org.opencontainers.image.version")
    c.check(version == args.version, f"label org.opencontainers.image.version={args.version}", f"got {version}")

    members = {}
    for t in tars:
        with tarfile.open(fileobj=io.BytesIO(t)) as tar:
            for member in tar.getmembers():
                members["/" + member.name.strip("/")] = member
    binary = members.get(f"{BIN_DIR}/{args.name}")
    c.check(binary is not None and binary.isfile() and binary.mode & 0o111 and binary.uid == 0,
            f"{BIN_DIR}/{args.name}: executable, owned by root (the user cannot replace it)")
    tmp = members.get("/tmp")
    c.check(tmp is not None and tmp.isdir() and tmp.mode & 0o7777 == 0o1777, "/tmp exists, mode 1777")
    for path in ("/etc/passwd", "/etc/group", "/etc/ssl/certs/ca-certificates.crt"):
        c.check(path in members and members[path].isfile(), f"{path} present")
    setid = [p for p, m in members.items() if m.mode & 0o6000]
    c.check(not setid, "no setuid/setgid files", ", ".join(setid))
    writable = [p for p, m in members.items()
                if p != "/tmp" and m.uid != NONROOT and m.mode & 0o002 and not m.issym()]
    c.check(not writable, "nothing world-writable but /tmp", ", ".join(writable))
    if c.failed:
        print(f"  {c.failed} check(s) FAILED")
    return 1 if c.failed else 0


# ---------------------------------------------------------------------------------------------
# unpack, archive


def manifest_of(layout):
    index = json.loads(read(os.path.join(layout, "index.json")))
    return json.loads(blob(layout, index["manifests"][0]))


def unpack(args):
    manifest = manifest_of(args.layout)
    os.makedirs(args.into, exist_ok=True)
    for layer in manifest["layers"]:
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob(args.layout, layer)))) as tar:
            for member in tar.getmembers():
                if member.name.startswith("/") or ".." in member.name.split("/"):
                    sys.exit(f"unsafe path in layer: {member.name}")
            if hasattr(tarfile, "fully_trusted_filter"):  # Python >= 3.11.4 (3.12 warns without)
                tar.extractall(args.into, numeric_owner=True, filter="fully_trusted")
            else:
                tar.extractall(args.into, numeric_owner=True)
    os.chmod(args.into, 0o755)


def archive(args):
    """The layout as one tar, for `docker load` and `kind load image-archive`.

    Besides the OCI layout (which Docker 25+ and containerd read) it holds the manifest.json of
    `docker save`'s format, pointing at the same blobs, for older Docker engines.
    """
    index = json.loads(read(os.path.join(args.layout, "index.json")))
    desc = index["manifests"][0]
    manifest = json.loads(blob(args.layout, desc))
    path = lambda d: "blobs/sha256/" + d["digest"].split(":", 1)[1]
    docker = [{
        "Config": path(manifest["config"]),
        "RepoTags": [desc["annotations"]["org.opencontainers.image.ref.name"]],
        "Layers": [path(layer) for layer in manifest["layers"]],
    }]
    files = []
    for root, dirs, names in os.walk(args.layout):
        dirs.sort()
        files += [os.path.join(root, name) for name in sorted(names)]
    with tarfile.open(args.out, "w", format=tarfile.PAX_FORMAT) as tar:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, epoch()
            tar.addfile(info, io.BytesIO(data))
        for file in files:
            add(os.path.relpath(file, args.layout), read(file))
        add("manifest.json", json.dumps(docker).encode())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("build", "check"):
        p = sub.add_parser(name)
        p.add_argument("--name", required=True, help="binary name, also the image title")
        p.add_argument("--ref", required=True, help="full image reference (registry/repo:tag)")
        p.add_argument("--version", required=True)
        p.add_argument("--cmd", nargs="+", required=True, help="default arguments (Cmd)")
        p.add_argument("--port", action="append", default=[], help="exposed port, e.g. 8080/tcp")
        if name == "build":
            p.add_argument("--out", required=True)
            p.add_argument("--binary", required=True)
            p.add_argument("--library", action="append", default=[])
            p.add_argument("--extra-binary", action="append", default=[],
                           help="another (static) binary, put beside the main one")
            p.add_argument("--ca-bundle", default="/etc/ssl/certs/ca-certificates.crt")
            p.add_argument("--revision", default="")
        else:
            p.add_argument("--layout", required=True)
    p = sub.add_parser("unpack")
    p.add_argument("--layout", required=True)
    p.add_argument("--into", required=True)
    p = sub.add_parser("archive")
    p.add_argument("--layout", required=True)
    p.add_argument("--out", required=True)
    args = parser.parse_args()
    return {"build": build, "check": check, "unpack": unpack, "archive": archive}[args.command](args)


if __name__ == "__main__":
    sys.exit(main() or 0)
