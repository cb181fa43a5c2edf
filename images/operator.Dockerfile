# syntax=docker/dockerfile:1
# The operator image: two static (musl) binaries on an empty base, running as uid 65532: the
# operator, and the Postgres instance manager `scaled-instance`, which an init container of every
# Postgres pod runs from this image to copy itself into the pod (`scaled-instance copy-to`).
#
# Build from the REPOSITORY ROOT (the context must hold the whole workspace):
#   docker build -f images/operator.Dockerfile -t ghcr.io/scaled-dev/scaledapp-operator:0.1.0 .
# BuildKit (the default builder since Docker 23) reads images/operator.Dockerfile.dockerignore,
# which keeps target/ and other local state out of the build context.
#
# The chart runs it with args ["run", "--log-format", "json"] and a read-only root filesystem;
# nothing here needs to write anywhere. Without a Docker engine, scripts/build-images.sh builds
# the same layout (as an OCI image layout under target/images/) from this machine's binaries.

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
    cargo build --release --locked --target "${TARGET}" -p scaledapp-operator -p scaled-instance \
 && install -D -m 0755 "target/${TARGET}/release/scaledapp-operator" /rootfs/usr/local/bin/scaledapp-operator \
 && install -D -m 0755 "target/${TARGET}/release/scaled-instance" /rootfs/usr/local/bin/scaled-instance
# The rest of the root filesystem: CA bundle, a nonroot user, an empty /tmp.
RUN install -d -m 0755 /rootfs/etc/ssl/certs /rootfs/home/nonroot \
 && install -d -m 1777 /rootfs/tmp \
 && chown 65532:65532 /rootfs/home/nonroot \
 && cp /etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/ca-certificates.crt \
 && printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >/rootfs/etc/passwd \
 && printf 'root:x:0:\nnonroot:x:65532:\n' >/rootfs/etc/group \
 && printf 'hosts: files dns\n' >/rootfs/etc/nsswitch.conf \
 && /rootfs/usr/local/bin/scaledapp-operator --version \
 && /rootfs/usr/local/bin/scaled-instance --version

FROM scratch
ARG VERSION=0.1.0
COPY --from=build /rootfs/ /
USER 65532:65532
ENV PATH=/usr/local/bin \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
# /healthz, /readyz and /metrics.
EXPOSE 8081
LABEL org.opencontainers.image.title="scaledapp-operator" \
      org.opencontainers.image.description="Kubernetes operator that reconciles a ScaledApp into a whole scaled web stack." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["/usr/local/bin/scaledapp-operator"]
CMD ["run"]
