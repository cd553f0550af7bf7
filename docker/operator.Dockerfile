# syntax=docker/dockerfile:1.7
# The Runnel operator image: `runnel-operator` on distroless (glibc, libgcc,
# CA certificates, no shell), running as a numeric non-root user. Needs no
# writable path: it fits a read-only root filesystem as is.
#
#   docker build -f docker/operator.Dockerfile -t runnel-operator:dev .
#
# Build context: the repository root (see .dockerignore).

ARG RUST_VERSION=1.95
ARG RUNTIME_BASE=gcr.io/distroless/cc-debian12:nonroot

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# Cargo's registry, git checkouts and the target directory live in cache
# mounts, so a rebuild after a source change recompiles only our crates.
# The binary is copied out of the target mount (which is gone after RUN).
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,id=runnel-operator-target,sharing=locked \
    cargo build --release --locked -p runnel-operator --bin runnel-operator \
    && install -D -m 0755 target/release/runnel-operator /out/runnel-operator \
    && strip --strip-debug /out/runnel-operator

FROM ${RUNTIME_BASE}
LABEL org.opencontainers.image.title="runnel-operator" \
      org.opencontainers.image.description="Kubernetes operator for Runnel StreamJobs" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/runnel-operator /usr/local/bin/runnel-operator
# distroless' "nonroot" user, by number so that runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/runnel-operator"]
CMD ["run"]
