#!/usr/bin/env bash
# The machine's own limits for the relay's workload (issue #13), to read beside bench/run.sh's
# figures from the same run: N messages (~200-byte JSON payloads, 1 000 keys) through
#   decode.sh   PostgreSQL's pgoutput decoding and streaming of their WAL (pg_recvlogical)
#   produce.sh  a bare librdkafka producer at the relay's settings
#   publish.sh  a bare confirmed AMQP publisher at the relay's settings
# one after the other. Usage: bench/limits/all.sh [N]   (default 100000). Prints each one's
# result line (`limit <name> rows=N seconds=S rows_per_s=R ...`), and comment lines (`# ...`).
set -euo pipefail
here=$(dirname "$0")
N=${1:-100000}
"$here/decode.sh" "$N"
"$here/produce.sh" "$N"
"$here/publish.sh" "$N"
