//! Gauges read from Postgres, for alerts that must fire before the disk fills: how much WAL the
//! slot holds, how far it is behind, how far it is from invalidation, and how many dead letters
//! wait. Invariant: read-only, on a session of its own, and never a reason to stop the relay —
//! a failed read is logged and tried again at the next tick.

use std::sync::Arc;
use std::time::Duration;

use outbox_relay_postgres::Session;
use tokio_util::sync::CancellationToken;

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
                let options = crate::leader::session_options(&config);
                session = Some(Session::connect(config.postgres.url.expose(), &options).await?);
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
    let client = session.client();
    if config.source.mode == SourceMode::Wal {
        let slot = session
            .timed(
                "reading the replication slot's WAL",
                client.query_opt(
                    "select pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, \
                            pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, \
                            safe_wal_size \
                     from pg_replication_slots where slot_name = $1",
                    &[&config.source.slot],
                ),
            )
            .await?;
        // A missing slot (or one invalidated: no restart_lsn) holds nothing; the source says why.
        let (retained, behind, safe) = slot.map_or((None, None, None), |row| {
            (row.get::<_, Option<i64>>(0), row.get::<_, Option<i64>>(1), row.get(2))
        });
        metrics.slot_wal_retained.set(retained.unwrap_or(0));
        metrics.slot_lag.set(behind.unwrap_or(0));
        // NULL when max_slot_wal_keep_size = -1: no limit.
        metrics.slot_safe_wal.set(safe.unwrap_or(-1));
    }
    let waiting = session
        .timed(
            "counting dead letters",
            client.query_one(
                "select count(*) from outbox_relay.dead_letters \
                 where pipeline = $1 and redriven_at is null",
                &[&config.pipeline.name],
            ),
        )
        .await?;
    metrics.dead_letters_waiting.set(waiting.get::<_, i64>(0));
    Ok(())
}
