-- pg-outbox-relay 0007: drops what the relay never wrote, and says what `acked` is for.
--
-- `position` and `published` (0001) were never written: the checkpoint is `acked` (0003), and
-- counts live in the relay's metrics.
alter table outbox_relay.pipelines
    drop column if exists position,
    drop column if exists published;

comment on column outbox_relay.pipelines.acked is
    'The last position the source was told is done, as the relay recorded it (at most every '
    'second, and at every clean stop). For operators (`outbox-relay status`): the source''s own '
    'acknowledgement (the slot''s flush LSN, the deleted or marked rows) is the checkpoint a '
    'restart resumes from, so a lagging `acked` never causes a loss or a replay.';
