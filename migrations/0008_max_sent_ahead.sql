-- pg-outbox-relay 0008: `max_sent` is written ahead of what is sent, and settled at a run's end.
--
-- No change to the data: the comments say what the relay now does with the column (0003 said it
-- never moves backward).
comment on column outbox_relay.pipelines.max_sent is
    'Written before a batch is handed to the broker: every position the relay may have sent is '
    'at or below it, so after a crash the messages at or below it are possible replays (marked '
    'for RabbitMQ, looked up for Kafka). Written ahead of the batch (1 MiB of WAL, 1 000 seq '
    'values), so a steady flow writes it a few times a second; at the end of a run it is set back '
    'to the highest position really sent (or the horizon an earlier run left, if higher).';

comment on table outbox_relay.pipelines is
    'One row per pipeline. Invariant: acked never moves backward; max_sent covers every position '
    'ever sent; only the relay holding the pipeline''s advisory lock (and its epoch) writes the '
    'row.';
