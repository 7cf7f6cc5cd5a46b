//! `outbox-relay dlq list|redrive`: the entries `pipeline.on_poison = "dead-letter"` set aside.
//!
//! Redriving is done by the relay that leads the pipeline (see `pipeline::redrive`): this only
//! marks the dead letters as requested and follows how the relay fares. The relay delivers them
//! at a point of its own stream, in the order they were set aside, before anything it reads
//! afterwards — so later entries of their key, even ones already committed, follow them.
//! Invariant: only the relay marks a dead letter redriven, once the broker confirmed it.

use std::io::Write;
use std::time::Duration;

use crate::config::Config;
use crate::error::RelayError;
use crate::store::dead_letters;

pub(crate) async fn list(config: &Config, out: &mut impl Write) -> Result<(), RelayError> {
    let session = crate::store::connect(config).await?;
    let letters = dead_letters::live(&session, &config.pipeline.name).await?;
    if letters.is_empty() {
        writeln!(out, "no dead letters for pipeline {:?}", config.pipeline.name)?;
    }
    for letter in &letters {
        writeln!(
            out,
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
        )?;
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

/// Writes how a redrive went; `Err` if an entry failed again or the relay did not finish.
pub(crate) fn write(
    config: &Config,
    report: &Redriven,
    wait: Option<Duration>,
    out: &mut impl Write,
) -> Result<(), RelayError> {
    let pipeline = &config.pipeline.name;
    if report.requested == 0 {
        writeln!(out, "no dead letters to redrive for pipeline {pipeline:?}")?;
        return Ok(());
    }
    writeln!(
        out,
        "requested a redrive of {} dead letter(s); the relay leading pipeline {pipeline:?} \
         delivers them in order",
        report.requested
    )?;
    let Some(wait) = wait else { return Ok(()) };
    writeln!(out, "delivered {} dead letter(s)", report.delivered)?;
    for (id, reason, held) in &report.failed {
        writeln!(out, "entry {id} failed again and stays: {reason}")?;
        if *held > 0 {
            writeln!(out, "    {held} entr(ies) of its key stay held behind it")?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn written(report: &Redriven, wait: Option<Duration>) -> (String, Result<(), RelayError>) {
        let config = Config::from_sources(
            "[postgres]\nurl = \"postgres://x\"\n[sink]\nkind = \"rabbitmq\"\nurl = \"amqp://x\"\n",
            [],
            "test",
        )
        .unwrap();
        let mut out = Vec::new();
        let result = write(&config, report, wait, &mut out);
        (String::from_utf8(out).unwrap(), result)
    }

    #[test]
    fn a_redrive_that_failed_again_names_the_entry_and_fails() {
        let report = Redriven {
            requested: 3,
            delivered: 2,
            waiting: 0,
            failed: vec![("e-7".into(), "no route".into(), 4)],
        };
        let (text, result) = written(&report, Some(Duration::from_secs(1)));
        assert!(text.contains("requested a redrive of 3 dead letter(s)"), "{text}");
        assert!(text.contains("delivered 2 dead letter(s)\nentry e-7 failed again and stays: no route\n    4 entr(ies) of its key stay held behind it\n"), "{text}");
        assert!(
            matches!(result, Err(RelayError::Dlq(ref why)) if why.contains("1 dead letter(s) failed again")),
            "{result:?}"
        );
    }

    #[test]
    fn a_request_without_waiting_succeeds_once_made() {
        let report = Redriven { requested: 1, waiting: 1, ..Redriven::default() };
        let (text, result) = written(&report, None);
        assert!(text.contains("requested a redrive of 1 dead letter(s)"), "{text}");
        assert!(!text.contains("delivered"), "{text}");
        assert!(result.is_ok(), "{result:?}");
        let (text, result) = written(&Redriven::default(), None);
        assert_eq!(text, "no dead letters to redrive for pipeline \"default\"\n");
        assert!(result.is_ok());
    }

    #[test]
    fn a_wait_that_ran_out_says_the_request_stays() {
        let report = Redriven { requested: 2, delivered: 1, waiting: 1, failed: vec![] };
        let (_, result) = written(&report, Some(Duration::from_secs(5)));
        assert!(
            matches!(result, Err(RelayError::Dlq(ref why)) if why.contains("1 dead letter(s) not delivered within 5s") && why.contains("The request stays")),
            "{result:?}"
        );
    }
}
