#!/usr/bin/env bash
# The full test suite, as CI runs it (.ci/run calls this):
#   1. starts the services it needs where missing (scripts/services.sh: Postgres with
#      wal_level=logical on 127.0.0.1:55432, RabbitMQ, tansu; tansu is built once and cached)
#   2. cargo fmt --check, clippy -D warnings
#   3. unit and integration tests against the real services (cargo nextest, else cargo test)
#   4. stops the services it started
set -euo pipefail
cd "$(dirname "$0")/.."

started=$(scripts/services.sh up | tail -n 1)
stop_started() {
  local names=${started#started:}
  if [[ -n ${names// /} ]]; then scripts/services.sh down $names; fi
}
trap stop_started EXIT
source .services/env

# Slots and databases left by earlier runs (each test makes its own; slots pin WAL and keep
# their database from being dropped).
psql "$OUTBOX_RELAY_TEST_PG" -qAtX -c "select pg_drop_replication_slot(slot_name) from pg_replication_slots
  where not active and (database like 't\_%' or slot_name like 'slot\_%')" >/dev/null
psql "$OUTBOX_RELAY_TEST_PG" -AtX -c "select datname from pg_database where datname like 't\_%'" |
  while read -r db; do psql "$OUTBOX_RELAY_TEST_PG" -qX -c "drop database if exists \"$db\" with (force)"; done

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked
else
  cargo test --workspace --locked --no-fail-fast
fi
