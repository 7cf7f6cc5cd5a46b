//! Schema migrations: plain SQL files under `migrations/`, embedded at build time and applied in
//! order, each in its own transaction, recorded with a SHA-256 checksum in
//! `outbox_relay.schema_migrations`. Invariant: an applied migration is never re-applied, and a
//! changed one is refused rather than silently diverging.

use outbox_relay_postgres::{prerequisites, PostgresError, Session, TableName};
use sha2::{Digest, Sha256};

use crate::config::{AfterPublishConfig, Config, SourceMode};
use crate::error::RelayError;

struct Migration {
    version: u32,
    name: &'static str,
    sql: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "relay_state",
        sql: include_str!("../../migrations/0001_relay_state.sql"),
    },
    Migration {
        version: 2,
        name: "consumer_inbox",
        sql: include_str!("../../migrations/0002_consumer_inbox.sql"),
    },
    Migration {
        version: 3,
        name: "delivery_state",
        sql: include_str!("../../migrations/0003_delivery_state.sql"),
    },
    Migration {
        version: 4,
        name: "relay_redrive",
        sql: include_str!("../../migrations/0004_relay_redrive.sql"),
    },
    Migration {
        version: 5,
        name: "dead_letters_by_position",
        sql: include_str!("../../migrations/0005_dead_letters_by_position.sql"),
    },
    Migration {
        version: 6,
        name: "pipeline_epoch",
        sql: include_str!("../../migrations/0006_pipeline_epoch.sql"),
    },
    Migration {
        version: 7,
        name: "unused_pipeline_columns",
        sql: include_str!("../../migrations/0007_unused_pipeline_columns.sql"),
    },
    Migration {
        version: 8,
        name: "max_sent_ahead",
        sql: include_str!("../../migrations/0008_max_sent_ahead.sql"),
    },
];

/// What `migrate` did.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) applied: Vec<String>,
    pub(crate) already: usize,
    /// Publication and slot work (WAL mode).
    pub(crate) wal: Vec<String>,
}

/// Applies pending migrations, installs (or upgrades) the configured outbox table, and in WAL
/// mode creates the publication and the replication slot if they are missing.
pub(crate) async fn migrate(session: &Session, config: &Config) -> Result<Report, RelayError> {
    let client = session.client();
    // Concurrent `migrate` runs queue up here instead of racing.
    session
        .timed(
            "taking the migration lock",
            client.execute(
                "select pg_advisory_lock(hashtextextended('outbox-relay:migrate', 0))",
                &[],
            ),
        )
        .await?;
    session
        .timed(
            "creating the migration ledger",
            client.batch_execute(
                "create schema if not exists outbox_relay; \
                 create table if not exists outbox_relay.schema_migrations ( \
                     version integer primary key, \
                     name text not null, \
                     checksum text not null, \
                     applied_at timestamptz not null default now()); \
                 comment on table outbox_relay.schema_migrations is \
                     'Applied pg-outbox-relay migrations. Invariant: a row is never changed.'",
            ),
        )
        .await?;
    let applied = session
        .timed(
            "reading applied migrations",
            client.query("select version, checksum from outbox_relay.schema_migrations", &[]),
        )
        .await?;

    let mut report = Report::default();
    for migration in MIGRATIONS {
        let checksum = hex(&Sha256::digest(migration.sql.as_bytes()));
        let recorded = applied
            .iter()
            .find(|row| row.get::<_, i32>(0) == migration.version as i32)
            .map(|row| row.get::<_, String>(1));
        match recorded {
            Some(recorded) if recorded == checksum => report.already += 1,
            Some(_) => {
                return Err(RelayError::MigrationEdited {
                    version: migration.version,
                    name: migration.name.into(),
                })
            }
            None => {
                apply(session, migration, &checksum).await?;
                report.applied.push(format!("{:04}_{}", migration.version, migration.name));
            }
        }
    }

    let table: TableName = config.source.table.parse()?;
    let polled = config.source.mode == SourceMode::Poll;
    let channel = Some(config.source.notify_channel.as_str()).filter(|c| polled && !c.is_empty());
    let mark = config.source.after_publish == AfterPublishConfig::Mark;
    // Polling orders by `seq`; so does `replay` of the rows WAL tailing keeps.
    let stamp_seq = polled || config.source.after_publish == AfterPublishConfig::Keep;
    session
        .timed(
            "installing the outbox table",
            client.execute(
                "select outbox_relay.install_outbox($1, $2, $3, $4, $5)",
                &[&table.schema, &table.name, &channel, &mark, &stamp_seq],
            ),
        )
        .await?;
    if config.source.mode == SourceMode::Wal {
        prerequisites::check_wal_level(session).await?;
        let publication = &config.source.publication;
        report
            .wal
            .extend(prerequisites::ensure_publication(session, publication, Some(&table)).await?);
        report.wal.extend(prerequisites::ensure_slot(session, &config.source.slot).await?);
    }
    session
        .timed(
            "releasing the migration lock",
            client.execute(
                "select pg_advisory_unlock(hashtextextended('outbox-relay:migrate', 0))",
                &[],
            ),
        )
        .await?;
    Ok(report)
}

async fn apply(session: &Session, migration: &Migration, checksum: &str) -> Result<(), RelayError> {
    let fail =
        |source| RelayError::Migration { version: migration.version, name: migration.name, source };
    let client = session.client();
    let what = "applying a migration";
    session.timed(what, client.batch_execute("begin")).await.map_err(fail)?;
    let result = async {
        session.timed(what, client.batch_execute(migration.sql)).await?;
        session
            .timed(
                what,
                client.execute(
                    "insert into outbox_relay.schema_migrations (version, name, checksum) \
                     values ($1, $2, $3)",
                    &[&(migration.version as i32), &migration.name, &checksum],
                ),
            )
            .await?;
        session.timed(what, client.batch_execute("commit")).await
    }
    .await;
    if result.is_err() {
        let _ = session.timed(what, client.batch_execute("rollback")).await;
    }
    result.map_err(fail)
}

/// The newest migration applied to the database; 0 when none is (not even the schema exists).
pub(crate) async fn applied_version(session: &Session) -> Result<i32, PostgresError> {
    let what = "reading the relay schema's version";
    let client = session.client();
    let exists = "select to_regclass('outbox_relay.schema_migrations') is not null";
    if !session.timed(what, client.query_one(exists, &[])).await?.get::<_, bool>(0) {
        return Ok(0);
    }
    let newest = "select coalesce(max(version), 0) from outbox_relay.schema_migrations";
    Ok(session.timed(what, client.query_one(newest, &[])).await?.get(0))
}

/// Fails with [`RelayError::SchemaOutdated`] unless every migration this relay knows is applied.
pub(crate) async fn require_latest(session: &Session) -> Result<(), RelayError> {
    let applied = applied_version(session).await?;
    let latest = latest_version();
    if applied < latest as i32 {
        return Err(RelayError::SchemaOutdated { applied, latest });
    }
    Ok(())
}

pub(crate) fn latest_version() -> u32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_from_one() {
        for (i, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version as usize, i + 1, "{}", migration.name);
            assert!(!migration.sql.trim().is_empty());
        }
    }
}
