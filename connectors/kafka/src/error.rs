//! Errors of the Kafka sink, classified where they are born.

use outbox_relay_core::{ConnectorError, Retry};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum KafkaSinkError {
    #[error("invalid Kafka client configuration")]
    Config {
        #[source]
        source: Box<KafkaError>,
    },
    #[error(
        "message {id} is {size} bytes, over the limit of {limit} bytes (sink.max_message_bytes / \
         message.max.bytes; raise it together with the topic's max.message.bytes)"
    )]
    TooLarge { id: String, size: usize, limit: usize },
    #[error("Kafka topic {topic:?} does not exist: create it (auto-creation is not relied on)")]
    UnknownTopic { topic: String },
    #[error("cannot read metadata for Kafka topic {topic:?}")]
    Metadata {
        topic: String,
        #[source]
        source: Box<KafkaError>,
    },
    #[error("cannot reach the Kafka cluster at {brokers} (is the broker running, and is sink.brokers right?)")]
    Unreachable {
        brokers: String,
        #[source]
        source: Box<KafkaError>,
    },
    #[error("Kafka rejected message {id} for topic {topic:?}")]
    Produce {
        id: String,
        topic: String,
        #[source]
        source: Box<KafkaError>,
    },
    #[error("the Kafka producer was shut down before message {id} was confirmed")]
    Canceled { id: String },
    #[error(
        "librdkafka's local queue stayed full for {after:?}; message {id} was not handed over"
    )]
    QueueFull { id: String, after: std::time::Duration },
    #[error("the Kafka producer failed ({reason}); message {id} waits for the messages before it")]
    ProducerFailed { id: String, reason: String },
    #[error("Kafka topic {topic:?} is not ready ({why})")]
    TopicNotReady { topic: String, why: String },
    #[error("cannot {what} a Kafka transaction")]
    Transaction {
        what: &'static str,
        #[source]
        source: KafkaError,
    },
    #[error("message {id} waits: {reason}")]
    TransactionPending { id: String, reason: String },
    #[error("the Kafka transaction holding message {id} was aborted ({reason}); it is sent again")]
    Aborted { id: String, reason: String },
    #[error(
        "the Kafka producer failed for good ({reason}); whether the transaction holding message \
         {id} committed is unknown: it is looked up in its partition and sent again if missing"
    )]
    OutcomeUnknown { id: String, reason: String },
    #[error(
        "the Kafka producer was fenced or failed for good ({reason}): another relay with the \
         same transactional.id took over this pipeline, or the cluster refuses this producer"
    )]
    Fenced { reason: String },
    #[error(
        "cannot read the end of Kafka topic {topic:?} partition {partition} to recognise replays"
    )]
    Tail {
        topic: String,
        partition: i32,
        #[source]
        source: Box<KafkaError>,
    },
}

impl KafkaSinkError {
    pub fn retry(&self) -> Retry {
        match self {
            KafkaSinkError::Config { .. } => Retry::Fatal,
            KafkaSinkError::TooLarge { .. } | KafkaSinkError::UnknownTopic { .. } => {
                Retry::Permanent
            }
            KafkaSinkError::Metadata { source, .. }
            | KafkaSinkError::Unreachable { source, .. }
            | KafkaSinkError::Produce { source, .. } => classify(source),
            KafkaSinkError::Tail { .. } => Retry::Transient,
            KafkaSinkError::Transaction { source, .. } => match source {
                KafkaError::Transaction(e) if e.is_fatal() => Retry::Fatal,
                other => match classify(other) {
                    Retry::Permanent => Retry::Fatal,
                    retry => retry,
                },
            },
            KafkaSinkError::TransactionPending { .. }
            | KafkaSinkError::Aborted { .. }
            | KafkaSinkError::OutcomeUnknown { .. } => Retry::Transient,
            KafkaSinkError::Fenced { .. } => Retry::Fatal,
            KafkaSinkError::Canceled { .. }
            | KafkaSinkError::QueueFull { .. }
            | KafkaSinkError::ProducerFailed { .. }
            | KafkaSinkError::TopicNotReady { .. } => Retry::Transient,
        }
    }
}

/// Errors about the message or its topic are permanent (a resend gets the same answer);
/// authentication and client misconfiguration are fatal. Everything else — brokers down, leaders
/// moving, timeouts, a fatal producer state that a fresh producer clears — is transient.
pub(crate) fn classify(error: &KafkaError) -> Retry {
    use RDKafkaErrorCode as C;
    match error.rdkafka_error_code() {
        Some(
            C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::MessageBatchTooLarge
            | C::InvalidRecord
            | C::UnknownTopicOrPartition
            | C::UnknownTopic
            | C::UnknownPartition
            | C::InvalidTopic
            | C::TopicAuthorizationFailed
            | C::PolicyViolation,
        ) => Retry::Permanent,
        Some(
            C::ClusterAuthorizationFailed
            | C::InvalidRequiredAcks
            | C::SaslAuthenticationFailed
            | C::Authentication,
        ) => Retry::Fatal,
        _ => Retry::Transient,
    }
}

impl From<KafkaSinkError> for ConnectorError {
    fn from(error: KafkaSinkError) -> Self {
        ConnectorError::new(error.retry(), error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_errors_are_permanent_and_outages_transient() {
        let produce = |code| KafkaError::MessageProduction(code);
        assert_eq!(classify(&produce(RDKafkaErrorCode::MessageSizeTooLarge)), Retry::Permanent);
        assert_eq!(classify(&produce(RDKafkaErrorCode::UnknownTopic)), Retry::Permanent);
        assert_eq!(classify(&produce(RDKafkaErrorCode::BrokerTransportFailure)), Retry::Transient);
        assert_eq!(classify(&produce(RDKafkaErrorCode::NotEnoughReplicas)), Retry::Transient);
        assert_eq!(classify(&produce(RDKafkaErrorCode::Fatal)), Retry::Transient);
        assert_eq!(classify(&produce(RDKafkaErrorCode::SaslAuthenticationFailed)), Retry::Fatal);
    }
}
