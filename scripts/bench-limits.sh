#!/usr/bin/env bash
# `make bench-limits`: the ceilings of the backing services on this machine, to read the
# api-server figures of `make bench-api` against. Starts a fresh throwaway PostgreSQL and
# Redis (state in .tools/bench/limits), then runs, 64 clients each:
#   redis-benchmark GET and SET (random keys among 10,000, 300-byte values, unpipelined)
#   pgbench select-only (the standard -S script, scale 10, prepared statements)
#   pgbench with the api-server's three query shapes on a users-like table of 10,000 rows:
#     a primary-key read, the first page of a keyset list (51 rows), a single-row INSERT
#     (durable commit, then with synchronous_commit = off) and an UPDATE + NOTIFY
#     transaction (PostgreSQL serialises the commits of NOTIFYing transactions)
#   pg_test_fsync: how many fdatasync calls per second the disk takes
# and prints a Markdown table. Knobs: LIMITS_SECONDS=8 LIMITS_CLIENTS=64.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
secs="${LIMITS_SECONDS:-8}"
clients="${LIMITS_CLIENTS:-64}"
work="$root/.tools/bench/limits"
services="$root/scripts/dev-services.sh"
export DEV_SERVICES_DIR="$work/services"

log() { echo "bench-limits: $*" >&2; }

"$root/scripts/ensure-deps.sh" services bench
bindir="$("$root/scripts/ensure-deps.sh" pg-bindir)"
pgbench="$bindir/pgbench"
[ -x "$pgbench" ] || pgbench="$(command -v pgbench)" || { log "pgbench not found"; exit 1; }

trap '"$services" clean >/dev/null 2>&1 || true' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
"$services" clean >/dev/null 2>&1 || true
"$services" start
eval "$("$services" env)"
redis_port="${REDIS_URL##*:}"
mkdir -p "$work"
rows=()

# --- Redis ----------------------------------------------------------------------------------
# Enough requests for about $secs seconds at ~70,000/s.
n=$((secs * 70000))
log "redis-benchmark GET/SET, $clients clients, $n requests each"
redis-benchmark -h 127.0.0.1 -p "$redis_port" -c "$clients" -n "$n" -r 10000 -d 300 \
  -t set,get --csv >"$work/redis-benchmark.csv" 2>/dev/null
while IFS=, read -r test rps avg _min p50 _p95 p99 _max; do
  test="${test//\"/}"
  [ "$test" = test ] && continue
  rows+=("| redis-benchmark | \`$test\` (random key of 10,000, 300 B, unpipelined) | ${rps//\"/} | ${avg//\"/} ms | ${p50//\"/} ms | ${p99//\"/} ms |")
done <"$work/redis-benchmark.csv"

# --- PostgreSQL -----------------------------------------------------------------------------
# run_pgbench <label> [pgbench args...]: appends a row (tps and average latency)
run_pgbench() {
  local label="$1"; shift
  local out="$work/pgbench-$(( ${#rows[@]} )).txt"
  log "pgbench: $label"
  "$pgbench" -n -c "$clients" -j 2 -T "$secs" -M prepared "$@" >"$out" 2>&1 \
    || { cat "$out" >&2; exit 1; }
  local tps lat
  tps="$(awk '/^tps = /{printf "%.0f", $3}' "$out")"
  lat="$(awk '/^latency average = /{print $4}' "$out")"
  rows+=("| pgbench | $label | $tps | $lat ms | | |")
}

log "pgbench -i -s 10"
"$pgbench" -i -q -s 10 >"$work/pgbench-init.txt" 2>&1 || { cat "$work/pgbench-init.txt" >&2; exit 1; }
run_pgbench "select-only (\`-S\`, scale 10)" -S

psql -q -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
CREATE TABLE bench_users (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name text NOT NULL,
  email text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX bench_users_email ON bench_users (lower(email));
INSERT INTO bench_users (name, email)
  SELECT 'Seed User ' || g, 'seed-' || g || '@bench.example.com' FROM generate_series(1, 10000) g;
CREATE TABLE bench_ids AS SELECT row_number() OVER () AS n, id FROM bench_users;
ALTER TABLE bench_ids ADD PRIMARY KEY (n);
ANALYZE;
SQL
cat >"$work/get.sql" <<'SQL'
\set n random(1, 10000)
SELECT u.id, u.name, u.email, u.created_at, u.updated_at
  FROM bench_users u WHERE u.id = (SELECT id FROM bench_ids WHERE n = :n);
SQL
cat >"$work/list.sql" <<'SQL'
SELECT id, name, email, created_at, updated_at FROM bench_users ORDER BY id LIMIT 51;
SQL
cat >"$work/update-notify.sql" <<'SQL'
\set n random(1, 10000)
BEGIN;
UPDATE bench_users SET name = 'Bench User ' || :client_id, updated_at = now()
  WHERE id = (SELECT id FROM bench_ids WHERE n = :n)
  RETURNING id, name, email, created_at, updated_at;
SELECT pg_notify('bench_users_changed', (SELECT id FROM bench_ids WHERE n = :n)::text);
COMMIT;
SQL
cat >"$work/insert-no-notify.sql" <<'SQL'
INSERT INTO bench_users (name, email)
  VALUES ('Bench User', 'n-' || :client_id || '-' || random() || '@bench.example.com')
  RETURNING id, name, email, created_at, updated_at;
SQL
run_pgbench "users by primary key (random of 10,000)" -f "$work/get.sql"
run_pgbench "users keyset list, first page (51 rows)" -f "$work/list.sql"
run_pgbench "users INSERT, durable commit (the POST path)" -f "$work/insert-no-notify.sql"
PGOPTIONS="-c synchronous_commit=off" \
  run_pgbench "users INSERT, \`synchronous_commit = off\` (same script)" -f "$work/insert-no-notify.sql"
run_pgbench "users UPDATE + NOTIFY, durable commit (the PUT/DELETE path)" -f "$work/update-notify.sql"
log "pg_test_fsync (one 8 kB write + fdatasync)"
fsync_rate="$("$bindir/pg_test_fsync" -s 2 -f "$work/fsync.test" 2>/dev/null \
  | awk '/fdatasync/ && /ops\/sec/ {print $2; exit}')" || fsync_rate="?"
rm -f "$work/fsync.test"
rows+=("| pg_test_fsync | one 8 kB WAL write + \`fdatasync\` (the durable-commit floor) | $fsync_rate | | | |")

{
  echo
  echo "Backing-service ceilings: $clients clients, ${secs} s each, $(nproc) CPUs shared with the load generator; load average before: $load_before"
  echo
  echo "| tool | workload | ops/s | avg latency | p50 | p99 |"
  echo "|---|---|---:|---:|---:|---:|"
  printf '%s\n' "${rows[@]}"
} | tee "$work/results.md"
