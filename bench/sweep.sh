#!/usr/bin/env bash
# Throughput and commit → consumer p99 against payload size: the relay (WAL → Kafka, idempotent)
# beside Debezium (tuned), for the plot in BENCHMARKS.md (not a test: nothing asserts a speed).
# For each filler length in NOTES (the payload's `note`, see bench/run.sh):
#   - a drain of ROWS rows: bench/run.sh with ONLY='^kafka wal$', bench/peers/debezium/run.sh;
#   - the latency at RATE entries/s for SECS s: bench/latency.sh with ONLY='WAL → Kafka, idem',
#     the Debezium peer with LATENCY="RATE SECS" (the same load and consumer, examples/latency.rs).
# Writes .services/sweep.csv (one line per system and size), then bench/plot.py draws it into
# bench/sweep.png (matplotlib, in a virtualenv under ~/.cache/pg-outbox-relay/plot-venv).
# Usage: bench/sweep.sh [ROWS] [RATE] [SECS]   (defaults 50000 2000 20); NOTES="80 900 3900 15900"
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-50000}
RATE=${2:-2000}
SECS=${3:-20}
NOTES=${NOTES:-80 900 3900 15900}

scripts/services.sh up >/dev/null
source .services/env
source bench/lib.sh
csv=.services/sweep.csv
echo "system,payload_bytes,rows_per_s,cpu_us_per_msg,peak_rss_mib,p50_ms,p99_ms" >"$csv"
field() { grep -oP "$1" <<<"$2" | head -n 1; }

for note in $NOTES; do
  export NOTE_BYTES=$note
  bytes=$(payload_bytes)
  echo "== payload $bytes bytes (filler $note)" >&2

  drain=$(ONLY='^kafka wal$' bench/run.sh "$ROWS" | grep '^kafka ')
  latency=$(ONLY='WAL → Kafka, idem' bench/latency.sh "$RATE" "$SECS" | tr '\n' ' ')
  echo "relay: $drain | $latency" >&2
  echo "relay,$bytes,$(field '= *\K[0-9]+(?= rows/s)' "$drain"),$(field 'CPU *\K[0-9.]+' "$drain"),$(field 'peak RSS *\K[0-9]+' "$drain"),$(field 'p50 \K[0-9.]+' "$latency"),$(field 'p99 \K[0-9.]+' "$latency")" >>"$csv"

  drain=$(bench/peers/debezium/run.sh "$ROWS" tuned | grep '^debezium-')
  latency=$(LATENCY="$RATE $SECS" bench/peers/debezium/run.sh - tuned | grep '^latency: ')
  echo "debezium: $drain | $latency" >&2
  echo "debezium-tuned,$bytes,$(field 'rows/s=\K[0-9]+' "$drain"),$(field 'cpu_us_per_msg=\K[0-9.]+' "$drain"),$(field 'peak_rss_mib=\K[0-9]+' "$drain"),$(field 'p50 \K[0-9.]+' "$latency"),$(field 'p99 \K[0-9.]+' "$latency")" >>"$csv"
done
cat "$csv"

venv=${XDG_CACHE_HOME:-$HOME/.cache}/pg-outbox-relay/plot-venv
if [[ ! -x $venv/bin/python ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet matplotlib
fi
"$venv/bin/python" bench/plot.py "$csv" bench/sweep.png "$ROWS" "$RATE" "$SECS"
echo "plot: bench/sweep.png" >&2
