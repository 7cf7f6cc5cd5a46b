//! `outbox-relay status`: what the pipeline is doing, read from Postgres (so it works from any
//! machine, whether or not a relay runs there), as text or as JSON (`--json`). Invariant:
//! status only reads, and the JSON fields are a documented, stable interface (README "status
//! --json"): fields are added, never renamed or removed.

use outbox_relay_postgres::{PostgresError, Session, TableName};
use serde::Serialize;

use crate::config::{Config, SourceMode};
use crate::error::RelayError;
pub(crate) use crate::store::dead_letters::DeadLetters;
pub(crate) use crate::store::state::Recorded;

/// Everything `status` reports.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) pipeline: String,
    /// "wal" or "poll".
    pub(crate) source: &'static str,
    /// "kafka" or "rabbitmq".
    pub(crate) sink: &'static str,
    /// The session holding the pipeline lock now; `None`: no relay runs.
    pub(crate) leader: Option<Leader>,
    /// What the last leader recorded; `None`: the pipeline never started.
    pub(crate) recorded: Option<Recorded>,
    /// WAL mode only.
    pub(crate) slot: Option<Slot>,
    pub(crate) outbox: Outbox,
    pub(crate) dead_letters: DeadLetters,
}

#[derive(Debug, Serialize)]
pub(crate) struct Leader {
    pub(crate) pid: i32,
    pub(crate) application_name: String,
    /// The client's address, or "local" (Unix socket).
    pub(crate) client_addr: String,
}

#[derive(Debug, Default, Serialize)]
pub(crate) struct Slot {
    pub(crate) name: String,
    pub(crate) exists: bool,
    pub(crate) confirmed_flush_lsn: Option<String>,
    /// WAL written since the confirmed position.
    pub(crate) lag_bytes: Option<i64>,
    /// WAL the slot keeps on the server (from its restart_lsn).
    pub(crate) retained_bytes: Option<i64>,
    /// WAL that can still be written before `max_slot_wal_keep_size` invalidates the slot;
    /// `None` without a limit.
    pub(crate) safe_wal_bytes: Option<i64>,
    /// reserved, extended, unreserved or lost (invalidated).
    pub(crate) wal_status: Option<String>,
    /// A relay streams from it now.
    pub(crate) active: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct Outbox {
    pub(crate) table: String,
    /// Rows waiting (with `after_publish = "mark"`: not yet published); `None` if unreadable.
    pub(crate) rows: Option<i64>,
    pub(crate) error: Option<String>,
}

pub(crate) async fn status(config: &Config, json: bool) -> Result<(), RelayError> {
    let report = read(config).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report).expect("serializable"));
    } else {
        print_text(&report);
    }
    Ok(())
}

/// Reads the report from Postgres.
pub(crate) async fn read(config: &Config) -> Result<Report, RelayError> {
    let session = crate::store::connect(config).await?;
    let client = session.client();
    let name = &config.pipeline.name;
    let recorded = crate::store::state::recorded(&session, name).await?;
    let lock = session
        .timed(
            "reading the pipeline lock",
            client.query_opt(
                &format!(
                    "select l.pid, a.application_name, coalesce(host(a.client_addr), 'local') \
                     from pg_locks l join pg_stat_activity a using (pid) where {}",
                    crate::store::leader::LOCK_HELD
                ),
                &[name],
            ),
        )
        .await?;
    let leader = lock.map(|row| Leader {
        pid: row.get(0),
        application_name: row.get(1),
        client_addr: row.get(2),
    });

    let slot = if config.source.mode == SourceMode::Wal {
        Some(Slot::read(&session, &config.source.slot).await?)
    } else {
        None
    };

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
    let outbox = match backlog {
        Ok(row) => Outbox { table: table.to_string(), rows: Some(row.get(0)), error: None },
        Err(error) => {
            Outbox { table: table.to_string(), rows: None, error: Some(crate::sink::chain(&error)) }
        }
    };
    let dead_letters = DeadLetters::read(&session, name).await?;
    Ok(Report {
        pipeline: name.clone(),
        source: if config.source.mode == SourceMode::Wal { "wal" } else { "poll" },
        sink: sink_kind(config),
        leader,
        recorded,
        slot,
        outbox,
        dead_letters,
    })
}

