//! The engine's errors. Invariant: each variant says what the operator should do; causes are
//! kept as `#[source]` so a printed chain names each once.

use outbox_relay_core::{ConnectorError, Position};

#[derive(Debug, thiserror::Error)]
pub(crate) enum RelayError {
    #[error("cannot read config file {path}")]
    ConfigRead {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration ({origin}): {message}")]
    Config { origin: String, message: String },
    #[error("invalid template {template:?} in {key}: {reason}")]
    Template { key: &'static str, template: String, reason: String },
    #[error("{key} uses column {column:?}, which outbox table {table} does not have")]
    UnknownColumn { key: &'static str, column: String, table: String },
    #[error("entry {id:?} at {position}: {reason}")]
    Route { id: String, position: Position, reason: String },
    #[error(
        "halted on poison message: entry {id:?} at {position} can never be delivered as it is \
         (pipeline.on_poison = \"halt\"); nothing from it on was acknowledged. Fix the entry or \
         the configuration and restart"
    )]
    Poison {
        id: String,
        position: Position,
        #[source]
        source: ConnectorError,
    },
    #[error("halted: {what}")]
    Fatal {
        what: &'static str,
        #[source]
        source: ConnectorError,
    },
    #[error("migration {version:04} ({name}) failed")]
    Migration {
        version: u32,
        name: &'static str,
        #[source]
        source: outbox_relay_postgres::PostgresError,
    },
    #[error(
        "migration {version:04} ({name}) was changed after it was applied (checksum differs): \
         never edit an applied migration, add a new one"
    )]
    MigrationEdited { version: u32, name: String },
    #[error(transparent)]
    Postgres(#[from] outbox_relay_postgres::PostgresError),
    #[error("cannot serve telemetry on {listen}")]
    Telemetry {
        listen: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the relay schema is at version {applied} of {latest}: run `outbox-relay migrate` (this \
         relay needs its newer tables)"
    )]
    SchemaOutdated { applied: i32, latest: u32 },
    #[error("dlq: {0}")]
    Dlq(String),
    #[error("{failed} of {total} checks failed")]
    Check { failed: usize, total: usize },
}
