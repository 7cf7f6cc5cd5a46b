//! `outbox-relay status`: what the pipeline is doing, read from Postgres (so it works from any
//! machine, whether or not a relay runs there). Invariant: status only reads.

use outbox_relay_postgres::{Session, TableName};

use crate::config::{Config, SourceMode};
use crate::error::RelayError;

pub(crate) async fn status(config: &Config) -> Result<(), RelayError> {
    let session =
        Session::connect(config.postgres.url.expose(), &crate::leader::session_options(config))
            .await?;
    let client = session.client();
    let name = &config.pipeline.name;
    let mode = if config.source.mode == SourceMode::Wal { "wal" } else { "poll" };
    println!("pipeline {name:?} ({mode} → {})", sink_kind(config));

    let row = session
        .timed(
            "reading the pipeline (is `outbox-relay migrate` applied?)",
            client.query_opt(
                "select leader, leader_since::text, state, state_since::text, state_detail, acked, max_sent \
                 from outbox_relay.pipelines where name = $1",
                &[name],
            ),
        )
        .await?;
    let lock = session
        .timed(
            "reading the pipeline lock",
            client.query_opt(
                &format!(
                    "select l.pid, a.application_name, coalesce(host(a.client_addr), 'local') \
                     from pg_locks l join pg_stat_activity a using (pid) where {}",
                    crate::leader::LOCK_HELD
                ),
                &[name],
            ),
        )
        .await?;
    match &lock {
        Some(lock) => println!(
            "  leader:      pid {} ({}, from {}) holds the pipeline lock",
            lock.get::<_, i32>(0),
            lock.get::<_, String>(1),
            lock.get::<_, String>(2)
        ),
        None => println!("  leader:      none (no relay holds the pipeline lock)"),
    }
    match &row {
        None => println!("  state:       never started"),
        Some(row) => {
            let text = |i: usize| row.get::<_, Option<String>>(i).unwrap_or_else(|| "-".into());
            println!("  last leader: {} since {}", text(0), text(1));
            let state =
                if lock.is_some() { text(2) } else { format!("{} (when it last ran)", text(2)) };
            println!("  state:       {state} since {}", text(3));
            if let Some(detail) = row.get::<_, Option<String>>(4) {
                println!("  last error:  {detail}");
            }
            println!("  checkpoint:  {} (acknowledged)", text(5));
            println!("  max sent:    {} (written before sending)", text(6));
        }
    }

    if config.source.mode == SourceMode::Wal {
        let slot = session
            .timed(
                "reading the replication slot",
                client.query_opt(
                    "select confirmed_flush_lsn::text, \
                            pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, \
                            wal_status, active \
                     from pg_replication_slots where slot_name = $1",
                    &[&config.source.slot],
                ),
            )
            .await?;
        match slot {
            Some(slot) => println!(
                "  slot:        {} confirmed at {}, {} bytes of WAL behind, wal_status {}, {}",
                config.source.slot,
                slot.get::<_, Option<String>>(0).unwrap_or_default(),
                slot.get::<_, Option<i64>>(1).unwrap_or_default(),
                slot.get::<_, Option<String>>(2).unwrap_or_default(),
                if slot.get::<_, bool>(3) { "streaming" } else { "not streaming" }
            ),
            None => println!("  slot:        {} does not exist", config.source.slot),
        }
    }

    let table: TableName = config.source.table.parse()?;
    let unpublished = if config.source.after_publish == crate::config::AfterPublishConfig::Mark {
        " where published_at is null"
    } else {
        ""
    };
    let backlog = session
        .timed(
            "counting the outbox",
            client.query_one(&format!("select count(*) from {}{unpublished}", table.quoted()), &[]),
        )
        .await;
    match backlog {
        Ok(row) => println!("  outbox:      {} rows in {table}", row.get::<_, i64>(0)),
        Err(error) => println!("  outbox:      {table}: {}", crate::sink::chain(&error)),
    }
    let dead = session
        .timed(
            "counting dead letters",
            client.query_one(
                "select count(*), count(distinct shard_key), \
                        count(*) filter (where redrive_requested_at is not null) \
                 from outbox_relay.dead_letters where pipeline = $1 and redriven_at is null",
                &[name],
            ),
        )
        .await?;
    println!(
        "  dead letters: {} live, holding {} keys, {} awaiting redrive (outbox-relay dlq list)",
        dead.get::<_, i64>(0),
        dead.get::<_, i64>(1),
        dead.get::<_, i64>(2)
    );
    Ok(())
}

fn sink_kind(config: &Config) -> &'static str {
    match config.sink {
        crate::config::SinkConfig::Kafka(_) => "kafka",
        crate::config::SinkConfig::Rabbitmq(_) => "rabbitmq",
    }
}
