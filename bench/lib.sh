# Sourced by the bench scripts (run.sh, drain-one.sh, latency.sh, sweep.sh, all.sh, limits/decode.sh,
# peers/debezium/run.sh).

# The benches' payload of entry I (an SQL expression in I): ~200-byte JSON whose `note` filler is
# NOTE_BYTES long (default 80; `repeat('x', n)`, compressible).
payload_sql() { # i
  echo "jsonb_build_object('n', $1, 'customer', 'c-' || ($1 % 977), 'items', jsonb_build_array(
    jsonb_build_object('sku', 'sku-' || ($1 % 101), 'qty', $1 % 7 + 1, 'price', 19.99)),
    'note', repeat('x', ${NOTE_BYTES:-80}))"
}

# The INSERT of ROWS outbox rows in one statement, keys key-0 … key-(KEYS-1).
insert_rows_sql() { # rows keys
  echo "insert into outbox (id, aggregatetype, aggregateid, type, payload)
    select gen_random_uuid(), 'bench', 'key-' || (i % $2), 'Benchmarked', $(payload_sql i)
    from generate_series(1, $1) i"
}

# The payload's size as a consumer receives it (its JSON text), in bytes.
payload_bytes() {
  psql "$OUTBOX_RELAY_TEST_PG" -qAtX -c "select octet_length(($(payload_sql 100000))::text)"
}

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
