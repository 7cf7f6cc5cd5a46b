//! PostgreSQL for pg-outbox-relay: sessions, the outbox table, and the sources that read it.
//!
//! [`PollSource`] reads an outbox table gap-free: it never relies on an `id > last_seen` cursor
//! alone, because sequence values commit out of order; see `holes` for the rule that decides
//! when a skipped `seq` can no longer appear. [`WalSource`] tails the WAL through a logical
//! replication slot; see `wal` for its progress rules.

mod error;
mod holes;
mod poll;
pub mod prerequisites;
mod retained;
mod session;
mod table;
mod text;
pub mod tls;
pub mod wal;

pub use error::PostgresError;
pub use poll::{AfterPublish, PollOptions, PollSource};
pub use retained::{Retained, RetainedRange, RetainedSummary, CREATED_AT_COLUMN};
pub use session::{quote_ident, Session, SessionOptions};
pub use table::{OutboxTable, TableName, TableShape};
pub use wal::{MessageFormat, WalAfterPublish, WalOptions, WalSource};
