//! Gauges read from Postgres, for alerts that must fire before the disk fills: how much WAL the
//! slot holds, how far it is behind, how far it is from invalidation, and how many dead letters
//! wait. Invariant: read-only, on a session of its own, and never a reason to stop the relay —
//! a failed read is logged and tried again at the next tick.

use std::sync::Arc;
use std::time::Duration;

use outbox_relay_postgres::Session;
use tokio_util::sync::CancellationToken;

use super::status::{DeadLetters, Slot};
use crate::config::{Config, SourceMode};
use crate::telemetry::Telemetry;

/// How often the gauges are read (a Prometheus scrape interval, give or take).
const EVERY: Duration = Duration::from_secs(10);

/// Reads the gauges every [`EVERY`] until `shutdown`, on leaders and standbys alike (they see
/// the same slot).
pub(crate) async fn watch(config: Config, telemetry: Arc<Telemetry>, shutdown: CancellationToken) {
    let mut session: Option<Session> = None;
    let mut failing = false;
    loop {
        let attempt = async {
            if session.is_none() {
                session = Some(crate::store::connect(&config).await?);
            }
            read(session.as_ref().expect("connected"), &config, &telemetry).await
        };
        match attempt.await {
            Ok(()) => failing = false,
            Err(error) => {
                // Once per spell of failures: the relay's own log says more if Postgres is down.
                if !failing {
                    tracing::warn!(error = %crate::sink::chain(&error), "cannot read the slot and dead-letter gauges; trying again");
                }
                failing = true;
                session = None;
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
    }
}

async fn read(
    session: &Session,
    config: &Config,
    telemetry: &Telemetry,
) -> Result<(), outbox_relay_postgres::PostgresError> {
    let metrics = &telemetry.metrics;
    if config.source.mode == SourceMode::Wal {
        // A missing slot (or one invalidated: no restart_lsn) holds nothing; the source says why.
        let slot = Slot::read(session, &config.source.slot).await?;
        metrics.slot_wal_retained.set(slot.retained_bytes.unwrap_or(0));
        metrics.slot_lag.set(slot.lag_bytes.unwrap_or(0));
        // NULL when max_slot_wal_keep_size = -1: no limit.
        metrics.slot_safe_wal.set(slot.safe_wal_bytes.unwrap_or(-1));
    }
    let dead = DeadLetters::read(session, &config.pipeline.name).await?;
    metrics.dead_letters_waiting.set(dead.live);
    Ok(())
}
