#!/usr/bin/env python3
"""Reads a ScaledApp (JSON, e.g. from `kubectl create --dry-run=client -o json`) on stdin and
writes it back fitted to the local cluster's real node (2 cores): images from the node's
registry (Postgres and Redis built from Debian packages, SCALEDAPP_* from e2e/cluster/up.sh),
small resource requests, the node's volume provisioner, and plain-http session cookies (the demo
talks to the app without TLS). Everything else (shards, replicas, workers, limits) is kept.
Used by scripts/demo.sh; the e2e tests build their ScaledApps in e2e/src/real.rs."""
import json
import os
import sys

app = json.load(sys.stdin)
spec = app.setdefault("spec", {})
small = {"cpu": "25m", "memory": "64Mi"}


def requests_only(section, requests):
    # Limits stay as written (they are above these requests).
    section.setdefault("resources", {})["requests"] = dict(requests)


storage_class = os.environ.get("SCALEDAPP_REAL_NODE_STORAGE_CLASS", "local-path")
requests_only(spec.setdefault("app", {}), small)
database = spec.setdefault("database", {})
requests_only(database, {"cpu": "50m", "memory": "128Mi"})
database.setdefault("storage", {})["storageClassName"] = storage_class
database["storage"]["size"] = "1Gi"
if os.environ.get("SCALEDAPP_POSTGRES_IMAGE"):
    database["image"] = os.environ["SCALEDAPP_POSTGRES_IMAGE"]
    if os.environ.get("SCALEDAPP_POSTGRES_BINDIR"):
        database["binDir"] = os.environ["SCALEDAPP_POSTGRES_BINDIR"]
    if os.environ.get("SCALEDAPP_POSTGRES_UID"):
        database["runAsUser"] = int(os.environ["SCALEDAPP_POSTGRES_UID"])
redis = spec.setdefault("cache", {}).setdefault("redis", {})
if os.environ.get("SCALEDAPP_REDIS_IMAGE"):
    redis["image"] = os.environ["SCALEDAPP_REDIS_IMAGE"]
redis.setdefault("persistence", {})["storageClassName"] = storage_class
for pool in spec.get("workers", []):
    requests_only(pool, small)
spec.setdefault("sessions", {})["cookieSecure"] = False
json.dump(app, sys.stdout)
