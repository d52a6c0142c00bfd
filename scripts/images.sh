#!/usr/bin/env bash
# `make images` / `make test-images`: the images, built here without Docker.
#
#   scripts/images.sh build   the operator and api-server images from docker/Dockerfile, the
#                             cache sidecar's Redis image (docker/redis.Dockerfile) and the
#                             PostgreSQL of examples/postgres-dev.yaml (docker/postgres.Dockerfile)
#   scripts/images.sh test    runs each image as its non-root user, read-only root filesystem,
#                             no capabilities, and checks it answers: operator --version,
#                             api-server /readyz against a local PostgreSQL, Redis PING, and
#                             a query as the PostgreSQL image's own user and database
#
# No registry can be reached here, so the bases are made locally: a Debian 12 (bookworm)
# root filesystem from debootstrap (cached in ~/.cache/scalable-api-operator), imported
# into podman. The Dockerfile takes its bases and binaries from build arguments: here
# RUNTIME_BASE is that base and BINARIES=prebuilt copies the binaries this host built
# (Debian 12 too, so the same glibc); on a Docker host its defaults (rust and distroless
# from their registries, compiled in the image) apply unchanged (scripts/docker-build.sh).
# podman runs with runc (crun cannot use this machine's hybrid cgroups) and no default
# ulimits (see below).
# Every server a test starts binds 127.0.0.1 (host network, BIND_ADDRESS / --bind).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/scalable-api-operator"
version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)"
BASE_IMAGE="${BASE_IMAGE:-localhost/scalable-api-operator/debian-base:bookworm}"
OPERATOR_IMAGE="${OPERATOR_IMAGE:-ghcr.io/scalable-dev/scalable-api-operator:$version}"
API_IMAGE="${API_IMAGE:-ghcr.io/scalable-dev/api-server:$version}"
REDIS_IMAGE="${REDIS_IMAGE:-localhost/scalable-api-operator/redis:7.0}"
POSTGRES_IMAGE="${POSTGRES_IMAGE:-localhost/scalable-api-operator/postgres:15}"
# Containers get no default rlimits: setting them needs CAP_SYS_RESOURCE, which this
# machine's root lacks. A file of our own, so the system's containers.conf is left alone.
mkdir -p "$cache"
printf '[containers]\ndefault_ulimits = []\n' >"$cache/containers.conf"
export CONTAINERS_CONF="$cache/containers.conf"
podman() { command podman --runtime runc "$@"; }
log() { echo "images: $*" >&2; }

