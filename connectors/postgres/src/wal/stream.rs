//! The replication connection. This is the only module that knows the replication client
//! (`pgwire-replication`): it turns our URL into its config, its events into ours, and our
//! acknowledged position into its standby status updates.
//!
//! Invariants:
//! - The position sent to the server is only ever what [`ReplicationStream::confirm`] was given
//!   (the client keeps it monotonic and re-sends it every `status_interval`, also while idle and
//!   while we apply back-pressure).
//! - [`ReplicationStream::close`] returns only after the last confirmed position was sent, so a
//!   clean shutdown leaves nothing to replay.
//! - What is read ahead of the source is bounded in bytes: a pump task moves events from the
//!   client's small channel ([`CLIENT_BUFFER`] events) into ours only while their bytes fit
//!   `StreamOptions::read_ahead_bytes`; past that the client stops reading the socket and the
//!   server waits (TCP back-pressure). An event larger than the whole budget passes alone.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use outbox_relay_core::Lsn;
use pgwire_replication::{
    Lsn as WireLsn, ReplicationClient, ReplicationConfig, ReplicationEvent, ReplicationMetrics,
};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio_postgres::config::Host;
use tokio_util::task::AbortOnDropHandle;

use crate::PostgresError;

/// What the stream delivers, in WAL order.
#[derive(Debug)]
pub(crate) enum Event {
    /// A transaction starts; it committed at `commit_lsn`.
    Begin { commit_lsn: Lsn },
    /// A change inside the current transaction (pgoutput bytes).
    Change(Bytes),
    /// `pg_logical_emit_message`.
    Message { transactional: bool, lsn: Lsn, prefix: String, content: Bytes },
    /// The current transaction ends; its commit record ends at `end_lsn`.
    Commit { end_lsn: Lsn },
    /// The server has sent everything up to `wal_end`.
    KeepAlive { wal_end: Lsn },
}

/// Events the client may buffer before the pump takes them: small, since the client counts
/// events, not bytes (a row can be up to 1 GB).
const CLIENT_BUFFER: usize = 4;
/// What an event costs in the read-ahead budget besides its bytes, so that many tiny events are
/// bounded too.
const EVENT_OVERHEAD: usize = 64;

/// Most time between acknowledging a position and telling the server: after a crash the
/// relay replays from the last position the server heard, so this bounds what is sent twice.
const FLUSH_REPORT_EVERY: Duration = Duration::from_millis(100);

/// How to open a stream.
#[derive(Clone, Debug)]
pub(crate) struct StreamOptions {
    pub(crate) slot: String,
    pub(crate) publication: String,
    /// Where to start: the slot's `confirmed_flush_lsn`.
    pub(crate) start: Lsn,
    /// Standby status update period: `min(1 s, wal_sender_timeout / 2)`.
    pub(crate) status_interval: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) application_name: String,
    /// Bytes of events read ahead of the source, at most (plus one event larger than that).
    pub(crate) read_ahead_bytes: usize,
}

/// An event with its share of the read-ahead budget, given back when the source takes it.
type Pumped = (Result<Event, PostgresError>, OwnedSemaphorePermit);

pub(crate) struct ReplicationStream {
    events: mpsc::UnboundedReceiver<Pumped>,
    /// The newest position to report, applied by the pump.
    confirmed: watch::Sender<Lsn>,
    metrics: Arc<ReplicationMetrics>,
    /// Asks the pump for a graceful shutdown; it answers when the client has stopped.
    stop: Option<oneshot::Sender<oneshot::Sender<()>>>,
    pump: AbortOnDropHandle<()>,
}

impl std::fmt::Debug for ReplicationStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationStream").finish_non_exhaustive()
    }
}

impl ReplicationStream {
    /// Connects, authenticates and starts streaming from `options.start`.
    pub(crate) async fn open(url: &str, options: &StreamOptions) -> Result<Self, PostgresError> {
        let (config, tls) = crate::session::parse_url(url)?;
        let host = match config.get_hosts().first() {
            Some(Host::Tcp(host)) => host.clone(),
            Some(Host::Unix(path)) => path.display().to_string(),
            None => "localhost".into(),
        };
        let user = config.get_user().unwrap_or("postgres").to_owned();
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let database = config.get_dbname().unwrap_or(&user).to_owned();
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let wire = ReplicationConfig::new(
            host,
            user,
            password,
            database,
            options.slot.clone(),
            options.publication.as_str(),
        )
        .with_port(port)
        .with_tls(crate::tls::replication(&tls))
        .with_start_lsn(WireLsn(options.start.0))
        // A newer flush position goes out within FLUSH_REPORT_EVERY; while idle, status goes out
        // every status_interval.
        .with_status_interval(FLUSH_REPORT_EVERY.min(options.status_interval))
        .with_wakeup_interval(options.status_interval)
        .with_buffer_size(CLIENT_BUFFER)
        .with_application_name(&options.application_name)
        .with_options(crate::session::with_text_formats(config.get_options()));

        let what = "starting logical replication";
        let connecting =
            tokio::time::timeout(options.connect_timeout, ReplicationClient::connect(wire));
        let mut client = connecting
            .await
            .map_err(|_| PostgresError::Timeout { what, after: options.connect_timeout })?
            .map_err(|source| PostgresError::Replication { what, source })?;
        match tokio::time::timeout(options.connect_timeout, client.wait_started()).await {
            Ok(Ok(())) => {}
            Ok(Err(source)) => return Err(PostgresError::Replication { what, source }),
            Err(_) => {
                client.abort();
                return Err(PostgresError::Timeout { what, after: options.connect_timeout });
            }
        }
        let metrics = client.metrics();
        let (events_tx, events) = mpsc::unbounded_channel();
        let (confirmed, confirmed_rx) = watch::channel(options.start);
        let (stop, stop_rx) = oneshot::channel();
        let budget = Arc::new(Semaphore::new(options.read_ahead_bytes.clamp(1, u32::MAX as usize)));
        let pump = tokio::spawn(pump(client, events_tx, confirmed_rx, stop_rx, budget));
        Ok(Self {
            events,
            confirmed,
            metrics,
            stop: Some(stop),
            pump: AbortOnDropHandle::new(pump),
        })
    }

