#!/usr/bin/env bash
# `make bench-api`: load test of a release build of api-server on 127.0.0.1.
#
# Starts a fresh throwaway PostgreSQL and Redis (scripts/dev-services.sh, state in
# .tools/bench), builds and starts api-server configured as the operator renders a default
# ScalableApi (cache on, no rate limit, DB_POOL_MAX=10, DB_POOL_MIN=1, the default log
# filter, JSON logs, CACHE_TTL_SECONDS=300), seeds BENCH_SEED users through POST /users,
# then drives wrk with BENCH_CONNECTIONS connections on BENCH_THREADS threads for
# BENCH_DURATION seconds per scenario, each after a BENCH_WARMUP-second warm-up whose
# figures are discarded:
#   GET /healthz | GET /users/{random seeded id} (cache warmed first) | GET /users?limit=50 |
#   POST /users | PUT /users/{random seeded id} | DELETE /users/{id} (of users created for
#   it) | mixed: 90% GET and 10% PUT of random seeded ids
# and prints a Markdown table (req/s, p50, p99, non-2xx, CPU of each process) plus the
# server's peak RSS. Then open-loop runs (oha, a constant offered rate, so no coordinated
# omission): the cached GET and the POST at half the req/s their closed-loop run reached,
# with p50/p99/p99.9. Everything it started is stopped on exit. Files: .tools/bench/.
#
# Knobs (environment): BENCH_DURATION=15 BENCH_WARMUP=5 BENCH_CONNECTIONS=64
# BENCH_THREADS=2 BENCH_SEED=10000 BENCH_DB_POOL_MAX=10 BENCH_DB_POOL_MIN=1
# BENCH_RUST_LOG (unset: the api-server's default filter) BENCH_DELETE_POOL=100000 (users
# created for the DELETE run; more deletes than that show as 404s)
# BENCH_SCENARIOS="healthz get list post put delete mixed open-get open-post" (list before
# post: it then reads a table that autovacuum is not busy with; open-get and open-post
# take half the rate of get and post in the same run, or BENCH_OPEN_RATE_GET and
# BENCH_OPEN_RATE_POST), plus optional post-nosync (POST /users while Postgres
# runs with synchronous_commit=off, to separate the app's cost from the disk's fsync rate)
# BENCH_NO_BUILD=1 (use the existing target/release/api-server; BENCH_SERVER_BIN=path another binary).
# BENCH_CACHE_TTL_SECONDS=N (the server's CACHE_TTL_SECONDS; default: unset, the operator's 300 s).
# KAFKA=1 also starts a Kafka broker (dev-services.sh), so the server publishes user events:
# after the scenarios it waits for the outbox to drain and prints the events published and
# the publish lag (commit to broker acknowledgement, p50/p99 from the server's histogram).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

duration="${BENCH_DURATION:-15}"
warmup="${BENCH_WARMUP:-5}"
conns="${BENCH_CONNECTIONS:-64}"
threads="${BENCH_THREADS:-2}"
seed="${BENCH_SEED:-10000}"
pool_max="${BENCH_DB_POOL_MAX:-10}"
pool_min="${BENCH_DB_POOL_MIN:-1}"
delete_pool="${BENCH_DELETE_POOL:-100000}"
scenarios="${BENCH_SCENARIOS:-healthz get list post put delete mixed open-get open-post}"
work="$root/.tools/bench"
services="$root/scripts/dev-services.sh"
lua="$root/scripts/bench"
server_bin="${BENCH_SERVER_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/api-server}"
export DEV_SERVICES_DIR="$work/services"
export BENCH_LUA_DIR="$lua"

log() { echo "bench-api: $*" >&2; }

"$root/scripts/ensure-deps.sh" services bench

