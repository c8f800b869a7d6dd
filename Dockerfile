# syntax=docker/dockerfile:1
#
# The Skyloom operator image: one static binary (x86_64-unknown-linux-musl) and the CA
# certificate bundle on an empty base, running as the numeric non-root user 65532.
#
#   docker build -t ghcr.io/skyloom/skyloom:0.1.0 .
#
# The builder stage runs scripts/build-static, the same script that builds and checks the
# static binary on machines without a container engine (CI), so the recipe is proven there.

ARG RUST_VERSION=1.95.0

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS builder
# musl-gcc: ring (TLS) has C code that must be compiled for musl too.
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools ca-certificates file binutils \
 && rm -rf /var/lib/apt/lists/*
RUN rustup target add x86_64-unknown-linux-musl
WORKDIR /src
# Every workspace member's manifest is needed to resolve the locked workspace.
COPY Cargo.toml Cargo.lock rustfmt.toml clippy.toml ./
COPY crates crates
COPY tests tests
COPY scripts/build-static scripts/build-static
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    scripts/build-static \
 && install -D -m 0555 target/x86_64-unknown-linux-musl/release/skyloom /out/skyloom

FROM scratch
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="skyloom" \
      org.opencontainers.image.description="Kubernetes operator that places AI services across clouds" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=builder /out/skyloom /skyloom
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/skyloom"]
CMD ["run"]
