#!/usr/bin/env bash
# Quickstart: the relay's main job end to end on this machine.
#   scripts/quickstart.sh            Kafka (tansu on 127.0.0.1:9092)
#   scripts/quickstart.sh rabbitmq   RabbitMQ (127.0.0.1:5672)
# Starts what is missing (scripts/services.sh), creates a fresh database "quickstart", applies the
# relay's migrations, commits sample outbox rows, runs the relay with config/poll-<sink>.toml
# (URLs overridden through OUTBOX_RELAY__... variables), prints what a consumer receives, and
# stops the relay with SIGTERM. Services it started keep running: scripts/services.sh down.
set -euo pipefail
cd "$(dirname "$0")/.."
sink=${1:-kafka}
case $sink in kafka | rabbitmq) ;; *) echo "usage: $0 [kafka|rabbitmq]" >&2; exit 2 ;; esac

step() { printf '\n==> %s\n' "$*"; }

step "starting services (Postgres with wal_level=logical, RabbitMQ, tansu) where missing"
scripts/services.sh up >/dev/null
source .services/env

step "building outbox-relay and the example consumer"
cargo build --quiet --locked --bin outbox-relay --example consume
relay=target/debug/outbox-relay
consume=target/debug/examples/consume

psql "$OUTBOX_RELAY_TEST_PG" -qX -c "drop database if exists quickstart with (force)" -c "create database quickstart"
export OUTBOX_RELAY__POSTGRES__URL=${OUTBOX_RELAY_TEST_PG%/*}/quickstart
db=$OUTBOX_RELAY__POSTGRES__URL
config=config/poll-$sink.toml
if [[ $sink == kafka ]]; then
  export OUTBOX_RELAY__SINK__BROKERS=$OUTBOX_RELAY_TEST_KAFKA
  "$OUTBOX_RELAY_TANSU" topic delete outbox.event.order --broker "tcp://$OUTBOX_RELAY_TEST_KAFKA" >/dev/null 2>&1 || true
  "$OUTBOX_RELAY_TANSU" topic create outbox.event.order --partitions 3 --broker "tcp://$OUTBOX_RELAY_TEST_KAFKA" >/dev/null
  consumer=("$consume" kafka "$OUTBOX_RELAY_TEST_KAFKA" outbox.event.order 10)
else
  export OUTBOX_RELAY__SINK__URL=$OUTBOX_RELAY_TEST_AMQP
  for q in orders.shard-1 orders.shard-2; do rabbitmqctl purge_queue "$q" >/dev/null 2>&1 || true; done
  consumer=("$consume" rabbitmq "$OUTBOX_RELAY_TEST_AMQP" orders.shard-1,orders.shard-2 10)
fi

step "outbox-relay migrate   (relay schema + Debezium-compatible outbox table)"
"$relay" --config "$config" migrate

step "outbox-relay check"
"$relay" --config "$config" check

step "committing 10 outbox rows for 3 orders, in 4 transactions"
psql "$db" -qX <<'SQL'
begin;
insert into outbox (id, aggregatetype, aggregateid, type, payload) values
  (gen_random_uuid(), 'order', 'order-1', 'OrderCreated', '{"order": 1, "total": 30}'),
  (gen_random_uuid(), 'order', 'order-2', 'OrderCreated', '{"order": 2, "total": 12}');
commit;
begin;
insert into outbox (id, aggregatetype, aggregateid, type, payload) values
  (gen_random_uuid(), 'order', 'order-1', 'OrderPaid', '{"order": 1}'),
  (gen_random_uuid(), 'order', 'order-3', 'OrderCreated', '{"order": 3, "total": 99}');
commit;
insert into outbox (id, aggregatetype, aggregateid, type, payload)
  select gen_random_uuid(), 'order', 'order-' || (i % 3 + 1), 'OrderShipped', jsonb_build_object('order', i % 3 + 1, 'parcel', i)
  from generate_series(1, 5) i;
insert into outbox (id, aggregatetype, aggregateid, type, payload) values
  (gen_random_uuid(), 'order', 'order-2', 'OrderDelivered', '{"order": 2}');
SQL
psql "$db" -X -c "select seq, aggregateid, type, payload from outbox order by seq"

step "outbox-relay run   (log: .services/quickstart-relay.log)"
"$relay" --config "$config" run >.services/quickstart-relay.log 2>&1 &
relay_pid=$!
trap 'kill "$relay_pid" 2>/dev/null || true' EXIT

step "a consumer prints what the relay delivered"
"${consumer[@]}"

step "SIGTERM: the relay drains and exits 0"
kill -TERM "$relay_pid"
wait "$relay_pid"
trap - EXIT
remaining=$(psql "$db" -AtX -c "select count(*) from outbox")
echo "rows left in the outbox: $remaining (each row is deleted only after the broker confirmed it)"
[[ $remaining == 0 ]]
