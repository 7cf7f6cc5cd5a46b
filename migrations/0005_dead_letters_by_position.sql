-- pg-outbox-relay 0005: a dead letter is the entry at a position, not whatever carries an id.
--
-- The application's id need not be unique (a reused or defaulted id, two logical messages with
-- the same envelope id): keyed by id, a second entry was silently not stored yet acknowledged,
-- so it was lost. A position names exactly one entry of the source, so a live dead letter is
-- unique per (pipeline, position): the same entry set aside again after a crash is stored once,
-- two entries with one id are both kept.
drop index outbox_relay.dead_letters_live;

create unique index dead_letters_live on outbox_relay.dead_letters (pipeline, position)
    where redriven_at is null;
