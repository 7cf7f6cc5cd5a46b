#!/usr/bin/env bash
# The full test suite, as CI runs it (.ci/run calls this):
#   1. installs what is missing and starts the services it needs (scripts/services.sh: Postgres
#      with wal_level=logical on 127.0.0.1:55432, RabbitMQ, Apache Kafka from Maven Central's
#      jars; Debian packages and jars are installed/cached once)
#   2. installs cargo-nextest once (cargo install --locked; it runs the crash tests serially), and
#      the npm packages of tests/js (the CloudEvents SDK and the AsyncAPI parser the tests
#      check messages with; scripts/js-tools.sh, `npm ci` once), and builds the OpenTelemetry
#      Collector the span test exports to (scripts/otelcol.sh, from the Go module proxy, once)
#   3. cargo fmt --check, clippy -D warnings, a build of each sink feature alone
#   4. unit and integration tests against the real services (cargo nextest)
#   5. stops the services it started
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

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "test.sh: installing cargo-nextest once (cargo install --locked)" >&2
  cargo install cargo-nextest --locked
fi

scripts/js-tools.sh
scripts/otelcol.sh >/dev/null

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
for feature in kafka rabbitmq; do
  cargo clippy --locked --no-default-features --features "$feature" --bin outbox-relay -- -D warnings
done
cargo nextest run --workspace --locked
