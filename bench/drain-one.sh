#!/usr/bin/env bash
# One drain of bench/run.sh, for A/B comparisons of relay builds: N outbox rows (the same rows as
# bench/run.sh) to Kafka through RELAY_BINARY, WAL tailing or polling; prints rows/s, the
# process's CPU per message and peak RSS. Needs a bench/run.sh run first (its config file).
# Usage: bench/drain-one.sh RELAY_BINARY [ROWS] [wal|poll]
set -euo pipefail
cd "$(dirname "$0")/.."; source .services/env; source bench/lib.sh
bin=$1; N=${2:-500000}; mode=${3:-wal}
admin=$OUTBOX_RELAY_TEST_PG; db=${admin%/*}/outbox_bench
psql "$admin" -qAtX -c "select pg_drop_replication_slot('bench') from pg_replication_slots where slot_name = 'bench'" >/dev/null
psql "$admin" -qX -c "drop database if exists outbox_bench with (force)" -c "create database outbox_bench" >/dev/null
OUTBOX_RELAY__SOURCE__MODE=$mode $bin --config .services/bench-kafka.toml migrate >/dev/null
psql "$db" -qAtX -c "$(insert_rows_sql "$N" 1000)"
start=$(date +%s.%N)
OUTBOX_RELAY__SOURCE__MODE=$mode $bin --config .services/bench-kafka.toml run >/dev/null 2>&1 &
pid=$!
wait_drained "$db" 19187 "$N"
end=$(date +%s.%N)
ticks=$(awk '{print $14 + $15}' /proc/$pid/stat); rss=$(awk '/^VmHWM:/ {print $2}' /proc/$pid/status)
kill -TERM $pid; wait $pid || true
echo "$(basename $bin) $mode N=$N rows/s=$(echo "$N / ($end - $start)" | bc -l | cut -d. -f1) cpu_us=$(echo "$ticks * 1000000 / $(getconf CLK_TCK) / $N" | bc -l | cut -c1-5) rss_mib=$((rss/1024))"
