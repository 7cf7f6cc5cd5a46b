//! `outbox-relay dlq list|redrive`: the entries `pipeline.on_poison = "dead-letter"` set aside.
//!
//! Redriving is done by the relay that leads the pipeline (see `pipeline::redrive`): this only
//! marks the dead letters as requested and follows how the relay fares. The relay delivers them
//! at a point of its own stream, in the order they were set aside, before anything it reads
//! afterwards — so later entries of their key, even ones already committed, follow them.
//! Invariant: only the relay marks a dead letter redriven, once the broker confirmed it.

use std::time::Duration;

use outbox_relay_postgres::Session;

use crate::config::Config;
use crate::error::RelayError;

pub(crate) async fn list(config: &Config) -> Result<(), RelayError> {
    let session = connect(config).await?;
    let rows = session
        .timed(
            "reading dead letters",
            session.client().query(
                "select seq, entry_id, coalesce(shard_key, ''), coalesce(destination, ''), reason, \
                        held_behind, dead_at::text \
                 from outbox_relay.dead_letters where pipeline = $1 and redriven_at is null order by seq",
                &[&config.pipeline.name],
            ),
        )
        .await?;
    if rows.is_empty() {
        println!("no dead letters for pipeline {:?}", config.pipeline.name);
    }
    for row in &rows {
        let held: Option<String> = row.get(5);
        println!(
            "#{} entry {} key {:?} → {:?} at {}\n    {}",
            row.get::<_, i64>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2),
            row.get::<_, String>(3),
            row.get::<_, String>(6),
            match held {
                Some(first) => format!("held behind {first} (same key)"),
                None => row.get::<_, String>(4),
            }
        );
    }
    Ok(())
}

/// How a redrive request went.
#[derive(Debug, Default)]
pub(crate) struct Redriven {
    pub(crate) requested: usize,
    pub(crate) delivered: usize,
    /// Still waiting for the relay when the wait ended (`--no-wait`: all of them).
    pub(crate) waiting: usize,
    /// Entries that failed again: id, reason, how many entries are held behind it.
    pub(crate) failed: Vec<(String, String, i64)>,
}

