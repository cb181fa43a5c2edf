# syntax=docker/dockerfile:1
# The app image: one static (musl) binary on an empty base, running as uid 65532. The operator
# runs it as `serve` (app pods), `migrate` (their init container) and `worker --queues ...`;
# the binary is also on PATH for `kubectl exec ... scaled-app`.
#
# Build from the REPOSITORY ROOT (the context must hold the whole workspace):
#   docker build -f images/app.Dockerfile -t ghcr.io/scaled-dev/scaled-app:0.1.0 .
# BuildKit (the default builder since Docker 23) reads images/app.Dockerfile.dockerignore,
# which keeps target/ and other local state out of the build context.
#
# Pods run it with a read-only root filesystem (/tmp is an emptyDir there). Without a Docker
# engine, scripts/build-images.sh builds the same layout (as an OCI image layout under
# target/images/) from this machine's binaries.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
ARG TARGET=x86_64-unknown-linux-musl
# musl-tools: the C compiler `ring` needs for the musl target (Debian's, unpinned: the builder
# image's release decides the version).
# hadolint ignore=DL3008
RUN rustup target add "${TARGET}" \
 && apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
ENV CC_x86_64_unknown_linux_musl=musl-gcc
WORKDIR /src
# Every workspace member's manifest must exist for cargo to load the workspace.
COPY Cargo.toml Cargo.lock ./
COPY contract contract
COPY operator operator
COPY app app
COPY instance instance
COPY e2e e2e
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target "${TARGET}" -p scaled-app \
 && install -D -m 0755 "target/${TARGET}/release/scaled-app" /rootfs/usr/local/bin/scaled-app
# The rest of the root filesystem: CA bundle, a nonroot user, an empty /tmp.
RUN install -d -m 0755 /rootfs/etc/ssl/certs /rootfs/home/nonroot \
 && install -d -m 1777 /rootfs/tmp \
 && chown 65532:65532 /rootfs/home/nonroot \
 && cp /etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/ca-certificates.crt \
 && printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >/rootfs/etc/passwd \
 && printf 'root:x:0:\nnonroot:x:65532:\n' >/rootfs/etc/group \
 && printf 'hosts: files dns\n' >/rootfs/etc/nsswitch.conf \
 && /rootfs/usr/local/bin/scaled-app --help >/dev/null

FROM scratch
ARG VERSION=0.1.0
COPY --from=build /rootfs/ /
USER 65532:65532
ENV PATH=/usr/local/bin \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
# HTTP API (/health, /ready, /api/...) and /metrics.
EXPOSE 8080 9090
LABEL org.opencontainers.image.title="scaled-app" \
      org.opencontainers.image.description="The stateless service (and its workers) that a ScaledApp runs." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["/usr/local/bin/scaled-app"]
CMD ["serve"]
