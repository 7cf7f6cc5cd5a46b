#!/usr/bin/env bash
# Limit 1 of bench/limits (issue #13): how fast this PostgreSQL decodes and streams the relay's
# WAL with pgoutput, and nothing else. N outbox rows (~200-byte JSON payloads, 1 000 keys, the
# same INSERT as bench/run.sh) go into a fresh database `outbox_limits` in one statement; then
# pg_recvlogical reads them from a pgoutput slot with the options the relay's replication client
# sends (proto_version 1, messages true), to /dev/null, up to the LSN right after the INSERT.
# Wall time from pg_recvlogical's start to its exit is the decode+stream limit.
# Usage: bench/limits/decode.sh [N]   (default 100000; LIMITS_VERBOSE=1 shows pg_recvlogical's
# log). Needs the running services of scripts/services.sh (reads .services/env). Prints one line:
#   limit decode rows=N seconds=S rows_per_s=R
# The slot and the database are dropped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-100000}
KEYS=1000
source .services/env
source bench/lib.sh
PATH=$OUTBOX_RELAY_TEST_PG_BIN:$PATH
admin=$OUTBOX_RELAY_TEST_PG
# Plaintext, as bench/run.sh's relay: TLS would cost the stream a third of its rate on 2 cores.
db="${admin%/*}/outbox_limits?sslmode=disable"
slot=limits

psql_admin() { psql "$admin" -qAtX -v ON_ERROR_STOP=1 "$@"; }
psql_db() { psql "$db" -qAtX -v ON_ERROR_STOP=1 "$@"; }
drop_slot() {
  psql_admin -c "select pg_drop_replication_slot('$slot') from pg_replication_slots
    where slot_name = '$slot'" >/dev/null
}
cleanup() {
  drop_slot
  psql_admin -c "set client_min_messages = warning" -c "drop database if exists outbox_limits with (force)"
}

drop_slot # a run that died kept its slot; a database with a slot cannot be dropped
psql_admin -c "set client_min_messages = warning" -c "drop database if exists outbox_limits with (force)" -c "create database outbox_limits"
trap cleanup EXIT
psql_db <<SQL >/dev/null
create table outbox (
  id uuid primary key,
  aggregatetype text not null,
  aggregateid text not null,
  type text not null,
  payload jsonb,
  created_at timestamptz not null default now()
);
create publication limits_pub for table outbox with (publish = 'insert');
select pg_create_logical_replication_slot('$slot', 'pgoutput');
SQL
# synchronous_commit = on for this one commit: a walsender decodes only flushed WAL, and the
# test server's is off, so the rows would wait for the WAL writer (wal_writer_delay, 200 ms) —
# latency that a stream of transactions hides, not the decode rate.
psql_db -c "set synchronous_commit = on" -c "$(NOTE_BYTES=80 insert_rows_sql "$N" "$KEYS")"
# The end of the INSERT's commit record (or later, if other databases write WAL meanwhile:
# pg_recvlogical then stops at the first record or keepalive past it). The insert position, not
# pg_current_wal_lsn(): that is the write position, which with synchronous_commit = off (the
# test server's) can still be before the commit, and pg_recvlogical would stop short of it.
endpos=$(psql_db -c "select pg_current_wal_insert_lsn()")

log=$(mktemp); trap 'rm -f "$log"; cleanup' EXIT
start=$(date +%s.%N)
pg_recvlogical -d "$db" --slot "$slot" --start --endpos "$endpos" --no-loop --verbose \
  --plugin pgoutput -o proto_version=1 -o publication_names=limits_pub -o messages=true \
  -f /dev/null 2>"$log" || { cat "$log" >&2; exit 1; }
end=$(date +%s.%N)
# Not only its exit status: it must say it got there, by the record at endpos, by a later one,
# or by a keepalive past it (then the server had nothing before endpos left to send).
grep -q "end position $endpos reached" "$log" || { cat "$log" >&2; exit 1; }
[[ -z ${LIMITS_VERBOSE:-} ]] || cat "$log" >&2
secs=$(echo "$end - $start" | bc -l)
printf 'limit decode rows=%d seconds=%.3f rows_per_s=%.0f\n' "$N" "$secs" "$(echo "$N / $secs" | bc -l)"
