//! The replication session's timing: the server's `wal_sender_timeout` and the status period
//! derived from it, and the heartbeat that moves an idle slot. What the slot itself must be is
//! checked in [`crate::prerequisites`].

use std::time::Duration;

use crate::{PostgresError, Session};

/// The server's `wal_sender_timeout` (`None` if disabled): it ends a replication connection
/// that stays silent that long.
pub async fn sender_timeout(session: &Session) -> Result<Option<Duration>, PostgresError> {
    let row = session
        .timed(
            "reading wal_sender_timeout",
            session.client().query_one(
                "select setting::bigint from pg_settings where name = 'wal_sender_timeout'",
                &[],
            ),
        )
        .await?;
    let timeout_ms: i64 = row.get(0);
    Ok(u64::try_from(timeout_ms).ok().filter(|ms| *ms > 0).map(Duration::from_millis))
}

/// The standby status period: `min(1 s, wal_sender_timeout / 2)`, at least 100 ms.
pub fn status_interval(sender_timeout: Option<Duration>) -> Duration {
    let second = Duration::from_secs(1);
    match sender_timeout {
        None => second,
        Some(timeout) => second.min(timeout / 2).max(Duration::from_millis(100)),
    }
}

/// A non-transactional logical message: it moves the slot forward on an otherwise idle database.
pub async fn emit_heartbeat(session: &Session, prefix: &str) -> Result<(), PostgresError> {
    session
        .timed(
            "emitting a heartbeat",
            session.client().execute("select pg_logical_emit_message(false, $1, '')", &[&prefix]),
        )
        .await?;
    Ok(())
}
