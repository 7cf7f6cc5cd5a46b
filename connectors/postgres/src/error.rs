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
    #[error(
        "wal_level is {level:?}; WAL tailing needs wal_level = logical (set it in postgresql.conf \
         and restart PostgreSQL), or use source.mode = \"poll\""
    )]
    WalLevel { level: String },
    #[error(
        "publication {publication:?} does not exist: run `outbox-relay migrate` (it creates it)"
    )]
    MissingPublication { publication: String },
    #[error(
        "publication {publication:?} does not publish inserts into {table}: run `outbox-relay \
         migrate`, or `alter publication ... add table ...` with publish = 'insert'"
    )]
    PublicationLacksTable { publication: String, table: String },
    #[error(
        "replication slot {slot:?} does not exist: run `outbox-relay migrate` to create it. The \
         relay never creates it on its own: a slot only sees what is committed after it exists, \
         so creating one silently could skip entries"
    )]
    MissingSlot { slot: String },
    #[error(
        "replication slot {slot:?} {problem}: use a pgoutput slot of this database (source.slot)"
    )]
    WrongSlot { slot: String, problem: String },
    #[error(
        "replication slot {slot:?} was invalidated (wal_status = lost: the WAL it needed was \
         removed, see max_slot_wal_keep_size); changes committed after {confirmed} are gone from \
         the WAL. The relay will not re-create the slot, as that would silently skip them. To \
         recover: find and republish what was committed since {confirmed}, then drop the slot and \
         run `outbox-relay migrate` to create a new one"
    )]
    SlotInvalidated { slot: String, confirmed: String },
    #[error("replication slot {slot:?} is in use by another process (pid {pid}); waiting for it to let go")]
    SlotInUse { slot: String, pid: i32 },
    #[error("{what}")]
    Replication {
        what: &'static str,
        #[source]
        source: pgwire_replication::PgWireError,
    },
    #[error("the replication stream ended")]
    StreamEnded,
    #[error(
        "the replication stream delivered nothing for {silent:?} although heartbeats were \
         written: the connection is presumed half-open; reconnecting"
    )]
    StreamStalled { silent: Duration },
    #[error(
        "outbox table {table} changed while streaming: it has no column {column:?} any more; \
         nothing after the change was acknowledged. Restore the column or set source.{setting}, \
         then restart"
    )]
    OutboxChanged { table: String, column: String, setting: &'static str },
    #[error(
        "the transaction committed at {commit_lsn} has more than 2^32 outbox entries, more than \
         a position can number; nothing of it was acknowledged. Split such writes into several \
         transactions"
    )]
    TransactionTooLarge { commit_lsn: String },
    #[error(
        "polling {table} cannot prove it skips nothing: {problem}. Run `outbox-relay migrate` \
         (it installs the stamp trigger and a CACHE 1 sequence), or use source.mode = \"wal\""
    )]
    SeqStamping { table: String, problem: String },
    #[error(
        "publication {publication:?} {problem} for {table}, so some outbox rows would never reach \
         the relay: `alter publication {publication} set table {table}` (no WHERE, all columns)"
    )]
    PublicationFilters { publication: String, table: String, problem: String },
    #[error(
        "the PostgreSQL URL has a raw `@` in its user or password: percent-encode it as %40 \
         (postgres://user:p%40ss@host/db)"
    )]
    UrlAt,
    #[error(
        "{what} was refused: another relay has taken over this pipeline since this one took \
         its lock (a newer leader epoch); this one stands by"
    )]
    LockLost { what: &'static str },
    #[error("TLS to PostgreSQL: {0}")]
    Tls(String),
    #[error("undecodable replication data")]
    Decode {
        #[source]
        source: crate::wal::DecodeError,
    },
}

