//! `outbox-relay check`: configuration, connectivity and prerequisites, each explained in plain
//! words. Invariant: check only reads — it never creates, alters or deletes anything (the
//! RabbitMQ topology declared from config is the one exception, and it is idempotent).

use std::io::Write;

use outbox_relay_core::Sink;
use outbox_relay_postgres::{prerequisites, OutboxTable, Session, TableName};

use crate::config::{AfterPublishConfig, Config, SourceMode};
use crate::error::RelayError;
use crate::router::Router;
use crate::sink::chain;

/// The checks' results, each written as it comes (to `out`; nowhere for `doctor`).
struct Report<'a> {
    total: usize,
    /// What failed, and why (with what to do).
    failures: Vec<(String, String)>,
    out: Option<&'a mut dyn Write>,
    /// The first write that failed: the command ends with it.
    broken: Option<std::io::Error>,
}

impl Report<'_> {
    fn pass(&mut self, what: &str, detail: impl AsRef<str>) {
        self.total += 1;
        self.line("[ok]  ", what, detail.as_ref());
    }

    fn fail(&mut self, what: &str, detail: impl AsRef<str>) {
        self.total += 1;
        self.failures.push((what.to_owned(), detail.as_ref().to_owned()));
        self.line("[FAIL]", what, detail.as_ref());
    }

    fn warn(&mut self, what: &str, detail: impl AsRef<str>) {
        self.line("[warn]", what, detail.as_ref());
    }

    /// What the operator should know, neither a pass nor a failure.
    fn note(&mut self, what: &str, detail: impl AsRef<str>) {
        self.line("[info]", what, detail.as_ref());
    }

    fn line(&mut self, tag: &str, what: &str, detail: &str) {
        let Some(out) = self.out.as_mut() else { return };
        if let Err(error) = writeln!(out, "{tag} {what}: {detail}") {
            self.broken.get_or_insert(error);
        }
    }
}

pub(crate) async fn check(config: &Config, out: &mut impl Write) -> Result<(), RelayError> {
    let Report { total, failures, broken, .. } = run(config, Some(out as &mut dyn Write)).await?;
    if let Some(error) = broken {
        return Err(error.into());
    }
    let failed = failures.len();
    writeln!(out, "{} of {total} checks passed", total - failed)?;
    if failed > 0 {
        return Err(RelayError::Check { failed, total });
    }
    Ok(())
}

/// The checks that fail, each as (what, why and what to do), writing nothing.
pub(crate) async fn failures(config: &Config) -> Result<Vec<(String, String)>, RelayError> {
    Ok(run(config, None).await?.failures)
}

async fn run<'a>(
    config: &Config,
    out: Option<&'a mut dyn Write>,
) -> Result<Report<'a>, RelayError> {
    let mut report = Report { total: 0, failures: Vec::new(), out, broken: None };
    report.pass("config", format!("pipeline {:?} is valid", config.pipeline.name));
    let router = Router::new(&config.route, &config.pipeline.name)?;

    match crate::store::connect(config).await {
        Ok(session) => {
            report.pass("postgres", format!("connected to {}", session.target()));
            check_database(&session, config, &router, &mut report).await;
        }
        Err(error) => report.fail("postgres", chain(&error)),
    }
    check_sink(config, &mut report).await;
    Ok(report)
}

