//! `outbox-relay doctor`: why the slot is not advancing or rows are not draining, in plain
//! words, each problem with what to run. It reads what `status` reads and runs `check`'s tests
//! quietly. Invariant: doctor only reads, like both of them; it exits 1 when it found a problem.

use std::io::Write;

use super::status::{self, Report};
use crate::config::Config;
use crate::error::RelayError;

/// Less WAL than this before `max_slot_wal_keep_size` invalidates the slot is a problem now.
const SAFE_WAL_LOW: i64 = 1 << 30;

/// One problem: what is wrong and why it matters, then what to do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Finding {
    pub(crate) problem: String,
    pub(crate) remedy: String,
}

pub(crate) async fn doctor(config: &Config, out: &mut impl Write) -> Result<(), RelayError> {
    let failures = super::check::failures(config).await?;
    // Without Postgres there is no status to read: the failed checks say why.
    let report = if failures.iter().any(|(what, _)| what == "postgres") {
        None
    } else {
        Some(status::read(config).await?)
    };
    let findings = diagnose(report.as_ref(), &failures);
    let what = config.pipeline.name.as_str();
    if findings.is_empty() {
        let report = report.expect("read");
        writeln!(out, "pipeline {what:?} ({} → {}): healthy", report.source, report.sink)?;
        writeln!(out, "  {}", summary(&report))?;
        return Ok(());
    }
    writeln!(out, "pipeline {what:?}: {} problem(s)", findings.len())?;
    for (n, finding) in findings.iter().enumerate() {
        writeln!(out, "\n{}. {}", n + 1, finding.problem)?;
        writeln!(out, "   → {}", finding.remedy)?;
    }
    Err(RelayError::Doctor { problems: findings.len() })
}

/// One line on a healthy pipeline.
fn summary(report: &Report) -> String {
    let leader = report.leader.as_ref().map_or(0, |l| l.pid);
    let mut line = format!("a relay leads (backend pid {leader}) and is running");
    if let Some(slot) = &report.slot {
        line.push_str(&format!("; the slot is {} bytes behind", slot.lag_bytes.unwrap_or(0)));
    }
    if let Some(rows) = report.outbox.rows {
        line.push_str(&format!("; {rows} rows in {}", report.outbox.table));
    }
    line
}

