#!/usr/bin/env bash
# `make run-api`: runs api-server locally against a throwaway PostgreSQL and Redis.
# Installs PostgreSQL/Redis when missing, starts them (scripts/dev-services.sh), runs
# `cargo run -p api-server` with their settings and stops them again on exit, unless they
# were already running before. Extra arguments go to cargo run (e.g. `-- --help`, or
# `--release`); any other api-server variable set in the environment (PORT, LOG_FORMAT,
# CACHE_TTL_SECONDS, RATE_LIMIT_RPS, ...) is passed through. PORT defaults to 8080.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
services="$root/scripts/dev-services.sh"

"$root/scripts/ensure-deps.sh" services

started_here=""
if ! "$services" status >/dev/null 2>&1; then started_here=1; fi
"$services" start

cleanup() {
  if [ -n "$started_here" ]; then "$services" stop || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The services' connection settings (they win over PG*/REDIS_URL from the caller's shell).
unset DATABASE_URL
eval "$("$services" env)"
export PORT="${PORT:-8080}"
# This host only, unless the caller asks for more (BIND_ADDRESS=:: for every interface).
export BIND_ADDRESS="${BIND_ADDRESS:-127.0.0.1}"
export LOG_FORMAT="${LOG_FORMAT:-text}"
export RUST_LOG="${RUST_LOG:-info}"

echo "run-api: http://127.0.0.1:$PORT (PostgreSQL 127.0.0.1:$PGPORT/$PGDATABASE, Redis $REDIS_URL); Ctrl-C stops it" >&2
# Not exec: the EXIT trap must run to stop the services.
cargo run -p api-server "$@"
