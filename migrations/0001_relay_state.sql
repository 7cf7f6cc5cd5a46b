-- pg-outbox-relay 0001: the relay's own schema, and the function that installs an outbox table.
-- Plain SQL: `outbox-relay migrate` applies it (checksummed in outbox_relay.schema_migrations);
-- sqlx, Flyway or psql can apply it too. Never edit this file once released; add a new one.

create schema if not exists outbox_relay;

-- One row per pipeline (a relay configuration with a name).
-- Invariant: `position` only moves forward; only the relay holding the pipeline's advisory lock
-- writes the row.
create table outbox_relay.pipelines (
    name          text primary key,
    source        text not null,
    position      text,
    published     bigint not null default 0,
    leader        text,
    leader_since  timestamptz,
    updated_at    timestamptz not null default now()
);

-- Stamps `seq` on each new outbox row, overriding any value the app passed.
-- Invariant: the inserting transaction has an xid *before* its `seq` is drawn from a CACHE 1
-- sequence. The poll source's gap rule depends on exactly this order
-- (connectors/postgres/src/holes.rs).
create function outbox_relay.stamp_outbox_seq() returns trigger
language plpgsql as $$
begin
    perform pg_current_xact_id();
    new.seq := nextval(tg_argv[0]::regclass);
    return new;
end
$$;

-- Wakes the poll source; one notification per statement, coalesced per transaction by Postgres.
create function outbox_relay.notify_outbox() returns trigger
language plpgsql as $$
begin
    perform pg_notify(tg_argv[0], tg_table_schema || '.' || tg_table_name);
    return null;
end
$$;

-- Creates the outbox table `schema_name.table_name` if missing (Debezium outbox-router
-- compatible), or upgrades an existing one. Idempotent.
--   notify_channel: LISTEN/NOTIFY channel that wakes the poll source; null installs no NOTIFY
--                   trigger (NOTIFY serialises committing transactions on very busy servers).
--   mark_published: adds `published_at` and a partial index for after_publish = "mark".
--   stamp_seq:      adds the poll source's `seq` ordering column (existing rows numbered in
--                   physical order), its unique index and the trigger that stamps it. WAL
--                   tailing needs none of it (false); an existing seq trigger is kept, so a
--                   table set up for polling keeps working.
create function outbox_relay.install_outbox(
    schema_name text,
    table_name text,
    notify_channel text default 'outbox_relay',
    mark_published boolean default false,
    stamp_seq boolean default true
) returns void
language plpgsql as $$
declare
    qualified text := format('%I.%I', schema_name, table_name);
    seq_name text := format('%I.%I', schema_name, table_name || '_seq');
begin
    execute format($sql$
        create table if not exists %s (
            id            uuid primary key,
            aggregatetype text not null,
            aggregateid   text not null,
            type          text not null,
            payload       jsonb,
            created_at    timestamptz not null default now()
        )$sql$, qualified);
    execute format('comment on table %s is %L', qualified,
        'Transactional outbox. Invariant: a row is deleted (or marked) by pg-outbox-relay only '
        'after the broker confirmed it; seq is stamped by a trigger, never by the app.');
    if stamp_seq then
        execute format('create sequence if not exists %s as bigint cache 1', seq_name);
        execute format('alter table %s add column if not exists seq bigint', qualified);
        execute format($sql$
            update %1$s t set seq = n.seq
            from (select ctid, nextval(%2$L::regclass) as seq
                  from (select ctid from %1$s where seq is null order by ctid) ordered) n
            where t.ctid = n.ctid$sql$, qualified, seq_name);
        execute format('alter table %s alter column seq set not null', qualified);
        execute format('create unique index if not exists %I on %s (seq)',
            table_name || '_seq_key', qualified);

        execute format('drop trigger if exists outbox_relay_stamp_seq on %s', qualified);
        execute format($sql$
            create trigger outbox_relay_stamp_seq before insert on %s
            for each row execute function outbox_relay.stamp_outbox_seq(%L)$sql$,
            qualified, seq_name);
    end if;

    execute format('drop trigger if exists outbox_relay_notify on %s', qualified);
    if notify_channel is not null then
        execute format($sql$
            create trigger outbox_relay_notify after insert on %s
            for each statement execute function outbox_relay.notify_outbox(%L)$sql$,
            qualified, notify_channel);
    end if;

    if mark_published then
        execute format('alter table %s add column if not exists published_at timestamptz',
            qualified);
        execute format('create index if not exists %I on %s (seq) where published_at is null',
            table_name || '_unpublished_idx', qualified);
    end if;
end
$$;
