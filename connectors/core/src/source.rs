//! The source contract.

use std::future::Future;

use crate::{ConnectorError, Entry, Position};

/// Reads committed outbox entries.
///
/// Contract:
/// - `next_batch` yields only **committed** entries, each exactly once per run, in commit order
///   for entries that share a shard key.
/// - `ack(upto)` makes every entry this source emitted up to and including the one at `upto`
///   durably done at the source (flush LSN reported, rows deleted or marked). The engine calls it
///   only after the broker confirmed all of them; the source never acknowledges more.
/// - After a restart, everything not acknowledged is emitted again.
pub trait Source: Send {
    /// Resolves when `next_batch` may have entries (a NOTIFY, a WAL message, a poll interval).
    /// Must be cancel-safe: the engine drops it to serve acknowledgements.
    fn ready(&mut self) -> impl Future<Output = Result<(), ConnectorError>> + Send;

    /// Up to `max` entries, and no more once they hold `max_bytes` ([`Entry::size`]; the entry
    /// that crosses it is the last, so one entry larger than `max_bytes` still comes); empty
    /// when nothing new was committed. What is held while reading is bounded the same way.
    fn next_batch(
        &mut self,
        max: usize,
        max_bytes: usize,
    ) -> impl Future<Output = Result<Vec<Entry>, ConnectorError>> + Send;

    /// See the trait docs.
    fn ack(&mut self, upto: Position) -> impl Future<Output = Result<(), ConnectorError>> + Send;

    /// Whether the entries emitted so far end on a transaction boundary. On a clean stop the
    /// engine keeps reading until this is true, so no transaction is left half published (which
    /// a restart would publish again in full).
    fn at_boundary(&self) -> bool {
        true
    }

    /// Makes the last acknowledgement durable at the source and lets go of it; called once, after
    /// the final `ack`, on a clean stop.
    fn close(&mut self) -> impl Future<Output = Result<(), ConnectorError>> + Send {
        async { Ok(()) }
    }
}