impl Slot {
    /// Replication slot `name` as the server sees it (`exists: false` when there is none).
    pub(crate) async fn read(session: &Session, name: &str) -> Result<Slot, PostgresError> {
        let row = session
            .timed(
                "reading the replication slot",
                session.client().query_opt(
                    "select confirmed_flush_lsn::text, \
                            pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, \
                            pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, \
                            safe_wal_size, wal_status, active \
                     from pg_replication_slots where slot_name = $1",
                    &[&name],
                ),
            )
            .await?;
        let name = name.to_owned();
        Ok(match row {
            Some(row) => Slot {
                name,
                exists: true,
                confirmed_flush_lsn: row.get(0),
                lag_bytes: row.get(1),
                retained_bytes: row.get(2),
                safe_wal_bytes: row.get(3),
                wal_status: row.get(4),
                active: row.get(5),
            },
            None => Slot { name, ..Slot::default() },
        })
    }
}

fn print_text(report: &Report) {
    println!("pipeline {:?} ({} → {})", report.pipeline, report.source, report.sink);
    match &report.leader {
        Some(lock) => println!(
            "  leader:      pid {} ({}, from {}) holds the pipeline lock",
            lock.pid, lock.application_name, lock.client_addr
        ),
        None => println!("  leader:      none (no relay holds the pipeline lock)"),
    }
    match &report.recorded {
        None => println!("  state:       never started"),
        Some(recorded) => {
            let text = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".into());
            println!(
                "  last leader: {} since {}",
                text(&recorded.leader),
                text(&recorded.leader_since)
            );
            let state = if report.leader.is_some() {
                text(&recorded.state)
            } else {
                format!("{} (when it last ran)", text(&recorded.state))
            };
            println!("  state:       {state} since {}", text(&recorded.state_since));
            if let Some(detail) = &recorded.state_detail {
                println!("  last error:  {detail}");
            }
            println!("  checkpoint:  {} (acknowledged)", text(&recorded.checkpoint));
            println!("  max sent:    {} (written before sending)", text(&recorded.max_sent));
        }
    }
    if let Some(slot) = &report.slot {
        if slot.exists {
            println!(
                "  slot:        {} confirmed at {}, {} bytes of WAL behind, wal_status {}, {}",
                slot.name,
                slot.confirmed_flush_lsn.clone().unwrap_or_default(),
                slot.lag_bytes.unwrap_or_default(),
                slot.wal_status.clone().unwrap_or_default(),
                if slot.active { "streaming" } else { "not streaming" }
            );
            println!(
                "               keeps {} bytes of WAL on the server{}",
                slot.retained_bytes.unwrap_or_default(),
                slot.safe_wal_bytes.map_or_else(String::new, |safe| format!(
                    ", {safe} bytes from invalidation (max_slot_wal_keep_size)"
                ))
            );
        } else {
            println!("  slot:        {} does not exist", slot.name);
        }
    }
    match (&report.outbox.rows, &report.outbox.error) {
        (Some(rows), _) => println!("  outbox:      {rows} rows in {}", report.outbox.table),
        (None, error) => {
            println!("  outbox:      {}: {}", report.outbox.table, error.as_deref().unwrap_or("?"))
        }
    }
    let dead = &report.dead_letters;
    println!(
        "  dead letters: {} live, holding {} keys, {} awaiting redrive (outbox-relay dlq list)",
        dead.live, dead.keys, dead.awaiting_redrive
    );
}

fn sink_kind(config: &Config) -> &'static str {
    match config.sink {
        crate::config::SinkConfig::Kafka(_) => "kafka",
        crate::config::SinkConfig::Rabbitmq(_) => "rabbitmq",
    }
}
