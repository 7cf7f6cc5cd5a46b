//! `[source]`: where the outbox entries come from (polling a table, or tailing the WAL).

use std::time::Duration;

use serde::Deserialize;

/// `[source]`: where entries come from.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct SourceConfig {
    /// "wal": tail the WAL through a logical replication slot (needs wal_level = logical);
    /// "poll": read the outbox table.
    pub(crate) mode: SourceMode,
    /// Outbox table, `schema.table`.
    pub(crate) table: String,
    /// Column holding the entry id (Kafka header `id`, AMQP `message_id`, the dedup key).
    pub(crate) id_column: String,
    /// Column holding the payload (jsonb, json, text or bytea).
    pub(crate) payload_column: String,
    /// Most rows per read.
    pub(crate) batch_size: usize,
    /// Fallback wake-up when no NOTIFY arrives; also how soon a late commit is re-checked.
    #[serde(with = "humantime_serde")]
    pub(crate) poll_interval: Duration,
    /// LISTEN channel the outbox trigger notifies; "" polls on the interval only.
    pub(crate) notify_channel: String,
    /// "delete" the row once confirmed; "mark" it (`published_at`, poll only); "keep" it (WAL
    /// only: the app deletes it, e.g. in the same transaction). Marked and kept rows can be
    /// published again with `outbox-relay replay`.
    pub(crate) after_publish: AfterPublishConfig,
    /// With "mark": delete rows published longer ago than this.
    #[serde(with = "humantime_serde")]
    pub(crate) retention: Duration,
    /// WAL: the logical replication slot (`migrate` creates it; `run` never does).
    pub(crate) slot: String,
    /// WAL: the publication (`migrate` creates it for the outbox table, inserts only).
    pub(crate) publication: String,
    /// WAL: `pg_logical_emit_message(true, <prefix>, ...)` calls with this prefix are outbox
    /// entries too; "" ignores logical messages.
    pub(crate) message_prefix: String,
    /// WAL: "envelope" (a JSON object with aggregatetype, aggregateid, type, payload, headers)
    /// or "raw" (the content is the payload; routing from config only).
    pub(crate) message_format: MessageFormatConfig,
    /// WAL: emit a tiny heartbeat message this often, so the slot moves on while the outbox is
    /// idle and other databases write WAL; "0s" turns it off.
    #[serde(with = "humantime_serde")]
    pub(crate) heartbeat_interval: Duration,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            mode: SourceMode::Poll,
            table: "public.outbox".into(),
            id_column: "id".into(),
            payload_column: "payload".into(),
            batch_size: 1_000,
            poll_interval: Duration::from_millis(500),
            notify_channel: "outbox_relay".into(),
            after_publish: AfterPublishConfig::Delete,
            retention: Duration::from_secs(7 * 24 * 3600),
            slot: "outbox_relay".into(),
            publication: "outbox_relay".into(),
            message_prefix: "outbox".into(),
            message_format: MessageFormatConfig::Envelope,
            heartbeat_interval: Duration::from_secs(10),
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum SourceMode {
    Poll,
    Wal,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum AfterPublishConfig {
    Delete,
    Mark,
    Keep,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum MessageFormatConfig {
    Envelope,
    Raw,
}
