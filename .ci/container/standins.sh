#!/usr/bin/env bash
# Local stand-ins for the base images Herald's Dockerfile and compose.yaml
# name, made from Debian's archive: no image registry is needed. Each is made
# once and kept in podman's storage; one is made again when its recipe (this
# folder's files) changes, or when it is missing (a new machine).
#
#   debian:trixie-slim      debootstrap --variant=minbase trixie
#   busybox:1.37.0-musl     trixie's busybox-static, alone
#   rust:1.95-trixie        trixie + gcc, make, perl + this machine's toolchain
#   postgres:17.6-alpine    trixie's PostgreSQL 17, the official POSTGRES_* contract
#   prom/prometheus:v3.5.0  trixie's Prometheus
#
# The Dockerfile and compose.yaml are used unchanged: the stand-ins carry the
# names they ask for.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/standins"

toolchain="$(rustc --print sysroot)"
rust_version="$(rustc --version)"

# The stand-in exists and was made from this recipe.
current() {
  [ "$(podman image inspect --format '{{ index .Labels "dev.herald.ci.recipe" }}' "$1" 2>/dev/null)" = "$2" ]
}

base=localhost/herald-ci/trixie:base
base_recipe="debootstrap-minbase-trixie-1"
if ! current "$base" "$base_recipe"; then
  echo "stand-in: $base (debootstrap --variant=minbase trixie)"
  root="$(mktemp -d)"
  debootstrap --variant=minbase trixie "$root" http://deb.debian.org/debian >/dev/null
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | podman import --quiet \
    --change 'CMD ["bash"]' \
    --change "LABEL dev.herald.ci.recipe=$base_recipe" \
    - "$base" >/dev/null
  rm -rf "$root"
fi

# A stand-in's recipe: its Containerfile, the files beside it, the base image
# it starts from and, for rust, the toolchain it carries.
standin() { # name containerfile [extra podman build arguments...]
  local name="$1" file="$2" tag
  shift 2
  tag="$( { cat "$file" postgres-entrypoint.sh; podman image inspect --format '{{.Id}}' "$base"; \
            [ "$file" != rust.Containerfile ] || echo "$rust_version"; } | sha256sum | cut -c1-16)"
  if ! current "$name" "$tag"; then
    echo "stand-in: $name ($file)"
    podman build --quiet --pull=never --label "dev.herald.ci.recipe=$tag" \
      -f "$file" -t "$name" "$@" . >/dev/null
  fi
}

if ! current docker.io/library/debian:trixie-slim "$base_recipe"; then
  echo "stand-in: debian:trixie-slim"
  podman tag "$base" docker.io/library/debian:trixie-slim
fi
standin docker.io/library/busybox:1.37.0-musl busybox.Containerfile
standin docker.io/library/rust:1.95-trixie rust.Containerfile --volume "$toolchain:/toolchain:ro"
standin docker.io/library/postgres:17.6-alpine postgres.Containerfile
standin docker.io/prom/prometheus:v3.5.0 prometheus.Containerfile
