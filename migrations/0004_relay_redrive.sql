-- pg-outbox-relay 0004: dead letters are redriven by the relay itself, in its stream.
--
-- `outbox-relay dlq redrive` only requests a redrive; the leading relay delivers the requested
-- dead letters at a point of its own stream where nothing else is in flight, then takes up the
-- stream again. Entries of the same key it reads afterwards therefore always follow them, even
-- those committed before the request (putting the entries back into the outbox could not
-- promise that: an entry already committed but not yet read would overtake them).
--
--   redrive_requested_at: asked for by `dlq redrive`; cleared if the entry fails again (the new
--                         reason replaces the old one and the entry stays live).
--   redrive_sent_at:      written before the relay hands the entry to the broker: a redrive cut
--                         short by a crash is sent again as a possible replay (Kafka looks for it
--                         by id, RabbitMQ marks it).
--   payload_kind, own_headers, defect: what the relay needs to rebuild the entry exactly
--                         (content type; a logical message's own headers; an undecodable
--                         logical message is decoded again from its, possibly corrected, payload).
alter table outbox_relay.dead_letters
    add column payload_kind text,
    add column own_headers jsonb,
    add column defect text,
    add column redrive_requested_at timestamptz,
    add column redrive_sent_at timestamptz;

create index dead_letters_requested on outbox_relay.dead_letters (pipeline, seq)
    where redriven_at is null and redrive_requested_at is not null;
