//! `outbox-relay run`: leadership, then the pipeline, rebuilt after transient failures until
//! shutdown or a halt. Invariant: the sink outlives source restarts; after a source failure the
//! pipeline waits (up to `shutdown_grace`) for what is in flight before anything is re-read, and
//! messages still unconfirmed then are simply sent again, after the older copies (duplicates at
//! worst, never a reorder: both copies go out in the same order).

use std::sync::Arc;

use outbox_relay_core::{Retry, Sink};
use outbox_relay_postgres::{
    wal, AfterPublish, MessageFormat, OutboxTable, PollOptions, PollSource, TableName,
    WalAfterPublish, WalOptions, WalSource,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::config::{AfterPublishConfig, Config, MessageFormatConfig, SourceConfig, SourceMode};
use crate::error::RelayError;
use crate::pipeline::{self, Exit, Settings};
use crate::router::Router;
use crate::sink::AnySink;
use crate::source::AnySource;
use crate::store::{self, state::RelayState};
use crate::telemetry::{self, Activity, Telemetry};

/// Prefix of the relay's heartbeat messages (never an outbox entry).
const HEARTBEAT_PREFIX: &str = "outbox-relay.heartbeat";

pub(crate) async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RelayError> {
    let telemetry = Telemetry::new();
    let _server =
        telemetry::serve(&config.telemetry.listen, Arc::clone(&telemetry), shutdown.clone())
            .await?;
    let _gauges = AbortOnDropHandle::new(tokio::spawn(super::gauges::watch(
        config.clone(),
        Arc::clone(&telemetry),
        shutdown.clone(),
    )));
    let router = Router::new(&config.route, &config.pipeline.name)?;
    let mut sink = AnySink::new(&config.sink, &config.pipeline.name)?;
    tracing::info!(sink = sink.system(), guarantees = %sink.capabilities(), "delivery");
    let settings = Settings {
        max_in_flight: config.pipeline.max_in_flight,
        max_in_flight_bytes: config.pipeline.max_in_flight_bytes,
        batch_size: config.source.batch_size,
        ack_interval: config.pipeline.ack_interval,
        retry_initial_backoff: config.pipeline.retry_initial_backoff,
        retry_max_backoff: config.pipeline.retry_max_backoff,
        shutdown_grace: config.pipeline.shutdown_grace,
        on_poison: config.pipeline.on_poison,
        same_key: config.pipeline.dead_letter_same_key,
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
                telemetry.metrics.set_state(Activity::Halted);
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
    telemetry.metrics.set_state(Activity::Starting);
    // Two sessions: one holds the pipeline lock and reads the source, one writes the records.
    let lock = store::connect(config).await?;
    let Some((session, lease)) = store::leader::acquire(lock, config, telemetry, shutdown).await?
    else {
        return Ok(Exit::Shutdown);
    };
    let source = &config.source;
    let polled = source.mode == SourceMode::Poll;
    let name: TableName = source.table.parse()?;
    let table =
        OutboxTable::inspect(&session, name, &source.id_column, &source.payload_column, polled)
            .await?;
    if let Some((key, column)) = crate::source::unknown_columns(router, &table, source).next() {
        return Err(RelayError::UnknownColumn {
            key,
            column: column.into(),
            table: table.name.to_string(),
        });
    }
    // The relay's records are opened first, under the lock; then the sink's run begins (a
    // Kafka sink fences older producers and learns how far back replays may go); then the
    // source starts reading.
    let mut state = RelayState::open(store::connect(config).await?, config, lease).await?;
    let window = replay_window(&session, &table, &state, settings).await?;
    let wal = if polled { None } else { Some(wal_options(config, &session, settings).await?) };
    if let Some(exit) = begin_sink_run(sink, window, shutdown).await? {
        return Ok(exit);
    }
    let source = match wal {
        None => {
            tracing::info!(table = %table.name, "polling the outbox");
            AnySource::Poll(PollSource::new(session, table, poll_options(source)).await?)
        }
        Some(options) => {
            let url = config.postgres.url.expose();
            AnySource::Wal(WalSource::start(url, session, Some(table), options).await?)
        }
    };
    let exit = pipeline::run(source, sink, router, settings, telemetry, &mut state, shutdown).await;
    state.settle().await;
    exit
}

fn poll_options(source: &SourceConfig) -> PollOptions {
    PollOptions {
        batch_size: source.batch_size,
        poll_interval: source.poll_interval,
        after_publish: match source.after_publish {
            AfterPublishConfig::Mark => AfterPublish::Mark { retention: source.retention },
            AfterPublishConfig::Delete | AfterPublishConfig::Keep => AfterPublish::Delete,
        },
        notify_channel: Some(source.notify_channel.clone()).filter(|c| !c.is_empty()),
    }
}

async fn wal_options(
    config: &Config,
    session: &outbox_relay_postgres::Session,
    settings: &Settings,
) -> Result<WalOptions, RelayError> {
    let source = &config.source;
    let sender_timeout = wal::sender_timeout(session).await?;
    Ok(WalOptions {
        slot: source.slot.clone(),
        publication: source.publication.clone(),
        message_prefix: Some(source.message_prefix.clone()).filter(|p| !p.is_empty()),
        message_format: match source.message_format {
            MessageFormatConfig::Envelope => MessageFormat::Envelope,
            MessageFormatConfig::Raw => MessageFormat::Raw,
        },
        heartbeat_prefix: HEARTBEAT_PREFIX.into(),
        heartbeat_interval: Some(source.heartbeat_interval).filter(|i| !i.is_zero()),
        after_publish: match source.after_publish {
            AfterPublishConfig::Keep => WalAfterPublish::Keep,
            AfterPublishConfig::Delete | AfterPublishConfig::Mark => WalAfterPublish::Delete,
        },
        status_interval: wal::status_interval(sender_timeout),
        sender_timeout,
        connect_timeout: config.postgres.connect_timeout,
        application_name: store::session_options(config).application_name,
        // The fourth quarter of the in-flight budget: the pipeline reads three batches ahead.
        read_ahead_bytes: pipeline::batch_bytes(settings),
    })
}

/// Readies the sink for a run (see [`AnySink::begin_run`]); `Some(exit)` when the run ends
/// before it began: shutdown, or a transient failure the caller retries.
async fn begin_sink_run(
    sink: &mut AnySink,
    window: usize,
    shutdown: &CancellationToken,
) -> Result<Option<Exit>, RelayError> {
    let begun = tokio::select! {
        () = shutdown.cancelled() => return Ok(Some(Exit::Shutdown)),
        begun = sink.begin_run(window) => begun,
    };
    match begun {
        Ok(()) => Ok(None),
        Err(error) if error.retry() == Retry::Transient => Ok(Some(Exit::SourceFailed(error))),
        Err(source) => Err(RelayError::Fatal { what: "the sink cannot start", source }),
    }
}

/// Most records per partition a WAL run reads back to recognise replays (it stops earlier, at
/// the first record of its own older than what it replays).
const WAL_TAIL_MAX: usize = 250_000;

/// How many records per partition the Kafka sink may read back to recognise replays. Polling:
/// the rows an earlier run may have sent and not acknowledged (still in the outbox, at or below
/// the replay horizon) bound it exactly; WAL tailing scans back to below its first replay, up
/// to [`WAL_TAIL_MAX`] records or twice the window.
async fn replay_window(
    session: &outbox_relay_postgres::Session,
    table: &OutboxTable,
    state: &RelayState,
    settings: &Settings,
) -> Result<usize, RelayError> {
    let fallback = settings.max_in_flight.saturating_mul(2).max(WAL_TAIL_MAX);
    let Some(outbox_relay_core::Position::Poll { seq }) = state.replay_horizon() else {
        return Ok(fallback);
    };
    let sql = format!("select count(*) from {} where seq <= $1", table.name.quoted());
    let row = session
        .timed("counting possible replays", session.client().query_one(&sql, &[&seq]))
        .await?;
    Ok(usize::try_from(row.get::<_, i64>(0)).unwrap_or(fallback).saturating_add(16))
}
