//! `outbox-relay status`: what the pipeline is doing, read from Postgres (so it works from any
//! machine, whether or not a relay runs there), as text or as JSON (`--json`). Invariant:
//! status only reads, and the JSON fields are a documented, stable interface (README "status
//! --json"): fields are added, never renamed or removed.

use std::io::Write;

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

pub(crate) async fn status(
    config: &Config,
    json: bool,
    out: &mut impl Write,
) -> Result<(), RelayError> {
    let report = read(config).await?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report).expect("serializable"))?;
    } else {
        write_text(&report, out)?;
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

fn write_text(report: &Report, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "pipeline {:?} ({} → {})", report.pipeline, report.source, report.sink)?;
    match &report.leader {
        Some(lock) => writeln!(
            out,
            "  leader:      pid {} ({}, from {}) holds the pipeline lock",
            lock.pid, lock.application_name, lock.client_addr
        ),
        None => writeln!(out, "  leader:      none (no relay holds the pipeline lock)"),
    }?;
    match &report.recorded {
        None => writeln!(out, "  state:       never started")?,
        Some(recorded) => {
            let text = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".into());
            writeln!(
                out,
                "  last leader: {} since {}",
                text(&recorded.leader),
                text(&recorded.leader_since)
            )?;
            let state = if report.leader.is_some() {
                text(&recorded.state)
            } else {
                format!("{} (when it last ran)", text(&recorded.state))
            };
            writeln!(out, "  state:       {state} since {}", text(&recorded.state_since))?;
            if let Some(detail) = &recorded.state_detail {
                writeln!(out, "  last error:  {detail}")?;
            }
            writeln!(out, "  checkpoint:  {} (acknowledged)", text(&recorded.checkpoint))?;
            writeln!(
                out,
                "  max sent:    {} (written before sending, ahead of it while running)",
                text(&recorded.max_sent)
            )?;
        }
    }
    if let Some(slot) = &report.slot {
        if slot.exists {
            writeln!(
                out,
                "  slot:        {} confirmed at {}, {} bytes of WAL behind, wal_status {}, {}",
                slot.name,
                slot.confirmed_flush_lsn.clone().unwrap_or_default(),
                slot.lag_bytes.unwrap_or_default(),
                slot.wal_status.clone().unwrap_or_default(),
                if slot.active { "streaming" } else { "not streaming" }
            )?;
            writeln!(
                out,
                "               keeps {} bytes of WAL on the server{}",
                slot.retained_bytes.unwrap_or_default(),
                slot.safe_wal_bytes.map_or_else(String::new, |safe| format!(
                    ", {safe} bytes from invalidation (max_slot_wal_keep_size)"
                ))
            )?;
        } else {
            writeln!(out, "  slot:        {} does not exist", slot.name)?;
        }
    }
    match (&report.outbox.rows, &report.outbox.error) {
        (Some(rows), _) => writeln!(out, "  outbox:      {rows} rows in {}", report.outbox.table),
        (None, error) => {
            writeln!(
                out,
                "  outbox:      {}: {}",
                report.outbox.table,
                error.as_deref().unwrap_or("?")
            )
        }
    }?;
    let dead = &report.dead_letters;
    writeln!(
        out,
        "  dead letters: {} live, holding {} keys, {} awaiting redrive (outbox-relay dlq list)",
        dead.live, dead.keys, dead.awaiting_redrive
    )?;
    Ok(())
}

fn sink_kind(config: &Config) -> &'static str {
    match config.sink {
        crate::config::SinkConfig::Kafka(_) => "kafka",
        crate::config::SinkConfig::Rabbitmq(_) => "rabbitmq",
    }
}

/// Reports as `status` reads them, for the tests of the commands that use them.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    pub(crate) fn report(state: &str, leader: bool, slot: Option<Slot>) -> Report {
        Report {
            pipeline: "default".into(),
            source: if slot.is_some() { "wal" } else { "poll" },
            sink: "kafka",
            leader: leader.then(|| Leader {
                pid: 7,
                application_name: "outbox-relay:default".into(),
                client_addr: "local".into(),
            }),
            recorded: Some(Recorded {
                leader: Some("host:1".into()),
                leader_since: None,
                state: Some(state.into()),
                state_since: Some("t0".into()),
                state_detail: None,
                checkpoint: None,
                max_sent: None,
            }),
            slot,
            outbox: Outbox { table: "public.outbox".into(), rows: Some(0), error: None },
            dead_letters: DeadLetters { live: 0, keys: 0, awaiting_redrive: 0 },
        }
    }

    pub(crate) fn slot(wal_status: &str, active: bool, safe: Option<i64>) -> Slot {
        Slot {
            name: "s".into(),
            exists: true,
            confirmed_flush_lsn: Some("0/1".into()),
            lag_bytes: Some(0),
            retained_bytes: Some(100),
            safe_wal_bytes: safe,
            wal_status: Some(wal_status.into()),
            active,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{report, slot};
    use super::*;

    fn text(report: &Report) -> String {
        let mut out = Vec::new();
        write_text(report, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_text_says_who_leads_and_where_the_slot_is() {
        let mut running = report("running", true, Some(slot("reserved", true, Some(4096))));
        running.dead_letters = DeadLetters { live: 2, keys: 1, awaiting_redrive: 1 };
        let text = text(&running);
        assert!(text.starts_with("pipeline \"default\" (wal → kafka)\n"), "{text}");
        assert!(text.contains("leader:      pid 7 (outbox-relay:default, from local)"), "{text}");
        assert!(text.contains("state:       running since t0\n"), "{text}");
        assert!(text.contains("slot:        s confirmed at 0/1, 0 bytes of WAL behind, wal_status reserved, streaming"), "{text}");
        assert!(
            text.contains("keeps 100 bytes of WAL on the server, 4096 bytes from invalidation"),
            "{text}"
        );
        assert!(
            text.contains("dead letters: 2 live, holding 1 keys, 1 awaiting redrive"),
            "{text}"
        );
    }

    #[test]
    fn without_a_leader_the_state_is_the_last_one_recorded() {
        let text = text(&report("halted", false, None));
        assert!(text.contains("leader:      none (no relay holds the pipeline lock)"), "{text}");
        assert!(text.contains("state:       halted (when it last ran) since t0"), "{text}");
        assert!(!text.contains("slot:"), "{text}");
    }
}
