# syntax=docker/dockerfile:1
#
# Herald's container image.
#
#   docker build -t herald .
#   docker run -p 8080:8080 -v herald-data:/data herald
#
# The first start prints the generated admin token (also in /data/admin.token,
# `docker exec <container> cat /data/admin.token`). `compose.yaml` runs it with
# PostgreSQL, an OpenTelemetry collector, Prometheus and Grafana.
#
# Build arguments for the OCI labels (all optional):
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" \
#                --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" -t herald .

# ---------------------------------------------------------------------------
# Builder. The rust image already holds gcc, make and perl, which the
# vendored C libraries (libgit2, SQLite, ring) need; nothing else is
# installed (libgit2's zlib is zlib-rs, built by cargo: zlib/; TLS is rustls,
# no OpenSSL). 1.95 is the workspace's rust-version.
#
# PROFILE is the cargo profile of the binary: `dist` (fat LTO, one codegen
# unit: the shipped build, the smallest and fastest binary, a final link of
# minutes) by default; `release` builds in about half the time, which is what
# CI uses (.ci/container/run).
#
# Every cargo step may read the extra CA bundle a TLS-inspecting proxy needs
# (`--secret id=build-ca,src=FILE`); a secret is mounted for the one step and
# never stored in a layer or in the image.
# ---------------------------------------------------------------------------
ARG PROFILE=dist

FROM rust:1.95-trixie AS chef
WORKDIR /build
RUN --mount=type=secret,id=build-ca,required=false \
    --mount=type=cache,id=herald-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    if [ -s /run/secrets/build-ca ]; then export CARGO_HTTP_CAINFO=/run/secrets/build-ca; fi \
    && cargo install cargo-chef --version 0.1.78 --locked \
    && rm -rf /usr/local/cargo/git

# 1. The dependency recipe: cargo-chef reads every workspace manifest and the
#    lock file and writes what the dependency build needs (the manifests, with
#    a stub for every target they declare) as recipe.json. This layer runs on
#    every change, but its output changes only when a manifest or Cargo.lock
#    does, so the dependency layer below stays cached otherwise.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# 2. The dependencies, built once per recipe. The zlib/ crate (libgit2's
#    zlib-rs, a `[patch]` outside the workspace) is a dependency, so it comes
#    whole. The registry is a cache mount: a changed lock file downloads only
#    the new crates.
FROM chef AS deps
ARG PROFILE
COPY --from=planner /build/recipe.json recipe.json
COPY zlib zlib
RUN --mount=type=secret,id=build-ca,required=false \
    --mount=type=cache,id=herald-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    if [ -s /run/secrets/build-ca ]; then export CARGO_HTTP_CAINFO=/run/secrets/build-ca; fi \
    && cargo chef cook --profile "$PROFILE" --locked --bin herald --recipe-path recipe.json

# 3. Herald itself. The build context is the whole repository less what
#    .dockerignore names (build output, local data, git metadata), so nothing
#    the build reads can be missing from it. (`--target deps` builds the
#    dependency layer alone, for a CI cache to keep under a tag.)
FROM deps AS builder
ARG PROFILE
COPY . .
RUN --mount=type=secret,id=build-ca,required=false \
    --mount=type=cache,id=herald-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    if [ -s /run/secrets/build-ca ]; then export CARGO_HTTP_CAINFO=/run/secrets/build-ca; fi \
    && cargo build --profile "$PROFILE" --locked --bin herald \
    && if [ "$PROFILE" = dev ]; then out=debug; else out="$PROFILE"; fi \
    && cp "target/$out/herald" /usr/local/bin/herald

# ---------------------------------------------------------------------------
# The health probe. The runtime image has no curl or wget, and herald has no
# health subcommand; rather than grow the CLI for the container's sake, the
# HEALTHCHECK uses BusyBox's wget: one statically linked file (about 1 MB),
# copied alone, with no shared library and no package manager behind it.
# ---------------------------------------------------------------------------
FROM busybox:1.37.0-musl AS probe

# ---------------------------------------------------------------------------
# Runtime. libgit2, zlib-rs, ring and SQLite are compiled into the binary;
# it links only libc, libm and libgcc_s, all part of every Debian image. The CA
# certificates (for https remotes, webhook endpoints and the OTLP exporter) are
# the builder's bundle: one file, no apt run in this stage.
# ---------------------------------------------------------------------------
FROM debian:trixie-slim AS runtime

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown

LABEL org.opencontainers.image.title="Herald" \
      org.opencontainers.image.description="Watches git repositories and delivers every file change to subscribed apps as signed webhooks." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="https://github.com/herald-dev/herald" \
      org.opencontainers.image.url="https://github.com/herald-dev/herald" \
      org.opencontainers.image.documentation="https://github.com/herald-dev/herald#running-in-a-container" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/debian:trixie-slim"

# A fixed, numeric uid/gid, so that orchestrators can check the user is not
# root and volumes can be prepared for it (chown 10001:10001).
RUN groupadd --system --gid 10001 herald \
    && useradd --system --uid 10001 --gid herald --home-dir /data \
       --no-create-home --shell /usr/sbin/nologin herald \
    && mkdir -p /data /etc/herald \
    && chown herald:herald /data \
    && chmod 0700 /data

COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=probe /bin/busybox /usr/local/bin/busybox
COPY --from=builder /usr/local/bin/herald /usr/local/bin/herald
# The reference configuration; mount a folder with default.toml and/or
# {HERALD_ENV}.toml over /etc/herald to change settings, or set
# HERALD__SECTION__KEY variables.
COPY config/default.toml /etc/herald/default.toml

ENV HERALD_CONFIG_DIR=/etc/herald \
    HERALD__DATA_DIR=/data \
    HERALD__SERVER__HOST=0.0.0.0 \
    HERALD__SERVER__PORT=8080 \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt

WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
USER 10001:10001

# /health answers 200 while the process serves (liveness; /ready also checks
# the database). Through /bin/sh so that a port changed with
# HERALD__SERVER__PORT is honoured.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/bin/sh", "-c", "exec busybox wget -q -T 4 -O /dev/null \"http://127.0.0.1:${HERALD__SERVER__PORT}/health\""]

# SIGTERM starts Herald's graceful shutdown: open requests and then the actor
# tree each get server.shutdown_timeout (30s by default), so give the container
# `docker stop -t 75` / compose's stop_grace_period: 75s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["herald"]
CMD ["serve"]
