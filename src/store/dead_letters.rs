//! Dead letters: entries set aside (`pipeline.on_poison = "dead-letter"`, or held behind one of
//! their key), as schema `outbox_relay` stores them, and what `outbox-relay dlq` reads and asks.
//!
//! Invariant (the codec): an entry set aside and rebuilt from what is stored routes to the same
//! message — columns, payload, its own headers, id and position — so a redrive sends what would
//! have been sent (tested below: a round trip).

use std::sync::Arc;

use bytes::Bytes;
use outbox_relay_core::{Entry, Fields, Header, Message, PayloadKind, Position};
use outbox_relay_postgres::{PostgresError, Session};
use serde::Serialize;

use crate::error::RelayError;

/// A dead letter as stored, to be rebuilt into its entry by a redrive.
#[derive(Debug)]
pub(crate) struct DeadLetter {
    pub(crate) seq: i64,
    pub(crate) entry_id: String,
    pub(crate) position: String,
    pub(crate) held_behind: Option<String>,
    pub(crate) shard_key: Option<String>,
    /// JSON object: column → text value or null.
    pub(crate) fields: String,
    pub(crate) payload: Option<Vec<u8>>,
    pub(crate) payload_kind: Option<String>,
    /// JSON array of `[name, value]` pairs.
    pub(crate) own_headers: Option<String>,
    pub(crate) defect: Option<String>,
    /// A run (cut short) may already have sent it.
    pub(crate) sent_before: bool,
}

/// How a message's entry is stored with its dead letter (the statement's parameters).
#[derive(Debug)]
pub(crate) struct Stored {
    /// JSON object: column → text value or null.
    pub(crate) fields: String,
    /// JSON array of `[name, value]` pairs: the headers the entry itself carried.
    pub(crate) own_headers: String,
    pub(crate) payload_kind: &'static str,
}

impl Stored {
    pub(crate) fn of(message: &Message) -> Self {
        Self {
            fields: fields_json(message),
            own_headers: headers_json(message),
            payload_kind: payload_kind_name(message.payload_kind),
        }
    }
}

impl DeadLetter {
    /// The entry a dead letter was made of, from what is stored (perhaps corrected by an operator).
    /// A logical message that could not be decoded is decoded again from its payload; an outbox row
    /// that could not be decoded keeps its defect until an operator clears it.
    pub(crate) fn entry(&self) -> Result<Entry, String> {
        let letter = self;
        let position: Position = letter.position.parse().map_err(|error| {
            format!("the stored position {:?} is invalid: {error}", letter.position)
        })?;
        let fields: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&letter.fields)
                .map_err(|error| format!("the stored fields are not a JSON object: {error}"))?;
        let payload = letter.payload.clone().map(Bytes::from);
        if let (Some(_), Some(serde_json::Value::String(prefix))) =
            (&letter.defect, fields.get("prefix"))
        {
            let content = payload.unwrap_or_default();
            let mut entry = outbox_relay_postgres::wal::envelope_entry(
                letter.entry_id.clone(),
                prefix,
                content,
            );
            entry.position = position;
            return Ok(entry);
        }
        let (names, values): (Vec<Arc<str>>, Vec<Option<String>>) = fields
            .into_iter()
            .map(|(name, value)| {
                let value = match value {
                    serde_json::Value::Null => None,
                    serde_json::Value::String(text) => Some(text),
                    other => Some(other.to_string()),
                };
                (Arc::from(name.as_str()), value)
            })
            .unzip();
        let headers: Vec<(String, String)> = match &letter.own_headers {
            Some(json) => serde_json::from_str(json).map_err(|error| {
                format!("the stored headers are not [name, value] pairs: {error}")
            })?,
            None => Vec::new(),
        };
        Ok(Entry {
            position,
            id: letter.entry_id.clone(),
            fields: Fields::new(names.into(), values),
            payload,
            payload_kind: match letter.payload_kind.as_deref() {
                Some("json") => PayloadKind::Json,
                Some("text") => PayloadKind::Text,
                _ => PayloadKind::Binary,
            },
            headers: headers
                .into_iter()
                .map(|(name, value)| Header { name: Arc::from(name.as_str()), value })
                .collect(),
            defect: letter.defect.clone(),
        })
    }
}

