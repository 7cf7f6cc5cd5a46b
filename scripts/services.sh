#!/usr/bin/env bash
# Local services for the quickstart, the tests and the benchmark, all on loopback:
#   PostgreSQL (throwaway cluster, wal_level=logical)   127.0.0.1:${OUTBOX_RELAY_PG_PORT:-55432}
#   RabbitMQ (with the consistent-hash exchange plugin)  127.0.0.1:5672
#   Apache Kafka (KRaft, one combined broker+controller) 127.0.0.1:9092 (controller 9093)
#
#   scripts/services.sh up      install what is missing, start whatever is not already running;
#                               prints the names it started on its last line ("started: ...")
#                               and writes the connection settings to .services/env (source it)
#   scripts/services.sh down [NAME...]
#                               stop services this script started (all of them, or the named)
#   scripts/services.sh kafka-libs
#                               print the folder of Apache Kafka's jars, resolving them once
#   scripts/services.sh topic NAME PARTITIONS
#                               (re)create a Kafka topic on the local broker (kafka-topics)
#
# On a machine with nothing but the toolchains it installs, once: the Debian packages postgresql,
# rabbitmq-server and prometheus (for `promtool`, which checks deploy/prometheus; no Prometheus
# server is started) (`apt-get update` first), and Apache Kafka's jars from Maven Central
# (scripts/kafka/pom.xml, `mvn dependency:copy-dependencies`) into
# ${XDG_CACHE_HOME:-~/.cache}/pg-outbox-relay/kafka-<version> — never into the repository.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
state=${OUTBOX_RELAY_SERVICES_DIR:-$root/.services}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/pg-outbox-relay
pg_port=${OUTBOX_RELAY_PG_PORT:-55432}
kafka_port=9092
kafka_version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$root/scripts/kafka/pom.xml")
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

apt_updated=
apt_install() { # package...
  command -v apt-get >/dev/null || { log "cannot install $* (no apt-get): install it yourself"; return 1; }
  local sudo=
  [[ $(id -u) == 0 ]] || sudo=sudo
  if [[ -z $apt_updated ]]; then
    log "apt-get update"
    $sudo apt-get update -qq >&2
    apt_updated=1
  fi
  log "installing $* from Debian's packages"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >&2
}

pg_bindir() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [[ -z $dir ]]; then dir=$(dirname "$(command -v initdb || true)"); fi
  [[ -x $dir/initdb ]] || return 1
  echo "$dir"
}