    /// The next event (cancel-safe).
    pub(crate) async fn recv(&mut self) -> Result<Event, PostgresError> {
        match self.events.recv().await {
            Some((event, _budget)) => event,
            None => Err(PostgresError::StreamEnded),
        }
    }

    /// The next event if one is buffered now.
    pub(crate) fn try_recv(&mut self) -> Option<Result<Event, PostgresError>> {
        match self.events.try_recv() {
            Ok((event, _budget)) => Some(event),
            Err(mpsc::error::TryRecvError::Empty) => None,
            Err(mpsc::error::TryRecvError::Disconnected) => Some(Err(PostgresError::StreamEnded)),
        }
    }

    /// Everything before `lsn` is done: report it as flushed (sent on the next status update).
    pub(crate) fn confirm(&self, lsn: Lsn) {
        self.confirmed.send_if_modified(|current| {
            let newer = lsn > *current;
            if newer {
                *current = lsn;
            }
            newer
        });
    }

    /// The position the server was last told.
    pub(crate) fn reported(&self) -> Lsn {
        Lsn(self.metrics.last_applied_lsn().0)
    }

    /// Waits (up to `deadline`) until the server was told `confirmed`, then ends the stream.
    pub(crate) async fn close(mut self, confirmed: Lsn, deadline: Duration) {
        let until = tokio::time::Instant::now() + deadline;
        while self.reported() < confirmed && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if self.reported() < confirmed {
            tracing::warn!(%confirmed, reported = %self.reported(), "closing the replication stream before the server was told the last position");
        }
        let (done_tx, done) = oneshot::channel();
        if self.stop.take().is_some_and(|stop| stop.send(done_tx).is_ok()) {
            let _ = tokio::time::timeout(deadline, done).await;
        }
        drop(self.pump);
    }
}

/// Owns the client: forwards its events while the read-ahead budget has room for them, hands it
/// the newest confirmed position, and shuts it down when asked. Ends with the stream (after
/// forwarding how it ended) or when the [`ReplicationStream`] is dropped.
async fn pump(
    mut client: ReplicationClient,
    events: mpsc::UnboundedSender<Pumped>,
    mut confirmed: watch::Receiver<Lsn>,
    mut stop: oneshot::Receiver<oneshot::Sender<()>>,
    budget: Arc<Semaphore>,
) {
    let most = u32::try_from(budget.available_permits()).unwrap_or(u32::MAX);
    // An event read from the client, waiting for room in the budget.
    let mut waiting: Option<(Result<Event, PostgresError>, u32)> = None;
    loop {
        tokio::select! {
            biased;
            asked = &mut stop => {
                let _ = client.shutdown().await;
                if let Ok(done) = asked {
                    let _ = done.send(());
                }
                return;
            }
            changed = confirmed.changed() => {
                if changed.is_err() {
                    return;
                }
                client.update_applied_lsn(WireLsn(confirmed.borrow_and_update().0));
            }
            permit = Arc::clone(&budget).acquire_many_owned(waiting.as_ref().map_or(0, |w| w.1)),
                if waiting.is_some() =>
            {
                let (event, _) = waiting.take().expect("checked");
                let ended = event.is_err();
                let permit = permit.expect("the budget is never closed");
                if events.send((event, permit)).is_err() || ended {
                    return;
                }
            }
            received = client.recv(), if waiting.is_none() => {
                let event = match received {
                    Ok(Some(event)) => match convert(event) {
                        Some(event) => Ok(event),
                        None => continue,
                    },
                    Ok(None) => Err(PostgresError::StreamEnded),
                    Err(source) => {
                        Err(PostgresError::Replication { what: "streaming changes", source })
                    }
                };
                let cost = event.as_ref().map_or(0, Event::size) + EVENT_OVERHEAD;
                waiting = Some((event, u32::try_from(cost).unwrap_or(u32::MAX).min(most)));
            }
        }
    }
}

impl Event {
    /// Bytes this event holds.
    fn size(&self) -> usize {
        match self {
            Event::Change(data) => data.len(),
            Event::Message { prefix, content, .. } => prefix.len() + content.len(),
            Event::Begin { .. } | Event::Commit { .. } | Event::KeepAlive { .. } => 0,
        }
    }
}

fn convert(event: ReplicationEvent) -> Option<Event> {
    Some(match event {
        ReplicationEvent::Begin { final_lsn, .. } => Event::Begin { commit_lsn: Lsn(final_lsn.0) },
        ReplicationEvent::XLogData { data, .. } => Event::Change(data),
        ReplicationEvent::Message { transactional, lsn, prefix, content } => {
            Event::Message { transactional, lsn: Lsn(lsn.0), prefix, content }
        }
        ReplicationEvent::Commit { end_lsn, .. } => Event::Commit { end_lsn: Lsn(end_lsn.0) },
        ReplicationEvent::KeepAlive { wal_end, .. } => Event::KeepAlive { wal_end: Lsn(wal_end.0) },
        ReplicationEvent::StoppedAt { .. } => return None,
    })
}
