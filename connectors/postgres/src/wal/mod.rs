//! WAL tailing: committed outbox entries from logical replication (`pgoutput`).
//!
//! # Progress rules
//! - With the (non-streaming) `pgoutput` protocol the server sends a transaction only once it
//!   committed, between Begin and Commit; rolled-back transactions never arrive. So entries are
//!   released as they arrive — a million-row transaction streams through the pipeline's bounded
//!   window — and each gets the position (commit LSN from Begin, index in the transaction).
//! - The flush position reported to the server (`confirmed_flush_lsn`) is only ever the commit
//!   `end_lsn` of a transaction whose Commit arrived and whose every entry was acknowledged (the
//!   pipeline acknowledges contiguous prefixes only). A restart therefore replays at most the
//!   transactions that were not finished, never skips one.
//! - When nothing is pending — no open transaction, nothing unacknowledged — a keepalive or a
//!   heartbeat message moves the flush position to what the server has sent, so an idle outbox
//!   does not hold WAL back.
//!
//! # Entries
//! Inserts into the outbox table (Update, Delete and Truncate are ignored: apps may delete the
//! row in the same transaction), and transactional `pg_logical_emit_message` calls with the
//! configured prefix — a table-less outbox (see [`MessageFormat`]).

mod message;
mod pgoutput;
mod progress;
mod slot;
mod stream;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use outbox_relay_core::{ConnectorError, Entry, Fields, Lsn, PayloadKind, Position, Source};
use tokio::time::Instant;
use tokio_postgres::Statement;

use message::message_entry;
pub use message::{envelope_entry, MESSAGE_FIELDS, NON_TRANSACTIONAL};
pub use pgoutput::DecodeError;
pub use slot::{emit_heartbeat, sender_timeout, status_interval};

use crate::prerequisites::{check_publication, check_slot, check_wal_level};
use crate::text::{bytea_from_text, check_text_payload, text_or_hex};
use crate::wal::pgoutput::{Change, Relation, Value};
use crate::wal::progress::Progress;
use crate::wal::stream::{Event, ReplicationStream, StreamOptions};
use crate::{quote_ident, OutboxTable, PostgresError, Session};

/// Type OIDs that decide how a payload's text is turned into bytes.
const JSONB_OID: u32 = 3802;
const JSON_OID: u32 = 114;
const BYTEA_OID: u32 = 17;
/// How long a clean stop waits for the server to hear the last flush position.
const CLOSE_DEADLINE: Duration = Duration::from_secs(5);

/// How a logical message's content becomes an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageFormat {
    /// A JSON object `{"id"?, "aggregatetype", "aggregateid", "type", "payload", "headers"?}`:
    /// the fields are available to routing templates, `payload` (any JSON) is the body,
    /// `headers` (string values) are sent as headers, `id` defaults to the message's LSN.
    Envelope,
    /// The content is the body as it is; routing comes from config alone (`${prefix}`, `${id}`).
    Raw,
}

/// What happens to an outbox row once its message was confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalAfterPublish {
    /// Leave the row: the app deletes it (e.g. in the same transaction) or keeps it.
    Keep,
    /// Delete it by id, so the table stays small without the app's help.
    Delete,
}

#[derive(Clone, Debug)]
pub struct WalOptions {
    pub slot: String,
    pub publication: String,
    /// Logical messages with this prefix are outbox entries; `None` ignores messages.
    pub message_prefix: Option<String>,
    pub message_format: MessageFormat,
    /// Prefix of the relay's own heartbeat messages.
    pub heartbeat_prefix: String,
    /// Emit a heartbeat this often (`None`: never).
    pub heartbeat_interval: Option<Duration>,
    pub after_publish: WalAfterPublish,
    /// Standby status period (see [`status_interval`]).
    pub status_interval: Duration,
    /// The server's `wal_sender_timeout` (see [`sender_timeout`]).
    pub sender_timeout: Option<Duration>,
    pub connect_timeout: Duration,
    pub application_name: String,
    /// Bytes of changes read from the stream ahead of `next_batch`, at most (one larger change
    /// passes alone); past that the server waits.
    pub read_ahead_bytes: usize,
}

/// How to turn inserts into one relation into entries (`None` if it is not the outbox).
#[derive(Debug)]
struct Shape {
    names: Arc<[Arc<str>]>,
    /// For each field, the index of its column.
    field_columns: Vec<usize>,
    id_field: usize,
    payload_column: usize,
    payload_kind: PayloadKind,
}

