#!/usr/bin/env python3
"""OCI image layouts from a root filesystem tarball, and their verification (standard library only).

  ocipack.py pack   --rootfs ROOTFS.tar --out DIR --ref REF [--ref REF ...] --config CONFIG.json
  ocipack.py verify --layout DIR [--layout DIR ...]
  ocipack.py passwd --rootfs ROOTFS.tar --user NAME        (prints "uid gid" from etc/passwd)

`pack` writes an OCI image layout (oci-layout, index.json, blobs/sha256/...) with ONE layer: the
tarball as it is, gzip-compressed without a name or timestamp, so the same tarball always gives
the same digests. CONFIG.json holds the image config's "config" object (User, Env, Entrypoint,
Cmd, WorkingDir, ExposedPorts, Labels, StopSignal). Every --ref becomes an index entry (same
manifest) annotated with org.opencontainers.image.ref.name (the tag) and io.containerd.image.name
(the full reference).

`verify` checks a layout completely before anything is pushed: the index, every manifest, config
and layer blob against its digest and size, and each layer's uncompressed digest against the
config's diff_ids. It prints what is wrong and exits 1, so a corrupted layout is never pushed.
"""

import argparse
import gzip
import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
import zlib

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_TYPES = {LAYER_GZIP, "application/vnd.docker.image.rootfs.diff.tar.gzip"}
CHUNK = 1 << 20


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def digest_bytes(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob_path(layout, digest):
    algorithm, _, hexdigest = digest.partition(":")
    return os.path.join(layout, "blobs", algorithm, hexdigest)


def write_blob(layout, data):
    digest = digest_bytes(data)
    path = blob_path(layout, digest)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as out:
        out.write(data)
    return {"digest": digest, "size": len(data)}


def pack(args):
    with open(args.config) as source:
        image_config = json.load(source)
    layout = args.out + ".partial"
    shutil.rmtree(layout, ignore_errors=True)
    os.makedirs(os.path.join(layout, "blobs", "sha256"))

    # Stream the tarball through sha256 (diff_id) and gzip (mtime 0, no name) at once.
    raw = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=layout, delete=False) as staged:
        with open(args.rootfs, "rb") as source, gzip.GzipFile(
            filename="", mode="wb", fileobj=staged, mtime=0, compresslevel=6
        ) as compressed:
            while chunk := source.read(CHUNK):
                raw.update(chunk)
                compressed.write(chunk)
    layer_digest = hashlib.sha256()
    with open(staged.name, "rb") as source:
        while chunk := source.read(CHUNK):
            layer_digest.update(chunk)
    layer = {
        "mediaType": LAYER_GZIP,
        "digest": "sha256:" + layer_digest.hexdigest(),
        "size": os.path.getsize(staged.name),
    }
    os.replace(staged.name, blob_path(layout, layer["digest"]))

    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": image_config,
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + raw.hexdigest()]},
        "history": [{"created_by": args.history}] if args.history else [],
    }
    if args.created:
        config["created"] = args.created
    config_desc = write_blob(layout, canonical(config))
    config_desc["mediaType"] = CONFIG
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": config_desc,
        "layers": [layer],
    }
    manifest_desc = write_blob(layout, canonical(manifest))
    entries = []
    for ref in args.ref:
        tag = ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else "latest"
        entries.append(
            dict(
                manifest_desc,
                mediaType=MANIFEST,
                annotations={"org.opencontainers.image.ref.name": tag, "io.containerd.image.name": ref},
            )
        )
    with open(os.path.join(layout, "index.json"), "wb") as out:
        out.write(canonical({"schemaVersion": 2, "mediaType": INDEX, "manifests": entries}))
    with open(os.path.join(layout, "oci-layout"), "wb") as out:
        out.write(canonical({"imageLayoutVersion": "1.0.0"}))
    shutil.rmtree(args.out, ignore_errors=True)
    os.replace(layout, args.out)
    print(manifest_desc["digest"])


