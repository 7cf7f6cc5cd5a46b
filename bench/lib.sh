# Sourced by the drain scripts (bench/run.sh, bench/drain-one.sh).

# Waits until the relay listening for metrics on 127.0.0.1:PORT has acknowledged ROWS entries,
# then until the outbox of DB is empty (its last deletes). The relay's counter is read first
# because asking Postgres is not free: `count(*)` over a 300 000-row outbox costs ~90 ms of a
# server process, and polling it every 50 ms took most of a core from the run it measured.
wait_drained() { # db port rows
  local acked
  while :; do
    # Refused until the relay listens.
    acked=$(curl -m 5 -fsS "http://127.0.0.1:$2/metrics" 2>/dev/null |
      awk '/^outbox_relay_entries_acknowledged_total / {print int($NF)}') || acked=0
    ((${acked:-0} >= $3)) && break
    sleep 0.05
  done
  until [[ $(psql "$1" -qAtX -c "select not exists (select from outbox)") == t ]]; do sleep 0.02; done
}
