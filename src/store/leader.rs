//! One active relay per pipeline (DESIGN §3.7). Leadership is a session-level
//! `pg_try_advisory_lock` keyed by the pipeline name. Invariant: the poll source reads and
//! deletes only on the session that holds the lock, so a relay whose lock session died can no
//! longer read or delete rows; a standby takes over as soon as Postgres ends that session.

use outbox_relay_postgres::Session;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::RelayError;
use crate::telemetry::{Activity, Telemetry};

/// The pipeline lock's key, for the pipeline named by `$1` (a macro, so [`LOCK_HELD`] is built
/// from the same text).
macro_rules! lock_key {
    () => {
        "hashtextextended('outbox-relay:' || $1, 0)"
    };
}

/// The pipeline lock's key, for the pipeline named by `$1`.
pub(crate) const LOCK_KEY: &str = lock_key!();

/// A `pg_locks` row `l` that is the pipeline lock of the pipeline named by `$1`, granted.
pub(crate) const LOCK_HELD: &str = concat!(
    "l.locktype = 'advisory' and l.granted and l.objsubid = 1 \
     and l.database = (select oid from pg_database where datname = current_database()) \
     and ((l.classid::bigint << 32) | l.objid::bigint) = ",
    lock_key!()
);

/// This relay's term as the pipeline's leader: the epoch it raised in `outbox_relay.pipelines`
/// when it took the lock. Writes of the relay's state are fenced by it ([`Lease::fence`]): once
/// another relay has taken over (and raised the epoch), this one's writes change nothing
/// instead of overwriting the new leader's.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lease {
    epoch: i64,
}

impl Lease {
    /// A SQL condition that holds while no newer leader has taken the pipeline named by `$1`.
    /// It locks the pipeline's row `for share`, so a new leader raising the epoch waits for a
    /// write in progress, and a write that comes after sees the new epoch.
    pub(crate) fn fence(&self) -> String {
        format!(
            "exists (select 1 from outbox_relay.pipelines f \
             where f.name = $1 and f.epoch = {} for share)",
            self.epoch
        )
    }
}

/// Waits on `session` for the pipeline lock, and hands the session back holding it (the lock
/// lasts as long as the session). `Ok(None)` if shutdown came first.
pub(crate) async fn acquire(
    session: Session,
    config: &Config,
    telemetry: &Telemetry,
    shutdown: &CancellationToken,
) -> Result<Option<(Session, Lease)>, RelayError> {
    let pipeline = &config.pipeline.name;
    // Before anything is written: a database never migrated says so, not "relation does not
    // exist".
    super::migrations::require_latest(&session).await?;
    let mut waiting_logged = false;
    loop {
        let row = session
            .timed(
                "taking the pipeline lock",
                session
                    .client()
                    .query_one(&format!("select pg_try_advisory_lock({LOCK_KEY})"), &[pipeline]),
            )
            .await?;
        if row.get::<_, bool>(0) {
            let epoch = record_leader(&session, config).await?;
            tracing::info!(pipeline = %pipeline, epoch, "this relay leads the pipeline");
            return Ok(Some((session, Lease { epoch })));
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

/// Who leads, for `status` and for humans reading `outbox_relay.pipelines`; raises the epoch
/// (under the lock, before anything of the pipeline's state is read) and returns it.
async fn record_leader(session: &Session, config: &Config) -> Result<i64, RelayError> {
    let leader = format!("{}:{}", hostname(), std::process::id());
    let source = format!("{:?}", config.source.mode).to_lowercase();
    let row = session
        .timed(
            "recording the pipeline leader (is `outbox-relay migrate` applied?)",
            session.client().query_one(
                "insert into outbox_relay.pipelines as p (name, source, leader, leader_since) \
                 values ($1, $2, $3, now()) \
                 on conflict (name) do update set source = excluded.source, \
                 leader = excluded.leader, leader_since = now(), updated_at = now(), \
                 epoch = p.epoch + 1 \
                 returning epoch",
                &[&config.pipeline.name, &source, &leader],
            ),
        )
        .await?;
    Ok(row.get(0))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown-host".into())
}
