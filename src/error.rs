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
    #[error("doctor found {problems} problem(s)")]
    Doctor { problems: usize },
    #[error("asyncapi: {0}")]
    AsyncApi(String),
    #[error("replay: {0}")]
    Replay(String),
    #[error("replay: {0}")]
    ReplayArgument(String),
    #[error("cannot write the command's output")]
    Output(#[from] std::io::Error),
}

impl RelayError {
    /// The exit code a command that fails with this error ends with (README "Exit codes"):
    /// 2 when the configuration is wrong (clap uses 2 for a wrong command line too), 3 when the
    /// database lacks what `outbox-relay migrate` sets up (the relay schema at this relay's
    /// version, the outbox table, its seq trigger, the publication, the slot), 1 for everything
    /// else: a halt on an entry, a permanent broker or Postgres error, a failed check.
    pub(crate) fn exit_code(&self) -> u8 {
        use outbox_relay_postgres::PostgresError as Pg;
        match self {
            Self::ConfigRead { .. }
            | Self::Config { .. }
            | Self::Template { .. }
            | Self::UnknownColumn { .. }
            | Self::Telemetry { .. }
            | Self::AsyncApi(_)
            | Self::ReplayArgument(_) => 2,
            Self::SchemaOutdated { .. }
            | Self::Postgres(
                Pg::MissingTable { .. }
                | Pg::MissingSeqTrigger { .. }
                | Pg::MissingPublication { .. }
                | Pg::PublicationLacksTable { .. }
                | Pg::MissingSlot { .. },
            ) => 3,
            Self::Route { .. }
            | Self::Poison { .. }
            | Self::Fatal { .. }
            | Self::Migration { .. }
            | Self::MigrationEdited { .. }
            | Self::Postgres(_)
            | Self::Dlq(_)
            | Self::Check { .. }
            | Self::Doctor { .. }
            | Self::Replay(_)
            | Self::Output(_) => 1,
        }
    }
}
