-- pg-outbox-relay 0002: the consumer inbox.
-- For consumers, in *their* database: a message id is recorded in the same transaction as the
-- consumer's own writes, so a message delivered twice is processed once. The Rust API is the
-- outbox-relay-inbox crate (Inbox::process_once); any language can use the table the same way:
--   insert into outbox_relay.inbox (consumer, message_id) values ($1, $2) on conflict do nothing
--   -- 1 row inserted: process, then commit; 0 rows: already processed, skip (and ack).

create schema if not exists outbox_relay;

-- Invariant: a (consumer, message_id) row exists if and only if that consumer committed the
-- processing of that message; rows are never updated.
create table if not exists outbox_relay.inbox (
    consumer      text not null,
    message_id    text not null,
    processed_at  timestamptz not null default now(),
    primary key (consumer, message_id)
);

create index if not exists inbox_processed_at on outbox_relay.inbox (processed_at);
