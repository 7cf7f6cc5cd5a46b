#!/usr/bin/env bash
# Limit 3 of bench/limits (issue #13): a bare AMQP 0-9-1 publisher (publish/, Go,
# github.com/rabbitmq/amqp091-go) with the relay's RabbitMQ settings: publisher confirms on
# `lanes` channels of one connection, a key always on the same channel, mandatory persistent
# publishes, at most `max_in_flight` unconfirmed; the relay's messages (its properties and
# default headers) into bench/run.sh's topology (consistent-hash exchange, two queues). Built into
# ${XDG_CACHE_HOME:-~/.cache}/pg-outbox-relay/limits/publish, again whenever publish/ is newer.
# Usage: bench/limits/publish.sh [N]   (default 100000; LIMITS_WINDOW, default 10000, and
# LIMITS_LANES, default 4: the relay's pipeline.max_in_flight and sink.lanes defaults). Needs
# the running services of scripts/services.sh (reads .services/env). Prints one line:
#   limit publish rows=N seconds=S rows_per_s=R cpu_us_per_msg=C
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-100000}
source .services/env

cache=${XDG_CACHE_HOME:-$HOME/.cache}/pg-outbox-relay/limits
mkdir -p "$cache"
bin=$cache/publish
src=bench/limits/publish
if [[ ! -x $bin || -n $(find "$src" -newer "$bin" -type f) ]]; then
  (cd "$src" && go build -trimpath -buildvcs=false -o "$bin" .)
fi
"$bin" -url "$OUTBOX_RELAY_TEST_AMQP" -n "$N" -window "${LIMITS_WINDOW:-10000}" -lanes "${LIMITS_LANES:-4}"