impl PostgresError {
    /// Connection trouble, shutdowns and conflicts are transient; missing objects, bad URLs, bad
    /// credentials and other SQL errors are fatal: a human has to act, no message is at fault.
    pub fn retry(&self) -> Retry {
        match self {
            PostgresError::Connect { source, .. } | PostgresError::Query { source, .. } => {
                classify(source)
            }
            PostgresError::ConnectTimeout { .. }
            | PostgresError::Timeout { .. }
            | PostgresError::SlotInUse { .. }
            | PostgresError::LockLost { .. }
            | PostgresError::StreamStalled { .. }
            | PostgresError::StreamEnded => Retry::Transient,
            PostgresError::Replication { source, .. } => classify_replication(source),
            PostgresError::Url { .. }
            | PostgresError::TableName(_)
            | PostgresError::MissingTable { .. }
            | PostgresError::MissingColumn { .. }
            | PostgresError::MissingSeqTrigger { .. }
            | PostgresError::WalLevel { .. }
            | PostgresError::MissingPublication { .. }
            | PostgresError::PublicationLacksTable { .. }
            | PostgresError::MissingSlot { .. }
            | PostgresError::WrongSlot { .. }
            | PostgresError::SlotInvalidated { .. }
            | PostgresError::Decode { .. }
            | PostgresError::TransactionTooLarge { .. }
            | PostgresError::SeqStamping { .. }
            | PostgresError::PublicationFilters { .. }
            | PostgresError::UrlAt
            | PostgresError::Tls(_)
            | PostgresError::OutboxChanged { .. }
            | PostgresError::UnknownPosition { .. } => Retry::Fatal,
        }
    }
}

/// SQLSTATE classes that a later attempt can get past: 08 connection exception, 40 transaction
/// rollback (serialization, deadlock), 53 insufficient resources, 55 object not in prerequisite
/// state (lock not available), 57 operator intervention (shutdown, cancel), 58 system error —
/// and 25006 read-only transaction: a server that became a standby in a failover, which the
/// next connection (`target_session_attrs=read-write`) gets past.
fn classify(error: &tokio_postgres::Error) -> Retry {
    match error.code() {
        None => Retry::Transient,
        Some(code) => classify_sqlstate(code.code()),
    }
}

fn classify_sqlstate(code: &str) -> Retry {
    match code.get(..2).unwrap_or_default() {
        "08" | "40" | "53" | "55" | "57" | "58" => Retry::Transient,
        _ if code == READ_ONLY_TRANSACTION => Retry::Transient,
        _ => Retry::Fatal,
    }
}

const READ_ONLY_TRANSACTION: &str = "25006";

/// I/O trouble and a busy slot are transient; a refused login, TLS or protocol failure, and
/// server errors outside the transient SQLSTATE classes are fatal.
fn classify_replication(error: &pgwire_replication::PgWireError) -> Retry {
    use pgwire_replication::PgWireError as E;
    match error {
        E::Io(_) | E::Task(_) => Retry::Transient,
        E::Server(text) => {
            // A standby refuses what needs an xid; the replication protocol gives the text only.
            if text.contains("cannot assign TransactionIds during recovery")
                || text.contains("recovery is in progress")
            {
                return Retry::Transient;
            }
            match text.rsplit_once("(SQLSTATE ") {
                Some((_, code)) => classify_sqlstate(code.trim_end_matches(')')),
                None => Retry::Fatal,
            }
        }
        _ => Retry::Fatal,
    }
}

impl From<PostgresError> for ConnectorError {
    fn from(error: PostgresError) -> Self {
        ConnectorError::new(error.retry(), error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_turned_standby_is_waited_for() {
        assert_eq!(classify_sqlstate("25006"), Retry::Transient, "read-only transaction");
        assert_eq!(classify_sqlstate("57P01"), Retry::Transient);
        assert_eq!(classify_sqlstate("25001"), Retry::Fatal);
        assert_eq!(classify_sqlstate("42P01"), Retry::Fatal);
        let standby = pgwire_replication::PgWireError::Server(
            "ERROR: cannot assign TransactionIds during recovery".into(),
        );
        assert_eq!(classify_replication(&standby), Retry::Transient);
        let gone = pgwire_replication::PgWireError::Server(
            "ERROR: replication slot \"s\" does not exist (SQLSTATE 42704)".into(),
        );
        assert_eq!(classify_replication(&gone), Retry::Fatal);
    }
}
