#!/usr/bin/env bash
# `make bench-events`: POST /users with user events off, then on (a Kafka broker from
# scripts/dev-services.sh, KAFKA=1), one after the other on the same build, and the publish
# lag under that load. Each half is scripts/bench-api.sh with BENCH_SCENARIOS="post open-post"
# (its knobs apply): POST closed loop at saturation, then open loop at a constant half of
# that rate; the second half prints the events published and the publish lag p50/p99 of
# each phase.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
"$root/scripts/ensure-deps.sh" kafka
if [ -z "${BENCH_NO_BUILD:-}" ]; then cargo build --release -p api-server; fi
export BENCH_NO_BUILD=1 BENCH_SCENARIOS="${BENCH_SCENARIOS:-post open-post}"
echo "== events off" >&2
env -u EVENTS_KAFKA_BROKERS KAFKA=0 "$root/scripts/bench-api.sh"
echo "== events on" >&2
KAFKA=1 "$root/scripts/bench-api.sh"
