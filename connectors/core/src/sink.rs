//! The sink contract.

use std::future::Future;
use std::pin::Pin;

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
