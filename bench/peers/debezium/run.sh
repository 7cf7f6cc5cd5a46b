#!/usr/bin/env bash
# Debezium peer of bench/run.sh (not a test: nothing here asserts a speed). Drains $ROWS outbox
# rows (the same ~200-byte payloads and keys as bench/run.sh) through Debezium 3.6.1's embedded
# engine, Postgres connector (pgoutput) and Outbox Event Router into Kafka topic
# outbox.event.bench (12 partitions, as bench/run.sh gives the relay), with a KafkaProducer (acks=all, idempotence) as our relay has.
#
#   1. builds DebeziumPeer once (mvn package; jars stay in ~/.m2, classes in target/);
#   2. fresh database outbox_debezium with the outbox table and a publication FOR TABLE outbox;
#   3. starts the peer (Debezium creates its slot; snapshot.mode=no_data) and waits until the slot
#      is streaming (active in pg_replication_slots and the peer saw its streaming metrics);
#   4. inserts $ROWS rows in ONE statement and waits for the peer's JSON line: rows/s from the
#      first record the engine hands over to the $ROWS-th Kafka confirm;
#   5. reports the JVM's CPU per message (utime + stime over its whole life, start-up included)
#      and peak RSS (VmHWM), stops it and drops its slot.
# Usage: bench/peers/debezium/run.sh [ROWS] [defaults|tuned]   (default 100000 tuned);
#        LATENCY="5000 60" bench/peers/debezium/run.sh - tuned   (ROWS is then RATE × SECS)
# JAVA_OPTS is passed to the JVM (none by default: the JVM's own heap sizing); NOTE_BYTES (default
# 80) is the length of the payload's filler, as in bench/run.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../../.."
ROWS=${1:-100000}
PROFILE=${2:-tuned}
case $PROFILE in
  defaults | tuned) ;;
  *) echo "usage: $0 [ROWS] [defaults|tuned]" >&2; exit 2 ;;
esac
KEYS=${KEYS:-1000}
# LATENCY="RATE SECS": instead of a backlog, the commit → consumer latency at RATE entries/s for
# SECS s, measured by examples/latency.rs exactly as bench/latency.sh measures the relay.
latency_load=
if [[ -n ${LATENCY:-} ]]; then
  read -r rate secs <<<"$LATENCY"
  ROWS=$((rate * secs))
  cargo build --quiet --release --locked --example latency
  latency_load=$PWD/target/release/examples/latency
fi
db_name=outbox_debezium
slot=debezium_bench
publication=debezium_bench
topic=outbox.event.bench

