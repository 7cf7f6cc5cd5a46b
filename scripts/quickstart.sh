#!/usr/bin/env bash
# Quickstart: the relay's main job end to end on this machine.
#   scripts/quickstart.sh                  WAL tailing -> Apache Kafka (127.0.0.1:9092)
#   scripts/quickstart.sh kafka poll       polling the outbox table -> Kafka
#   scripts/quickstart.sh rabbitmq poll    polling -> RabbitMQ (127.0.0.1:5672)
# Starts what is missing (scripts/services.sh), creates a fresh database "quickstart", applies the
# relay's migrations, commits sample outbox rows (and, with WAL tailing, a table-less
# pg_logical_emit_message entry and a rolled-back row), runs the relay with
# config/<mode>-<sink>.toml (URLs overridden through OUTBOX_RELAY__... variables), prints what a
# consumer receives, and stops the relay with SIGTERM. Services it started keep running:
# scripts/services.sh down.
set -euo pipefail
cd "$(dirname "$0")/.."
sink=${1:-kafka}
mode=${2:-wal}
case $sink-$mode in kafka-wal | kafka-poll | rabbitmq-poll) ;;
  *) echo "usage: $0 [kafka [wal|poll] | rabbitmq poll]" >&2; exit 2 ;; esac

step() { printf '\n==> %s\n' "$*"; }

step "installing and starting services where missing (Postgres with wal_level=logical, RabbitMQ, Apache Kafka)"
scripts/services.sh up >/dev/null
source .services/env

step "building outbox-relay and the example consumer"
cargo build --quiet --locked --bin outbox-relay --example consume
relay=target/debug/outbox-relay
consume=target/debug/examples/consume

psql "$OUTBOX_RELAY_TEST_PG" -qX -c "select pg_drop_replication_slot('quickstart') from pg_replication_slots where slot_name = 'quickstart'" >/dev/null
psql "$OUTBOX_RELAY_TEST_PG" -qX -c "drop database if exists quickstart with (force)" -c "create database quickstart"
export OUTBOX_RELAY__POSTGRES__URL=${OUTBOX_RELAY_TEST_PG%/*}/quickstart
export OUTBOX_RELAY__SOURCE__SLOT=quickstart
db=$OUTBOX_RELAY__POSTGRES__URL
config=config/$mode-$sink.toml
expected=10
if [[ $sink == kafka ]]; then
  export OUTBOX_RELAY__SINK__BROKERS=$OUTBOX_RELAY_TEST_KAFKA
  step "creating Kafka topic outbox.event.order (3 partitions)"
  scripts/services.sh topic outbox.event.order 3
  [[ $mode == wal ]] && expected=11
  consumer=("$consume" kafka "$OUTBOX_RELAY_TEST_KAFKA" outbox.event.order "$expected")
else
  export OUTBOX_RELAY__SINK__URL=$OUTBOX_RELAY_TEST_AMQP
  for q in orders.shard-1 orders.shard-2; do rabbitmqctl purge_queue "$q" >/dev/null 2>&1 || true; done
  consumer=("$consume" rabbitmq "$OUTBOX_RELAY_TEST_AMQP" orders.shard-1,orders.shard-2 10)
fi

if [[ $mode == wal ]]; then
  step "outbox-relay migrate   (relay schema, Debezium-compatible outbox table, publication, slot)"
else
  step "outbox-relay migrate   (relay schema + Debezium-compatible outbox table)"
fi
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
if [[ $mode == wal ]]; then
  step "plus a table-less entry (pg_logical_emit_message) and a transaction that rolls back"
  psql "$db" -qX <<'SQL'
begin;
select pg_logical_emit_message(true, 'outbox',
  '{"aggregatetype": "order", "aggregateid": "order-3", "type": "OrderRefunded", "payload": {"order": 3}}');
commit;
begin;
insert into outbox (id, aggregatetype, aggregateid, type, payload)
  values (gen_random_uuid(), 'order', 'order-9', 'NeverHappened', '{}');
rollback;
SQL
fi
psql "$db" -X -c "select aggregateid, type, payload from outbox"

step "outbox-relay run   (log: .services/quickstart-relay.log)"
"$relay" --config "$config" run >.services/quickstart-relay.log 2>&1 &
relay_pid=$!
trap 'kill "$relay_pid" 2>/dev/null || true' EXIT

step "a consumer prints what the relay delivered ($expected messages)"
"${consumer[@]}"

step "SIGTERM: the relay drains and exits 0"
kill -TERM "$relay_pid"
wait "$relay_pid"
trap - EXIT
remaining=$(psql "$db" -AtX -c "select count(*) from outbox")
echo "rows left in the outbox: $remaining (each row is deleted only after the broker confirmed it)"
if [[ $mode == wal ]]; then
  psql "$db" -X -c "select slot_name, confirmed_flush_lsn, pg_current_wal_lsn() from pg_replication_slots where slot_name = 'quickstart'"
fi
[[ $remaining == 0 ]]