server_pid=""
wrk_pid=""
cleanup() {
  set +e
  [ -n "$wrk_pid" ] && kill "$wrk_pid" 2>/dev/null
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid"
    for _ in $(seq 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null
  fi
  "$services" stop >/dev/null 2>&1
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$work"
rm -rf "$work/ids" "$work"/wrk-*.txt "$work"/events-*.txt
mkdir -p "$work/ids"

# --- build, services, server ------------------------------------------------------------------
if [ -z "${BENCH_NO_BUILD:-}" ]; then
  log "cargo build --release -p api-server"
  cargo build --release -p api-server
fi
[ -x "$server_bin" ] || { log "$server_bin missing"; exit 1; }

"$services" clean >/dev/null 2>&1 || true # a fresh database every run
"$services" start
unset DATABASE_URL
eval "$("$services" env)"

port="$("$services" free-port)"
admin_port="$("$services" free-port)"
base="http://127.0.0.1:$port"
admin="http://127.0.0.1:$admin_port"
log "starting api-server on $base (DB_POOL_MAX=$pool_max, DB_POOL_MIN=$pool_min, RUST_LOG=${BENCH_RUST_LOG:-<default>}, cache on, no rate limit)"
server_env=(-u RUST_LOG)
[ -n "${BENCH_RUST_LOG:-}" ] && server_env=(RUST_LOG="$BENCH_RUST_LOG")
# The cache TTL the operator renders (300 s) unless BENCH_CACHE_TTL_SECONDS says otherwise.
[ -n "${BENCH_CACHE_TTL_SECONDS:-}" ] && server_env+=(CACHE_TTL_SECONDS="$BENCH_CACHE_TTL_SECONDS")
env -u RATE_LIMIT_RPS -u RATE_LIMIT_BURST -u CACHE_TTL_SECONDS "${server_env[@]}" \
  BIND_ADDRESS=127.0.0.1 PORT="$port" ADMIN_PORT="$admin_port" LOG_FORMAT=json DB_POOL_MAX="$pool_max" DB_POOL_MIN="$pool_min" \
  "$server_bin" >"$work/server.log" 2>&1 &
server_pid=$!

for i in $(seq 600); do
  if curl -fsS -o /dev/null "$base/readyz" 2>/dev/null; then break; fi
  kill -0 "$server_pid" 2>/dev/null || { log "api-server exited:"; tail -n 30 "$work/server.log" >&2; exit 1; }
  [ "$i" -eq 600 ] && { log "api-server not ready after 60 s"; tail -n 30 "$work/server.log" >&2; exit 1; }
  sleep 0.1
done

# --- CPU accounting -------------------------------------------------------------------------
pg_pids() {
  local pm; pm="$(sed -n 1p "$DEV_SERVICES_DIR/pg/postmaster.pid")"
  echo "$pm"; ps -o pid= --ppid "$pm"
}
redis_pid() { cat "$DEV_SERVICES_DIR/redis/redis.pid"; }
# Sum of user+system clock ticks of the given pids (fields 14 and 15 of /proc/pid/stat).
ticks() {
  local sum=0 pid rest
  for pid in "$@"; do
    rest="$(cat "/proc/$pid/stat" 2>/dev/null)" || continue
    rest="${rest##*) }"
    # shellcheck disable=SC2086 # split the fields
    set -- $rest
    sum=$((sum + ${12} + ${13}))
  done
  echo "$sum"
}
# busy and total jiffies of the whole machine
machine() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }
# shellcheck disable=SC2046
snapshot() { echo "$(ticks "$server_pid") $(ticks $(pg_pids)) $(ticks "$(redis_pid)") $(machine)"; }
hz="$(getconf CLK_TCK)"
# us <clock ticks> <requests>: CPU microseconds per request
us() { awk -v t="$1" -v n="$2" -v hz="$hz" 'BEGIN{printf "%.0f", n ? t*1e6/hz/n : 0}'; }

# pg_sync on|off: the server-wide synchronous_commit (reloaded into every session)
pg_sync() {
  if [ "$1" = off ]; then psql -qX -c "ALTER SYSTEM SET synchronous_commit = off" >/dev/null
  else psql -qX -c "ALTER SYSTEM RESET synchronous_commit" >/dev/null; fi
  psql -qX -c "SELECT pg_reload_conf()" >/dev/null
  sleep 0.5
}

# --- wrk ------------------------------------------------------------------------------------
# run_wrk <name> <seconds> <script> <path> [script args...]: prints the RESULT fields
# followed by wrk's own CPU time in clock ticks (the wrapper shell's cutime + cstime).
run_wrk() {
  local name="$1" secs="$2" script="$3" path="$4"; shift 4
  local out="$work/wrk-$name.txt"
  # shellcheck disable=SC2016 # expanded by the inner shell
  bash -c 'wrk "$@"; rc=$?; s="$(cat /proc/$$/stat)"; s="${s##*) }"; set -- $s
           echo "WRKCPU $((${14} + ${15}))"; exit $rc' wrk \
    -t"$threads" -c"$conns" -d"${secs}s" -s "$script" "$base$path" -- "$@" >"$out" 2>&1 &
  wrk_pid=$!
  if ! wait "$wrk_pid"; then wrk_pid=""; log "wrk failed:"; cat "$out" >&2; exit 1; fi
  wrk_pid=""
  local result
  result="$(grep '^RESULT ' "$out" | tail -n 1 | cut -d' ' -f2-)"
  [ -n "$result" ] || { log "no RESULT from wrk:"; cat "$out" >&2; exit 1; }
  echo "$result $(awk '/^WRKCPU /{print $2}' "$out")"
}

load_before="$(cut -d' ' -f1-3 /proc/loadavg)"

# --- seed -----------------------------------------------------------------------------------
# seed_users <count> <dir>: creates <count> users through POST /users (16 connections), their
# ids in <dir>/ids.txt, their emails tagged with <dir>'s name; prints the seconds it took.
seed_users() {
  local count="$1" dir="$2" start n_done failed n_ids
  rm -rf "$dir"; mkdir -p "$dir"
  start=$(date +%s.%N)
  BENCH_SEED="$count" BENCH_IDS_DIR="$dir" BENCH_SEED_TAG="$(basename "$dir")" \
    wrk -t"$threads" -c16 -d300s -s "$lua/seed-users.lua" "$base/users" -- "$threads" \
    >"$dir/wrk-seed.txt" 2>&1 &
  wrk_pid=$!
  while kill -0 "$wrk_pid" 2>/dev/null; do
    n_done=$(find "$dir" -name 'done-*' | wc -l)
    [ "$n_done" -ge "$threads" ] && { kill -INT "$wrk_pid"; break; }
    sleep 0.1
  done
  wait "$wrk_pid" || true
  wrk_pid=""
  failed=$(cat "$dir"/done-* 2>/dev/null | awk '{s+=$2} END{print s+0}')
  cat "$dir"/ids-* >"$dir/ids.txt"
  n_ids=$(wc -l <"$dir/ids.txt")
  if [ "$n_ids" -ne "$count" ] || [ "$failed" -ne 0 ]; then
    log "seeding failed: $n_ids ids, $failed failures"; cat "$dir/wrk-seed.txt" >&2; exit 1
  fi
  awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN{printf "%.1f", e-s}'
}

log "seeding $seed users through POST /users"
seed_secs="$(seed_users "$seed" "$work/ids")"
cp "$work/ids/ids.txt" "$work/ids.txt"
log "seeded $seed users in ${seed_secs} s"
export BENCH_IDS="$work/ids.txt"

# --- user events (KAFKA=1) ------------------------------------------------------------------
backlog=""
drain_outbox() { # waits (at most 120 s) until every event is published
  log "events: waiting (at most 120 s) for the outbox to drain"
  for _ in $(seq 600); do
    backlog="$(curl -fsS "$admin/metrics" | awk '$1 == "events_outbox_backlog" {print $2}')"
    [ "${backlog:-1}" = 0 ] && break
    sleep 0.2
  done
}
# lag <q> <metrics before> <metrics after>: the q-quantile of the publish lag of the events
# published between the two scrapes (histogram_quantile as Prometheus computes it: linear
# within the bucket that holds q, over the buckets' differences).
lag() {
  awk -v q="$1" '
    /^events_publish_lag_seconds_bucket/ {
      match($0, /le="[^"]+"/); le = substr($0, RSTART + 4, RLENGTH - 5)
      if (FILENAME == ARGV[1]) { before[le] = $NF + 0; next }
      n++; bound[n] = (le == "+Inf") ? -1 : le + 0; count[n] = $NF - before[le]
    }
    END {
      total = count[n]; if (!total) { print "n/a"; exit }
      rank = q * total; prev_b = 0; prev_c = 0
      for (i = 1; i <= n; i++) {
        if (count[i] >= rank) {
          if (bound[i] < 0) { printf "> %.0f ms", prev_b * 1000; exit }
          printf "%.1f ms", 1000 * (prev_b + (bound[i] - prev_b) * (rank - prev_c) / (count[i] - prev_c)); exit
        }
        prev_b = bound[i]; prev_c = count[i]
      }
    }' "$2" "$3"
}
events_rows=()
if [ -n "${EVENTS_KAFKA_BROKERS:-}" ]; then # the seeding's events are not any scenario's
  drain_outbox
  curl -fsS "$admin/metrics" >"$work/events-before.txt"
fi
# events_row <scenario label>: after a scenario, the events it published and their lag
events_row() {
  [ -n "${EVENTS_KAFKA_BROKERS:-}" ] || return 0
  drain_outbox
  [ -f "$work/events-before.txt" ] || : >"$work/events-before.txt"
  curl -fsS "$admin/metrics" >"$work/events-after.txt"
  local n
  n="$(awk -v f="$work/events-before.txt" 'BEGIN { while ((getline l < f) > 0) { split(l, a, " "); if (a[1] == "events_published_total") b = a[2] } }
    $1 == "events_published_total" { printf "%d", $2 - b }' "$work/events-after.txt")"
  events_rows+=("| $1 | $n | $(lag 0.5 "$work/events-before.txt" "$work/events-after.txt") | $(lag 0.99 "$work/events-before.txt" "$work/events-after.txt") |")
  mv "$work/events-after.txt" "$work/events-before.txt"
}

# --- scenarios ------------------------------------------------------------------------------
declare -A label note script path args
label[healthz]="GET /healthz";      note[healthz]="";                           script[healthz]="$lua/common.lua";         path[healthz]="/healthz";     args[healthz]=""
label[get]="GET /users/{id}";       note[get]=" (random seeded id, warm cache)"; script[get]="$lua/get-users-random.lua"; path[get]="/users";          args[get]="random"
label[post]="POST /users";          note[post]=" (unique emails)";              script[post]="$lua/post-users.lua";        path[post]="/users";         args[post]="run"
label[post-nosync]="POST /users"; note[post-nosync]=" with Postgres \`synchronous_commit=off\` (not durable: the app's own ceiling)"; script[post-nosync]="$lua/post-users.lua"; path[post-nosync]="/users"; args[post-nosync]="nosync"
label[list]="GET /users?limit=50";  note[list]=" (first page)";                 script[list]="$lua/common.lua";            path[list]="/users?limit=50"; args[list]=""
# ../shared/peers/ratios.py finds our GET row by the text "/users/{id}" (and POST by
# "POST"): the other rows must not contain them, hence <id> below and "open loop:" first.
label[put]="PUT /users/<id>";       note[put]=" (random seeded id, new name and email)"; script[put]="$lua/put-users-random.lua"; path[put]="/users"; args[put]="run"
label[delete]="DELETE /users/<id>"; note[delete]=" (each id once, of $delete_pool users created for it)"; script[delete]="$lua/delete-users.lua"; path[delete]="/users"; args[delete]=""
label[mixed]="90% GET + 10% PUT";   note[mixed]=" (random seeded ids)";         script[mixed]="$lua/mixed.lua";            path[mixed]="/users";        args[mixed]="run"
declare -A max_rps
open_rows=()

rows=()
for s in $scenarios; do
  if [[ "$s" == open-* ]]; then
    kind="${s#open-}"
    case "$kind" in
      get) fixed="${BENCH_OPEN_RATE_GET:-}" ;;
      post) fixed="${BENCH_OPEN_RATE_POST:-}" ;;
      *) log "unknown scenario $s"; exit 2 ;;
    esac
    rate="${fixed:-$(( ${max_rps[$kind]:-0} / 2 ))}"
    [ "$rate" -gt 0 ] || { log "$s needs the $kind scenario earlier in BENCH_SCENARIOS (or BENCH_OPEN_RATE_${kind^^})"; exit 2; }
    log "$s: ${duration} s at a constant $rate req/s (oha)"
    read -r _ _ achieved o50 o99 o999 omax onon2xx ototal < <(OHA="$root/.tools/bin/oha" VEGETA="$root/.tools/bin/vegeta" \
      python3 "$lua/open_loop.py" "$kind" "$base" "$rate" "$duration" "$BENCH_IDS" | grep '^OPEN ')
    open_rows+=("| open loop: \`${label[$kind]}\`${note[$kind]} | $rate | $achieved | $o50 ms | $o99 ms | $o999 ms | $omax ms | $onon2xx |")
    log "$s: offered $rate/s, achieved $achieved/s, p50 $o50 ms, p99 $o99 ms, p99.9 $o999 ms, non-2xx $onon2xx of $ototal"
    events_row "\`${label[$kind]}\` at a constant $rate req/s (open loop)"
    continue
  fi
  [ -n "${label[$s]:-}" ] || { log "unknown scenario $s"; exit 2; }
  if [ "$s" = delete ]; then
    log "delete: creating $delete_pool users to delete"
    seed_users "$delete_pool" "$work/victims" >/dev/null
    export BENCH_DELETE_IDS="$work/victims/ids.txt"
  fi
  warm_args="${args[$s]}"
  [ "$s" = get ] && warm_args="seq" # every seeded id once at least: a warm cache
  [ "$s" = post ] && warm_args="warm"
  [ "$s" = put ] && warm_args="warm"
  [ "$s" = mixed ] && warm_args="warm"
  [ "$s" = post-nosync ] && { warm_args="warmnosync"; pg_sync off; }
  log "$s: warm-up ${warmup} s"
  # shellcheck disable=SC2086 # no argument when empty
  if [ "$s" = delete ]; then # every id is for the measured run: warm up on /healthz
    run_wrk "$s-warmup" "$warmup" "$lua/common.lua" /healthz >/dev/null
  else
    run_wrk "$s-warmup" "$warmup" "${script[$s]}" "${path[$s]}" $warm_args >/dev/null
  fi
  log "$s: ${duration} s, $conns connections, $threads threads"
  read -r s_srv s_pg s_redis s_busy s_total < <(snapshot)
  # shellcheck disable=SC2086
  read -r rps p50 p99 non2xx sockerr total wrk_ticks < <(run_wrk "$s" "$duration" "${script[$s]}" "${path[$s]}" ${args[$s]})
  read -r e_srv e_pg e_redis e_busy e_total < <(snapshot)
  max_rps[$s]="$rps"
  machine_busy=$(awk -v b=$((e_busy - s_busy)) -v t=$((e_total - s_total)) 'BEGIN{printf "%.0f%%", 100*b/t}')
  u_srv=$(us $((e_srv - s_srv)) "$total"); u_pg=$(us $((e_pg - s_pg)) "$total")
  u_redis=$(us $((e_redis - s_redis)) "$total"); u_wrk=$(us "$wrk_ticks" "$total")
  # What the measured CPU costs allow if the machine's cores served this test alone.
  ceiling=$(awk -v c="$(nproc)" -v u=$((u_srv + u_pg + u_redis + u_wrk)) 'BEGIN{printf "%.0f", u ? c*1e6/u : 0}')
  rows+=("| \`${label[$s]}\`${note[$s]} | $rps | $p50 ms | $p99 ms | $((non2xx + sockerr)) | $u_srv / $u_pg / $u_redis / $u_wrk | $ceiling | $machine_busy |")
  [ "$s" = post-nosync ] && pg_sync on
  log "$s: $rps req/s, p50 $p50 ms, p99 $p99 ms, non-2xx $non2xx, socket errors $sockerr, $total requests"
  events_row "\`${label[$s]}\`, closed loop ($conns connections, with its warm-up)"
