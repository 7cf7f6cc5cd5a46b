//! Header names the relay itself sets. Invariant: routing templates cannot override them.

/// The entry id (also the AMQP `message_id`): what consumers deduplicate on.
pub const ID: &str = "id";
/// The entry's source position (`wal:<commit lsn>:<index>` or `poll:<seq>`).
pub const POSITION: &str = "outbox-position";
/// The pipeline that published the message: replays are recognised among its own records.
pub const PIPELINE: &str = "outbox-pipeline";
/// `true` on a message that may have been delivered before (RabbitMQ; Kafka suppresses them).
pub const REDELIVERED: &str = "outbox-redelivered";
