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

/// On a message `outbox-relay replay` sent again: the replay's label (by default the time it
/// started). Its `id` is the original's, so an inbox would drop it as a duplicate: a consumer
/// that wants replays processed again recognises them by this header.
pub const REPLAY: &str = "outbox-replay";

/// Where the reply to a command goes (request/asynchronous reply): a Kafka header, and the
/// AMQP `reply_to` property. Set by `route.reply_to`, or by a logical message's envelope header.
pub const REPLY_TO: &str = "reply-to";
/// What a reply quotes so the requester can match it: a Kafka header, and the AMQP
/// `correlation_id` property. Set by `route.correlation_id`, or by an envelope header.
pub const CORRELATION_ID: &str = "correlation-id";

/// W3C trace context (<https://www.w3.org/TR/trace-context/>) of the transaction that wrote the
/// entry, set by `route.traceparent`: a Kafka header and an AMQP header, under the W3C names.
pub const TRACEPARENT: &str = "traceparent";
/// Vendor trace state beside [`TRACEPARENT`], set by `route.tracestate`.
pub const TRACESTATE: &str = "tracestate";

/// Whether `traceparent` is a W3C traceparent a tracer can continue: `version-traceid-parentid-
/// flags` in lowercase hex, ids not all zero, version not `ff`; a later version may append
/// `-...` fields.
pub fn is_valid_traceparent(traceparent: &str) -> bool {
    let b = traceparent.as_bytes();
    let hex = |range: std::ops::Range<usize>| {
        b[range].iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    let zero = |range: std::ops::Range<usize>| b[range].iter().all(|&c| c == b'0');
    let shape = b.len() >= 55 && b[2] == b'-' && b[35] == b'-' && b[52] == b'-';
    shape
        && hex(0..2)
        && hex(3..35)
        && hex(36..52)
        && hex(53..55)
        && &b[0..2] != b"ff"
        && !zero(3..35)
        && !zero(36..52)
        && (b.len() == 55 || (&b[0..2] != b"00" && b[55] == b'-'))
}

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

    #[test]
    fn only_well_formed_traceparents_are_valid() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(is_valid_traceparent(good));
        assert!(is_valid_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what-comes-later"
        ));
        for bad in [
            "",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        ] {
            assert!(!is_valid_traceparent(bad), "{bad}");
        }
    }
}
