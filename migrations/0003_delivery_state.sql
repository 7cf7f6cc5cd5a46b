-- pg-outbox-relay 0003: what the relay records so that a restart knows what it may have sent,
-- what it is doing, and which entries it set aside.

-- The checkpoint and state of each pipeline, written by its leader.
--   acked:      the last acknowledged position; never moves backward (the relay only raises it).
--   max_sent:   written before a batch is handed to the broker (write-ahead): every position a
--               relay may have sent is at or below it, so after a crash the relay knows which
--               messages may be replays (marked for RabbitMQ, suppressed for Kafka).
--   state:      starting | standby | running | retrying | halted | stopping, with the last error.
alter table outbox_relay.pipelines
    add column acked text,
    add column max_sent text,
    add column state text,
    add column state_detail text,
    add column state_since timestamptz;

comment on table outbox_relay.pipelines is
    'One row per pipeline. Invariant: acked and max_sent never move backward; only the relay '
    'holding the pipeline''s advisory lock writes the row.';

-- Entries that can never be delivered as they are, set aside by pipeline.on_poison =
-- "dead-letter" (with the reason), and entries held behind them (same shard key, when
-- pipeline.dead_letter_same_key = "wait"). `outbox-relay dlq redrive` puts them back into the
-- outbox table, in order.
-- Invariant: at most one live (not redriven) row per (pipeline, entry_id); a key with live rows
-- is held.
create table outbox_relay.dead_letters (
    seq          bigserial primary key,
    pipeline     text not null,
    entry_id     text not null,
    position     text not null,
    destination  text,
    shard_key    text,
    fields       jsonb not null,
    payload      bytea,
    reason       text not null,
    held_behind  text,
    dead_at      timestamptz not null default now(),
    redriven_at  timestamptz
);

create unique index dead_letters_live on outbox_relay.dead_letters (pipeline, entry_id)
    where redriven_at is null;
create index dead_letters_held on outbox_relay.dead_letters (pipeline, shard_key)
    where redriven_at is null;
