//! How a message becomes an AMQP publish: its basic properties (headers, message id, reply-to,
//! correlation id, CloudEvents attributes in the AMQP binding) and the checks that it fits
//! (the size limit; AMQP short strings of at most 255 bytes; the content header frame).

use std::time::{SystemTime, UNIX_EPOCH};

use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use outbox_relay_core::headers::{CORRELATION_ID, REPLY_TO};
use outbox_relay_core::{cloudevents, Message};

use crate::RabbitSinkError;

/// AMQP short strings (exchange, routing key, message id) hold at most this many bytes.
const SHORT_STRING_MAX: usize = 255;

pub(crate) fn validate(message: &Message, limit: usize) -> Result<(), RabbitSinkError> {
    let size = message.wire_size();
    if size > limit {
        return Err(RabbitSinkError::TooLarge { id: message.id.clone(), size, limit });
    }
    let names = [
        ("the exchange name", message.destination.len()),
        ("the routing key", message.key.as_ref().map_or(0, String::len)),
        ("the message id", message.id.len()),
    ];
    for (what, len) in names {
        if len > SHORT_STRING_MAX {
            return Err(RabbitSinkError::NameTooLong { id: message.id.clone(), what, len });
        }
    }
    for (what, name) in [("the reply-to", REPLY_TO), ("the correlation id", CORRELATION_ID)] {
        let len = last_header(message, name).map_or(0, str::len);
        if len > SHORT_STRING_MAX {
            return Err(RabbitSinkError::NameTooLong { id: message.id.clone(), what, len });
        }
    }
    // Header table keys are AMQP short strings too.
    if let Some(header) = message.headers.iter().find(|h| h.name.len() > SHORT_STRING_MAX) {
        return Err(RabbitSinkError::NameTooLong {
            id: message.id.clone(),
            what: "a header name",
            len: header.name.len(),
        });
    }
    Ok(())
}

/// An upper bound of the content header frame `properties(message)` becomes (all properties
/// and the header table travel in that one frame, which must fit in the negotiated frame_max):
/// frame envelope 8, class/weight/body size 12, property flags 2, then each property.
pub(crate) fn header_frame_size(message: &Message) -> usize {
    let short = |len: usize| 1 + len;
    let table: usize =
        message.headers.iter().map(|h| short(h.name.len()) + 1 + 4 + h.value.len()).sum::<usize>()
            + short(outbox_relay_core::headers::REDELIVERED.len())
            + 2;
    let kind = message.headers.iter().find(|h| &*h.name == "type").map_or(0, |h| h.value.len());
    8 + 12
        + 2
        + short(message.id.len())
        + short(message.payload_kind.content_type().len())
        + 1
        + short("outbox-relay".len())
        + 8
        + short(kind)
        + 4
        + short(last_header(message, REPLY_TO).map_or(0, str::len))
        + short(last_header(message, CORRELATION_ID).map_or(0, str::len))
        + table
        + cloudevent_properties_size(message)
}

/// What a CloudEvent adds to the content header frame: its binary attributes in the header
/// table, or the longer content type of a structured event.
fn cloudevent_properties_size(message: &Message) -> usize {
    let Some(event) = &message.cloudevent else { return 0 };
    match event.mode {
        cloudevents::Mode::Binary => event
            .attributes(message)
            .iter()
            .map(|(name, value)| 1 + CLOUDEVENTS_PREFIX.len() + name.len() + 1 + 4 + value.len())
            .sum(),
        cloudevents::Mode::Structured => cloudevents::STRUCTURED_CONTENT_TYPE.len(),
    }
}

/// The AMQP binding's prefix of an attribute's application property (here: header) name.
const CLOUDEVENTS_PREFIX: &str = "cloudEvents:";

