//! `outbox-relay check`: configuration, connectivity and prerequisites, each explained in plain
//! words. Invariant: check only reads — it never creates, alters or deletes anything (the
//! RabbitMQ topology declared from config is the one exception, and it is idempotent).

use outbox_relay_core::Sink;
use outbox_relay_postgres::{OutboxTable, Session, TableName};

use crate::config::{AfterPublishConfig, Config, SourceMode};
use crate::error::RelayError;
use crate::router::Router;
use crate::sink::chain;

#[derive(Debug, Default)]
struct Report {
    total: usize,
    /// What failed, and why (with what to do).
    failures: Vec<(String, String)>,
    /// Collect only (for `doctor`), print nothing.
    quiet: bool,
}

impl Report {
    fn pass(&mut self, what: &str, detail: impl AsRef<str>) {
        self.total += 1;
        if !self.quiet {
            println!("[ok]   {what}: {}", detail.as_ref());
        }
    }

    fn fail(&mut self, what: &str, detail: impl AsRef<str>) {
        self.total += 1;
        self.failures.push((what.to_owned(), detail.as_ref().to_owned()));
        if !self.quiet {
            println!("[FAIL] {what}: {}", detail.as_ref());
        }
    }

    fn warn(&mut self, what: &str, detail: impl AsRef<str>) {
        if !self.quiet {
            println!("[warn] {what}: {}", detail.as_ref());
        }
    }
}

pub(crate) async fn check(config: &Config) -> Result<(), RelayError> {
    let report = run(config, false).await?;
    let failed = report.failures.len();
    println!("{} of {} checks passed", report.total - failed, report.total);
    if failed > 0 {
        return Err(RelayError::Check { failed, total: report.total });
    }
    Ok(())
}

/// The checks that fail, each as (what, why and what to do), printing nothing.
pub(crate) async fn failures(config: &Config) -> Result<Vec<(String, String)>, RelayError> {
    Ok(run(config, true).await?.failures)
}

async fn run(config: &Config, quiet: bool) -> Result<Report, RelayError> {
    let mut report = Report { quiet, ..Report::default() };
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

async fn check_database(session: &Session, config: &Config, router: &Router, report: &mut Report) {
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
    let message_fields: &[&str] = if polled || config.source.message_prefix.is_empty() {
        &[]
    } else {
        &outbox_relay_postgres::wal::MESSAGE_FIELDS
    };
    let missing: Vec<String> = router
        .columns()
        .filter(|(_, column)| !table.has_column(column) && !message_fields.contains(column))
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
        let trigger = session
            .client()
            .query_opt(
                "select 1 from pg_trigger where tgrelid = to_regclass($1) \
                 and tgname = 'outbox_relay_notify' and tgenabled <> 'D'",
                &[&table.name.quoted()],
            )
            .await;
        if !matches!(trigger, Ok(Some(_))) {
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

async fn check_wal(session: &Session, config: &Config, table: &OutboxTable, report: &mut Report) {
    use outbox_relay_postgres::wal;
    match wal::check_wal_level(session).await {
        Ok(()) => report.pass("wal_level", "logical"),
        Err(error) => return report.fail("wal_level", chain(&error)),
    }
    let limits = session
        .client()
        .query_one(
            "select current_setting('max_replication_slots')::int, \
                    current_setting('max_wal_senders')::int",
            &[],
        )
        .await;
    match limits {
        Ok(row) if row.get::<_, i32>(0) > 0 && row.get::<_, i32>(1) > 0 => report.pass(
            "replication limits",
            format!("max_replication_slots = {}, max_wal_senders = {}", row.get::<_, i32>(0), row.get::<_, i32>(1)),
        ),
        Ok(_) => report.fail(
            "replication limits",
            "max_replication_slots and max_wal_senders must be at least 1 (restart Postgres after changing them)",
        ),
        Err(error) => report.fail("replication limits", chain(&error)),
    }
    let publication = &config.source.publication;
    match wal::check_publication(session, publication, Some(&table.name), Some(table.oid)).await {
        Ok(()) => report
            .pass("publication", format!("{publication:?} publishes inserts into {}", table.name)),
        Err(error) => report.fail("publication", chain(&error)),
    }
    match wal::check_slot(session, &config.source.slot).await {
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

async fn check_sink(config: &Config, report: &mut Report) {
    let mut sink = match crate::sink::AnySink::new(&config.sink, &config.pipeline.name) {
        Ok(sink) => sink,
        Err(error) => return report.fail("sink", chain(&error)),
    };
    let name = sink.system();
    let static_destination = (!config.route.topic.contains("${")).then_some(&*config.route.topic);
    match sink.check(static_destination).await {
        Ok(checked) => {
            report.pass(name, checked.reached);
            let what = format!("{name} {}", checked.destination_kind);
            match checked.destination {
                Some(Ok(found)) => report.pass(&what, found),
                Some(Err(missing)) => report.fail(&what, missing),
                None => {}
            }
        }
        Err(error) => report.fail(name, format!("{}{}", chain(&error), unreachable_hint(config))),
    }
}

/// What to look at when the broker cannot be reached.
fn unreachable_hint(config: &Config) -> &'static str {
    match config.sink {
        #[cfg(feature = "kafka")]
        crate::config::SinkConfig::Kafka(_) => {
            " (is the broker running, and is sink.brokers right?)"
        }
        #[allow(unreachable_patterns)]
        _ => "",
    }
}