/// The entry's own headers as a JSON array of `[name, value]` pairs.
fn headers_json(message: &Message) -> String {
    let pairs: Vec<[&str; 2]> =
        message.own_headers().iter().map(|h| [&*h.name, h.value.as_str()]).collect();
    serde_json::to_string(&pairs).expect("strings serialize")
}

fn payload_kind_name(kind: PayloadKind) -> &'static str {
    match kind {
        PayloadKind::Json => "json",
        PayloadKind::Text => "text",
        PayloadKind::Binary => "binary",
    }
}

/// The entry's columns as a JSON object (text values), for redriving it into the outbox table.
fn fields_json(message: &Message) -> String {
    let mut object = serde_json::Map::new();
    for (name, value) in message.fields.names().iter().zip(message.fields.values()) {
        let value = value
            .as_ref()
            .map_or(serde_json::Value::Null, |v| serde_json::Value::String(v.clone()));
        object.insert(name.to_string(), value);
    }
    serde_json::Value::Object(object).to_string()
}

/// A live dead letter, as `outbox-relay dlq list` shows it.
#[derive(Debug)]
pub(crate) struct Listed {
    pub(crate) seq: i64,
    pub(crate) entry_id: String,
    pub(crate) key: String,
    pub(crate) destination: String,
    pub(crate) reason: String,
    pub(crate) held_behind: Option<String>,
    pub(crate) dead_at: String,
}

/// The live dead letters of `pipeline`, in the order they were set aside.
pub(crate) async fn live(session: &Session, pipeline: &str) -> Result<Vec<Listed>, PostgresError> {
    let rows = session
        .timed(
            "reading dead letters",
            session.client().query(
                "select seq, entry_id, coalesce(shard_key, ''), coalesce(destination, ''), reason, \
                        held_behind, dead_at::text \
                 from outbox_relay.dead_letters where pipeline = $1 and redriven_at is null order by seq",
                &[&pipeline],
            ),
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| Listed {
            seq: row.get(0),
            entry_id: row.get(1),
            key: row.get(2),
            destination: row.get(3),
            reason: row.get(4),
            held_behind: row.get(5),
            dead_at: row.get(6),
        })
        .collect())
}

/// A redrive request as marked: the dead letters it covers and its stamp (entries set aside
/// behind them later carry the same stamp).
#[derive(Debug)]
pub(crate) struct Requested {
    pub(crate) seqs: Vec<i64>,
    pub(crate) stamp: String,
}

/// Marks every live dead letter (`ids` empty), or the given entries and those held behind
/// them, as requested for redrive; `None` when there is none. Refuses an entry held behind one
/// that is not asked for (it goes out after it).
pub(crate) async fn request_redrive(
    session: &mut Session,
    pipeline: &str,
    ids: &[String],
) -> Result<Option<Requested>, RelayError> {
    let what = "requesting a redrive";
    let tx = session.client_mut().transaction().await.map_err(|e| query_error(what, e))?;
    // The first entries, locked: an entry the relay sets aside behind one of them meanwhile
    // waits for this transaction and inherits the request (see RelayState::dead_letter).
    let chosen = tx
        .query(
            "select entry_id, held_behind from outbox_relay.dead_letters \
             where pipeline = $1 and redriven_at is null \
               and (cardinality($2::text[]) = 0 or entry_id = any($2)) \
             order by seq for update",
            &[&pipeline, &ids],
        )
        .await
        .map_err(|e| query_error(what, e))?;
    for id in ids {
        match chosen.iter().find(|row| row.get::<_, String>(0) == *id) {
            None => {
                return Err(RelayError::Dlq(format!(
                    "no live dead letter with entry id {id:?} in pipeline {pipeline:?} \
                     (outbox-relay dlq list)"
                )))
            }
            Some(row) => {
                if let Some(first) = row.get::<_, Option<String>>(1).filter(|f| !ids.contains(f)) {
                    return Err(RelayError::Dlq(format!(
                        "entry {id:?} is held behind dead letter {first:?} (same key) and goes \
                         out after it: redrive --id {first}, which takes it along"
                    )));
                }
            }
        }
    }
    let marked = tx
        .query(
            "update outbox_relay.dead_letters set redrive_requested_at = now() \
             where pipeline = $1 and redriven_at is null \
               and (cardinality($2::text[]) = 0 or entry_id = any($2) or held_behind = any($2)) \
             returning seq, redrive_requested_at::text",
            &[&pipeline, &ids],
        )
        .await
        .map_err(|e| query_error(what, e))?;
    tx.commit().await.map_err(|e| query_error(what, e))?;
    let Some(stamp) = marked.first().map(|row| row.get::<_, String>(1)) else { return Ok(None) };
    Ok(Some(Requested { seqs: marked.iter().map(|row| row.get(0)).collect(), stamp }))
}