def read_blob(layout, desc, what, problems):
    """The blob's path if it exists and matches its descriptor, else None (problems say why)."""
    path = blob_path(layout, desc.get("digest", ""))
    if not os.path.isfile(path):
        problems.append(f"{what}: blob {desc.get('digest')} is missing")
        return None
    before = len(problems)
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    if "sha256:" + digest.hexdigest() != desc.get("digest"):
        problems.append(f"{what}: blob {desc.get('digest')} has digest sha256:{digest.hexdigest()}")
    if size != desc.get("size"):
        problems.append(f"{what}: blob {desc.get('digest')} has {size} bytes, the descriptor says {desc.get('size')}")
    return path if len(problems) == before else None


def uncompressed_digest(path):
    digest = hashlib.sha256()
    with gzip.open(path, "rb") as source:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def verify_layout(layout):
    problems = []
    try:
        with open(os.path.join(layout, "oci-layout")) as source:
            if json.load(source).get("imageLayoutVersion") != "1.0.0":
                problems.append("oci-layout: imageLayoutVersion is not 1.0.0")
        with open(os.path.join(layout, "index.json")) as source:
            index = json.load(source)
    except (OSError, ValueError) as error:
        return [f"not an OCI image layout: {error}"]
    manifests = index.get("manifests") or []
    if not manifests:
        problems.append("index.json lists no manifest")
    for entry in manifests:
        name = (entry.get("annotations") or {}).get("org.opencontainers.image.ref.name", entry.get("digest"))
        path = read_blob(layout, entry, f"manifest {name}", problems)
        if path is None:
            continue
        try:
            with open(path) as source:
                manifest = json.load(source)
        except ValueError as error:
            problems.append(f"manifest {name}: not JSON: {error}")
            continue
        config_path = read_blob(layout, manifest.get("config", {}), f"config of {name}", problems)
        diff_ids = []
        if config_path is not None:
            try:
                with open(config_path) as source:
                    diff_ids = json.load(source).get("rootfs", {}).get("diff_ids", [])
            except ValueError as error:
                problems.append(f"config of {name}: not JSON: {error}")
        layers = manifest.get("layers", [])
        if len(layers) != len(diff_ids):
            problems.append(f"{name}: {len(layers)} layers but {len(diff_ids)} diff_ids")
        for number, layer in enumerate(layers):
            layer_path = read_blob(layout, layer, f"layer {number} of {name}", problems)
            if layer_path is None or layer.get("mediaType") not in LAYER_TYPES or number >= len(diff_ids):
                continue
            try:
                actual = uncompressed_digest(layer_path)
            except (OSError, EOFError, zlib.error) as error:
                problems.append(f"layer {number} of {name}: cannot be decompressed: {error}")
                continue
            if actual != diff_ids[number]:
                problems.append(f"layer {number} of {name}: uncompressed digest {actual}, diff_id {diff_ids[number]}")
    return problems


def verify(args):
    failed = False
    for layout in args.layout:
        problems = verify_layout(layout)
        for problem in problems:
            print(f"{layout}: {problem}", file=sys.stderr)
        failed |= bool(problems)
    sys.exit(1 if failed else 0)


def passwd(args):
    with tarfile.open(args.rootfs) as tar:
        for name in ("./etc/passwd", "etc/passwd"):
            try:
                member = tar.extractfile(name)
            except KeyError:
                continue
            for line in member.read().decode().splitlines():
                fields = line.split(":")
                if fields[0] == args.user:
                    print(fields[2], fields[3])
                    return
    sys.exit(f"no user {args.user} in {args.rootfs}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--rootfs", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--ref", action="append", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--history", default="")
    p.add_argument("--created", default="")
    p = sub.add_parser("verify")
    p.add_argument("--layout", action="append", required=True)
    p = sub.add_parser("passwd")
    p.add_argument("--rootfs", required=True)
    p.add_argument("--user", required=True)
    args = parser.parse_args()
    {"pack": pack, "verify": verify, "passwd": passwd}[args.command](args)


if __name__ == "__main__":
    main()
