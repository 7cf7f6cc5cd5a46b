#!/usr/bin/env bash
# Local services for the quickstart, the tests and the benchmark, all on loopback:
#   PostgreSQL (throwaway cluster, wal_level=logical)  127.0.0.1:${OUTBOX_RELAY_PG_PORT:-55432}
#   RabbitMQ (with the consistent-hash exchange plugin) 127.0.0.1:5672
#   tansu, a Kafka-protocol broker (memory storage)     127.0.0.1:9092
#     (built with libsql too: outage tests run their own tansu on an SQLite file, so a
#     restarted broker still has what it confirmed)
#
#   scripts/services.sh up      start whatever is not already running; prints the names it
#                               started on its last line ("started: ...") and writes the
#                               connection settings to .services/env (source it)
#   scripts/services.sh down [NAME...]
#                               stop services this script started (all of them, or the named)
#   scripts/services.sh tansu   print the path of the tansu binary, building it once if needed
#
# tansu is built from crates.io once and kept in ${XDG_CACHE_HOME:-~/.cache}/pg-outbox-relay
# (debug build, ~5 min; TANSU_PROFILE=release for the benchmark, ~16 min).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
state=${OUTBOX_RELAY_SERVICES_DIR:-$root/.services}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/pg-outbox-relay
pg_port=${OUTBOX_RELAY_PG_PORT:-55432}
tansu_version=0.6.0
tansu_features=dynostore,libsql
mkdir -p "$state"

log() { echo "services: $*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port seconds what
  local deadline=$((SECONDS + $2))
  until port_open "$1"; do
    if ((SECONDS >= deadline)); then log "$3 did not open port $1 within $2 s"; return 1; fi
    sleep 0.2
  done
}

pg_bindir() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [[ -z $dir ]]; then dir=$(dirname "$(command -v initdb || true)"); fi
  [[ -x $dir/initdb ]] || { log "PostgreSQL server binaries (initdb) not found; install postgresql"; return 1; }
  echo "$dir"
}

as_postgres() { if [[ $(id -un) == postgres ]]; then "$@"; else runuser -u postgres -- "$@"; fi; }

start_postgres() {
  local bin data=$state/pg
  bin=$(pg_bindir)
  if port_open "$pg_port"; then
    local level
    level=$("$bin/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -Atc 'show wal_level' 2>/dev/null || true)
    [[ $level == logical ]] || { log "port $pg_port is taken by something that is not a wal_level=logical Postgres"; return 1; }
    return 0
  fi
  if [[ ! -f $data/PG_VERSION ]]; then
    log "creating a throwaway PostgreSQL cluster in $data"
    rm -rf "$data"; mkdir -p "$data"; chown postgres "$data" 2>/dev/null || true
    as_postgres "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    cat >>"$data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$data'
wal_level = logical
max_replication_slots = 64
max_wal_senders = 64
max_connections = 300
wal_sender_timeout = 60s
# A throwaway cluster: durability is not what the tests measure.
fsync = off
synchronous_commit = off
full_page_writes = off
CONF
  fi
  as_postgres "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 start >/dev/null
  touch "$state/postgres.started"
  started+=(postgres)
}

start_rabbitmq() {
  if ! port_open 5672; then
    command -v rabbitmq-server >/dev/null || { log "rabbitmq-server not installed (apt-get install rabbitmq-server)"; return 1; }
    log "starting RabbitMQ"
    rabbitmq-server -detached >/dev/null 2>&1 || true
    wait_port 5672 120 RabbitMQ
    touch "$state/rabbitmq.started"
    started+=(rabbitmq)
  fi
  rabbitmq-plugins enable rabbitmq_consistent_hash_exchange >/dev/null 2>&1 \
    || { log "could not enable rabbitmq_consistent_hash_exchange"; return 1; }
}

tansu_bin() {
  local profile=${TANSU_PROFILE:-} candidate
  for candidate in release debug; do
    if [[ -n $profile && $profile != "$candidate" ]]; then continue; fi
    local bin=$cache/tansu-$tansu_version-${tansu_features//,/-}-$candidate/bin/tansu
    if [[ -x $bin ]]; then echo "$bin"; return 0; fi
  done
  profile=${profile:-debug}
  log "building tansu $tansu_version ($profile, features $tansu_features) once; it is cached in $cache"
  local root=$cache/tansu-$tansu_version-${tansu_features//,/-}-$profile
  local flags=(--locked --features "$tansu_features" --root "$root")
  [[ $profile == debug ]] && flags+=(--debug)
  CARGO_TARGET_DIR=$cache/tansu-build cargo install "tansu@$tansu_version" "${flags[@]}" >&2
  echo "$root/bin/tansu"
}

start_tansu() {
  local bin
  bin=$(tansu_bin)
  echo "$bin" >"$state/tansu.path"
  if port_open 9092; then return 0; fi
  log "starting tansu on 127.0.0.1:9092"
  setsid nohup "$bin" broker --listener-url tcp://127.0.0.1:9092 \
    --advertised-listener-url tcp://127.0.0.1:9092 --storage-engine memory://tansu/ \
    >"$state/tansu.log" 2>&1 </dev/null &
  echo $! >"$state/tansu.pid"
  wait_port 9092 60 tansu
  touch "$state/tansu.started"
  started+=(tansu)
}

write_env() {
  cat >"$state/env" <<ENV
export OUTBOX_RELAY_TEST_PG=postgres://postgres@127.0.0.1:$pg_port/postgres
export OUTBOX_RELAY_TEST_PG_BIN=$(pg_bindir)
export OUTBOX_RELAY_TEST_PG_DATA=$state/pg
export OUTBOX_RELAY_TEST_KAFKA=127.0.0.1:9092
export OUTBOX_RELAY_TEST_AMQP=amqp://guest:guest@127.0.0.1:5672/%2f
export OUTBOX_RELAY_TANSU=$(cat "$state/tansu.path")
ENV
}

stop() {
  local name=$1
  [[ -f $state/$name.started ]] || return 0
  case $name in
    postgres) as_postgres "$(pg_bindir)/pg_ctl" -D "$state/pg" -m fast -w stop >/dev/null || true ;;
    rabbitmq) rabbitmqctl stop >/dev/null 2>&1 || true ;;
    tansu) [[ -f $state/tansu.pid ]] && kill "$(cat "$state/tansu.pid")" 2>/dev/null || true ;;
  esac
  rm -f "$state/$name.started"
  log "stopped $name"
}

case ${1:-up} in
  up)
    started=()
    start_postgres
    start_rabbitmq
    start_tansu
    write_env
    echo "started: ${started[*]:-}"
    ;;
  down)
    shift
    names=("$@")
    ((${#names[@]})) || names=(tansu rabbitmq postgres)
    for name in "${names[@]}"; do stop "$name"; done
    ;;
  tansu) tansu_bin ;;
  *) echo "usage: $0 up | down [postgres|rabbitmq|tansu ...] | tansu" >&2; exit 2 ;;
esac