pub(crate) fn properties(message: &Message) -> BasicProperties {
    let mut headers = FieldTable::default();
    for header in &message.headers {
        headers.insert(
            (&*header.name).into(),
            AMQPValue::LongString(LongString::from(header.value.as_str())),
        );
    }
    let mut content_type = message.payload_kind.content_type();
    match message.cloudevent.as_deref() {
        Some(event) if event.mode == cloudevents::Mode::Binary => {
            // AMQP binding, binary mode: `datacontenttype` is the content type property.
            for (name, value) in event.attributes(message) {
                if name != "datacontenttype" {
                    let name = format!("{CLOUDEVENTS_PREFIX}{name}");
                    headers.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
                }
            }
        }
        Some(_) => content_type = cloudevents::STRUCTURED_CONTENT_TYPE,
        None => {}
    }
    if message.possible_replay {
        // May have been delivered before: consumers check their inbox (AMQP has no
        // publisher-side redelivered flag).
        headers.insert(outbox_relay_core::headers::REDELIVERED.into(), AMQPValue::Boolean(true));
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut properties = BasicProperties::default()
        .with_message_id(message.id.as_str().into())
        .with_delivery_mode(2)
        .with_content_type(content_type.into())
        .with_app_id("outbox-relay".into())
        .with_timestamp(now)
        .with_headers(headers);
    if let Some(kind) = message.headers.iter().find(|h| &*h.name == "type") {
        if kind.value.len() <= SHORT_STRING_MAX {
            properties = properties.with_type(kind.value.as_str().into());
        }
    }
    // Request/asynchronous reply in AMQP's own properties (also kept in the header table, as
    // `type` is); `validate` refused values too long for them.
    if let Some(reply_to) = last_header(message, REPLY_TO) {
        properties = properties.with_reply_to(reply_to.into());
    }
    if let Some(correlation_id) = last_header(message, CORRELATION_ID) {
        properties = properties.with_correlation_id(correlation_id.into());
    }
    properties
}

/// The value of the last header called `name` (any ASCII case): an entry's own header comes
/// after the routed ones and wins, as Kafka consumers' `lastHeader` has it.
fn last_header<'m>(message: &'m Message, name: &str) -> Option<&'m str> {
    let header = message.headers.iter().rev().find(|h| h.name.eq_ignore_ascii_case(name))?;
    Some(header.value.as_str())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use outbox_relay_core::{Fields, Header, PayloadKind, Position};

    use super::*;

    fn message(headers: Vec<Header>) -> Message {
        Message {
            id: "e-1".into(),
            position: Position::Poll { seq: 1 },
            destination: "orders".into(),
            key: Some("k".into()),
            headers,
            payload: Some(bytes::Bytes::from_static(b"{}")),
            payload_kind: PayloadKind::Json,
            fields: Fields::default(),
            own_headers: 0,
            possible_replay: true,
            redrive: false,
            cloudevent: None,
        }
    }

    #[test]
    fn the_size_limit_counts_what_is_sent_not_the_kept_columns() {
        let mut message = message(vec![Header { name: Arc::from("type"), value: "T".into() }]);
        let names: Arc<[Arc<str>]> = vec![Arc::from("big")].into();
        message.fields = Fields::new(names, vec![Some("x".repeat(10_000))]);
        assert_eq!(message.wire_size(), "orders".len() + 1 + 2 + "type".len() + 1);
        assert!(validate(&message, 100).is_ok(), "columns not sent do not count");
        message.payload = Some(bytes::Bytes::from(vec![b'x'; 200]));
        assert!(matches!(validate(&message, 100), Err(RabbitSinkError::TooLarge { .. })));
    }

    #[test]
    fn a_header_name_over_255_bytes_is_refused_not_a_panic() {
        let long = Header { name: Arc::from("h".repeat(256).as_str()), value: "v".into() };
        let err = validate(&message(vec![long]), 1 << 20).unwrap_err();
        assert!(matches!(
            err,
            RabbitSinkError::NameTooLong { what: "a header name", len: 256, .. }
        ));
        assert_eq!(err.retry(), outbox_relay_core::Retry::Permanent);
        let fits = Header { name: Arc::from("h".repeat(255).as_str()), value: "v".into() };
        assert!(validate(&message(vec![fits]), 1 << 20).is_ok());
    }

    #[test]
    fn reply_to_and_correlation_id_become_amqp_properties_and_must_fit_them() {
        let header = |name: &str, value: String| Header { name: Arc::from(name), value };
        let command = message(vec![
            header(REPLY_TO, "replies".into()),
            header(CORRELATION_ID, "c-1".into()),
            header("Reply-To", "own".into()), // the entry's own header comes last and wins
        ]);
        let properties = properties(&command);
        assert_eq!(properties.reply_to().as_ref().map(|s| s.as_str()), Some("own"));
        assert_eq!(properties.correlation_id().as_ref().map(|s| s.as_str()), Some("c-1"));
        assert!(validate(&command, 1 << 20).is_ok());
        let long = message(vec![header(CORRELATION_ID, "c".repeat(256))]);
        let err = validate(&long, 1 << 20).unwrap_err();
        assert!(matches!(err, RabbitSinkError::NameTooLong { what: "the correlation id", .. }));
    }

    #[test]
    fn the_header_frame_bound_is_never_below_what_lapin_writes() {
        use lapin::protocol::basic::gen_properties;
        for headers in [
            vec![],
            vec![Header { name: Arc::from("type"), value: "OrderCreated".into() }],
            vec![
                Header { name: Arc::from(REPLY_TO), value: "r".repeat(200) },
                Header { name: Arc::from(CORRELATION_ID), value: "c".repeat(255) },
            ],
            (0..50)
                .map(|i| Header {
                    name: Arc::from(format!("h{i}").as_str()),
                    value: "x".repeat(i * 7),
                })
                .collect(),
        ] {
            for mode in [None, Some(cloudevents::Mode::Binary), Some(cloudevents::Mode::Structured)]
            {
                let mut message = message(headers.clone());
                message.cloudevent = mode.map(|mode| {
                    Box::new(cloudevents::CloudEvent {
                        mode,
                        source: "/orders".into(),
                        kind: "OrderCreated".into(),
                        subject: Some("s".repeat(100)),
                        time: Some("2026-12-04T10:00:00Z".into()),
                    })
                });
                let mut buffer = vec![0u8; 1 << 16];
                let cursor = std::io::Cursor::new(&mut buffer[..]);
                let written =
                    cookie_factory::gen_simple(gen_properties(&properties(&message)), cursor)
                        .unwrap()
                        .position() as usize;
                // Properties plus the fixed part of a content header frame: 8 + 12.
                let actual = written + 8 + 12;
                let bound = header_frame_size(&message);
                assert!(bound >= actual && bound <= actual + 64, "bound {bound}, actual {actual}");
            }
        }
    }
}
