#!/usr/bin/env bash
# Builds both images from docker/Dockerfile (one build, two targets). Needs a Docker engine
# with BuildKit; the development machines have none, so CI (.github/workflows/e2e.yml) runs it.
#   scripts/docker-build.sh            tags ghcr.io/scalable-dev/{scalable-api-operator,api-server}:<version>
# Environment: OPERATOR_IMAGE, API_IMAGE (full references), DOCKER (default docker),
#              DOCKER_BUILD_ARGS (extra flags, e.g. "--platform linux/arm64").
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)"
OPERATOR_IMAGE="${OPERATOR_IMAGE:-ghcr.io/scalable-dev/scalable-api-operator:$version}"
API_IMAGE="${API_IMAGE:-ghcr.io/scalable-dev/api-server:$version}"
DOCKER="${DOCKER:-docker}"
read -r -a extra <<<"${DOCKER_BUILD_ARGS:-}"

command -v "$DOCKER" >/dev/null || { echo "error: $DOCKER not found: building images needs a Docker engine" >&2; exit 1; }
revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
created="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

build() { # target, image
  echo "building $2 (target $1)" >&2
  DOCKER_BUILDKIT=1 "$DOCKER" build -f docker/Dockerfile --target "$1" -t "$2" \
    --build-arg "VERSION=$version" --build-arg "REVISION=$revision" --build-arg "CREATED=$created" \
    "${extra[@]}" .
}
build operator "$OPERATOR_IMAGE"
build api-server "$API_IMAGE"
