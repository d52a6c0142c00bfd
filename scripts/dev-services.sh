#!/usr/bin/env bash
# Throwaway local PostgreSQL and Redis for `make run-api` and `make bench-api`, and with
# KAFKA=1 an Apache Kafka broker too (KRaft, single node; jars from Maven Central through
# scripts/ensure-deps.sh kafka, run by the JDK on the machine) for user events.
#
#   scripts/dev-services.sh start    start both (idempotent), write the env file
#   scripts/dev-services.sh stop     stop both (idempotent); the data directory is kept
#   scripts/dev-services.sh status   report what runs; exit 0 only when both run
#   scripts/dev-services.sh env      print `export` lines for the running services
#                                    (EVENTS_KAFKA_BROKERS=127.0.0.1:PORT when Kafka runs)
#   scripts/dev-services.sh clean    stop both and delete the state directory
#   scripts/dev-services.sh free-port  print a TCP port that is free on 127.0.0.1
#
# Both listen on 127.0.0.1 only, on free ports chosen at first start (never the standard
# 5432/6379, which another program may hold). PostgreSQL uses trust authentication and has
# a database `users`; Redis keeps nothing on disk. State lives in .tools/run (override with
# DEV_SERVICES_DIR); the env file is $DEV_SERVICES_DIR/env (KEY=value lines).
# Extra postgres settings may be passed as `-c name=value ...` in PG_EXTRA_OPTS.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
run_dir="${DEV_SERVICES_DIR:-$root/.tools/run}"
pg_data="$run_dir/pg"
pg_sock="$run_dir/pgsock"
pg_log="$run_dir/postgres.log"
redis_dir="$run_dir/redis"
redis_pidfile="$redis_dir/redis.pid"
redis_portfile="$redis_dir/port"
env_file="$run_dir/env"
kafka_dir="$run_dir/kafka"
kafka_pidfile="$kafka_dir/kafka.pid"
kafka_portfile="$kafka_dir/port"
pg_db="users"
pg_user="postgres"

log() { echo "dev-services: $*" >&2; }

# Runs a command as the postgres user when we are root (postgres refuses to run as root).
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_bin() {
  local d
  d="$("$root/scripts/ensure-deps.sh" pg-bindir)" || { log "PostgreSQL not found: run scripts/ensure-deps.sh services"; exit 1; }
  echo "$d/$1"
}

port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Prints a TCP port that is free on 127.0.0.1 (asks the kernel when python3 exists).
free_port() {
  local p
  if command -v python3 >/dev/null; then
    p="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null)" || p=""
    if [ -n "$p" ] && ! port_in_use "$p"; then echo "$p"; return 0; fi
  fi
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 40000))
    port_in_use "$p" || { echo "$p"; return 0; }
  done
  log "no free port found"; exit 1
}

# --- PostgreSQL -----------------------------------------------------------------------------

pg_running() {
  [ -f "$pg_data/PG_VERSION" ] && as_pg "$(pg_bin pg_ctl)" -D "$pg_data" status >/dev/null 2>&1
}

# The port of the running server (line 4 of postmaster.pid).
pg_port() { sed -n 4p "$pg_data/postmaster.pid" 2>/dev/null; }

pg_start() {
  mkdir -p "$run_dir"
  if pg_running; then log "PostgreSQL already running on port $(pg_port)"; return 0; fi
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || { log "no postgres user: run scripts/ensure-deps.sh services"; exit 1; }
  fi
  if [ ! -f "$pg_data/PG_VERSION" ]; then
    rm -rf "$pg_data"
    mkdir -p "$pg_data"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$pg_data"
    chmod 700 "$pg_data"
    as_pg "$(pg_bin initdb)" -D "$pg_data" -U "$pg_user" -A trust -E UTF8 --locale=C.UTF-8 \
      >"$run_dir/initdb.log" 2>&1 || { cat "$run_dir/initdb.log" >&2; exit 1; }
  fi
  mkdir -p "$pg_sock"
  [ "$(id -u)" -eq 0 ] && chown postgres: "$pg_sock"
  touch "$pg_log"
  [ "$(id -u)" -eq 0 ] && chown postgres: "$pg_log"
  local port opts
  port="$(free_port)"
  # shellcheck disable=SC2206 # PG_EXTRA_OPTS is a deliberate list of words
  opts=(-c listen_addresses=127.0.0.1 -p "$port" -k "$pg_sock" -c max_connections=200 ${PG_EXTRA_OPTS:-})
  if ! as_pg "$(pg_bin pg_ctl)" -D "$pg_data" -l "$pg_log" -w -t 60 -o "${opts[*]}" start >/dev/null; then
    tail -n 20 "$pg_log" >&2; exit 1
  fi
  if ! as_pg "$(pg_bin psql)" -h "$pg_sock" -p "$port" -U "$pg_user" -d postgres -tAq \
      -c "SELECT 1 FROM pg_database WHERE datname = '$pg_db'" | grep -q 1; then
    as_pg "$(pg_bin createdb)" -h "$pg_sock" -p "$port" -U "$pg_user" "$pg_db"
  fi
  log "PostgreSQL running on 127.0.0.1:$port (database $pg_db, user $pg_user, log $pg_log)"
}

pg_stop() {
  if pg_running; then
    as_pg "$(pg_bin pg_ctl)" -D "$pg_data" -m fast -w -t 60 stop >/dev/null
    log "PostgreSQL stopped"
  fi
}

# --- Redis ----------------------------------------------------------------------------------

