#!/usr/bin/env bash
# Commit → consumer latency at a fixed offered load (not a test: nothing here asserts a speed).
# For each case a release build of the relay runs against a fresh database while the `latency`
# example (examples/latency.rs) commits RATE entries a second for SECS seconds — transactions of
# 10, ~200-byte JSON payloads, 1 000 keys — and a consumer in the same process (Kafka,
# read_committed; or RabbitMQ) notes when each arrives. Reports p50/p90/p99/p99.9/max of arrival
# minus COMMIT's return, and the relay's CPU per message and peak RSS over the run.
# Cases: WAL → Kafka and polling → Kafka at RATE (idempotent), the logical-message outbox → Kafka
# at RATE, WAL → Kafka transactional at RATE, polling at POLL_RATE (default 10000), and WAL and
# polling → RabbitMQ at RATE (publisher confirms; the consumer reads both queues).
# Usage: bench/latency.sh [RATE] [SECS]   (defaults 5000, 60); ONLY=REGEX runs the cases whose
# label matches; EXTRA_TOML is appended to the relay's config (e.g. `[sink.properties]` lines);
# RELAY=PATH runs that relay binary instead of this tree's release build (to compare two builds).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
RATE=${1:-5000}
SECS=${2:-60}
POLL_RATE=${POLL_RATE:-10000}

scripts/services.sh up >/dev/null
source .services/env
cargo build --quiet --release --locked --bin outbox-relay --example latency
relay=${RELAY:-target/release/outbox-relay}
load=target/release/examples/latency
admin=$OUTBOX_RELAY_TEST_PG
db=${admin%/*}/outbox_latency
port=19188

config=.services/latency.toml
# Plaintext (see bench/run.sh); heartbeats off: the load keeps the slot moving.
cat >"$config" <<TOML
[postgres]
url = "$db?sslmode=disable"
[source]
slot = "latency"
heartbeat_interval = "0s"
[telemetry]
listen = "127.0.0.1:$port"
log_level = "warn"
[route]
topic = "latency.\${aggregatetype}"
[sink]
kind = "kafka"
brokers = "$OUTBOX_RELAY_TEST_KAFKA"
${EXTRA_TOML:-}
TOML
# RabbitMQ as bench/run.sh has it: a consistent-hash exchange over two queues, which the
# consumer reads.
rabbit_config=.services/latency-rabbitmq.toml
{ sed '/^\[sink\]$/,$d' "$config"; rabbit_sink_toml latency.bench latency; } >"$rabbit_config"

case_() { # label mode delivery rate table|message [kafka|rabbitmq]
  local label=$1 mode=$2 delivery=$3 rate=$4 via=$5 sink=${6:-kafka}
  local log=".services/latency-$sink-$mode-$delivery-$via-$rate.log"
  [[ $label =~ ${ONLY:-.} ]] || return 0
  psql "$admin" -qAtX -c "select pg_drop_replication_slot('latency') from pg_replication_slots where slot_name = 'latency'" >/dev/null
  psql "$admin" -qX -c "drop database if exists outbox_latency with (force)" -c "create database outbox_latency" >/dev/null
  local env=(OUTBOX_RELAY__SOURCE__MODE="$mode") cfg=$config brokers=$OUTBOX_RELAY_TEST_KAFKA
  local target=latency.bench
  if [[ $sink == rabbitmq ]]; then
    cfg=$rabbit_config brokers=$OUTBOX_RELAY_TEST_AMQP target=latency.1,latency.2
  else
    env+=(OUTBOX_RELAY__SINK__DELIVERY="$delivery")
  fi
  env "${env[@]}" "$relay" --config "$cfg" migrate >/dev/null
  env "${env[@]}" "$relay" --config "$cfg" run >"$log" 2>&1 &
  local pid=$!
  until curl -fsS "http://127.0.0.1:$port/readyz" 2>/dev/null | grep -q running; do
    kill -0 "$pid" 2>/dev/null || { echo "$label: the relay stopped (see $log)" >&2; return 1; }
    sleep 0.1
  done
  local before
  before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  local out
  out=$("$load" "$db?sslmode=disable" "$brokers" "$target" "$rate" "$SECS" "$via") || true
  local ticks rss_kib
  ticks=$(( $(awk '{print $14 + $15}' "/proc/$pid/stat") - before ))
  rss_kib=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")
  kill -TERM "$pid"; wait "$pid" || true
  local n cpu_us
  n=$(echo "$rate * $SECS" | bc)
  cpu_us=$(echo "$ticks * 1000000 / $(getconf CLK_TCK) / $n" | bc -l)
  printf '%-34s %s\n%-34s relay CPU %.1f µs/msg, peak RSS %d MiB\n' "$label" "$out" "" "$cpu_us" "$((rss_kib / 1024))"
}

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GB; Kafka: $(basename "$(dirname "$OUTBOX_RELAY_KAFKA_LIBS")"); $RATE rows/s for $SECS s"
scripts/services.sh topic latency.bench 12
case_ "WAL → Kafka, idempotent" wal idempotent "$RATE" table
case_ "polling → Kafka, idempotent" poll idempotent "$RATE" table
case_ "logical messages → Kafka" wal idempotent "$RATE" message
case_ "WAL → Kafka, transactional" wal transactional "$RATE" table
case_ "polling → Kafka at $POLL_RATE/s" poll idempotent "$POLL_RATE" table
case_ "WAL → RabbitMQ" wal confirms "$RATE" table rabbitmq
case_ "polling → RabbitMQ" poll confirms "$RATE" table rabbitmq
for q in latency.1 latency.2; do rabbitmqctl delete_queue "$q" >/dev/null 2>&1 || true; done
psql "$admin" -qAtX -c "select pg_drop_replication_slot('latency') from pg_replication_slots where slot_name = 'latency'" >/dev/null