/// How far the relay is with a redrive request.
#[derive(Debug)]
pub(crate) struct Progress {
    pub(crate) delivered: usize,
    pub(crate) waiting: usize,
    /// Dead letters carrying the request, including those set aside behind them since.
    pub(crate) requested: usize,
}

pub(crate) async fn redrive_progress(
    session: &Session,
    pipeline: &str,
    stamp: &str,
) -> Result<Progress, PostgresError> {
    let row = session
        .timed(
            "following a redrive",
            session.client().query_one(
                "select count(*) filter (where redriven_at is not null), \
                        count(*) filter (where redriven_at is null), count(*) \
                 from outbox_relay.dead_letters \
                 where pipeline = $1 and redrive_requested_at::text = $2",
                &[&pipeline, &stamp],
            ),
        )
        .await?;
    let count = |i: usize| usize::try_from(row.get::<_, i64>(i)).unwrap_or(0);
    Ok(Progress { delivered: count(0), waiting: count(1), requested: count(2) })
}

/// The dead letters of a request that failed again: entry id, reason, and how many entries of
/// its key are held behind it.
pub(crate) async fn failed_again(
    session: &Session,
    seqs: &[i64],
) -> Result<Vec<(String, String, i64)>, PostgresError> {
    let failed = session
        .timed(
            "reading dead letters that failed again",
            session.client().query(
                "select d.entry_id, d.reason, \
                        (select count(*) from outbox_relay.dead_letters h \
                         where h.pipeline = d.pipeline and h.held_behind = d.entry_id \
                           and h.redriven_at is null) \
                 from outbox_relay.dead_letters d \
                 where d.seq = any($1) and d.redriven_at is null and d.redrive_requested_at is null \
                   and d.held_behind is null \
                 order by d.seq",
                &[&seqs],
            ),
        )
        .await?;
    Ok(failed.iter().map(|row| (row.get(0), row.get(1), row.get(2))).collect())
}

#[derive(Debug, Serialize)]
/// How many dead letters a pipeline holds, for `status`, `doctor` and the gauges.
pub(crate) struct DeadLetters {
    /// Not redriven yet.
    pub(crate) live: i64,
    /// Shard keys with a live dead letter.
    pub(crate) keys: i64,
    pub(crate) awaiting_redrive: i64,
}

impl DeadLetters {
    /// The live dead letters of `pipeline`.
    pub(crate) async fn read(session: &Session, pipeline: &str) -> Result<Self, PostgresError> {
        let row = session
            .timed(
                "counting dead letters",
                session.client().query_one(
                    "select count(*), count(distinct shard_key), \
                            count(*) filter (where redrive_requested_at is not null) \
                     from outbox_relay.dead_letters where pipeline = $1 and redriven_at is null",
                    &[&pipeline],
                ),
            )
            .await?;
        Ok(DeadLetters { live: row.get(0), keys: row.get(1), awaiting_redrive: row.get(2) })
    }
}

fn query_error(what: &'static str, source: tokio_postgres::Error) -> RelayError {
    RelayError::Postgres(PostgresError::Query { what, source })
}

#[cfg(test)]
mod tests {
    use outbox_relay_core::testing::row;

    use super::*;
    use crate::config::RouteConfig;
    use crate::router::Router;

    fn entry_of(letter: &DeadLetter) -> Result<Entry, String> {
        letter.entry()
    }

    /// The dead letter row of `message`, as the insert statement writes it.
    fn stored(message: &Message) -> DeadLetter {
        let Stored { fields, own_headers, payload_kind } = Stored::of(message);
        DeadLetter {
            seq: 1,
            entry_id: message.id.clone(),
            position: message.position.to_string(),
            held_behind: None,
            shard_key: message.key.clone(),
            fields,
            payload: message.payload.as_ref().map(|p| p.to_vec()),
            payload_kind: Some(payload_kind.into()),
            own_headers: Some(own_headers),
            defect: None,
            sent_before: false,
        }
    }