redis_pid() { cat "$redis_pidfile" 2>/dev/null; }

redis_running() {
  local pid; pid="$(redis_pid)"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null \
    && grep -q redis-server "/proc/$pid/cmdline" 2>/dev/null
}

redis_port() { cat "$redis_portfile" 2>/dev/null; }

redis_start() {
  mkdir -p "$redis_dir"
  if redis_running; then log "Redis already running on port $(redis_port)"; return 0; fi
  command -v redis-server >/dev/null || { log "redis-server not found: run scripts/ensure-deps.sh services"; exit 1; }
  local port; port="$(free_port)"
  rm -f "$redis_pidfile"
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize yes --pidfile "$redis_pidfile" --dir "$redis_dir" \
    --logfile "$redis_dir/redis.log" --maxmemory "${REDIS_MAXMEMORY:-256mb}" \
    --maxmemory-policy allkeys-lru
  echo "$port" >"$redis_portfile"
  for _ in $(seq 100); do
    if redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG; then
      log "Redis running on 127.0.0.1:$port"; return 0
    fi
    sleep 0.1
  done
  log "Redis did not answer on port $port"; tail -n 20 "$redis_dir/redis.log" >&2; exit 1
}

redis_stop() {
  if redis_running; then
    local pid; pid="$(redis_pid)"
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    log "Redis stopped"
  fi
  rm -f "$redis_pidfile"
}

# --- Kafka (KAFKA=1) ------------------------------------------------------------------------

kafka_pid() { cat "$kafka_pidfile" 2>/dev/null; }

kafka_running() {
  local pid; pid="$(kafka_pid)"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q kafka.Kafka "/proc/$pid/cmdline" 2>/dev/null
}

kafka_port() { cat "$kafka_portfile" 2>/dev/null; }

kafka_start() {
  mkdir -p "$kafka_dir"
  if kafka_running; then log "Kafka already running on port $(kafka_port)"; return 0; fi
  local home cp port controller
  home="$("$root/scripts/ensure-deps.sh" kafka-home)"
  cp="$home/libs/*"
  # Ports are chosen once, at format time: the quorum's address is part of the config.
  if [ ! -f "$kafka_dir/server.properties" ]; then
    port="$(free_port)"; controller="$(free_port)"
    cat >"$kafka_dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$kafka_dir/logs
num.partitions=3
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
    echo "$port" >"$kafka_portfile"
    java -cp "$cp" kafka.tools.StorageTool format -t "$(java -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)" \
      -c "$kafka_dir/server.properties" >"$kafka_dir/format.log" 2>&1 \
      || { cat "$kafka_dir/format.log" >&2; exit 1; }
  fi
  port="$(kafka_port)"
  nohup java -Xms256m -Xmx512m -cp "$cp" kafka.Kafka "$kafka_dir/server.properties" \
    >"$kafka_dir/kafka.log" 2>&1 </dev/null &
  echo $! >"$kafka_pidfile"
  for _ in $(seq 600); do
    if port_in_use "$port"; then log "Kafka running on 127.0.0.1:$port (log $kafka_dir/kafka.log)"; return 0; fi
    kafka_running || break
    sleep 0.1
  done
  log "Kafka did not listen on port $port"; tail -n 20 "$kafka_dir/kafka.log" >&2; exit 1
}

kafka_stop() {
  if kafka_running; then
    local pid; pid="$(kafka_pid)"
    kill "$pid"
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
    log "Kafka stopped"
  fi
  rm -f "$kafka_pidfile"
}

# --- env file -------------------------------------------------------------------------------

write_env() {
  local tmp="$env_file.tmp"
  cat >"$tmp" <<EOF
PGHOST=127.0.0.1
PGPORT=$(pg_port)
PGDATABASE=$pg_db
PGUSER=$pg_user
PGSSLMODE=disable
REDIS_URL=redis://127.0.0.1:$(redis_port)
EOF
  if kafka_running; then echo "EVENTS_KAFKA_BROKERS=127.0.0.1:$(kafka_port)" >>"$tmp"; fi
  mv "$tmp" "$env_file"
}

cmd="${1:-}"
case "$cmd" in
  start)
    pg_start
    redis_start
    if [ "${KAFKA:-0}" = 1 ]; then kafka_start; fi
    write_env
    log "env file: $env_file"
    ;;
  stop)
    kafka_stop
    redis_stop
    pg_stop
    rm -f "$env_file"
    ;;
  status)
    rc=0
    if pg_running; then echo "postgres: running on 127.0.0.1:$(pg_port) (data $pg_data)"; else echo "postgres: stopped"; rc=3; fi
    if redis_running; then echo "redis: running on 127.0.0.1:$(redis_port) (pid $(redis_pid))"; else echo "redis: stopped"; rc=3; fi
    if kafka_running; then echo "kafka: running on 127.0.0.1:$(kafka_port) (pid $(kafka_pid))"; else echo "kafka: stopped (started with KAFKA=1)"; fi
    exit "$rc"
    ;;
  env)
    if ! { [ -f "$env_file" ] && pg_running && redis_running; }; then
      log "services are not running: run $0 start"; exit 1
    fi
    sed 's/^/export /' "$env_file"
    ;;
  free-port)
    free_port
    ;;
  clean)
    kafka_stop
    redis_stop
    pg_stop
    rm -rf "$run_dir"
    ;;
  *)
    echo "usage: $0 start|stop|status|env|clean|free-port" >&2
    exit 2
    ;;
esac
