#!/usr/bin/env bash
# The whole benchmark of issue #13 in one sitting, one command (not a test: nothing here asserts
# a speed). On this machine's services (scripts/services.sh), the same N entries for every system:
#   1. the machine's limits: bench/limits/all.sh N (raw pgoutput decode, raw librdkafka produce,
#      raw confirmed AMQP publish of the relay's messages);
#   2. the relay: bench/run.sh N (WAL and polling → Kafka idempotent and transactional, logical
#      messages → Kafka, WAL and polling → RabbitMQ, the triggers' cost to the app's INSERT);
#   3. Debezium 3.6.1 (embedded engine, Postgres connector, Outbox Event Router → the same Kafka):
#      bench/peers/debezium/run.sh N tuned, then defaults;
#   4. commit → consumer latency at a fixed offered load: bench/latency.sh RATE SECS;
# then a summary: per system rows/s, MB/s of payload, CPU µs/msg, peak RSS; each relay drain as
# a fraction of the limits it passes through (WAL: min(decode, the sink's limit), the decode
# limit being measured on table rows, also for logical messages; polling: the sink's limit), and
# each relay → Kafka drain against Debezium tuned (throughput ×, CPU and RSS as fractions). Every part's own output is kept in .services/bench-all/.
# Kafka and RabbitMQ are warmed up first (a million records, 100 000 messages; not measured).
# Usage: bench/all.sh [N] [RATE] [SECS]   (defaults 300000 5000 60); NOTE_BYTES as in bench/run.sh.
# bench/sweep.sh draws the payload-size plot; it is not part of this run (it takes as long again).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-300000}
RATE=${2:-5000}
SECS=${3:-60}

scripts/services.sh up >/dev/null
source .services/env
source bench/lib.sh
out=.services/bench-all
mkdir -p "$out"
step() { # name command...
  local name=$1
  shift
  echo "== $name: $*" >&2
  "$@" 2>"$out/$name.err" | tee "$out/$name.txt" >&2
}
# The brokers' JVM and Erlang compile their hot paths in the first messages they see: a Kafka
# just started confirmed 262k records/s to the raw producer, the same one warm 840–920k. Warm
# both once (unmeasured) so that whatever runs first does not pay for it.
echo "== warm-up (not measured)" >&2
bench/limits/produce.sh 1000000 >/dev/null 2>&1
bench/limits/publish.sh 100000 >/dev/null 2>&1
step limits bench/limits/all.sh "$N"
step relay bench/run.sh "$N"
step debezium-tuned bench/peers/debezium/run.sh "$N" tuned
step debezium-defaults bench/peers/debezium/run.sh "$N" defaults
step latency bench/latency.sh "$RATE" "$SECS"

bytes=$(payload_bytes)

echo
echo "# $N entries, ~$bytes-byte payloads; $(nproc) cores; $(date -u +%Y-%m-%dT%H:%MZ); $(git rev-parse --short HEAD)"
cat "$out/limits.txt" "$out/relay.txt" "$out/debezium-tuned.txt" "$out/debezium-defaults.txt" |
  awk -v bytes="$bytes" '
    function kv(key,   i) { for (i = 1; i <= NF; i++) if (index($i, key "=") == 1) return substr($i, length(key) + 2); return "" }
    function min(a, b) { return a + 0 < b + 0 ? a : b }
    function ratio(a, b) { return b > 0 ? sprintf("%.2f", a / b) : "-" }
    $1 == "limit" { limit[$2] = kv("rows_per_s"); limit_cpu[$2] = kv("cpu_us_per_msg"); next }
    /^debezium-/ { name = $1; rate[name] = kv("rows/s"); cpu[name] = kv("cpu_us_per_msg"); rss[name] = kv("peak_rss_mib"); order[++n] = name; next }
    / rows in .* rows\/s/ {
      name = $1 " " $2
      for (i = 1; i <= NF; i++) {
        if ($i == "rows/s") rate[name] = $(i - 1)
        if ($i == "µs/msg,") cpu[name] = $(i - 1)
        if ($i == "MiB") rss[name] = $(i - 1)
      }
      order[++n] = name
    }
    END {
      printf "%-26s %9s %7s %7s %5s  %-28s %s\n", "", "rows/s", "MB/s", "µs/msg", "MiB", "of the limit", "vs Debezium tuned (rows/s ×, CPU, RSS)"
      split("decode produce publish", limits, " ")
      for (j = 1; j <= 3; j++) {
        l = limits[j]
        printf "%-26s %9d %7.1f %7s %5s\n", "limit " l, limit[l], limit[l] * bytes / 1e6, limit_cpu[l] == "" ? "-" : limit_cpu[l], "-"
      }
      d = "debezium-tuned"
      for (i = 1; i <= n; i++) {
        name = order[i]; of = ""; vs = ""
        split(name, part, " ")
        sink = part[1] ~ /^rabbitmq/ ? "publish" : "produce"
        if (part[1] !~ /^debezium/) {
          if (part[2] == "wal") of = sprintf("%s of min(decode, %s)", ratio(rate[name], min(limit["decode"], limit[sink])), sink)
          else of = sprintf("%s of %s", ratio(rate[name], limit[sink]), sink)
          if (sink == "produce" && rate[d] > 0)
            vs = sprintf("%s×, %s, %s", ratio(rate[name], rate[d]), ratio(cpu[name], cpu[d]), ratio(rss[name], rss[d]))
        }
        printf "%-26s %9d %7.1f %7s %5s  %-28s %s\n", name, rate[name], rate[name] * bytes / 1e6, cpu[name], rss[name], of, vs
      }
    }'
echo
grep -E '→|relay CPU' "$out/latency.txt"
