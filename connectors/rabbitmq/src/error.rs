//! Errors of the RabbitMQ sink, classified where they are born.

use std::time::Duration;

use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::ErrorKind;
use outbox_relay_core::{ConnectorError, Retry};

#[derive(Debug, thiserror::Error)]
pub enum RabbitSinkError {
    #[error("invalid AMQP URL: {reason} (expected amqp://user:password@host:port/vhost)")]
    Url { reason: String },
    #[error("cannot connect to RabbitMQ at {target}")]
    Connect {
        target: String,
        #[source]
        source: Box<lapin::Error>,
    },
    #[error("connecting to RabbitMQ at {target} timed out after {after:?}")]
    ConnectTimeout { target: String, after: Duration },
    #[error("RabbitMQ did not answer {what} within {after:?}")]
    Timeout { what: String, after: Duration },
    #[error("cannot declare {what} (sink topology)")]
    Topology {
        what: String,
        #[source]
        source: Box<lapin::Error>,
    },
    #[error(
        "message {id} is {size} bytes, over the limit of {limit} bytes (sink.max_message_bytes; \
         keep it at or below the broker's max_message_size)"
    )]
    TooLarge { id: String, size: usize, limit: usize },
    #[error(
        "message {id}: its headers and properties take {size} bytes, over the connection's \
         frame_max of {frame_max} (AMQP sends them in one frame): send fewer or smaller headers, \
         or raise frame_max on the broker"
    )]
    HeadersTooLarge { id: String, size: usize, frame_max: usize },
    #[error("message {id}: {what} is {len} bytes, AMQP allows at most 255")]
    NameTooLong { id: String, what: &'static str, len: usize },
    #[error(
        "RabbitMQ exchange {exchange:?} does not exist: declare it, or list it under \
         [[sink.exchanges]] so the relay declares it"
    )]
    MissingExchange { exchange: String },
    #[error("cannot check RabbitMQ exchange {exchange:?}")]
    ExchangeCheck {
        exchange: String,
        #[source]
        source: Box<lapin::Error>,
    },
    #[error("cannot publish message {id} to exchange {exchange:?}")]
    Publish {
        id: String,
        exchange: String,
        #[source]
        source: Box<lapin::Error>,
    },
    #[error(
        "message {id} is unroutable: exchange {exchange:?} has no queue bound for routing key \
         {routing_key:?} ({reply_code} {reply_text}); bind a queue or fix route.key"
    )]
    Unroutable {
        id: String,
        exchange: String,
        routing_key: String,
        reply_code: u16,
        reply_text: String,
    },
    #[error("RabbitMQ refused responsibility for message {id} (nack)")]
    Nacked { id: String },
    #[error("RabbitMQ channel of lane {lane} is closed")]
    ChannelClosed { lane: usize },
    #[error("cannot read sink.{what} {path}")]
    TlsFile {
        what: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the connection to RabbitMQ at {target} was lost")]
    ConnectionLost { target: String },
    #[error(
        "waiting for the connection to RabbitMQ at {target} on which a publish timed out to \
         close: a message still queued on it must not land after its re-send"
    )]
    StillClosing { target: String },
    #[error("no confirm for message {id} to exchange {exchange:?}: its channel closed")]
    ConfirmLost {
        id: String,
        exchange: String,
        #[source]
        source: Box<lapin::Error>,
    },
}

impl RabbitSinkError {
    pub fn retry(&self) -> Retry {
        match self {
            RabbitSinkError::Url { .. } | RabbitSinkError::TlsFile { .. } => Retry::Fatal,
            RabbitSinkError::Topology { source, .. } => classify_topology(source),
            RabbitSinkError::TooLarge { .. }
            | RabbitSinkError::HeadersTooLarge { .. }
            | RabbitSinkError::NameTooLong { .. }
            | RabbitSinkError::MissingExchange { .. }
            | RabbitSinkError::Unroutable { .. } => Retry::Permanent,
            RabbitSinkError::Connect { source, .. } => match classify(source) {
                // A refused login or vhost is not about any message.
                Retry::Permanent => Retry::Fatal,
                other => other,
            },
            RabbitSinkError::ExchangeCheck { source, .. }
            | RabbitSinkError::Publish { source, .. } => classify(source),
            RabbitSinkError::ConnectTimeout { .. }
            | RabbitSinkError::Timeout { .. }
            | RabbitSinkError::Nacked { .. }
            | RabbitSinkError::ChannelClosed { .. }
            | RabbitSinkError::ConnectionLost { .. }
            | RabbitSinkError::StillClosing { .. }
            // A closed channel fails every confirm on it, whichever message caused it; the
            // re-send finds the real culprit (a missing exchange is checked before publishing).
            | RabbitSinkError::ConfirmLost { .. } => Retry::Transient,
        }
    }
}

/// Refusals (access, missing vhost, bad login) are fatal; soft refusals about one exchange are
/// permanent for the message; I/O, heartbeats, closed channels and broker shutdowns are
/// transient.
pub(crate) fn classify(error: &lapin::Error) -> Retry {
    match error.kind() {
        ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => Retry::Fatal,
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED | AMQPSoftError::NOTFOUND) => {
                Retry::Permanent
            }
            _ => Retry::Transient,
        },
        ErrorKind::AuthProviderError(_) | ErrorKind::InvalidProtocolVersion(_) => Retry::Fatal,
        _ => Retry::Transient,
    }
}

/// A declaration the broker refused (an exchange or queue that exists with other arguments,
/// access refused) needs a human; the connection dropping under it (I/O, a forced close or a
/// locked resource during a rolling restart) is waited out.
fn classify_topology(error: &lapin::Error) -> Retry {
    match error.kind() {
        ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED)
            | AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED) => Retry::Transient,
            _ => Retry::Fatal,
        },
        ErrorKind::AuthProviderError(_) | ErrorKind::InvalidProtocolVersion(_) => Retry::Fatal,
        _ => Retry::Transient,
    }
}

impl From<RabbitSinkError> for ConnectorError {
    fn from(error: RabbitSinkError) -> Self {
        ConnectorError::new(error.retry(), error)
    }
}
