-- pg-outbox-relay 0006: a fencing token for the relay's own state.
--
-- Each relay that takes a pipeline's lock raises `epoch` (under the lock) before it reads the
-- pipeline's state; every write of that state (max_sent, the checkpoint, the state, dead
-- letters) requires the writer's own epoch. A deposed leader — its lock session gone, another
-- relay leading — therefore changes nothing: its writes find a newer epoch and are refused.
alter table outbox_relay.pipelines
    add column epoch bigint not null default 0;