    fn columns(entry: &Entry) -> Vec<(String, Option<String>)> {
        let names = entry.fields.names().iter().map(|n| n.to_string());
        let mut pairs: Vec<_> = names.zip(entry.fields.values().iter().cloned()).collect();
        pairs.sort();
        pairs
    }

    #[test]
    fn an_entry_set_aside_and_rebuilt_routes_to_the_same_message() {
        let router = Router::new(&RouteConfig::default(), "test").unwrap();
        for kind in [PayloadKind::Json, PayloadKind::Text, PayloadKind::Binary] {
            let mut original = row(42, "k-1");
            original.payload_kind = kind;
            original.payload = Some(Bytes::from_static(b"{\"total\": 10}"));
            original.headers.push(Header { name: Arc::from("tenant"), value: "acme".into() });
            let message = router.route(original.clone()).unwrap();

            let rebuilt = stored(&message).entry().unwrap();
            assert_eq!((&rebuilt.id, rebuilt.position), (&original.id, original.position));
            assert_eq!(columns(&rebuilt), columns(&original));
            assert_eq!(rebuilt.payload, original.payload);
            assert_eq!(rebuilt.payload_kind, kind);
            assert_eq!(rebuilt.headers, original.headers);
            assert!(rebuilt.defect.is_none());

            let again = router.route(rebuilt).unwrap();
            assert_eq!(again.destination, message.destination);
            assert_eq!(again.key, message.key);
            assert_eq!(again.headers, message.headers);
            assert_eq!(again.payload, message.payload);
        }
    }

    fn letter(fields: &str, payload: &[u8], defect: Option<&str>) -> DeadLetter {
        DeadLetter {
            seq: 1,
            entry_id: "e-1".into(),
            position: "poll:7".into(),
            held_behind: None,
            shard_key: Some("k".into()),
            fields: fields.into(),
            payload: Some(payload.to_vec()),
            payload_kind: Some("json".into()),
            own_headers: Some(r#"[["tenant", "acme"]]"#.into()),
            defect: defect.map(str::to_owned),
            sent_before: false,
        }
    }

    #[test]
    fn a_row_is_rebuilt_as_it_was_stored() {
        let entry = entry_of(&letter(
            r#"{"id": "e-1", "aggregateid": "k", "n": 3, "gone": null}"#,
            b"{}",
            None,
        ))
        .unwrap();
        assert_eq!(entry.position, Position::Poll { seq: 7 });
        assert_eq!(entry.fields.get("aggregateid"), Some(Some("k")));
        assert_eq!(entry.fields.get("n"), Some(Some("3")));
        assert_eq!(entry.fields.get("gone"), Some(None));
        assert_eq!(entry.payload.as_deref(), Some(&b"{}"[..]));
        assert_eq!(entry.payload_kind, PayloadKind::Json);
        assert_eq!(entry.headers, vec![Header { name: Arc::from("tenant"), value: "acme".into() }]);
        assert!(entry.defect.is_none());
    }

    #[test]
    fn a_row_defect_stays_until_cleared_and_a_logical_message_is_decoded_again() {
        let row = entry_of(&letter(r#"{"id": "e-1"}"#, b"x", Some("bad bytea"))).unwrap();
        assert_eq!(row.defect.as_deref(), Some("bad bytea"));

        let fields = r#"{"id": "lsn:0/1", "prefix": "outbox"}"#;
        let fixed = br#"{"aggregatetype": "order", "aggregateid": "k", "payload": {"a": 1}}"#;
        let message = entry_of(&letter(fields, fixed, Some("not a JSON envelope"))).unwrap();
        assert!(message.defect.is_none(), "{:?}", message.defect);
        assert_eq!(message.id, "e-1");
        assert_eq!(message.fields.get("aggregatetype"), Some(Some("order")));
        assert_eq!(message.position, Position::Poll { seq: 7 });
        let still_bad =
            entry_of(&letter(fields, b"not json", Some("not a JSON envelope"))).unwrap();
        assert!(still_bad.defect.unwrap().contains("not a JSON envelope"));
    }

    #[test]
    fn unreadable_stored_data_is_a_reason_not_a_panic() {
        assert!(entry_of(&letter("[1]", b"", None)).unwrap_err().contains("JSON object"));
        let mut bad = letter("{}", b"", None);
        bad.position = "nowhere".into();
        assert!(entry_of(&bad).unwrap_err().contains("position"));
    }
}
