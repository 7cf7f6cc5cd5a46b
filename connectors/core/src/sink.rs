//! The sink contract.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::{ConnectorError, Message};

/// Resolves once the broker confirmed one message (or failed to).
pub type Confirm = Pin<Box<dyn Future<Output = Result<(), ConnectorError>> + Send + 'static>>;

/// Publishes routed messages to a broker.
///
/// Contract:
/// - `send` hands one message to the broker client and returns its [`Confirm`]. It may wait for
///   room (a full local queue means wait, not fail); it fails only if the message cannot be
///   handed over now, classified as the error says.
/// - Messages sent with the same shard key reach the broker in the order `send` was called, as
///   long as none of them fails. After a failure the engine stops sending, lets every confirm
///   resolve, and re-sends the unconfirmed messages in their original order.
/// - A `Confirm` resolves `Ok` only when the broker has taken durable responsibility for the
///   message (Kafka: `acks=all` delivery report; AMQP: publisher confirm and not returned).
pub trait Sink: Send {
    fn send(
        &mut self,
        message: &Message,
    ) -> impl Future<Output = Result<Confirm, ConnectorError>> + Send;

    /// Why the broker is not taking messages right now, when the client retries on its own and
    /// no confirm fails (an unreachable cluster, say); `None` when all is well or unknown. The
    /// engine shows it as its state while messages wait.
    fn trouble(&self) -> Option<String> {
        None
    }

    /// How many possible replays this sink found already delivered and did not send again,
    /// since it was made.
    fn replays_recognised(&self) -> u64 {
        0
    }

    /// What this broker guarantees about order and about possible replays: `check` reports it
    /// and `run` logs it at start, so an operator knows what consumers must do.
    fn capabilities(&self) -> Capabilities;

    /// Reaches the broker as `send` would (connection, credentials, the declared topology) and,
    /// when `destination` is given (a route without templates), whether it exists: what
    /// `outbox-relay check` and `doctor` report.
    fn check(
        &mut self,
        destination: Option<&str>,
    ) -> impl Future<Output = Result<Checked, ConnectorError>> + Send;
}

/// What [`Sink::check`] found, in words for the operator.
#[derive(Clone, Debug)]
pub struct Checked {
    /// What was reached: "127.0.0.1:9092 (1 brokers, 3 topics)".
    pub reached: String,
    /// What a destination is called on this broker: "topic", "exchange".
    pub destination_kind: &'static str,
    /// For a destination asked about: `Ok` (it exists) or `Err` (why not, and what to do).
    pub destination: Option<Result<String, String>>,
}

/// What a sink's broker guarantees, in the terms the engine and the operator need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Messages of one shard key stay in the order they were sent on the broker, because the
    /// key picks one ordered lane: a Kafka partition, a RabbitMQ channel into its queue. A sink
    /// without it can keep only the order of sends, not of deliveries.
    pub orders_by_key: bool,
    /// What becomes of a message that an earlier run or round may already have delivered.
    pub replays: Replays,
}

/// How a sink keeps a possible replay from reaching consumers twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replays {
    /// Looked for on the broker and not sent again when found (Kafka: the partition's tail is
    /// read back; with transactions a crashed run's records are aborted, never read).
    Suppressed,
    /// Sent again with the `outbox-redelivered` header: the consumer's inbox drops the copy.
    Marked,
    /// Sent again with the same message id; the broker drops the copy if the first arrived
    /// within `window` (JetStream's `Nats-Msg-Id`, an SQS FIFO deduplication id).
    DroppedByBroker { window: Duration },
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let order = if self.orders_by_key {
            "messages of a shard key stay in commit order"
        } else {
            "the broker does not keep the order of a shard key"
        };
        let replays = match self.replays {
            Replays::Suppressed => "possible replays are looked up and not sent again".to_owned(),
            Replays::Marked => format!(
                "possible replays are sent again marked {}: consumers drop them by message id",
                crate::headers::REDELIVERED
            ),
            Replays::DroppedByBroker { window } => format!(
                "possible replays are sent again with the same id; the broker drops them within {}s",
                window.as_secs()
            ),
        };
        write!(f, "{order}; {replays}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_say_what_consumers_must_do() {
        let marked = Capabilities { orders_by_key: true, replays: Replays::Marked };
        assert_eq!(
            marked.to_string(),
            "messages of a shard key stay in commit order; possible replays are sent again \
             marked outbox-redelivered: consumers drop them by message id"
        );
        let window = Duration::from_secs(120);
        let dropped =
            Capabilities { orders_by_key: false, replays: Replays::DroppedByBroker { window } };
        assert!(dropped.to_string().starts_with("the broker does not keep the order"));
        assert!(dropped.to_string().ends_with("the broker drops them within 120s"));
    }
}
