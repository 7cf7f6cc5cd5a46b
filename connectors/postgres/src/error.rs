//! Errors of the PostgreSQL connector, classified where they are born.

use std::time::Duration;

use outbox_relay_core::{ConnectorError, Retry};

#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error("invalid PostgreSQL URL (expected postgres://user:password@host:port/database)")]
    Url {
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("cannot connect to PostgreSQL at {target}")]
    Connect {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("connecting to PostgreSQL at {target} timed out after {after:?}")]
    ConnectTimeout { target: String, after: Duration },
    #[error("invalid table name {0:?}: expected `table` or `schema.table`")]
    TableName(String),
    #[error("outbox table {table} does not exist: run `outbox-relay migrate` or set source.table")]
    MissingTable { table: String },
    #[error("outbox table {table} has no column {column:?}: {hint}")]
    MissingColumn { table: String, column: String, hint: &'static str },
    #[error(
        "outbox table {table} has no enabled outbox_relay_stamp_seq trigger, so late commits could \
         be skipped: run `outbox-relay migrate`"
    )]
    MissingSeqTrigger { table: String },
    #[error("{what} failed")]
    Query {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{what} timed out after {after:?}")]
    Timeout { what: &'static str, after: Duration },
    #[error("acknowledged position {position} was never emitted by this source (a relay bug)")]
    UnknownPosition { position: String },
}

impl PostgresError {
    /// Connection trouble, shutdowns and conflicts are transient; missing objects, bad URLs, bad
    /// credentials and other SQL errors are fatal: a human has to act, no message is at fault.
    pub fn retry(&self) -> Retry {
        match self {
            PostgresError::Connect { source, .. } | PostgresError::Query { source, .. } => {
                classify(source)
            }
            PostgresError::ConnectTimeout { .. } | PostgresError::Timeout { .. } => {
                Retry::Transient
            }
            PostgresError::Url { .. }
            | PostgresError::TableName(_)
            | PostgresError::MissingTable { .. }
            | PostgresError::MissingColumn { .. }
            | PostgresError::MissingSeqTrigger { .. }
            | PostgresError::UnknownPosition { .. } => Retry::Fatal,
        }
    }
}

/// SQLSTATE classes that a later attempt can get past: 08 connection exception, 40 transaction
/// rollback (serialization, deadlock), 53 insufficient resources, 55 object not in prerequisite
/// state (lock not available), 57 operator intervention (shutdown, cancel), 58 system error.
fn classify(error: &tokio_postgres::Error) -> Retry {
    match error.code() {
        None => Retry::Transient,
        Some(code) => match &code.code()[..2] {
            "08" | "40" | "53" | "55" | "57" | "58" => Retry::Transient,
            _ => Retry::Fatal,
        },
    }
}

impl From<PostgresError> for ConnectorError {
    fn from(error: PostgresError) -> Self {
        ConnectorError::new(error.retry(), error)
    }
}
