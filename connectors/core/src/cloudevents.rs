//! CloudEvents 1.0 (<https://cloudevents.io>): the attributes the router derived from an entry,
//! and the two ways a sink carries them. *Binary* mode keeps the payload as it is and puts each
//! attribute into the protocol's own place (Kafka `ce_<name>` headers, AMQP `cloudEvents:<name>`
//! properties), with `datacontenttype` as the content type. *Structured* mode sends one JSON
//! event, `application/cloudevents+json`, with the payload as its `data` (`data_base64` for
//! bytes). Invariant: what a sink sends is built here from the message alone, so every sink
//! sends the same event, and the message's payload stays the entry's own (a dead letter keeps
//! the entry, not the envelope).

use std::io::{self, Write};

use base64::Engine as _;

use crate::{Message, PayloadKind};

/// The CloudEvents version the relay speaks.
pub const SPEC_VERSION: &str = "1.0";
/// The content type of a structured event.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json; charset=utf-8";

/// How the event travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Binary,
    Structured,
}

/// The context attributes of one message's event, other than `specversion` and `id` (the
/// message id) and `datacontenttype` (from the payload kind).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudEvent {
    pub mode: Mode,
    pub source: String,
    /// The `type` attribute.
    pub kind: String,
    pub subject: Option<String>,
    /// RFC 3339.
    pub time: Option<String>,
}

impl CloudEvent {
    /// `(name, value)` of every attribute present, `datacontenttype` included, in spec order.
    pub fn attributes<'m>(&'m self, message: &'m Message) -> Vec<(&'static str, &'m str)> {
        let mut attributes = vec![
            ("specversion", SPEC_VERSION),
            ("id", message.id.as_str()),
            ("source", self.source.as_str()),
            ("type", self.kind.as_str()),
        ];
        if let Some(subject) = &self.subject {
            attributes.push(("subject", subject));
        }
        if let Some(time) = &self.time {
            attributes.push(("time", time));
        }
        if message.payload.is_some() {
            attributes.push(("datacontenttype", message.payload_kind.content_type()));
        }
        attributes
    }

    /// The structured event: the attributes, then `data` — the JSON payload as it is, text as a
    /// JSON string, bytes as `data_base64`; none for a NULL payload.
    pub fn structured(&self, message: &Message) -> Vec<u8> {
        // Sized for the payload and the attributes, without serialising the event twice.
        let payload = message.payload.as_ref().map_or(0, |p| p.len());
        let mut body = Vec::with_capacity(payload + payload / 3 + 256);
        self.write_structured(message, &mut body).expect("writing to a Vec cannot fail");
        body
    }

    /// The length of [`Self::structured`] without building it (for size limits).
    pub fn structured_len(&self, message: &Message) -> usize {
        let mut counter = Counter(0);
        self.write_structured(message, &mut counter).expect("counting cannot fail");
        counter.0
    }

    fn write_structured(&self, message: &Message, out: &mut impl Write) -> io::Result<()> {
        let mut first = true;
        for (name, value) in self.attributes(message) {
            out.write_all(if first { b"{\"" } else { b",\"" })?;
            first = false;
            out.write_all(name.as_bytes())?;
            out.write_all(b"\":")?;
            serde_json::to_writer(&mut *out, value)?;
        }
        if let Some(payload) = &message.payload {
            match message.payload_kind {
                // Valid JSON: a json/jsonb column, or checked by the router.
                PayloadKind::Json => {
                    out.write_all(b",\"data\":")?;
                    out.write_all(payload)?;
                }
                PayloadKind::Text => {
                    out.write_all(b",\"data\":")?;
                    let text = String::from_utf8_lossy(payload);
                    serde_json::to_writer(&mut *out, &*text)?;
                }
                PayloadKind::Binary => {
                    out.write_all(b",\"data_base64\":\"")?;
                    let encoded = base64::engine::general_purpose::STANDARD.encode(payload);
                    out.write_all(encoded.as_bytes())?;
                    out.write_all(b"\"")?;
                }
            }
        }
        out.write_all(b"}")
    }

    /// Bytes the event adds to the message on the wire, for size limits: the attributes with
    /// `per_attribute` bytes of naming each (binary), or the whole event minus the payload
    /// (structured).
    pub fn overhead(&self, message: &Message, per_attribute: usize) -> usize {
        match self.mode {
            Mode::Binary => self
                .attributes(message)
                .iter()
                .map(|(name, value)| per_attribute + name.len() + value.len())
                .sum(),
            Mode::Structured => {
                let payload = message.payload.as_ref().map_or(0, |p| p.len());
                self.structured_len(message).saturating_sub(payload)
            }
        }
    }
}

/// Counts what is written.
struct Counter(usize);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::{Fields, Position};

    fn message(payload: Option<&[u8]>, payload_kind: PayloadKind) -> Message {
        Message {
            id: "e-\"1".into(),
            position: Position::Poll { seq: 1 },
            destination: "t".into(),
            key: None,
            headers: Vec::new(),
            payload: payload.map(Bytes::copy_from_slice),
            payload_kind,
            fields: Fields::new(Arc::from(Vec::new()), Vec::new()),
            own_headers: 0,
            possible_replay: false,
            redrive: false,
            cloudevent: None,
        }
    }

    fn event() -> CloudEvent {
        CloudEvent {
            mode: Mode::Structured,
            source: "/orders".into(),
            kind: "OrderCreated".into(),
            subject: Some("42".into()),
            time: None,
        }
    }

    #[test]
    fn a_structured_event_is_json_with_the_payload_as_data() {
        let cases: [(Option<&[u8]>, PayloadKind, serde_json::Value); 4] = [
            (
                Some(br#"{"a": [1, 2]}"#),
                PayloadKind::Json,
                serde_json::json!({"data": {"a": [1, 2]}}),
            ),
            (Some(b"say \"hi\"\n"), PayloadKind::Text, serde_json::json!({"data": "say \"hi\"\n"})),
            (Some(&[0, 255, 7]), PayloadKind::Binary, serde_json::json!({"data_base64": "AP8H"})),
            (None, PayloadKind::Json, serde_json::json!({})),
        ];
        for (payload, kind, data) in cases {
            let message = message(payload, kind);
            let body = event().structured(&message);
            assert_eq!(body.len(), event().structured_len(&message));
            let parsed: serde_json::Value = serde_json::from_slice(&body).expect("valid JSON");
            let mut expected = serde_json::json!({
                "specversion": "1.0", "id": "e-\"1", "source": "/orders",
                "type": "OrderCreated", "subject": "42",
            });
            if payload.is_some() {
                expected["datacontenttype"] = kind.content_type().into();
            }
            for (name, value) in data.as_object().unwrap() {
                expected[name] = value.clone();
            }
            assert_eq!(parsed, expected);
            let payload_len = payload.map_or(0, <[u8]>::len);
            assert_eq!(event().overhead(&message, 0), body.len() - payload_len);
        }
    }

    #[test]
    fn binary_attributes_name_each_present_attribute_once() {
        let message = message(Some(b"{}"), PayloadKind::Json);
        let event =
            CloudEvent { mode: Mode::Binary, time: Some("2026-12-04T10:00:00Z".into()), ..event() };
        let names: Vec<_> = event.attributes(&message).iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            ["specversion", "id", "source", "type", "subject", "time", "datacontenttype"]
        );
        let sizes: usize =
            event.attributes(&message).iter().map(|(n, v)| 3 + n.len() + v.len()).sum();
        assert_eq!(event.overhead(&message, 3), sizes);
    }
}