done

events_line=""
if [ -n "${EVENTS_KAFKA_BROKERS:-}" ]; then
  drain_outbox
  curl -fsS "$admin/metrics" >"$work/metrics.txt"
  published="$(awk '$1 == "events_published_total" {print $2}' "$work/metrics.txt")"
  failed_events="$(awk '$1 == "events_failed_total" {print $2}' "$work/metrics.txt")"
  events_line="Events on (broker $EVENTS_KAFKA_BROKERS): ${published:-0} published, ${failed_events:-0} failed, outbox backlog at the end ${backlog:-?}; publish lag (commit to broker acknowledgement) over the whole run p50 $(lag 0.5 /dev/null "$work/metrics.txt"), p99 $(lag 0.99 /dev/null "$work/metrics.txt")."
else
  curl -fsS "$admin/metrics" >"$work/metrics.txt" 2>/dev/null || true
fi
# Cross-check from the server's side: every request it answered with a status other than 2xx.
server_non2xx=$(awk '/^http_requests_total\{/ && !/status="2[0-9][0-9]"/ {n += $NF} END {print n + 0}' "$work/metrics.txt")
hwm=$(awk '/^VmHWM/{printf "%.1f MiB", $2/1024}' "/proc/$server_pid/status")
rss=$(awk '/^VmRSS/{printf "%.1f MiB", $2/1024}' "/proc/$server_pid/status")

