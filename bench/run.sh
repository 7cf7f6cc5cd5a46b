#!/usr/bin/env bash
# End-to-end benchmark (not a test: nothing here asserts a speed). Reports:
#   1. drain: a backlog of $ROWS outbox rows (~200-byte JSON payloads, $KEYS keys) published by a
#      release build of the relay, polling and WAL tailing, to Apache Kafka (idempotent and
#      transactional delivery) and to RabbitMQ, and the same entries as logical messages (WAL →
#      Kafka, label kafka-messages);
#      rows/s until the outbox is empty, i.e. every row confirmed by the broker and deleted;
#   2. the relay process's CPU per message (utime + stime over the rows, start-up included) and
#      peak RSS (VmHWM), and confirm latency p50/p99 from the relay's own histogram;
#   3. what the relay's triggers cost the application: INSERT rate into the outbox (seq + NOTIFY
#      triggers) against the same table without them.
# Usage: bench/run.sh [ROWS]   (default 100000). Figures go to stdout; BENCHMARKS.md keeps
# the ones we published, with the machine they came from. ONLY=REGEX runs the drains whose
# "label mode" matches (e.g. ONLY='^kafka wal$'; "triggers" for part 3); NOTE_BYTES (default 80)
# is the length of the payload's filler (`repeat('x', n)`: compressible).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
ROWS=${1:-100000}
KEYS=${KEYS:-1000}

scripts/services.sh up >/dev/null
source .services/env
cargo build --quiet --release --locked --bin outbox-relay
relay=target/release/outbox-relay
admin=$OUTBOX_RELAY_TEST_PG
db=${admin%/*}/outbox_bench
port=19187

psql_q() { psql "$db" -qAtX "$@"; }

fresh_db() {
  psql "$admin" -qX -c "drop database if exists outbox_bench with (force)" -c "create database outbox_bench"
}

fill() { # rows
  psql_q -c "$(insert_rows_sql "$1" "$KEYS")"
}

quantile() { # q metrics-text -> seconds, from the histogram's cumulative buckets
  awk -v q="$1" '/^outbox_relay_confirm_latency_seconds_bucket/ {
      match($0, /le="[^"]+"/); le = substr($0, RSTART + 4, RLENGTH - 5); n[++k] = $NF; b[k] = le }
    /^outbox_relay_confirm_latency_seconds_count/ { total = $NF }
    END { for (i = 1; i <= k; i++) if (n[i] >= q * total) { print b[i]; exit } }' <<<"$2"
}

# The same entries as logical messages (`source.message_prefix`, envelope format), emitted in one
# transaction as `fill` inserts its rows: the outbox table stays empty.
fill_messages() { # count
  psql_q -c "select count(pg_logical_emit_message(true, 'outbox', jsonb_build_object(
      'id', gen_random_uuid(), 'aggregatetype', 'bench', 'aggregateid', 'key-' || (i % $KEYS),
      'type', 'Benchmarked', 'payload', $(payload_sql i))::text))
    from generate_series(1, $1) i" >/dev/null
}

drain() { # sink mode config-file [label] [filler]
  local sink=$1 mode=$2 config=$3 label=${4:-$1} filler=${5:-fill}
  [[ "$label $mode" =~ ${ONLY:-.} ]] || return 0
  psql "$admin" -qAtX -c "select pg_drop_replication_slot('bench') from pg_replication_slots where slot_name = 'bench'" >/dev/null
  fresh_db
  OUTBOX_RELAY__SOURCE__MODE=$mode "$relay" --config "$config" migrate >/dev/null
  "$filler" "$ROWS"
  local start end metrics
  start=$(date +%s.%N)
  OUTBOX_RELAY__SOURCE__MODE=$mode "$relay" --config "$config" run >".services/bench-$label-$mode.log" 2>&1 &
  local pid=$!
  wait_drained "$db" "$port" "$ROWS"
  end=$(date +%s.%N)
  metrics=$(curl -fsS "http://127.0.0.1:$port/metrics")
  # The relay's own CPU (user + system, start-up included) and peak RSS, before it stops.
  local ticks rss_kib
  ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  rss_kib=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")
  kill -TERM "$pid"; wait "$pid"
  local secs rate cpu_us
  secs=$(echo "$end - $start" | bc -l)
  rate=$(echo "$ROWS / $secs" | bc -l)
  cpu_us=$(echo "$ticks * 1000000 / $(getconf CLK_TCK) / $ROWS" | bc -l)
  printf '%-19s %-5s %8d rows in %6.2f s = %8.0f rows/s   CPU %5.1f µs/msg, peak RSS %4d MiB   confirm latency p50 <= %ss, p99 <= %ss\n' \
    "$label" "$mode" "$ROWS" "$secs" "$rate" "$cpu_us" "$((rss_kib / 1024))" \
    "$(quantile 0.5 "$metrics")" "$(quantile 0.99 "$metrics")"
}

# Plaintext even if the test server has ssl = on (its TLS test turns it on): sslmode=prefer would
# encrypt the replication stream, which costs a third of the WAL rate on 2 cores.
common="
[postgres]
url = \"$db?sslmode=disable\"
[source]
slot = \"bench\"
[telemetry]
listen = \"127.0.0.1:$port\"
log_level = \"warn\"
[route]
topic = \"bench.\${aggregatetype}\""

cat >.services/bench-kafka.toml <<TOML
$common
[sink]
kind = "kafka"
brokers = "$OUTBOX_RELAY_TEST_KAFKA"
TOML
sed 's/^kind = "kafka"$/kind = "kafka"\ndelivery = "transactional"/' .services/bench-kafka.toml \
  >.services/bench-kafka-tx.toml
{ echo "$common"; rabbit_sink_toml bench.bench bench; } >.services/bench-rabbitmq.toml

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GB; Kafka: $(basename "$(dirname "$OUTBOX_RELAY_KAFKA_LIBS")")"
scripts/services.sh topic bench.bench 12
for mode in poll wal; do
  drain kafka "$mode" .services/bench-kafka.toml
  drain kafka "$mode" .services/bench-kafka-tx.toml kafka-transactional
done
drain kafka wal .services/bench-kafka.toml kafka-messages fill_messages
for mode in poll wal; do
  for q in bench.1 bench.2; do rabbitmqctl purge_queue "$q" >/dev/null 2>&1 || true; done
  drain rabbitmq "$mode" .services/bench-rabbitmq.toml
done
for q in bench.1 bench.2; do rabbitmqctl delete_queue "$q" >/dev/null 2>&1 || true; done
psql "$admin" -qAtX -c "select pg_drop_replication_slot('bench') from pg_replication_slots where slot_name = 'bench'" >/dev/null

# The app's side: the same INSERT with and without the relay's triggers.
[[ triggers =~ ${ONLY:-.} ]] || exit 0
fresh_db
"$relay" --config .services/bench-kafka.toml migrate >/dev/null
psql_q -c "create table plain (like outbox including defaults including indexes)"
insert_rate() { # table
  local start end
  start=$(date +%s.%N)
  psql_q -c "insert into $1 (id, aggregatetype, aggregateid, type, payload, seq)
    select gen_random_uuid(), 'bench', 'key-' || (i % $KEYS), 'Benchmarked', '{\"n\": 1}', i
    from generate_series(1, $ROWS) i"
  end=$(date +%s.%N)
  echo "$ROWS / ($end - $start)" | bc -l
}
with=$(insert_rate outbox)
without=$(insert_rate plain)
printf 'app INSERT rate, one statement of %d rows: %.0f rows/s with the relay triggers, %.0f rows/s without\n' \
  "$ROWS" "$with" "$without"
