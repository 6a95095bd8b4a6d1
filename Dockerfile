# syntax=docker/dockerfile:1
#
# Herald's container image.
#
#   docker build -t herald .
#   docker run -p 8080:8080 -v herald-data:/data herald
#
# The first start prints the generated admin token (also in /data/admin.token).

# ---------------------------------------------------------------------------
# Builder. rust:1-bookworm already holds gcc, make and perl, which the
# vendored libgit2 and OpenSSL need; nothing else is installed.
# ---------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /build

# 1. Dependencies only: the workspace manifests and the lock file, with stub
#    sources, so this layer is rebuilt only when a manifest or Cargo.lock
#    changes.
COPY Cargo.toml Cargo.lock ./
COPY actors/Cargo.toml actors/
COPY entity/Cargo.toml entity/
COPY migration/Cargo.toml migration/
RUN mkdir -p src actors/src entity/src migration/src tests/it \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs actors/src/lib.rs entity/src/lib.rs migration/src/lib.rs \
    && echo 'fn main() {}' > tests/it/main.rs \
    && cargo build --release --locked \
    && rm -rf src actors/src entity/src migration/src

# 2. The real sources. config/ first: src/config.rs embeds
#    config/default.toml with include_str!.
COPY config config
COPY src src
COPY actors/src actors/src
COPY entity/src entity/src
COPY migration/src migration/src
# COPY keeps the files' own modification times, which can be older than the
# stub build's artefacts; touching the crate roots makes cargo rebuild the four
# workspace crates (dependencies stay cached).
RUN touch src/main.rs src/lib.rs actors/src/lib.rs entity/src/lib.rs migration/src/lib.rs \
    && cargo build --release --locked \
    && cp target/release/herald /usr/local/bin/herald

# ---------------------------------------------------------------------------
# Runtime. libgit2, OpenSSL and SQLite are compiled into the binary; only the
# CA certificates (for https remotes and endpoints) and curl (for the
# HEALTHCHECK: herald has no health subcommand) are added.
# ---------------------------------------------------------------------------
FROM debian:bookworm-slim

LABEL org.opencontainers.image.title="Herald" \
      org.opencontainers.image.description="Watches git repositories and delivers every file change to subscribed apps as signed webhooks." \
      org.opencontainers.image.source="https://github.com/herald-dev/herald" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 herald \
    && useradd --system --uid 10001 --gid herald --home-dir /nonexistent \
       --no-create-home --shell /usr/sbin/nologin herald \
    && mkdir /data \
    && chown herald:herald /data

COPY --from=builder /usr/local/bin/herald /usr/local/bin/herald

# ./config/default.toml and ./config/{HERALD_ENV}.toml are read from here;
# mount or copy an override file into /app/config to change settings.
WORKDIR /app
COPY config config

ENV HERALD__DATA_DIR=/data \
    HERALD__SERVER__HOST=0.0.0.0

VOLUME ["/data"]
EXPOSE 8080
# Numeric, so that orchestrators can verify the user is not root.
USER 10001:10001

# Shell form so that a port changed through HERALD__SERVER__PORT is honoured.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${HERALD__SERVER__PORT:-8080}/health" > /dev/null || exit 1

ENTRYPOINT ["herald"]
CMD ["serve"]