/// The problems in `report` and in the failed checks (what, why).
pub(crate) fn diagnose(report: Option<&Report>, failures: &[(String, String)]) -> Vec<Finding> {
    let mut findings: Vec<Finding> = failures
        .iter()
        .map(|(what, why)| Finding {
            problem: format!("`check` fails on {what}: {why}"),
            remedy: format!("fix {what} as the message says; `outbox-relay check` tests it again"),
        })
        .collect();
    let Some(report) = report else { return findings };
    let state = report.recorded.as_ref().and_then(|r| r.state.as_deref());
    let since = report.recorded.as_ref().and_then(|r| r.state_since.as_deref()).unwrap_or("?");
    let detail = report.recorded.as_ref().and_then(|r| r.state_detail.as_deref());
    let waiting =
        report.outbox.rows.filter(|&rows| rows > 0).map_or(String::new(), |rows| {
            format!(" {rows} row(s) wait in {}.", report.outbox.table)
        });
    match (&report.leader, state) {
        (None, None) => findings.push(Finding {
            problem: format!("No relay has ever run this pipeline.{waiting}"),
            remedy: "start `outbox-relay run`".into(),
        }),
        (None, Some("halted")) => findings.push(Finding {
            problem: format!(
                "The relay halted at {since}: {}. No relay publishes until it is fixed and \
                 started again.{waiting}",
                detail.unwrap_or("no reason recorded")
            ),
            remedy: "fix the entry or the configuration it names, then start `outbox-relay run` \
                     (with pipeline.on_poison = \"dead-letter\", such entries are set aside \
                     instead)"
                .into(),
        }),
        (None, Some(state)) => findings.push(Finding {
            problem: format!(
                "No relay runs this pipeline: the last one was {state} at {since}.{waiting}"
            ),
            remedy: "start `outbox-relay run` (a relay that cannot reach Postgres stands by \
                     until it can)"
                .into(),
        }),
        (Some(_), Some("retrying")) => findings.push(Finding {
            problem: format!(
                "The relay has been retrying since {since}: {}. Entries wait; nothing is lost \
                 while it retries.{waiting}",
                detail.unwrap_or("no reason recorded")
            ),
            remedy: "fix what the error names (a broker down or unreachable, a bad credential); \
                     `outbox-relay check` tests the broker and Postgres"
                .into(),
        }),
        (Some(_), _) => {}
    }
    if let Some(slot) = report.slot.as_ref().filter(|slot| slot.exists) {
        let retained = slot.retained_bytes.unwrap_or(0);
        if slot.wal_status.as_deref() == Some("lost") {
            findings.push(Finding {
                problem: format!(
                    "Replication slot {:?} was invalidated (max_slot_wal_keep_size): the WAL \
                     it needed is gone, and entries committed while it was behind cannot be \
                     read from it.",
                    slot.name
                ),
                remedy: "see README \"Preconditions\": drop the slot, create it again with \
                         `outbox-relay migrate`, and re-publish what was committed meanwhile \
                         from the outbox table (rows kept with after_publish = \"keep\")"
                    .into(),
            });
        } else if !slot.active && report.leader.is_none() {
            findings.push(Finding {
                problem: format!(
                    "Replication slot {:?} is not streaming and keeps {retained} bytes of WAL on \
                     the database server; that grows with every write to the database until a \
                     relay reads from it.",
                    slot.name
                ),
                remedy: format!(
                    "start `outbox-relay run`; if no relay will use this slot again, drop it: \
                     select pg_drop_replication_slot('{}')",
                    slot.name
                ),
            });
        }
        if let Some(safe) = slot.safe_wal_bytes.filter(|&safe| safe < SAFE_WAL_LOW) {
            findings.push(Finding {
                problem: format!(
                    "Replication slot {:?} is {safe} bytes of WAL from being invalidated by \
                     max_slot_wal_keep_size; then the entries it has not delivered are lost to \
                     the relay.",
                    slot.name
                ),
                remedy: "get a relay publishing now, or raise max_slot_wal_keep_size \
                         (select pg_reload_conf() after changing it)"
                    .into(),
            });
        }
    }
    let dead = &report.dead_letters;
    if dead.live > 0 {
        findings.push(Finding {
            problem: format!(
                "{} dead letter(s), of {} shard key(s), were set aside: they can never be \
                 delivered as they are, and with dead_letter_same_key = \"wait\" the later \
                 entries of those keys wait behind them.",
                dead.live, dead.keys
            ),
            remedy: "`outbox-relay dlq list` shows each reason; fix the cause, then \
                     `outbox-relay dlq redrive --all`"
                .into(),
        });
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::super::status::fixtures::{report, slot};
    use super::super::status::DeadLetters;
    use super::*;

    #[test]
    fn a_running_pipeline_has_no_findings() {
        assert_eq!(
            diagnose(Some(&report("running", true, Some(slot("reserved", true, None)))), &[]),
            []
        );
    }

    #[test]
    fn an_invalidated_slot_and_one_near_invalidation_are_named() {
        let lost = diagnose(Some(&report("running", true, Some(slot("lost", false, None)))), &[]);
        assert!(lost[0].problem.contains("was invalidated"), "{lost:?}");
        let near = report("running", true, Some(slot("reserved", true, Some(SAFE_WAL_LOW - 1))));
        let near = diagnose(Some(&near), &[]);
        assert!(near[0].problem.contains("bytes of WAL from being invalidated"), "{near:?}");
    }

    #[test]
    fn dead_letters_and_failed_checks_are_findings() {
        let mut held = report("running", true, None);
        held.dead_letters = DeadLetters { live: 2, keys: 1, awaiting_redrive: 0 };
        let failures = [("publication".to_owned(), "missing".to_owned())];
        let found = diagnose(Some(&held), &failures);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].problem.contains("`check` fails on publication: missing"));
        assert!(found[1].problem.contains("2 dead letter(s), of 1 shard key(s)"));
        assert_eq!(diagnose(None, &failures).len(), 1, "without Postgres: the checks only");
    }
}
