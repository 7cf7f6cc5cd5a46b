# Sourced by the bench scripts (bench/run.sh, bench/drain-one.sh, bench/latency.sh).

# Waits until the relay listening for metrics on 127.0.0.1:PORT has acknowledged ROWS entries,
# then until the outbox of DB is empty (its last deletes). Watching must not take CPU from what
# it measures on 2 cores: `count(*)` over a 300 000-row outbox every 50 ms cost most of a core,
# and a curl + awk per look ~7 % of the machine; bash reads the metrics itself.
wait_drained() { # db port rows
  local line acked=0
  while ((acked < $3)); do
    sleep 0.05
    # Refused until the relay listens.
    exec {scrape}<>"/dev/tcp/127.0.0.1/$2" 2>/dev/null || continue
    printf 'GET /metrics HTTP/1.0\r\n\r\n' >&"$scrape"
    while IFS= read -r line; do
      [[ $line == 'outbox_relay_entries_acknowledged_total '* ]] && acked=${line##* }
    done <&"$scrape"
    exec {scrape}>&-
  done
  until [[ $(psql "$1" -qAtX -c "select not exists (select from outbox)") == t ]]; do sleep 0.02; done
}

# The benches' RabbitMQ [sink]: a consistent-hash exchange EXCHANGE over two queues PREFIX.1 and
# PREFIX.2 (weight 1 each), on $OUTBOX_RELAY_TEST_AMQP.
rabbit_sink_toml() { # exchange prefix
  cat <<TOML
[sink]
kind = "rabbitmq"
url = "$OUTBOX_RELAY_TEST_AMQP"
[[sink.exchanges]]
name = "$1"
kind = "x-consistent-hash"
[[sink.queues]]
name = "$2.1"
[[sink.queues]]
name = "$2.2"
[[sink.bindings]]
queue = "$2.1"
exchange = "$1"
routing_key = "1"
[[sink.bindings]]
queue = "$2.2"
exchange = "$1"
routing_key = "1"
TOML
}
