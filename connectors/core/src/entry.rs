//! What flows through the relay: an [`Entry`] as a source read it, and the [`Message`] the router
//! made of it. Invariant: an entry's `id` is stable across re-reads of the same outbox entry, so
//! it can serve as the dedup key downstream.

use std::sync::Arc;

use bytes::Bytes;

use crate::cloudevents::CloudEvent;
use crate::Position;

/// How the payload bytes are encoded, as the source knows it from the column type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadKind {
    /// `json` / `jsonb`: UTF-8 JSON text.
    Json,
    /// `text` / `varchar`: UTF-8 text.
    Text,
    /// `bytea` or a logical message: opaque bytes.
    Binary,
}

impl PayloadKind {
    pub fn content_type(self) -> &'static str {
        match self {
            PayloadKind::Json => "application/json",
            PayloadKind::Text => "text/plain; charset=utf-8",
            PayloadKind::Binary => "application/octet-stream",
        }
    }
}

/// Named column values of one entry, in text form; `None` is SQL NULL. Entries read from the same
/// table share one `names` allocation.
#[derive(Clone, Debug, Default)]
pub struct Fields {
    names: Arc<[Arc<str>]>,
    values: Vec<Option<String>>,
}

impl Fields {
    /// `values[i]` belongs to `names[i]`.
    ///
    /// # Panics
    /// If the lengths differ: that is a bug in the source, not bad data.
    pub fn new(names: Arc<[Arc<str>]>, values: Vec<Option<String>>) -> Self {
        assert_eq!(names.len(), values.len(), "one value per field name");
        Self { names, values }
    }

    /// `Some(None)` for a NULL column, `None` for a column the entry does not have.
    pub fn get(&self, name: &str) -> Option<Option<&str>> {
        let i = self.names.iter().position(|n| &**n == name)?;
        Some(self.values[i].as_deref())
    }

    pub fn names(&self) -> &[Arc<str>] {
        &self.names
    }

    /// Values in the order of [`Fields::names`].
    pub fn values(&self) -> &[Option<String>] {
        &self.values
    }
}

/// One committed outbox entry, in the order its source emitted it.
#[derive(Clone, Debug)]
pub struct Entry {
    pub position: Position,
    /// Stable identity: the outbox `id`, or derived from the LSN for a logical message.
    pub id: String,
    pub fields: Fields,
    /// `None` for a NULL payload (a Kafka tombstone).
    pub payload: Option<Bytes>,
    pub payload_kind: PayloadKind,
    /// Headers the entry itself carries (a logical message's envelope), sent after the routed
    /// ones.
    pub headers: Vec<Header>,
    /// Why this entry cannot become a message (an undecodable payload, say); the engine treats
    /// it as poison, naming the entry and this reason.
    pub defect: Option<String>,
}

impl Entry {
    /// Bytes this entry holds (payload, columns, headers, id), for bounding what is read ahead.
    pub fn size(&self) -> usize {
        let fields: usize = self.fields.values().iter().flatten().map(String::len).sum();
        let headers: usize = self.headers.iter().map(|h| h.name.len() + h.value.len()).sum();
        self.payload.as_ref().map_or(0, Bytes::len) + fields + headers + self.id.len()
    }
}

/// A message header; values are text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: Arc<str>,
    pub value: String,
}

/// A routed entry, ready for a sink.
#[derive(Clone, Debug)]
pub struct Message {
    /// The entry id; Kafka header `id`, AMQP `message_id`.
    pub id: String,
    pub position: Position,
    /// Kafka topic or AMQP exchange.
    pub destination: String,
    /// Shard key: Kafka record key, AMQP routing key. `None` for keyless messages.
    pub key: Option<String>,
    pub headers: Vec<Header>,
    pub payload: Option<Bytes>,
    pub payload_kind: PayloadKind,
    /// The entry's columns, kept so a message set aside can be put back into the outbox.
    pub fields: Fields,
    /// How many of `headers`, at the end, the entry itself carried (a logical message's
    /// envelope headers), kept so a message set aside can be rebuilt as its entry.
    pub own_headers: usize,
    /// This message may have been sent before (by a run that crashed, or before a failure in
    /// this run): Kafka checks the partition for it, RabbitMQ marks it.
    pub possible_replay: bool,
    /// Sent again from the dead letters, behind newer positions: a replay of it is recognised by
    /// its id, not by its position.
    pub redrive: bool,
    /// Sent as a CloudEvent (`route.cloudevents`): its attributes, which the sink maps to its
    /// protocol's places. The payload stays the entry's own either way.
    pub cloudevent: Option<Box<CloudEvent>>,
}

impl Message {
    /// The headers the entry itself carried (see [`Message::own_headers`]).
    pub fn own_headers(&self) -> &[Header] {
        &self.headers[self.headers.len().saturating_sub(self.own_headers)..]
    }
}

impl Message {
    /// Bytes of what a broker receives (destination, key, headers, payload): what size limits
    /// are checked against.
    pub fn wire_size(&self) -> usize {
        let headers: usize = self.headers.iter().map(|h| h.name.len() + h.value.len()).sum();
        // Binary attributes are named by a prefix of at most 16 bytes (`cloudEvents:`), plus a
        // `content-type` header on Kafka.
        let cloudevent = self.cloudevent.as_ref().map_or(0, |ce| ce.overhead(self, 16) + 64);
        self.destination.len()
            + self.key.as_ref().map_or(0, String::len)
            + self.payload.as_ref().map_or(0, Bytes::len)
            + headers
            + cloudevent
    }

    /// Bytes this message holds (what is sent, plus the kept columns and the id), for bounding
    /// what is in flight.
    pub fn size(&self) -> usize {
        let fields: usize = self.fields.values().iter().flatten().map(String::len).sum();
        self.wire_size() + fields + self.id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_tell_null_from_missing() {
        let names: Arc<[Arc<str>]> = vec![Arc::from("a"), Arc::from("b")].into();
        let fields = Fields::new(names, vec![Some("x".into()), None]);
        assert_eq!(fields.get("a"), Some(Some("x")));
        assert_eq!(fields.get("b"), Some(None));
        assert_eq!(fields.get("c"), None);
    }
}
