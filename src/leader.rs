//! One active relay per pipeline (DESIGN §3.7). Leadership is a session-level
//! `pg_try_advisory_lock` keyed by the pipeline name. Invariant: the poll source reads and
//! deletes only on the session that holds the lock, so a relay whose lock session died can no
//! longer read or delete rows; a standby takes over as soon as Postgres ends that session.

use outbox_relay_postgres::{Session, SessionOptions};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::RelayError;
use crate::telemetry::{Activity, Telemetry};

/// The pipeline lock's key, for the pipeline named by `$1`.
pub(crate) const LOCK_KEY: &str = "hashtextextended('outbox-relay:' || $1, 0)";

/// A `pg_locks` row `l` that is the pipeline lock of the pipeline named by `$1`, granted.
pub(crate) const LOCK_HELD: &str = "l.locktype = 'advisory' and l.granted and l.objsubid = 1 \
     and l.database = (select oid from pg_database where datname = current_database()) \
     and ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended('outbox-relay:' || $1, 0)";

/// Who holds the pipeline lock: the backend of the lock session. Writes of the relay's state
/// are fenced by it ([`Lease::fence`]): once that session ends, another relay may lead, and
/// this one's writes are refused instead of overwriting the new leader's.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lease {
    backend_pid: i32,
}

impl Lease {
    /// A SQL condition that holds while this lease's session still holds the lock of the
    /// pipeline named by `$1`.
    pub(crate) fn fence(&self) -> String {
        format!(
            "exists (select 1 from pg_locks l where {LOCK_HELD} and l.pid = {})",
            self.backend_pid
        )
    }
}

/// Connects and waits for the pipeline lock. `Ok(None)` if shutdown came first.
pub(crate) async fn acquire(
    config: &Config,
    telemetry: &Telemetry,
    shutdown: &CancellationToken,
) -> Result<Option<(Session, Lease)>, RelayError> {
    let pipeline = &config.pipeline.name;
    let session = Session::connect(config.postgres.url.expose(), &session_options(config)).await?;
    let mut waiting_logged = false;
    loop {
        let row = session
            .timed(
                "taking the pipeline lock",
                session.client().query_one(
                    &format!("select pg_try_advisory_lock({LOCK_KEY}), pg_backend_pid()"),
                    &[pipeline],
                ),
            )
            .await?;
        if row.get::<_, bool>(0) {
            record_leader(&session, config).await?;
            tracing::info!(pipeline = %pipeline, "this relay leads the pipeline");
            return Ok(Some((session, Lease { backend_pid: row.get(1) })));
        }
        if !waiting_logged {
            tracing::info!(pipeline = %pipeline, "another relay leads this pipeline; standing by");
            waiting_logged = true;
        }
        telemetry.metrics.set_state(Activity::Standby);
        tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            () = tokio::time::sleep(config.pipeline.standby_retry) => {}
        }
    }
}

pub(crate) fn session_options(config: &Config) -> SessionOptions {
    SessionOptions {
        connect_timeout: config.postgres.connect_timeout,
        query_timeout: config.postgres.query_timeout,
        application_name: format!("outbox-relay:{}", config.pipeline.name),
    }
}

/// Who leads, for `status` and for humans reading `outbox_relay.pipelines`.
async fn record_leader(session: &Session, config: &Config) -> Result<(), RelayError> {
    let leader = format!("{}:{}", hostname(), std::process::id());
    let source = format!("{:?}", config.source.mode).to_lowercase();
    session
        .timed(
            "recording the pipeline leader (is `outbox-relay migrate` applied?)",
            session.client().execute(
                "insert into outbox_relay.pipelines as p (name, source, leader, leader_since) \
                 values ($1, $2, $3, now()) \
                 on conflict (name) do update set source = excluded.source, \
                 leader = excluded.leader, leader_since = now(), updated_at = now()",
                &[&config.pipeline.name, &source, &leader],
            ),
        )
        .await?;
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown-host".into())
}
