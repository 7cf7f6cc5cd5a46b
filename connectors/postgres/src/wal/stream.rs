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

use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use outbox_relay_core::Lsn;
use pgwire_replication::{Lsn as WireLsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use tokio_postgres::config::Host;

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
    /// Events buffered between the socket and the source.
    pub(crate) buffer: usize,
}

pub(crate) struct ReplicationStream {
    client: ReplicationClient,
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
        .with_buffer_size(options.buffer)
        .with_application_name(&options.application_name);

        let what = "starting logical replication";
        let connecting =
            tokio::time::timeout(options.connect_timeout, ReplicationClient::connect(wire));
        let mut client = connecting
            .await
            .map_err(|_| PostgresError::Timeout { what, after: options.connect_timeout })?
            .map_err(|source| PostgresError::Replication { what, source })?;
        match tokio::time::timeout(options.connect_timeout, client.wait_started()).await {
            Ok(Ok(())) => Ok(Self { client }),
            Ok(Err(source)) => Err(PostgresError::Replication { what, source }),
            Err(_) => {
                client.abort();
                Err(PostgresError::Timeout { what, after: options.connect_timeout })
            }
        }
    }

    /// The next event (cancel-safe).
    pub(crate) async fn recv(&mut self) -> Result<Event, PostgresError> {
        loop {
            let event = self
                .client
                .recv()
                .await
                .map_err(|source| PostgresError::Replication { what: "streaming changes", source })?
                .ok_or(PostgresError::StreamEnded)?;
            if let Some(event) = convert(event) {
                return Ok(event);
            }
        }
    }

    /// The next event if one is buffered now.
    pub(crate) fn try_recv(&mut self) -> Option<Result<Event, PostgresError>> {
        loop {
            match self.client.recv().now_or_never()? {
                Ok(Some(event)) => match convert(event) {
                    Some(event) => return Some(Ok(event)),
                    None => continue,
                },
                Ok(None) => return Some(Err(PostgresError::StreamEnded)),
                Err(source) => {
                    return Some(Err(PostgresError::Replication {
                        what: "streaming changes",
                        source,
                    }))
                }
            }
        }
    }

    /// Everything before `lsn` is done: report it as flushed (sent on the next status update).
    pub(crate) fn confirm(&self, lsn: Lsn) {
        self.client.update_applied_lsn(WireLsn(lsn.0));
    }

    /// The position the server was last told.
    pub(crate) fn reported(&self) -> Lsn {
        Lsn(self.client.metrics().last_applied_lsn().0)
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
        let _ = tokio::time::timeout(deadline, self.client.shutdown()).await;
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
