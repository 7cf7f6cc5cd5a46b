//! Entries made from `pg_logical_emit_message` calls: the table-less outbox. A message is taken
//! as it is (`MessageFormat::Raw`) or decoded from its JSON envelope (`MessageFormat::Envelope`);
//! an envelope that does not decode becomes an entry with a defect (poison, named), never a
//! panic.

use std::sync::Arc;

use bytes::Bytes;
use outbox_relay_core::{Entry, Fields, Header, Lsn, PayloadKind, Position};

use super::MessageFormat;

/// The defect of an outbox-prefixed logical message emitted with `transactional = false`.
pub const NON_TRANSACTIONAL: &str = "the logical message was emitted with transactional = false: \
    it is not part of the transaction that wrote the business rows (which may have rolled back); \
    emit outbox messages with pg_logical_emit_message(true, ...)";

/// Fields a logical message offers to routing templates.
pub const MESSAGE_FIELDS: [&str; 5] = ["id", "aggregatetype", "aggregateid", "type", "prefix"];

/// An entry from a `pg_logical_emit_message` (its position is set by [`WalSource::emit`]).
pub(super) fn message_entry(
    format: MessageFormat,
    lsn: Lsn,
    prefix: &str,
    content: Bytes,
) -> Entry {
    let fallback_id = format!("lsn:{lsn}");
    match format {
        MessageFormat::Raw => raw_message_entry(message_names(), fallback_id, prefix, content),
        MessageFormat::Envelope => envelope_entry(fallback_id, prefix, content),
    }
}

fn message_names() -> Arc<[Arc<str>]> {
    MESSAGE_FIELDS.iter().map(|n| Arc::from(*n)).collect()
}

/// A logical message taken as it is: its id is `fallback_id`, its content the payload.
fn raw_message_entry(
    names: Arc<[Arc<str>]>,
    fallback_id: String,
    prefix: &str,
    content: Bytes,
) -> Entry {
    Entry {
        position: Position::Wal { commit_lsn: Lsn(0), index: 0 },
        id: fallback_id.clone(),
        fields: Fields::new(
            names,
            vec![Some(fallback_id), None, None, None, Some(prefix.to_owned())],
        ),
        payload: Some(content),
        payload_kind: PayloadKind::Binary,
        headers: Vec::new(),
        defect: None,
    }
}

/// A logical message decoded as a JSON envelope (its id is `fallback_id` where the envelope names
/// none). Undecodable content gives the raw entry with a defect naming the problem. Also used
/// to decode a dead letter again once its payload has been corrected.
pub fn envelope_entry(fallback_id: String, prefix: &str, content: Bytes) -> Entry {
    let names = message_names();
    let mut entry =
        raw_message_entry(Arc::clone(&names), fallback_id.clone(), prefix, content.clone());
    match envelope(&content) {
        Ok(envelope) => {
            let id = envelope.id.unwrap_or(fallback_id);
            entry.fields = Fields::new(
                names,
                vec![
                    Some(id.clone()),
                    envelope.aggregatetype,
                    envelope.aggregateid,
                    envelope.kind,
                    Some(prefix.to_owned()),
                ],
            );
            entry.id = id;
            entry.payload = envelope.payload.map(Bytes::from);
            entry.payload_kind = PayloadKind::Json;
            entry.headers = envelope.headers;
        }
        Err(reason) => {
            entry.defect = Some(format!("the logical message is not a JSON envelope: {reason}"));
        }
    }
    entry
}

struct Envelope {
    id: Option<String>,
    aggregatetype: Option<String>,
    aggregateid: Option<String>,
    kind: Option<String>,
    /// The `payload` member, serialized back to JSON text.
    payload: Option<String>,
    headers: Vec<Header>,
}

fn envelope(content: &[u8]) -> Result<Envelope, String> {
    let value: serde_json::Value = serde_json::from_slice(content).map_err(|e| e.to_string())?;
    let serde_json::Value::Object(mut object) = value else {
        return Err("expected a JSON object".into());
    };
    let mut text = |key: &str| -> Result<Option<String>, String> {
        match object.remove(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s)),
            Some(serde_json::Value::Number(n)) => Ok(Some(n.to_string())),
            Some(other) => Err(format!("{key:?} must be a string, found {other}")),
        }
    };
    let id = text("id")?;
    let aggregatetype = text("aggregatetype")?;
    let aggregateid = text("aggregateid")?;
    let kind = text("type")?;
    let payload = match object.remove("payload") {
        None | Some(serde_json::Value::Null) => None,
        Some(value) => Some(value.to_string()),
    };
    let headers = match object.remove("headers") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Object(map)) => map
            .into_iter()
            .map(|(name, value)| match value {
                serde_json::Value::String(value) => {
                    Ok(Header { name: Arc::from(name.as_str()), value })
                }
                other => Err(format!("header {name:?} must be a string, found {other}")),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(format!("\"headers\" must be an object, found {other}")),
    };
    Ok(Envelope { id, aggregatetype, aggregateid, kind, payload, headers })
}