base_image() {
  if podman image exists "$BASE_IMAGE"; then return; fi
  local rootfs="$cache/rootfs-bookworm"
  if [ ! -x "$rootfs/bin/sh" ]; then
    log "making a Debian 12 root filesystem with debootstrap (a few minutes, once)"
    rm -rf "$rootfs.tmp"
    mkdir -p "$cache"
    debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs.tmp" \
      http://deb.debian.org/debian >"$cache/debootstrap.log" 2>&1 \
      || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
    rm -rf "$rootfs.tmp"/var/cache/apt/archives/*.deb "$rootfs.tmp"/var/lib/apt/lists/* \
      "$rootfs.tmp"/usr/share/doc/* "$rootfs.tmp"/usr/share/man/*
    mv "$rootfs.tmp" "$rootfs"
  fi
  log "importing $BASE_IMAGE"
  tar -C "$rootfs" -c . | podman import --change 'CMD ["/bin/sh"]' - "$BASE_IMAGE" >/dev/null
}

build() {
  "$root/scripts/ensure-deps.sh" images
  base_image
  log "building the binaries (cargo build --release)"
  cargo build --quiet --release --locked -p scalable-api-operator -p api-server --bins
  local target="${CARGO_TARGET_DIR:-$root/target}/release"
  rm -rf .prebuilt && mkdir .prebuilt
  cp "$target/scalable-api-operator" "$target/api-server" .prebuilt/
  local revision created
  revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
  created="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  local image target_name
  for target_name in operator api-server; do
    image="$OPERATOR_IMAGE"; [ "$target_name" = api-server ] && image="$API_IMAGE"
    log "building $image (target $target_name)"
    podman build --quiet -f docker/Dockerfile --target "$target_name" \
      --build-arg BINARIES=prebuilt --build-arg RUNTIME_BASE="$BASE_IMAGE" \
      --build-arg BUILDER_BASE="$BASE_IMAGE" \
      --build-arg VERSION="$version" --build-arg REVISION="$revision" --build-arg CREATED="$created" \
      -t "$image" . >/dev/null
  done
  rm -rf .prebuilt
  log "building $REDIS_IMAGE"
  podman build --quiet --network host -f docker/redis.Dockerfile --build-arg BASE="$BASE_IMAGE" \
    -t "$REDIS_IMAGE" docker/ >/dev/null
  log "building $POSTGRES_IMAGE"
  podman build --quiet --network host -f docker/postgres.Dockerfile --build-arg BASE="$BASE_IMAGE" \
    -t "$POSTGRES_IMAGE" docker/ >/dev/null
  log "built $OPERATOR_IMAGE, $API_IMAGE, $REDIS_IMAGE, $POSTGRES_IMAGE"
}

# What every check runs with: the image's own non-root user, nothing writable but /tmp,
# no capabilities, no privilege escalation.
locked_down=(--rm --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges)

free_port() { "$root/scripts/dev-services.sh" free-port; }

# wait_for WHAT COMMAND...: until COMMAND succeeds, at most 30 s.
wait_for() {
  local what="$1"; shift
  for _ in $(seq 1 150); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  log "$what did not answer within 30 s"
  return 1
}

test_images() {
  local failed=0 name
  local images=("$OPERATOR_IMAGE" "$API_IMAGE" "$REDIS_IMAGE" "$POSTGRES_IMAGE")
  for image in "${images[@]}"; do
    podman image exists "$image" || { log "$image is missing: run scripts/images.sh build"; exit 1; }
  done
  local user
  for image in "${images[@]}"; do
    user="$(podman image inspect --format '{{.Config.User}}' "$image")"
    case "$user" in ""|0|0:*|root|root:*) log "FAIL $image runs as root ('$user')"; failed=1 ;; esac
  done

  local out
  if out="$(podman run "${locked_down[@]}" --network none "$OPERATOR_IMAGE" --version 2>&1)" \
      && [[ "$out" == *"$version"* ]]; then
    log "ok   operator --version: $out"
  else
    log "FAIL operator --version: $out"; failed=1
  fi

  local redis_port
  redis_port="$(free_port)"
  name="images-test-redis-$$"
  podman run -d "${locked_down[@]}" --network host --name "$name" "$REDIS_IMAGE" \
    --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no >/dev/null
  if wait_for "Redis" sh -c "redis-cli -h 127.0.0.1 -p $redis_port ping | grep -q PONG"; then
    log "ok   Redis PING on 127.0.0.1:$redis_port"
  else
    podman logs "$name" >&2 || true; failed=1
  fi
  podman stop -t 2 "$name" >/dev/null 2>&1 || true

  # PostgreSQL as examples/postgres-dev.yaml runs it: uid 999, PGDATA in a subdirectory of
  # its volume, the socket directory and /tmp writable, nothing else.
  # Host directories owned by 999 stand for the volumes (podman 4.3 ignores a tmpfs mode).
  local pg_port pg_dirs
  pg_port="$(free_port)"
  pg_dirs="$(mktemp -d)"
  mkdir -p "$pg_dirs/data" "$pg_dirs/run"
  chown 999:999 "$pg_dirs/data" "$pg_dirs/run"
  name="images-test-postgres-$$"
  podman run -d "${locked_down[@]}" --network host --name "$name" --user 999:999 \
    -v "$pg_dirs/data:/var/lib/postgresql/data" -v "$pg_dirs/run:/var/run/postgresql" \
    -e POSTGRES_USER=app -e POSTGRES_DB=app -e POSTGRES_PASSWORD=images-test \
    -e PGDATA=/var/lib/postgresql/data/pgdata \
    "$POSTGRES_IMAGE" -c listen_addresses=127.0.0.1 -c port="$pg_port" -c max_connections=200 >/dev/null
  if wait_for "PostgreSQL" env PGPASSWORD=images-test psql -h 127.0.0.1 -p "$pg_port" -U app -d app -tAc "SELECT 1"; then
    out="$(PGPASSWORD=images-test psql -h 127.0.0.1 -p "$pg_port" -U app -d app -tAc "SHOW max_connections")"
    log "ok   PostgreSQL: app@app answers with a password on 127.0.0.1:$pg_port (max_connections $out)"
    if ! podman exec "$name" pg_isready -h 127.0.0.1 -p "$pg_port" -U app -d app >/dev/null; then
      log "FAIL pg_isready inside the image"; failed=1
    fi
  else
    podman logs "$name" >&2 || true; failed=1
  fi
  podman stop -t 5 "$name" >/dev/null 2>&1 || true
  rm -rf "$pg_dirs"

  local work; work="$(mktemp -d)"; chmod 755 "$work"
  export DEV_SERVICES_DIR="$work/services"
  "$root/scripts/dev-services.sh" start >/dev/null 2>&1
  local api_port admin_port
  api_port="$(free_port)"; admin_port="$(free_port)"
  name="images-test-api-$$"
  ( eval "$("$root/scripts/dev-services.sh" env)"
    podman run -d "${locked_down[@]}" --network host --name "$name" \
      -e PGHOST -e PGPORT -e PGUSER -e PGDATABASE -e PGSSLMODE -e REDIS_URL \
      -e BIND_ADDRESS=127.0.0.1 -e PORT="$api_port" -e ADMIN_PORT="$admin_port" \
      "$API_IMAGE" >/dev/null )
  if wait_for "api-server" curl -fsS --max-time 1 "http://127.0.0.1:$admin_port/readyz"; then
    log "ok   api-server /readyz on 127.0.0.1:$admin_port (migrated against PostgreSQL)"
  else
    podman logs "$name" >&2 || true; failed=1
  fi
  podman stop -t 5 "$name" >/dev/null 2>&1 || true
  "$root/scripts/dev-services.sh" stop >/dev/null 2>&1 || true
  rm -rf "$work"
  [ "$failed" -eq 0 ] || { log "image checks failed"; exit 1; }
  log "every image check passed"
}

case "${1:-build}" in
  build) build ;;
  test) "$root/scripts/ensure-deps.sh" services images; test_images ;;
  *) echo "usage: $0 [build|test]" >&2; exit 2 ;;
esac
