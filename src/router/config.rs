//! `[route]`: how an entry becomes a message (destination, shard key, headers, CloudEvents), as
//! the config file says it. The router owns it; `config` only reads it from the file.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `[route]`: how an entry becomes a message. Templates substitute `${column}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RouteConfig {
    /// Kafka topic / RabbitMQ exchange.
    pub(crate) topic: String,
    /// Shard key: Kafka record key / AMQP routing key. "" sends keyless messages.
    pub(crate) key: String,
    /// Headers besides `id` and `outbox-position` (always sent). Replaces the default
    /// `{ type = "${type}" }` when given.
    pub(crate) headers: BTreeMap<String, String>,
    /// Reply channel of a command (request/asynchronous reply), e.g. "${reply_to}": Kafka
    /// header `reply-to`, AMQP property `reply_to`. "" (default) sends none; a NULL column
    /// sends none for that entry (an event among commands).
    pub(crate) reply_to: String,
    /// Correlation id of a command or reply, e.g. "${correlation_id}": Kafka header
    /// `correlation-id`, AMQP property `correlation_id`. "" and NULL as for `reply_to`.
    pub(crate) correlation_id: String,
    /// W3C trace context of the transaction that wrote the entry, e.g. "${traceparent}": sent
    /// as header `traceparent` (Kafka and AMQP). "" and NULL as for `reply_to`; a value that is
    /// not a valid traceparent is not sent (W3C: a malformed one must not be propagated).
    pub(crate) traceparent: String,
    /// W3C `tracestate` to go with it, e.g. "${tracestate}"; sent only beside a traceparent.
    pub(crate) tracestate: String,
    /// `[route.cloudevents]`: send each message as a CloudEvent.
    pub(crate) cloudevents: CloudEventsConfig,
}

/// `[route.cloudevents]`: CloudEvents 1.0 attributes from the entry. `id` is the entry id and
/// `datacontenttype` follows the payload column's type.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct CloudEventsConfig {
    /// "off" (default), "binary" (attributes as `ce_*` Kafka headers / `cloudEvents:*` AMQP
    /// headers, payload unchanged) or "structured" (one `application/cloudevents+json` event
    /// with the payload as `data`).
    pub(crate) mode: CloudEventsMode,
    /// The `source` attribute (required unless off), e.g. "/orders-service" or
    /// "urn:orders:${aggregatetype}".
    pub(crate) source: String,
    /// The `type` attribute.
    #[serde(rename = "type")]
    pub(crate) kind: String,
    /// The `subject` attribute; "" or a NULL column sends none.
    pub(crate) subject: String,
    /// The `time` attribute from a `timestamptz` column (or RFC 3339 text), e.g.
    /// "${created_at}"; "" or NULL sends none. Any other value makes the entry poison.
    pub(crate) time: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CloudEventsMode {
    #[default]
    Off,
    Binary,
    Structured,
}

impl Default for CloudEventsConfig {
    fn default() -> Self {
        Self {
            mode: CloudEventsMode::Off,
            source: String::new(),
            kind: "${type}".into(),
            subject: "${aggregateid}".into(),
            time: String::new(),
        }
    }
}

impl Default for RouteConfig {
    fn default() -> Self {
        Self {
            topic: "outbox.event.${aggregatetype}".into(),
            key: "${aggregateid}".into(),
            headers: BTreeMap::from([("type".into(), "${type}".into())]),
            reply_to: String::new(),
            correlation_id: String::new(),
            traceparent: String::new(),
            tracestate: String::new(),
            cloudevents: CloudEventsConfig::default(),
        }
    }
}