#[derive(Debug)]
pub struct WalSource {
    stream: Option<ReplicationStream>,
    /// The leader session: heartbeats and deletes.
    session: Session,
    table: Option<OutboxTable>,
    options: WalOptions,
    relations: HashMap<u32, Option<Shape>>,
    progress: Progress,
    peeked: Option<Event>,
    next_heartbeat: Option<Instant>,
    /// With heartbeats, a healthy stream delivers something (the heartbeat, at least) within
    /// this long while the relay waits for it; silence means a half-open connection.
    stall_after: Option<Duration>,
    /// Since when the relay has waited for an event and none came.
    quiet_since: Option<Instant>,
    /// `after_publish = delete`: ids of emitted table rows, and the statement that deletes them.
    to_delete: VecDeque<(Position, String)>,
    delete: Option<Statement>,
}

impl WalSource {
    /// Checks the server's prerequisites and starts streaming from the slot's confirmed flush
    /// position. `session` should be the leader session.
    pub async fn start(
        url: &str,
        session: Session,
        table: Option<OutboxTable>,
        options: WalOptions,
    ) -> Result<Self, PostgresError> {
        check_wal_level(&session).await?;
        let name = table.as_ref().map(|t| &t.name);
        check_publication(&session, &options.publication, name, table.as_ref().map(|t| t.oid))
            .await?;
        let slot = check_slot(&session, &options.slot).await?;
        let delete = match (&table, options.after_publish) {
            (Some(table), WalAfterPublish::Delete) => {
                let id_type = table.shape.column_type(&table.id_column).expect("inspected");
                let sql = format!(
                    "delete from {} where {} = any($1::text[]::{id_type}[])",
                    table.name.quoted(),
                    quote_ident(&table.id_column)
                );
                Some(session.prepare(&sql).await?)
            }
            _ => None,
        };
        let stream_options = StreamOptions {
            slot: options.slot.clone(),
            publication: options.publication.clone(),
            start: slot.confirmed_flush,
            status_interval: options.status_interval,
            connect_timeout: options.connect_timeout,
            application_name: options.application_name.clone(),
            read_ahead_bytes: options.read_ahead_bytes,
        };
        let stream = ReplicationStream::open(url, &stream_options).await?;
        tracing::info!(slot = %options.slot, from = %slot.confirmed_flush, "streaming changes");
        let next_heartbeat = options.heartbeat_interval.map(|every| Instant::now() + every);
        let stall_after =
            options.heartbeat_interval.map(|every| stall_timeout(every, options.sender_timeout));
        Ok(Self {
            stream: Some(stream),
            session,
            table,
            options,
            relations: HashMap::new(),
            progress: Progress::new(slot.confirmed_flush),
            peeked: None,
            next_heartbeat,
            stall_after,
            quiet_since: None,
            to_delete: VecDeque::new(),
            delete,
        })
    }

    fn stream(&mut self) -> &mut ReplicationStream {
        self.stream.as_mut().expect("open until close")
    }

    fn handle(&mut self, event: Event, out: &mut Vec<Entry>) -> Result<(), PostgresError> {
        match event {
            Event::Begin { commit_lsn } => self.progress.begin(commit_lsn),
            Event::Change(data) => {
                match pgoutput::decode(&data).map_err(|source| PostgresError::Decode { source })? {
                    Change::Relation(relation) => {
                        let shape = self.shape_of(&relation)?;
                        self.relations.insert(relation.oid, shape);
                    }
                    Change::Insert { relation, values } => {
                        let shape =
                            self.relations.get(&relation).ok_or_else(|| PostgresError::Decode {
                                source: DecodeError::unknown_relation(relation),
                            })?;
                        if let Some(shape) = shape {
                            let entry = row_entry(shape, values);
                            self.emit(entry, true, out)?;
                        }
                    }
                    Change::Other(_) => {}
                }
            }
            Event::Message { transactional, lsn, prefix, content } => {
                if prefix == self.options.heartbeat_prefix {
                    if !transactional {
                        let reached = self.progress.idle(lsn);
                        self.report(reached);
                    }
                } else if self.options.message_prefix.as_deref() == Some(prefix.as_str()) {
                    let mut entry =
                        message_entry(self.options.message_format, lsn, &prefix, content);
                    if transactional && self.progress.in_transaction() {
                        self.emit(entry, false, out)?;
                    } else {
                        // Not part of the transaction that wrote the business rows: it may
                        // describe something that was rolled back. Poison, never skipped.
                        entry.defect = Some(NON_TRANSACTIONAL.into());
                        self.emit_alone(entry, lsn, out)?;
                    }
                }
            }
            Event::Commit { end_lsn } => {
                let reached = self.progress.commit(end_lsn);
                self.report(reached);
            }
            Event::KeepAlive { wal_end } => {
                let reached = self.progress.idle(wal_end);
                self.report(reached);
            }
        }
        Ok(())
    }

