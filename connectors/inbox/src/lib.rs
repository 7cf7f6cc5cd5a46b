//! The consumer inbox: makes a message handler idempotent inside the consumer's own database
//! transaction.
//!
//! Brokers redeliver (a consumer crashed before acking) and the relay re-sends after a failure,
//! so a consumer sees a message more than once. The inbox records `(consumer, message_id)` in the
//! same transaction as the handler's writes: either both commit, or neither does. A second
//! delivery finds the row and skips the handler; a concurrent one waits on the row's unique key
//! until the first transaction ends.
//!
//! ```no_run
//! # async fn example(client: &mut tokio_postgres::Client, message_id: &str) -> Result<(), Box<dyn std::error::Error>> {
//! use outbox_relay_inbox::{Inbox, Processed};
//!
//! let inbox = Inbox::new("billing");                     // one name per consumer
//! let tx = client.transaction().await?;
//! let outcome = inbox
//!     .process_once(&tx, message_id, async |tx| {
//!         tx.execute("update invoices set paid = true where order_id = 42", &[]).await?;
//!         Ok::<_, tokio_postgres::Error>(())
//!     })
//!     .await?;
//! tx.commit().await?;                                     // then ack the broker message
//! if let Processed::Skipped = outcome { /* a duplicate: nothing was done */ }
//! # Ok(()) }
//! ```
//!
//! Invariant: the handler runs at most once per `(consumer, message_id)` among committed
//! transactions. The table is created by the relay's migration `0002_consumer_inbox.sql`.

use tokio_postgres::Transaction;

/// What [`Inbox::process_once`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Processed<T> {
    /// First delivery: the handler ran and returned this (commit the transaction).
    Done(T),
    /// Already processed by this consumer: the handler did not run.
    Skipped,
}

/// The inbox failed, or the handler did.
#[derive(Debug, thiserror::Error)]
pub enum InboxError<E: std::error::Error + 'static> {
    #[error("cannot record message {message_id} in the inbox (is migration 0002 applied?)")]
    Record {
        message_id: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("the handler for message {message_id} failed")]
    Handler {
        message_id: String,
        #[source]
        source: E,
    },
}

/// The inbox of one consumer.
#[derive(Clone, Debug)]
pub struct Inbox {
    consumer: String,
}

impl Inbox {
    /// `consumer` names the consuming service (or handler); each keeps its own record.
    pub fn new(consumer: impl Into<String>) -> Self {
        Self { consumer: consumer.into() }
    }

    /// Runs `handler` in `tx` unless this consumer already processed `message_id`. The caller
    /// commits `tx` (and then acks the message) in both cases; on an error it rolls back, and
    /// the message is not recorded.
    pub async fn process_once<T, E, H>(
        &self,
        tx: &Transaction<'_>,
        message_id: &str,
        handler: H,
    ) -> Result<Processed<T>, InboxError<E>>
    where
        E: std::error::Error + 'static,
        H: AsyncFnOnce(&Transaction<'_>) -> Result<T, E>,
    {
        let inserted = tx
            .execute(
                "insert into outbox_relay.inbox (consumer, message_id) values ($1, $2) \
                 on conflict do nothing",
                &[&self.consumer, &message_id],
            )
            .await
            .map_err(|source| InboxError::Record { message_id: message_id.into(), source })?;
        if inserted == 0 {
            return Ok(Processed::Skipped);
        }
        handler(tx)
            .await
            .map(Processed::Done)
            .map_err(|source| InboxError::Handler { message_id: message_id.into(), source })
    }

    /// Whether this consumer already processed `message_id` (committed).
    pub async fn contains(
        &self,
        client: &impl tokio_postgres::GenericClient,
        message_id: &str,
    ) -> Result<bool, tokio_postgres::Error> {
        let row = client
            .query_opt(
                "select 1 from outbox_relay.inbox where consumer = $1 and message_id = $2",
                &[&self.consumer, &message_id],
            )
            .await?;
        Ok(row.is_some())
    }
}
