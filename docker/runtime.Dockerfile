# syntax=docker/dockerfile:1.7
# The Runnel runtime image: the `runnel` binary (`runnel run JOB.yaml`,
# `runnel savepoint ...`) on distroless, running as a numeric non-root user.
# The operator starts it as `runnel run /etc/runnel/job.yaml ...` (the job
# file is a ConfigMap volume), so `runnel` must be on PATH.
#
#   docker build -f docker/runtime.Dockerfile -t runnel:dev .
#
# librdkafka is compiled into the binary (the rdkafka crate's bundled build);
# the one shared library it needs beyond glibc and libgcc is zlib
# (`ldd target/debug/runnel`: libz.so.1), which distroless/cc lacks, so it is
# copied from the build stage (same Debian release, same glibc).
#
# Read-only root filesystem: `runnel run` writes only to its checkpoint and
# savepoint storage and to file sinks. With `s3://` storage nothing local is
# written; `file://` storage and `file` sinks need a mounted volume at their
# path. TMPDIR is /tmp: mount an emptyDir there for `runnel demo`/`bench`.

ARG RUST_VERSION=1.95
ARG RUNTIME_BASE=gcr.io/distroless/cc-debian12:nonroot

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# Cargo's registry, git checkouts and the target directory live in cache
# mounts; librdkafka's C build is cached with the rest of target/.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,id=runnel-runtime-target,sharing=locked \
    cargo build --release --locked -p runnel-runtime --bin runnel \
    && install -D -m 0755 target/release/runnel /out/root/usr/local/bin/runnel \
    && strip --strip-debug /out/root/usr/local/bin/runnel
# Shared libraries the binary needs that the base image does not have.
RUN set -eu; \
    triple="$(gcc -dumpmachine)"; \
    mkdir -p "/out/root/usr/lib/${triple}"; \
    cp -L "/usr/lib/${triple}/libz.so.1" "/out/root/usr/lib/${triple}/libz.so.1"; \
    ldd /out/root/usr/local/bin/runnel

FROM ${RUNTIME_BASE}
LABEL org.opencontainers.image.title="runnel" \
      org.opencontainers.image.description="Runnel stream-processing runtime" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/root/ /
ENV TMPDIR=/tmp
# distroless' "nonroot" user, by number so that runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/runnel"]
CMD ["--help"]