    /// Gives `entry` its position in the open transaction; `row` if it is an outbox row (which
    /// `after_publish = delete` deletes once acknowledged).
    fn emit(
        &mut self,
        mut entry: Entry,
        row: bool,
        out: &mut Vec<Entry>,
    ) -> Result<(), PostgresError> {
        let (commit_lsn, index) = match self.progress.next_entry() {
            Some(Ok(position)) => position,
            Some(Err(commit_lsn)) => {
                return Err(PostgresError::TransactionTooLarge {
                    commit_lsn: commit_lsn.to_string(),
                })
            }
            // pgoutput sends changes only between Begin and Commit.
            None => {
                return Err(PostgresError::Decode { source: DecodeError::outside_transaction() })
            }
        };
        entry.position = Position::Wal { commit_lsn, index };
        if row && self.delete.is_some() && !entry.id.is_empty() {
            self.to_delete.push_back((entry.position, entry.id.clone()));
        }
        out.push(entry);
        Ok(())
    }

    /// Emits an entry that arrived outside a transaction (inside one, it takes its place there).
    fn emit_alone(
        &mut self,
        mut entry: Entry,
        lsn: Lsn,
        out: &mut Vec<Entry>,
    ) -> Result<(), PostgresError> {
        if self.progress.in_transaction() {
            return self.emit(entry, false, out);
        }
        let (commit_lsn, index) = self.progress.alone(lsn);
        entry.position = Position::Wal { commit_lsn, index };
        out.push(entry);
        Ok(())
    }

    /// The shape of inserts into `relation` if it is the outbox table, recognised by OID (so a
    /// rename changes nothing) or by schema and name (so a re-created table is followed, not
    /// taken for another table whose inserts are skipped). An outbox that lost its id or
    /// payload column is an error for the same reason.
    fn shape_of(&mut self, relation: &Relation) -> Result<Option<Shape>, PostgresError> {
        let Some(table) = self.table.as_mut() else { return Ok(None) };
        if table.oid != relation.oid {
            if (relation.namespace.as_str(), relation.name.as_str())
                != (table.name.schema.as_str(), table.name.name.as_str())
            {
                return Ok(None);
            }
            tracing::warn!(
                table = %table.name, old_oid = table.oid, new_oid = relation.oid,
                "the outbox table was re-created: following its inserts under the new OID"
            );
            table.oid = relation.oid;
        }
        let table = &*table;
        let changed = |column: &str, setting| PostgresError::OutboxChanged {
            table: table.name.to_string(),
            column: column.into(),
            setting,
        };
        let position = |name: &str| relation.columns.iter().position(|c| c.name == name);
        let payload_column = position(&table.payload_column)
            .ok_or_else(|| changed(&table.payload_column, "payload_column"))?;
        let field_columns: Vec<usize> =
            (0..relation.columns.len()).filter(|i| *i != payload_column).collect();
        let names: Arc<[Arc<str>]> =
            field_columns.iter().map(|i| Arc::from(relation.columns[*i].name.as_str())).collect();
        let id_field = names
            .iter()
            .position(|n| **n == *table.id_column)
            .ok_or_else(|| changed(&table.id_column, "id_column"))?;
        let payload_kind = match relation.columns[payload_column].type_oid {
            JSONB_OID | JSON_OID => PayloadKind::Json,
            BYTEA_OID => PayloadKind::Binary,
            _ => PayloadKind::Text,
        };
        Ok(Some(Shape { names, field_columns, id_field, payload_column, payload_kind }))
    }

    /// Hands a new flush position to the stream.
    fn report(&mut self, reached: Option<Lsn>) {
        if let Some(lsn) = reached {
            self.stream().confirm(lsn);
        }
    }

    /// Also checks that the publication still publishes the outbox table, unfiltered: a table
    /// dropped and re-created leaves it (its inserts would never arrive), a filter hides rows.
    async fn heartbeat(&mut self) -> Result<(), PostgresError> {
        if let Some(every) = self.options.heartbeat_interval {
            // Rescheduled first: `ready` may be dropped mid-query, and a repeat is not needed.
            self.next_heartbeat = Some(Instant::now() + every);
            let (name, oid) =
                (self.table.as_ref().map(|t| &t.name), self.table.as_ref().map(|t| t.oid));
            check_publication(&self.session, &self.options.publication, name, oid).await?;
            emit_heartbeat(&self.session, &self.options.heartbeat_prefix).await?;
        }
        Ok(())
    }

    async fn delete_acknowledged(&mut self, acked: (Lsn, u32)) -> Result<(), PostgresError> {
        let Some(statement) = &self.delete else { return Ok(()) };
        let mut ids = Vec::new();
        while let Some((Position::Wal { commit_lsn, index }, _)) = self.to_delete.front() {
            if (*commit_lsn, *index) > acked {
                break;
            }
            ids.push(self.to_delete.pop_front().expect("front").1);
        }
        if !ids.is_empty() {
            self.session
                .timed(
                    "deleting published outbox rows",
                    self.session.client().execute(statement, &[&ids]),
                )
                .await?;
        }
        Ok(())
    }
}