{
  echo
  echo "api-server load test: $conns connections, $threads wrk threads, ${duration} s per scenario after a ${warmup} s warm-up, $seed seeded users, DB_POOL_MAX=$pool_max, DB_POOL_MIN=$pool_min, RUST_LOG=${BENCH_RUST_LOG:-<api-server default>}"
  echo "$(nproc) CPUs shared with wrk; load average before the run: $load_before, after: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  echo "| scenario | req/s | p50 | p99 | non-2xx | CPU µs per request: api-server / Postgres / Redis / wrk | CPU-bound ceiling, req/s | machine busy |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  printf '%s\n' "${rows[@]}"
  echo
  if [ "${#open_rows[@]}" -gt 0 ]; then
    echo "Open loop (constant offered rate, latency from each request's scheduled send: GET with oha -q --latency-correction -c 64, POST with vegeta; non-2xx includes requests with no answer):"
    echo
    echo "| scenario | offered req/s | achieved req/s | p50 | p99 | p99.9 | max | non-2xx |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    printf '%s\n' "${open_rows[@]}"
    echo
  fi
  echo "api-server peak RSS (VmHWM): $hwm; RSS at the end: $rss. Seeding $seed users took ${seed_secs} s. Non-2xx answers counted by the server's /metrics over the whole run: $server_non2xx."
  if [ -n "$events_line" ]; then
    echo "$events_line"
    echo
    echo "| events of | published | publish lag p50 | publish lag p99 |"
    echo "|---|---:|---:|---:|"
    printf '%s\n' "${events_rows[@]}"
  fi
  echo "non-2xx: responses >= 400 plus socket errors (wrk). CPU µs per request: user + system time of each process during the measured run divided by its requests. Ceiling: $(nproc) cores / the sum of those costs, the rate the machine could sustain if nothing else ran. Machine busy: all CPUs, including other programs."
} | tee "$work/results.md"
