#!/usr/bin/env bash
# `make test-contract`: schemathesis (PyPI) against a live api-server built from this tree,
# driven by the server's own /openapi.json, twice: open (no AUTH_JWKS_PATH) and with bearer
# JWT authentication. Fails on any 5xx, on a response whose status, content type, headers
# or body the document does not declare, and on accepted invalid input. PostgreSQL and Redis
# are throwaway ones (scripts/dev-services.sh in a temporary directory); everything listens
# on 127.0.0.1. Set CONTRACT_SEED to replay a run (each run prints its seed).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
"$root/scripts/ensure-deps.sh" services contract
st="$root/.tools/venv/bin/schemathesis"
py="$root/.tools/venv/bin/python"
here="$root/api-server/tests/contract"

work="$(mktemp -d)"
chmod 755 "$work" # PostgreSQL runs as its own user and must reach its data directory
export DEV_SERVICES_DIR="$work/services"
server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  "$root/scripts/dev-services.sh" stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

"$root/scripts/dev-services.sh" start
eval "$("$root/scripts/dev-services.sh" env)"
cargo build --quiet --locked -p api-server
binary="${CARGO_TARGET_DIR:-$root/target}/debug/api-server"

# start_server LOG: runs the binary with the current environment, waits until it is ready.
start_server() {
  PORT="$("$root/scripts/dev-services.sh" free-port)"
  ADMIN_PORT="$("$root/scripts/dev-services.sh" free-port)"
  export PORT ADMIN_PORT
  "$binary" >"$1" 2>&1 &
  server=$!
  for _ in $(seq 1 150); do
    if curl -fsS --max-time 1 "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1; then return 0; fi
    kill -0 "$server" 2>/dev/null || { cat "$1" >&2; echo "contract: api-server exited" >&2; exit 1; }
    sleep 0.2
  done
  cat "$1" >&2
  echo "contract: api-server not ready after 30 s" >&2
  exit 1
}

stop_server() {
  kill "$server"
  wait "$server" 2>/dev/null || true
  server=""
}

run_schemathesis() { # name, extra arguments...
  local name="$1"; shift
  echo "contract: schemathesis, $name" >&2
  local seed=()
  if [ -n "${CONTRACT_SEED:-}" ]; then seed=(--seed "$CONTRACT_SEED"); fi
  # Every check but positive_data_acceptance: a request that fits the document may rightly
  # be refused because of the data it meets rather than its form (a stale If-Match is a
  # 412, a reused Idempotency-Key with another body a 422, a taken e-mail a 409), and those
  # refusals are documented statuses, which status_code_conformance checks.
  if ! "$st" run "http://127.0.0.1:$PORT/openapi.json" --workers 1 \
      --checks all --exclude-checks positive_data_acceptance \
      "${seed[@]}" "$@" >"$work/$name.out" 2>&1; then
    cat "$work/$name.out"
    echo "contract: schemathesis found failures ($name); server log follows" >&2
    tail -50 "$work/$name.log" >&2
    exit 1
  fi
  grep -E "^Seed:|passed|generated" "$work/$name.out" >&2 || true
}

export RUST_LOG=warn BIND_ADDRESS=127.0.0.1
start_server "$work/open.log"
run_schemathesis open
stop_server

export AUTH_JWKS_PATH="$work/jwks.json" AUTH_JWT_ISSUER="https://issuer.contract.test" AUTH_JWT_AUDIENCE="users-api"
token="$("$py" "$here/mint_token.py" "$AUTH_JWKS_PATH" "$AUTH_JWT_ISSUER" "$AUTH_JWT_AUDIENCE")"
start_server "$work/authenticated.log"
run_schemathesis authenticated -H "Authorization: Bearer $token"
stop_server
echo "contract: both runs passed" >&2