impl Source for WalSource {
    async fn ready(&mut self) -> Result<(), ConnectorError> {
        if self.peeked.is_some() {
            return Ok(());
        }
        let heartbeat_at = self.next_heartbeat;
        let quiet_since = *self.quiet_since.get_or_insert_with(Instant::now);
        let stalled_at = self.stall_after.map(|after| quiet_since + after);
        tokio::select! {
            event = self.stream().recv() => {
                self.peeked = Some(event?);
                self.quiet_since = None;
            }
            () = tokio::time::sleep_until(heartbeat_at.unwrap_or_else(Instant::now)), if heartbeat_at.is_some() => {
                self.heartbeat().await?;
            }
            () = tokio::time::sleep_until(stalled_at.unwrap_or_else(Instant::now)), if stalled_at.is_some() => {
                let silent = quiet_since.elapsed();
                return Err(PostgresError::StreamStalled { silent }.into());
            }
        }
        Ok(())
    }

    async fn next_batch(
        &mut self,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, ConnectorError> {
        let mut out = Vec::new();
        let mut bytes = 0;
        if let Some(event) = self.peeked.take() {
            self.handle(event, &mut out)?;
            bytes = out.iter().map(Entry::size).sum();
        }
        while out.len() < max && bytes < max_bytes {
            let before = out.len();
            match self.stream().try_recv() {
                Some(event) => self.handle(event?, &mut out)?,
                None => break,
            }
            bytes += out[before..].iter().map(Entry::size).sum::<usize>();
        }
        Ok(out)
    }

    async fn ack(&mut self, upto: Position) -> Result<(), ConnectorError> {
        let Position::Wal { commit_lsn, index } = upto else {
            return Err(PostgresError::UnknownPosition { position: upto.to_string() }.into());
        };
        let reached = self.progress.ack(commit_lsn, index);
        self.report(reached);
        self.delete_acknowledged((commit_lsn, index)).await?;
        Ok(())
    }

    fn at_boundary(&self) -> bool {
        !self.progress.in_transaction() && self.peeked.is_none()
    }

    async fn close(&mut self) -> Result<(), ConnectorError> {
        if let Some(stream) = self.stream.take() {
            stream.close(self.progress.confirmed(), CLOSE_DEADLINE).await;
        }
        Ok(())
    }
}

/// How long a stream may stay silent while the relay waits on it, with a heartbeat every
/// `heartbeat`: a few heartbeats, but no longer than the server itself waits
/// (`wal_sender_timeout`, 60 s by default) unless that is under three heartbeats.
fn stall_timeout(heartbeat: Duration, sender_timeout: Option<Duration>) -> Duration {
    let heartbeats = heartbeat.saturating_mul(3);
    sender_timeout.map_or(heartbeats.max(Duration::from_secs(60)), |server| server.max(heartbeats))
}

/// An entry from an outbox row (its position is set by [`WalSource::emit`]). Nothing is dropped:
/// a value that cannot be decoded is kept (see [`crate::text`]) and makes the entry poison.
fn row_entry(shape: &Shape, values: Vec<Value>) -> Entry {
    let mut defect = None;
    let fields: Vec<Option<String>> = shape
        .field_columns
        .iter()
        .zip(shape.names.iter())
        .map(|(i, name)| match values.get(*i)? {
            Value::Text(bytes) => Some(text_or_hex(bytes, name, &mut defect)),
            Value::Null | Value::Unchanged => None,
        })
        .collect();
    let payload = match values.get(shape.payload_column) {
        Some(Value::Text(bytes)) if shape.payload_kind == PayloadKind::Binary => {
            match bytea_from_text(bytes) {
                Some(decoded) => Some(Bytes::from(decoded)),
                None => {
                    defect.get_or_insert_with(|| {
                        "the bytea payload is in neither hex nor escape format (kept as the \
                         server sent it)"
                            .into()
                    });
                    Some(bytes.clone())
                }
            }
        }
        Some(Value::Text(bytes)) => {
            check_text_payload(bytes, &mut defect);
            Some(bytes.clone())
        }
        _ => None,
    };
    let id = fields[shape.id_field].clone().unwrap_or_default();
    Entry {
        position: Position::Wal { commit_lsn: Lsn(0), index: 0 },
        id,
        fields: Fields::new(Arc::clone(&shape.names), fields),
        payload,
        payload_kind: shape.payload_kind,
        headers: Vec::new(),
        defect,
    }
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
