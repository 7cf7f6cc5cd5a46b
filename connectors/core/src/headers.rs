//! Header names the relay itself sets. Invariant: neither routing templates nor the data (a
//! logical message's envelope headers) can set them — see [`is_reserved`].

/// The entry id (also the AMQP `message_id`): what consumers deduplicate on.
pub const ID: &str = "id";
/// The entry's source position (`wal:<commit lsn>:<index>` or `poll:<seq>`).
pub const POSITION: &str = "outbox-position";
/// The pipeline that published the message: replays are recognised among its own records.
pub const PIPELINE: &str = "outbox-pipeline";
/// `true` on a message that may have been delivered before (RabbitMQ; Kafka suppresses them).
pub const REDELIVERED: &str = "outbox-redelivered";

/// Where the reply to a command goes (request/asynchronous reply): a Kafka header, and the
/// AMQP `reply_to` property. Set by `route.reply_to`, or by a logical message's envelope header.
pub const REPLY_TO: &str = "reply-to";
/// What a reply quotes so the requester can match it: a Kafka header, and the AMQP
/// `correlation_id` property. Set by `route.correlation_id`, or by an envelope header.
pub const CORRELATION_ID: &str = "correlation-id";

/// Whether `name` belongs to the relay: `id` and every `outbox-` name, compared without ASCII
/// case (consumers and brokers differ on case, so a forged `ID` or `Outbox-Position` is refused
/// too). A route header or an entry header with such a name would shadow (Kafka: Java's
/// `lastHeader`) or override (AMQP header tables) what consumers deduplicate and order on.
pub fn is_reserved(name: &str) -> bool {
    const PREFIX: &str = "outbox-";
    name.eq_ignore_ascii_case(ID)
        || name.get(..PREFIX.len()).is_some_and(|head| head.eq_ignore_ascii_case(PREFIX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relays_names_are_reserved_in_any_case() {
        for name in [ID, POSITION, PIPELINE, REDELIVERED, "ID", "Outbox-Position", "outbox-x"] {
            assert!(is_reserved(name), "{name}");
        }
        for name in ["tenant", "idx", "outbox", "my-outbox-position", "é"] {
            assert!(!is_reserved(name), "{name}");
        }
    }
}