ensure_installed() {
  local missing=()
  pg_bindir >/dev/null || missing+=(postgresql)
  command -v psql >/dev/null || missing+=(postgresql-client)
  command -v rabbitmq-server >/dev/null || missing+=(rabbitmq-server)
  command -v curl >/dev/null || missing+=(curl)
  command -v promtool >/dev/null || missing+=(prometheus)
  if ((${#missing[@]})); then apt_install "${missing[@]}"; fi
  # The Debian package starts its own node and cluster; ours are throwaway ones on our ports.
  if [[ -n ${missing[*]} ]]; then
    if [[ " ${missing[*]} " == *" rabbitmq-server "* ]]; then
      (service rabbitmq-server stop || rabbitmqctl stop) >/dev/null 2>&1 || true
    fi
    if [[ " ${missing[*]} " == *" postgresql "* ]]; then
      (service postgresql stop || true) >/dev/null 2>&1
    fi
    if [[ " ${missing[*]} " == *" prometheus "* ]]; then
      (service prometheus stop || true) >/dev/null 2>&1
    fi
  fi
  command -v java >/dev/null || { log "java (17+) is needed for Apache Kafka"; return 1; }
  command -v mvn >/dev/null || { log "mvn is needed to fetch Apache Kafka from Maven Central"; return 1; }
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
    log "starting RabbitMQ"
    rabbitmq-server -detached >/dev/null 2>&1 || true
    wait_port 5672 120 RabbitMQ
    touch "$state/rabbitmq.started"
    started+=(rabbitmq)
  fi
  rabbitmq-plugins enable rabbitmq_consistent_hash_exchange >/dev/null 2>&1 \
    || { log "could not enable rabbitmq_consistent_hash_exchange"; return 1; }
}

kafka_libs() {
  local dir=$cache/kafka-$kafka_version
  if [[ ! -f $dir/complete ]]; then
    log "fetching Apache Kafka $kafka_version from Maven Central into $dir (once)"
    rm -rf "$dir"
    mkdir -p "$dir"
    mvn -B -f "$root/scripts/kafka/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$dir/libs" >"$dir/mvn.log" 2>&1 \
      || { tail -n 40 "$dir/mvn.log" >&2; log "mvn could not fetch Apache Kafka (log: $dir/mvn.log)"; return 1; }
    touch "$dir/complete"
  fi
  echo "$dir/libs"
}

kafka_command() { # main-class args... -> the java command line in ${command[@]}
  local libs
  libs=$(kafka_libs)
  command=(java -Xms128m "-Xmx${heap:-512m}" -XX:+UseG1GC -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$root/scripts/kafka/log4j2.properties" -cp "$libs/*" "$@")
}

kafka_java() { local command; kafka_command "$@"; "${command[@]}"; }

start_kafka() {
  kafka_libs >/dev/null
  if port_open "$kafka_port"; then return 0; fi
  local data=$state/kafka
  mkdir -p "$data"
  sed -e "s|@ID@|1|; s|@PORT@|$kafka_port|g; s|@CONTROLLER_PORT@|$((kafka_port + 1))|g" \
    -e "s|@VOTERS@|1@127.0.0.1:$((kafka_port + 1))|; s|@DATA@|$data/log|; s|@RF@|1|g" \
    "$root/scripts/kafka/server.properties" >"$data/server.properties"
  if [[ ! -f $data/log/meta.properties ]]; then
    kafka_java kafka.tools.StorageTool format -t "$(kafka_java kafka.tools.StorageTool random-uuid)" \
      -c "$data/server.properties" >/dev/null
  fi
  log "starting Apache Kafka $kafka_version on 127.0.0.1:$kafka_port"
  local command
  heap=1g kafka_command kafka.Kafka "$data/server.properties"
  setsid nohup "${command[@]}" >"$state/kafka.log" 2>&1 </dev/null &
  echo $! >"$state/kafka.pid"
  wait_port "$kafka_port" 120 Kafka
  touch "$state/kafka.started"
  started+=(kafka)
}

topic() { # name partitions
  kafka_java org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$kafka_port" \
    --delete --if-exists --topic "$1" >/dev/null 2>&1 || true
  # A deleted topic's name is free again only once the deletion went through.
  local deadline=$((SECONDS + 60))
  until kafka_java org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$kafka_port" \
      --create --if-not-exists --topic "$1" --partitions "$2" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { log "could not create topic $1"; return 1; }
    sleep 1
  done
}

write_env() {
  cat >"$state/env" <<ENV
export OUTBOX_RELAY_TEST_PG=postgres://postgres@127.0.0.1:$pg_port/postgres
export OUTBOX_RELAY_TEST_PG_BIN=$(pg_bindir)
export OUTBOX_RELAY_TEST_PG_DATA=$state/pg
export OUTBOX_RELAY_TEST_KAFKA=127.0.0.1:$kafka_port
export OUTBOX_RELAY_TEST_AMQP=amqp://guest:guest@127.0.0.1:5672/%2f
export OUTBOX_RELAY_KAFKA_LIBS=$(kafka_libs)
export OUTBOX_RELAY_KAFKA_CONFIG=$root/scripts/kafka
ENV
}

stop() {
  local name=$1
  [[ -f $state/$name.started ]] || return 0
  case $name in
    postgres) as_postgres "$(pg_bindir)/pg_ctl" -D "$state/pg" -m fast -w stop >/dev/null || true ;;
    rabbitmq) rabbitmqctl stop >/dev/null 2>&1 || true ;;
    kafka)
      if [[ -f $state/kafka.pid ]]; then
        local pid
        pid=$(cat "$state/kafka.pid")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$pid" 2>/dev/null || true
      fi
      ;;
  esac
  rm -f "$state/$name.started"
  log "stopped $name"
}

case ${1:-up} in
  up)
    started=()
    ensure_installed
    start_postgres
    start_rabbitmq
    start_kafka
    write_env
    echo "started: ${started[*]:-}"
    ;;
  down)
    shift
    names=("$@")
    ((${#names[@]})) || names=(kafka rabbitmq postgres)
    for name in "${names[@]}"; do stop "$name"; done
    ;;
  kafka-libs) kafka_libs ;;
  topic) shift; topic "$@" ;;
  *) echo "usage: $0 up | down [postgres|rabbitmq|kafka ...] | kafka-libs | topic NAME PARTITIONS" >&2; exit 2 ;;
esac
