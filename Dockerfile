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
# vendored C libraries (libgit2, SQLite, aws-lc) need; nothing else is
# installed (libgit2's zlib is zlib-rs, built by cargo: zlib/; TLS is rustls,
# no OpenSSL).
# 1.95 is the workspace's rust-version.
# ---------------------------------------------------------------------------
FROM rust:1.95-trixie AS builder
WORKDIR /build

# 1. Dependencies only: the workspace manifests and the lock file, with stub
#    sources for every target the manifests declare (the root package's lib
#    and bin, the `it` test, the benches, the three member crates), so
#    that this layer is rebuilt only when a manifest or Cargo.lock changes.
#    The registry is a cache mount: a changed lock file downloads only the
#    new crates. (.ci/check_deploy.py fails when a declared target is missing
#    here.)
COPY Cargo.toml Cargo.lock ./
COPY actors/Cargo.toml actors/
COPY entity/Cargo.toml entity/
COPY migration/Cargo.toml migration/
# The crate that gives libgit2 zlib-rs (`[patch]` in Cargo.toml): complete,
# not a stub.
COPY zlib zlib
RUN --mount=type=cache,id=herald-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    mkdir -p src actors/src entity/src migration/src tests/it benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs actors/src/lib.rs entity/src/lib.rs migration/src/lib.rs \
    && echo 'fn main() {}' > tests/it/main.rs \
    && echo 'fn main() {}' > benches/change_engine.rs \
    && echo 'fn main() {}' > benches/delivery.rs \
    && echo 'fn main() {}' > benches/inbound.rs \
    && echo 'fn main() {}' > benches/cluster.rs \
    && echo 'fn main() {}' > benches/reference.rs \
    && echo 'fn main() {}' > benches/history.rs \
    && echo 'fn main() {}' > benches/many_repos.rs \
    && echo 'fn main() {}' > benches/window.rs \
    && echo 'fn main() {}' > benches/streams.rs \
    && echo 'fn main() {}' > benches/rollups.rs \
    && echo 'fn main() {}' > benches/console.rs \
    && cargo build --profile dist --locked \
    && rm -rf src actors/src entity/src migration/src

# 2. The real sources. src/config.rs embeds config/default.toml with
#    include_str!, so that file comes too.
COPY config/default.toml config/
COPY src src
COPY actors/src actors/src
COPY entity/src entity/src
COPY migration/src migration/src
# COPY keeps the files' own modification times, which can be older than the
# stub build's artefacts; touching the crate roots makes cargo rebuild the four
# workspace crates (the dependencies stay cached).
RUN --mount=type=cache,id=herald-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    touch src/main.rs src/lib.rs actors/src/lib.rs entity/src/lib.rs migration/src/lib.rs \
    && cargo build --profile dist --locked \
    && cp target/dist/herald /usr/local/bin/herald

# ---------------------------------------------------------------------------
# The health probe. The runtime image has no curl or wget, and herald has no
# health subcommand; rather than grow the CLI for the container's sake, the
# HEALTHCHECK uses BusyBox's wget: one statically linked file (about 1 MB),
# copied alone, with no shared library and no package manager behind it.
# ---------------------------------------------------------------------------
FROM busybox:1.37.0-musl AS probe

# ---------------------------------------------------------------------------
# Runtime. libgit2, zlib-rs, aws-lc and SQLite are compiled into the binary;
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