/// Asks the relay to redrive every live dead letter (`ids` empty) or the given entries and those
/// held behind them, then waits up to `wait` for it to deliver them.
pub(crate) async fn redrive(
    config: &Config,
    ids: &[String],
    wait: Option<Duration>,
) -> Result<Redriven, RelayError> {
    let mut session = connect(config).await?;
    let pipeline = &config.pipeline.name;
    let what = "requesting a redrive";
    let tx = session.client_mut().transaction().await.map_err(|e| query_error(what, e))?;
    // The first entries, locked: an entry the relay sets aside behind one of them meanwhile
    // waits for this transaction and inherits the request (see RelayState::dead_letter).
    let chosen = tx
        .query(
            "select entry_id, held_behind from outbox_relay.dead_letters \
             where pipeline = $1 and redriven_at is null \
               and (cardinality($2::text[]) = 0 or entry_id = any($2)) \
             order by seq for update",
            &[pipeline, &ids],
        )
        .await
        .map_err(|e| query_error(what, e))?;
    for id in ids {
        match chosen.iter().find(|row| row.get::<_, String>(0) == *id) {
            None => {
                return Err(RelayError::Dlq(format!(
                    "no live dead letter with entry id {id:?} in pipeline {pipeline:?} \
                     (outbox-relay dlq list)"
                )))
            }
            Some(row) => {
                if let Some(first) = row.get::<_, Option<String>>(1).filter(|f| !ids.contains(f)) {
                    return Err(RelayError::Dlq(format!(
                        "entry {id:?} is held behind dead letter {first:?} (same key) and goes \
                         out after it: redrive --id {first}, which takes it along"
                    )));
                }
            }
        }
    }
    let marked = tx
        .query(
            "update outbox_relay.dead_letters set redrive_requested_at = now() \
             where pipeline = $1 and redriven_at is null \
               and (cardinality($2::text[]) = 0 or entry_id = any($2) or held_behind = any($2)) \
             returning seq, redrive_requested_at::text",
            &[pipeline, &ids],
        )
        .await
        .map_err(|e| query_error(what, e))?;
    tx.commit().await.map_err(|e| query_error(what, e))?;
    let Some(stamp) = marked.first().map(|row| row.get::<_, String>(1)) else {
        return Ok(Redriven::default());
    };
    let seqs: Vec<i64> = marked.iter().map(|row| row.get(0)).collect();
    let mut report = Redriven { requested: seqs.len(), waiting: seqs.len(), ..Redriven::default() };
    let Some(wait) = wait else { return Ok(report) };

    // Entries set aside behind them since carry the same request stamp.
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let row = session
            .timed(
                "following a redrive",
                session.client().query_one(
                    "select count(*) filter (where redriven_at is not null), \
                            count(*) filter (where redriven_at is null), count(*) \
                     from outbox_relay.dead_letters \
                     where pipeline = $1 and redrive_requested_at::text = $2",
                    &[pipeline, &stamp],
                ),
            )
            .await?;
        report.delivered = row.get::<_, i64>(0) as usize;
        report.waiting = row.get::<_, i64>(1) as usize;
        report.requested = report.requested.max(row.get::<_, i64>(2) as usize);
        if report.waiting == 0 || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let failed = session
        .timed(
            "reading dead letters that failed again",
            session.client().query(
                "select d.entry_id, d.reason, \
                        (select count(*) from outbox_relay.dead_letters h \
                         where h.pipeline = d.pipeline and h.held_behind = d.entry_id \
                           and h.redriven_at is null) \
                 from outbox_relay.dead_letters d \
                 where d.seq = any($1) and d.redriven_at is null and d.redrive_requested_at is null \
                   and d.held_behind is null \
                 order by d.seq",
                &[&seqs],
            ),
        )
        .await?;
    report.failed = failed.iter().map(|row| (row.get(0), row.get(1), row.get(2))).collect();
    Ok(report)
}

/// Prints how a redrive went; `Err` if an entry failed again or the relay did not finish.
pub(crate) fn print(
    config: &Config,
    report: &Redriven,
    wait: Option<Duration>,
) -> Result<(), RelayError> {
    let pipeline = &config.pipeline.name;
    if report.requested == 0 {
        println!("no dead letters to redrive for pipeline {pipeline:?}");
        return Ok(());
    }
    println!(
        "requested a redrive of {} dead letter(s); the relay leading pipeline {pipeline:?} \
         delivers them in order",
        report.requested
    );
    let Some(wait) = wait else { return Ok(()) };
    println!("delivered {} dead letter(s)", report.delivered);
    for (id, reason, held) in &report.failed {
        println!("entry {id} failed again and stays: {reason}");
        if *held > 0 {
            println!("    {held} entr(ies) of its key stay held behind it");
        }
    }
    if report.waiting > 0 {
        return Err(RelayError::Dlq(format!(
            "{} dead letter(s) not delivered within {}: is a relay running for pipeline \
             {pipeline:?}, and can it reach the broker (outbox-relay status)? The request stays; \
             the relay delivers them when it can",
            report.waiting,
            humantime_serde::re::humantime::format_duration(wait)
        )));
    }
    if !report.failed.is_empty() {
        return Err(RelayError::Dlq(format!(
            "{} dead letter(s) failed again (listed above; outbox-relay dlq list)",
            report.failed.len()
        )));
    }
    Ok(())
}

async fn connect(config: &Config) -> Result<Session, RelayError> {
    Ok(crate::store::connect(config).await?)
}

fn query_error(what: &'static str, source: tokio_postgres::Error) -> RelayError {
    RelayError::Postgres(outbox_relay_postgres::PostgresError::Query { what, source })
}
