//! `outbox-relay dlq list|redrive`: the entries `pipeline.on_poison = "dead-letter"` set aside.
//!
//! Redriving is done by the relay that leads the pipeline (see `pipeline::redrive`): this only
//! marks the dead letters as requested and follows how the relay fares. The relay delivers them
//! at a point of its own stream, in the order they were set aside, before anything it reads
//! afterwards — so later entries of their key, even ones already committed, follow them.
//! Invariant: only the relay marks a dead letter redriven, once the broker confirmed it.

use std::time::Duration;

use crate::config::Config;
use crate::error::RelayError;
use crate::store::dead_letters;

pub(crate) async fn list(config: &Config) -> Result<(), RelayError> {
    let session = crate::store::connect(config).await?;
    let letters = dead_letters::live(&session, &config.pipeline.name).await?;
    if letters.is_empty() {
        println!("no dead letters for pipeline {:?}", config.pipeline.name);
    }
    for letter in &letters {
        println!(
            "#{} entry {} key {:?} → {:?} at {}\n    {}",
            letter.seq,
            letter.entry_id,
            letter.key,
            letter.destination,
            letter.dead_at,
            match &letter.held_behind {
                Some(first) => format!("held behind {first} (same key)"),
                None => letter.reason.clone(),
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
    let mut session = crate::store::connect(config).await?;
    let pipeline = &config.pipeline.name;
    let Some(request) = dead_letters::request_redrive(&mut session, pipeline, ids).await? else {
        return Ok(Redriven::default());
    };
    let requested = request.seqs.len();
    let mut report = Redriven { requested, waiting: requested, ..Redriven::default() };
    let Some(wait) = wait else { return Ok(report) };

    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let progress = dead_letters::redrive_progress(&session, pipeline, &request.stamp).await?;
        report.delivered = progress.delivered;
        report.waiting = progress.waiting;
        report.requested = report.requested.max(progress.requested);
        if report.waiting == 0 || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    report.failed = dead_letters::failed_again(&session, &request.seqs).await?;
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