async fn check_database(
    session: &Session,
    config: &Config,
    router: &Router,
    report: &mut Report<'_>,
) {
    let latest = crate::store::migrations::latest_version() as i32;
    match crate::store::migrations::applied_version(session).await {
        Ok(applied) if applied >= latest => {
            report.pass("migrations", format!("relay schema at version {latest}"));
        }
        Ok(applied) => report.fail(
            "migrations",
            format!("relay schema at version {applied} of {latest}: run `outbox-relay migrate`"),
        ),
        Err(error) => report.fail("migrations", chain(&error)),
    }

    let name: TableName = match config.source.table.parse() {
        Ok(name) => name,
        Err(error) => return report.fail("outbox table", chain(&error)),
    };
    let polled = config.source.mode == SourceMode::Poll;
    let table = match OutboxTable::inspect(
        session,
        name,
        &config.source.id_column,
        &config.source.payload_column,
        polled,
    )
    .await
    {
        Ok(table) => {
            let what = if polled { "columns and seq trigger" } else { "columns" };
            report.pass("outbox table", format!("{} has the {what} the relay needs", table.name));
            table
        }
        Err(error) => return report.fail("outbox table", chain(&error)),
    };
    let missing: Vec<String> = crate::source::unknown_columns(router, &table, &config.source)
        .map(|(key, column)| format!("{key} uses {column:?}"))
        .collect();
    if missing.is_empty() {
        report.pass("routing", "every template column exists in the outbox table");
    } else {
        report.fail("routing", format!("{} — the table has no such column", missing.join(", ")));
    }
    if config.source.after_publish == AfterPublishConfig::Mark && !table.has_column("published_at")
    {
        report.fail(
            "after_publish",
            "\"mark\" needs a published_at column: run `outbox-relay migrate` with this config",
        );
    }
    if !polled {
        check_wal(session, config, &table, report).await;
    } else if !config.source.notify_channel.is_empty() {
        let trigger = prerequisites::has_notify_trigger(session, &table.name).await;
        if !matches!(trigger, Ok(true)) {
            report.warn(
                "notify",
                format!(
                    "no outbox_relay_notify trigger on {}: new rows are found every {:?} \
                     (source.poll_interval) instead of at once",
                    table.name, config.source.poll_interval
                ),
            );
        }
    }
}

async fn check_wal(
    session: &Session,
    config: &Config,
    table: &OutboxTable,
    report: &mut Report<'_>,
) {
    match prerequisites::check_wal_level(session).await {
        Ok(()) => report.pass("wal_level", "logical"),
        Err(error) => return report.fail("wal_level", chain(&error)),
    }
    match prerequisites::ReplicationLimits::read(session).await {
        Ok(limits) if limits.suffice() => report.pass(
            "replication limits",
            format!("max_replication_slots = {}, max_wal_senders = {}", limits.slots, limits.senders),
        ),
        Ok(_) => report.fail(
            "replication limits",
            "max_replication_slots and max_wal_senders must be at least 1 (restart Postgres after changing them)",
        ),
        Err(error) => report.fail("replication limits", chain(&error)),
    }
    let publication = &config.source.publication;
    match prerequisites::check_publication(session, publication, Some(&table.name), Some(table.oid))
        .await
    {
        Ok(()) => report
            .pass("publication", format!("{publication:?} publishes inserts into {}", table.name)),
        Err(error) => report.fail("publication", chain(&error)),
    }
    match prerequisites::check_slot(session, &config.source.slot).await {
        Ok(slot) => report.pass(
            "replication slot",
            format!("{:?} (pgoutput) resumes at {}", config.source.slot, slot.confirmed_flush),
        ),
        Err(error @ outbox_relay_postgres::PostgresError::SlotInUse { .. }) => {
            report.warn("replication slot", chain(&error));
        }
        Err(error) => report.fail("replication slot", chain(&error)),
    }
}

async fn check_sink(config: &Config, report: &mut Report<'_>) {
    let mut sink = match crate::sink::AnySink::new(&config.sink, &config.pipeline.name) {
        Ok(sink) => sink,
        Err(error) => return report.fail("sink", chain(&error)),
    };
    let name = sink.system();
    let static_destination = (!config.route.topic.contains("${")).then_some(&*config.route.topic);
    match sink.check(static_destination).await {
        Ok(checked) => {
            report.pass(name, checked.reached);
            report.note(&format!("{name} delivery"), sink.capabilities().to_string());
            let what = format!("{name} {}", checked.destination_kind);
            match checked.destination {
                Some(Ok(found)) => report.pass(&what, found),
                Some(Err(missing)) => report.fail(&what, missing),
                None => {}
            }
        }
        Err(error) => report.fail(name, chain(&error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_result_is_written_as_it_comes_and_failures_are_kept() {
        let mut out = Vec::new();
        let mut report = Report {
            total: 0,
            failures: Vec::new(),
            out: Some(&mut out as &mut dyn Write),
            broken: None,
        };
        report.pass("postgres", "connected to 127.0.0.1:5432/app");
        report.warn("notify", "no trigger");
        report.fail("kafka", "cannot reach it");
        let Report { total, failures, broken, .. } = report;
        assert_eq!((total, broken.is_none()), (2, true));
        assert_eq!(failures, [("kafka".to_owned(), "cannot reach it".to_owned())]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "[ok]   postgres: connected to 127.0.0.1:5432/app\n\
             [warn] notify: no trigger\n\
             [FAIL] kafka: cannot reach it\n"
        );
    }
}