scripts/services.sh up >/dev/null
source .services/env
source bench/lib.sh
admin=$OUTBOX_RELAY_TEST_PG
db=${admin%/*}/$db_name
# Plaintext, as bench/run.sh gives the relay.
psql_admin() { psql "$admin?sslmode=disable" -qAtX "$@"; }
psql_db() { psql "$db?sslmode=disable" -qAtX "$@"; }

# 1. Build once: again only when the pom or a source is newer than the last build's classpath.
classpath_file=$here/target/classpath.txt
if [[ ! -f $classpath_file || -n $(find "$here/pom.xml" "$here/src" -newer "$classpath_file" -print -quit) ]]; then
  mvn -B -q -Dstyle.color=never -f "$here/pom.xml" package >&2
fi
classpath=$here/target/classes:$(cat "$classpath_file")

drop_slot() { # once no walsender holds it any more
  local deadline=$((SECONDS + 60))
  until [[ $(psql_admin -c "select count(*) from pg_replication_slots where slot_name = '$slot' and active") == 0 ]]; do
    ((SECONDS < deadline)) || { echo "replication slot $slot is still active" >&2; return 1; }
    sleep 0.1
  done
  psql_admin -c "select pg_drop_replication_slot('$slot') from pg_replication_slots where slot_name = '$slot'" >/dev/null
}

pid=
cleanup() {
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; fi
  drop_slot || true
}
trap cleanup EXIT

# 2. A fresh database (a slot of a previous run would block DROP DATABASE) and topic.
drop_slot
PGOPTIONS="-c client_min_messages=warning" psql "$admin?sslmode=disable" -qX -c "drop database if exists $db_name with (force)" -c "create database $db_name"
psql_db -c "create table outbox (
    id            uuid primary key,
    aggregatetype text not null,
    aggregateid   text not null,
    type          text not null,
    payload       jsonb,
    created_at    timestamptz not null default now(),
    seq           bigint)" \
  -c "create publication $publication for table outbox"
scripts/services.sh topic "$topic" 12   # as bench/run.sh gives the relay

# 3. The peer, until its slot streams.
log=.services/bench-debezium-$PROFILE.log
out=.services/bench-debezium-$PROFILE.out
pg_hostport=${admin#*@}
pg_hostport=${pg_hostport%%/*}
pg_user=${admin#postgres://}
pg_user=${pg_user%%@*}
start=$(date +%s.%N)
# shellcheck disable=SC2086 # JAVA_OPTS is a list of options
java ${JAVA_OPTS:-} -Dorg.slf4j.simpleLogger.defaultLogLevel=info -cp "$classpath" DebeziumPeer \
  "$PROFILE" "$ROWS" "${pg_hostport%:*}" "${pg_hostport#*:}" "$pg_user" "$db_name" "$slot" "$publication" \
  "$OUTBOX_RELAY_TEST_KAFKA" >"$out" 2>"$log" &
pid=$!
alive() { kill -0 "$pid" 2>/dev/null || { tail -n 30 "$log" >&2; echo "the peer died (log: $log)" >&2; exit 1; }; }
deadline=$((SECONDS + 180))
until grep -q '^debezium-peer: .* streaming (' "$log" \
    && [[ $(psql_admin -c "select count(*) from pg_replication_slots where slot_name = '$slot' and active") == 1 ]]; do
  alive
  ((SECONDS < deadline)) || { echo "the peer did not start streaming within 180 s (log: $log)" >&2; exit 1; }
  sleep 0.05
done
streaming=$(date +%s.%N)

# 4. The rows, in one statement, and the drain; or (LATENCY) the latency example's load.
if [[ -n $latency_load ]]; then
  # shellcheck disable=SC2086 # LATENCY is "RATE SECS", two arguments
  latency_line=$("$latency_load" "$db?sslmode=disable" "$OUTBOX_RELAY_TEST_KAFKA" "$topic" $LATENCY table)
else
  psql_db -c "$(insert_rows_sql "$ROWS" "$KEYS")"
fi
inserted=$(date +%s.%N)
deadline=$((SECONDS + 600))
until grep -q '^{' "$out"; do
  alive
  ((SECONDS < deadline)) || { echo "the peer did not drain $ROWS rows within 600 s (log: $log)" >&2; exit 1; }
  sleep 0.05
done
json=$(grep -m 1 '^{' "$out")

# 5. The JVM's own CPU (user + system, start-up included) and peak RSS, before it stops.
ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat")
rss_kib=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")
kill -TERM "$pid"
wait "$pid" 2>/dev/null || true
pid=
drop_slot

rate=$(sed -n 's/.*"rows_per_s":\([0-9.]*\).*/\1/p' <<<"$json")
cpu_us=$(echo "$ticks * 1000000 / $(getconf CLK_TCK) / $ROWS" | bc -l)
echo "$json"
[[ -z $latency_load ]] || echo "latency: $latency_line"
printf 'debezium-%s rows=%d rows/s=%.0f cpu_us_per_msg=%.1f peak_rss_mib=%d startup_s=%.2f insert_s=%.2f\n' \
  "$PROFILE" "$ROWS" "$rate" "$cpu_us" "$((rss_kib / 1024))" \
  "$(echo "$streaming - $start" | bc -l)" "$(echo "$inserted - $streaming" | bc -l)"
