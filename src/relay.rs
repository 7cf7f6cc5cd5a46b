//! `outbox-relay run`: leadership, then the pipeline, rebuilt after transient failures until
//! shutdown or a halt. Invariant: the sink outlives source restarts, so messages it still has in
//! flight are confirmed (or failed) before anything is re-read and re-sent.

use std::sync::Arc;

use outbox_relay_core::Retry;
use outbox_relay_postgres::{AfterPublish, OutboxTable, PollOptions, PollSource, TableName};
use tokio_util::sync::CancellationToken;

use crate::config::{AfterPublishConfig, Config};
use crate::error::RelayError;
use crate::pipeline::{self, Exit, Settings};
use crate::router::Router;
use crate::sink::AnySink;
use crate::telemetry::{self, RelayState, Telemetry};

pub(crate) async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RelayError> {
    let telemetry = Telemetry::new();
    let _server =
        telemetry::serve(&config.telemetry.listen, Arc::clone(&telemetry), shutdown.clone())
            .await?;
    let router = Router::new(&config.route)?;
    let mut sink = AnySink::new(&config.sink)?;
    let settings = Settings {
        max_in_flight: config.pipeline.max_in_flight,
        max_in_flight_bytes: config.pipeline.max_in_flight_bytes,
        batch_size: config.source.batch_size,
        ack_interval: config.pipeline.ack_interval,
        retry_initial_backoff: config.pipeline.retry_initial_backoff,
        retry_max_backoff: config.pipeline.retry_max_backoff,
        shutdown_grace: config.pipeline.shutdown_grace,
    };

    let mut attempt = 0u32;
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let result = run_once(&config, &router, &mut sink, &settings, &telemetry, &shutdown).await;
        let error = match result {
            Ok(Exit::Shutdown) => return Ok(()),
            Ok(Exit::SourceFailed(error)) => {
                attempt = 0;
                telemetry.metrics.source_restarts.inc();
                crate::sink::chain(&error)
            }
            Err(RelayError::Postgres(error)) if error.retry() == Retry::Transient => {
                crate::sink::chain(&error)
            }
            Err(error) => {
                telemetry.metrics.set_state(RelayState::Halted);
                return Err(error);
            }
        };
        let pause = pipeline::backoff(attempt, &settings);
        attempt = attempt.saturating_add(1);
        tracing::warn!(error = %error, pause = ?pause, "source unavailable; starting again");
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(pause) => {}
        }
    }
}

async fn run_once(
    config: &Config,
    router: &Router,
    sink: &mut AnySink,
    settings: &Settings,
    telemetry: &Telemetry,
    shutdown: &CancellationToken,
) -> Result<Exit, RelayError> {
    telemetry.metrics.set_state(RelayState::Starting);
    let Some(session) = crate::leader::acquire(config, telemetry, shutdown).await? else {
        return Ok(Exit::Shutdown);
    };
    let name: TableName = config.source.table.parse()?;
    let table = OutboxTable::inspect(
        &session,
        name,
        &config.source.id_column,
        &config.source.payload_column,
    )
    .await?;
    for (key, column) in router.columns() {
        if !table.has_column(column) {
            return Err(RelayError::UnknownColumn {
                key,
                column: column.into(),
                table: table.name.to_string(),
            });
        }
    }
    let options = PollOptions {
        batch_size: config.source.batch_size,
        poll_interval: config.source.poll_interval,
        after_publish: match config.source.after_publish {
            AfterPublishConfig::Delete => AfterPublish::Delete,
            AfterPublishConfig::Mark => AfterPublish::Mark { retention: config.source.retention },
        },
        notify_channel: Some(config.source.notify_channel.clone()).filter(|c| !c.is_empty()),
    };
    tracing::info!(table = %table.name, "polling the outbox");
    let source = PollSource::new(session, table, options).await?;
    pipeline::run(source, sink, router, settings, telemetry, shutdown).await
}
