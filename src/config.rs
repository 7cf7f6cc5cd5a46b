//! Configuration: one TOML file, overridden by `OUTBOX_RELAY__SECTION__KEY` environment
//! variables. Invariant: unknown keys are errors (every struct denies them), every error names
//! the key path, and secrets never print (`Secret` redacts `Debug`).
//!
//! The doc comment on each field is the reference; `config/*.toml` repeats it as comments.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::RelayError;

/// Prefix of environment overrides; `__` separates path segments.
pub(crate) const ENV_PREFIX: &str = "OUTBOX_RELAY__";

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    #[serde(default)]
    pub(crate) pipeline: PipelineConfig,
    pub(crate) postgres: PostgresConfig,
    #[serde(default)]
    pub(crate) source: SourceConfig,
    pub(crate) sink: SinkConfig,
    #[serde(default)]
    pub(crate) route: RouteConfig,
    #[serde(default)]
    pub(crate) telemetry: TelemetryConfig,
    #[serde(default)]
    pub(crate) asyncapi: AsyncApiConfig,
}

/// `[asyncapi]`: what `outbox-relay asyncapi` says that the routing config cannot know.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AsyncApiConfig {
    /// `info.title`; "" means "outbox-relay pipeline <name>".
    pub(crate) title: String,
    /// `info.version`: the version of the contract.
    pub(crate) version: String,
    pub(crate) description: String,
    /// The event types the pipeline carries, each with its payload schema.
    pub(crate) messages: Vec<AsyncApiMessage>,
}

impl Default for AsyncApiConfig {
    fn default() -> Self {
        Self {
            title: String::new(),
            version: "1.0.0".into(),
            description: String::new(),
            messages: Vec::new(),
        }
    }
}

/// `[[asyncapi.messages]]`: one event type.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AsyncApiMessage {
    /// The value of the `type` header (the `type` column) for this event.
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) summary: String,
    /// A JSON Schema file of the payload, relative to the config file.
    pub(crate) payload: Option<PathBuf>,
}

/// `[pipeline]`: identity, flow control and failure policy.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct PipelineConfig {
    /// Name of this pipeline; one relay at a time holds its lock (`outbox_relay.pipelines`).
    pub(crate) name: String,
    /// Most messages sent but not yet confirmed by the broker.
    pub(crate) max_in_flight: usize,
    /// Most payload+header bytes sent but not yet confirmed (one larger message still passes).
    pub(crate) max_in_flight_bytes: usize,
    /// What to do with a message that can never be delivered (oversize, unroutable, NULL key,
    /// undecodable): "halt" stops the relay, naming the entry and the reason, nothing from it on
    /// acknowledged; "dead-letter" sets it aside in outbox_relay.dead_letters with the reason
    /// and goes on (`outbox-relay dlq list|redrive`).
    pub(crate) on_poison: PoisonPolicy,
    /// With "dead-letter": later entries of the same shard key "wait" (are set aside behind it,
    /// and go out in order when redriven) or "continue" (are published).
    pub(crate) dead_letter_same_key: SameKeyPolicy,
    /// First pause after a transient failure; doubles (with jitter) up to `retry_max_backoff`.
    #[serde(with = "humantime_serde")]
    pub(crate) retry_initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub(crate) retry_max_backoff: Duration,
    /// On SIGTERM/SIGINT: how long to wait for in-flight confirms before exiting.
    #[serde(with = "humantime_serde")]
    pub(crate) shutdown_grace: Duration,
    /// How often the confirmed prefix is acknowledged to the source (rows deleted / LSN flushed).
    #[serde(with = "humantime_serde")]
    pub(crate) ack_interval: Duration,
    /// A standby relay retries the pipeline lock this often.
    #[serde(with = "humantime_serde")]
    pub(crate) standby_retry: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            name: "default".into(),
            max_in_flight: 10_000,
            max_in_flight_bytes: 64 << 20,
            on_poison: PoisonPolicy::Halt,
            dead_letter_same_key: SameKeyPolicy::Wait,
            retry_initial_backoff: Duration::from_millis(200),
            retry_max_backoff: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(20),
            ack_interval: Duration::from_millis(50),
            standby_retry: Duration::from_secs(2),
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum PoisonPolicy {
    Halt,
    DeadLetter,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum SameKeyPolicy {
    Wait,
    Continue,
}

/// `[postgres]`: the application database holding the outbox (and the relay's state).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PostgresConfig {
    /// libpq URL, e.g. "postgres://relay:secret@db:5432/app".
    pub(crate) url: Secret,
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub(crate) connect_timeout: Duration,
    /// Deadline for every statement the relay issues.
    #[serde(default = "defaults::query_timeout", with = "humantime_serde")]
    pub(crate) query_timeout: Duration,
}

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

/// `[sink]`: where messages go; `kind` picks the broker.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub(crate) enum SinkConfig {
    Kafka(KafkaConfig),
    Rabbitmq(RabbitConfig),
}

#[cfg_attr(not(feature = "kafka"), allow(dead_code))]
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KafkaConfig {
    /// `bootstrap.servers`, e.g. "broker1:9092,broker2:9092".
    pub(crate) brokers: String,
    /// Largest message (payload + key + headers) in bytes; larger ones are poison.
    #[serde(default = "defaults::kafka_max_message_bytes")]
    pub(crate) max_message_bytes: usize,
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub(crate) metadata_timeout: Duration,
    /// "idempotent" (default): idempotent producer; after a crash a possible replay is sent
    /// again unless its own record (id and position) is in its partition. Works on any
    /// Kafka-protocol broker. "transactional": batches are Kafka transactions under a stable
    /// `transactional_id`; a new relay fences the old one; consumers with
    /// isolation.level=read_committed see each entry once.
    #[serde(default)]
    pub(crate) delivery: KafkaDelivery,
    /// transactional: the `transactional.id`; default "outbox-relay.<pipeline.name>". Keep it
    /// stable: a new producer fences only older ones with the same id.
    #[serde(default)]
    pub(crate) transactional_id: Option<String>,
    /// transactional: commit a transaction once it is this old...
    #[serde(default = "defaults::transaction_interval", with = "humantime_serde")]
    pub(crate) transaction_interval: Duration,
    /// transactional: ...or holds this many messages.
    #[serde(default = "defaults::transaction_max_messages")]
    pub(crate) transaction_max_messages: usize,
    /// Any librdkafka producer property, passed through (security.protocol, sasl.*,
    /// compression.type, linger.ms, transaction.timeout.ms, ...). Properties the guarantees rest
    /// on are fixed, under their aliases too.
    #[serde(default)]
    pub(crate) properties: BTreeMap<String, toml::Value>,
}

/// `sink.delivery` for Kafka.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum KafkaDelivery {
    #[default]
    Idempotent,
    Transactional,
}

impl KafkaConfig {
    /// The passthrough properties as librdkafka takes them (text values).
    #[cfg_attr(not(feature = "kafka"), allow(dead_code, reason = "librdkafka takes them"))]
    pub(crate) fn property_texts(&self) -> BTreeMap<String, String> {
        self.properties.iter().map(|(k, v)| (k.clone(), property_text(v))).collect()
    }
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let properties: BTreeMap<&str, String> = self
            .properties
            .iter()
            .map(|(k, v)| {
                let sensitive = ["password", "secret", "key"].iter().any(|s| k.contains(s));
                (k.as_str(), if sensitive { "<redacted>".into() } else { v.to_string() })
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("delivery", &self.delivery)
            .field("properties", &properties)
            .finish_non_exhaustive()
    }
}

#[cfg_attr(not(feature = "rabbitmq"), allow(dead_code))]
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RabbitConfig {
    /// "amqp://user:password@host:5672/vhost" (percent-encode "/" in the vhost as %2f).
    pub(crate) url: Secret,
    /// Channels publishing in parallel; a shard key always uses the same one.
    #[serde(default = "defaults::lanes")]
    pub(crate) lanes: usize,
    /// Largest message in bytes; keep at or below the broker's `max_message_size`.
    #[serde(default = "defaults::rabbit_max_message_bytes")]
    pub(crate) max_message_bytes: usize,
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub(crate) connect_timeout: Duration,
    /// With an `amqps://` URL: a PEM file of CA certificates the broker's certificate must
    /// chain to (besides the Mozilla roots).
    #[serde(default)]
    pub(crate) tls_ca_file: Option<PathBuf>,
    /// With an `amqps://` URL: a client certificate (PEM) and its PKCS#8 key (PEM), together.
    #[serde(default)]
    pub(crate) tls_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub(crate) tls_key_file: Option<PathBuf>,
    /// Exchanges to declare on connect.
    #[serde(default)]
    pub(crate) exchanges: Vec<ExchangeConfig>,
    /// Queues to declare on connect.
    #[serde(default)]
    pub(crate) queues: Vec<QueueConfig>,
    /// Bindings to declare on connect.
    #[serde(default)]
    pub(crate) bindings: Vec<BindingConfig>,
}

#[cfg_attr(not(feature = "rabbitmq"), allow(dead_code))]
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExchangeConfig {
    pub(crate) name: String,
    /// "direct", "topic", "fanout", "headers" or a plugin type ("x-consistent-hash").
    pub(crate) kind: String,
    #[serde(default = "defaults::yes")]
    pub(crate) durable: bool,
    #[serde(default)]
    pub(crate) arguments: BTreeMap<String, toml::Value>,
}

#[cfg_attr(not(feature = "rabbitmq"), allow(dead_code))]
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QueueConfig {
    pub(crate) name: String,
    #[serde(default = "defaults::yes")]
    pub(crate) durable: bool,
    /// e.g. { "x-queue-type" = "quorum" }.
    #[serde(default)]
    pub(crate) arguments: BTreeMap<String, toml::Value>,
}

#[cfg_attr(not(feature = "rabbitmq"), allow(dead_code))]
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BindingConfig {
    pub(crate) queue: String,
    pub(crate) exchange: String,
    /// Binding key; for an x-consistent-hash exchange, the queue's weight ("1").
    #[serde(default)]
    pub(crate) routing_key: String,
}

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

/// `[telemetry]`: logs, metrics and health.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct TelemetryConfig {
    /// Address for /metrics, /healthz and /readyz, e.g. "0.0.0.0:9187"; "" disables it.
    pub(crate) listen: String,
    /// "text" or "json".
    pub(crate) log_format: LogFormat,
    /// Log filter (RUST_LOG syntax); the RUST_LOG variable wins when set.
    pub(crate) log_level: String,
    /// OTLP/HTTP collector for the relay's own spans, e.g. "http://127.0.0.1:4318" (traces go
    /// to /v1/traces there); "" (default) exports none. Only entries with a sampled
    /// `traceparent` (route.traceparent) get spans.
    pub(crate) otlp_endpoint: String,
    /// `service.name` of the exported spans.
    pub(crate) service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            listen: String::new(),
            log_format: LogFormat::Text,
            log_level: "info".into(),
            otlp_endpoint: String::new(),
            service_name: "outbox-relay".into(),
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    Text,
    Json,
}

/// A string that never appears in `Debug` output or logs.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

mod defaults {
    use std::time::Duration;

    pub(super) fn connect_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub(super) fn query_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub(super) fn kafka_max_message_bytes() -> usize {
        1_000_000
    }
    pub(super) fn transaction_interval() -> Duration {
        Duration::from_millis(100)
    }
    pub(super) fn transaction_max_messages() -> usize {
        10_000
    }
    pub(super) fn rabbit_max_message_bytes() -> usize {
        128 << 20
    }
    pub(super) fn lanes() -> usize {
        4
    }
    pub(super) fn yes() -> bool {
        true
    }
}

impl Config {
    /// Reads `path` (if any), applies environment overrides, and validates.
    pub(crate) fn load(path: Option<&Path>) -> Result<Self, RelayError> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path).map_err(|source| {
                RelayError::ConfigRead { path: path.display().to_string(), source }
            })?,
            None => String::new(),
        };
        let origin = path.map_or_else(|| "environment".to_owned(), |p| p.display().to_string());
        Self::from_sources(&text, std::env::vars(), &origin)
    }

    pub(crate) fn from_sources(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
        origin: &str,
    ) -> Result<Self, RelayError> {
        let mut table: toml::Table = toml::from_str(text)
            .map_err(|e| RelayError::Config { origin: origin.into(), message: e.to_string() })?;
        for (name, value) in env {
            if let Some(path) = name.strip_prefix(ENV_PREFIX) {
                override_from_env(&mut table, path, &value).map_err(|message| {
                    RelayError::Config { origin: format!("environment variable {name}"), message }
                })?;
            }
        }
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                RelayError::Config {
                    origin: origin.into(),
                    message: format!("at `{}`: {}", e.path(), e.inner()),
                }
            })?;
        config
            .validate()
            .map_err(|message| RelayError::Config { origin: origin.into(), message })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let p = &self.pipeline;
        if p.name.is_empty() {
            return Err("pipeline.name must not be empty".into());
        }
        if p.max_in_flight == 0 || p.max_in_flight_bytes == 0 {
            return Err("pipeline.max_in_flight and max_in_flight_bytes must be at least 1".into());
        }
        if p.retry_initial_backoff.is_zero() || p.retry_max_backoff < p.retry_initial_backoff {
            return Err(
                "pipeline.retry_initial_backoff must be > 0 and <= retry_max_backoff".into()
            );
        }
        if self.source.batch_size == 0 {
            return Err("source.batch_size must be at least 1".into());
        }
        crate::spans::endpoint(&self.telemetry.otlp_endpoint)?;
        match (self.source.mode, self.source.after_publish) {
            (SourceMode::Wal, AfterPublishConfig::Mark) => {
                return Err("source.after_publish = \"mark\" needs mode = \"poll\"; WAL mode \
                            can \"delete\" or \"keep\""
                    .into())
            }
            (SourceMode::Poll, AfterPublishConfig::Keep) => {
                return Err("source.after_publish = \"keep\" needs mode = \"wal\": polling \
                            finds unpublished rows by deleting or marking published ones"
                    .into())
            }
            _ => {}
        }
        if self.source.mode == SourceMode::Wal
            && (self.source.slot.is_empty() || self.source.publication.is_empty())
        {
            return Err("source.slot and source.publication must not be empty".into());
        }
        match &self.sink {
            #[cfg(feature = "kafka")]
            SinkConfig::Kafka(kafka) => {
                outbox_relay_kafka::validate_properties(
                    kafka.delivery.into(),
                    &kafka.property_texts(),
                )?;
                if kafka.transaction_max_messages == 0 || kafka.transaction_interval.is_zero() {
                    return Err("sink.transaction_interval and sink.transaction_max_messages \
                                must be above 0"
                        .into());
                }
            }
            #[cfg(not(feature = "kafka"))]
            SinkConfig::Kafka(_) => {}
            SinkConfig::Rabbitmq(rabbit) => {
                if !(1..=64).contains(&rabbit.lanes) {
                    return Err("sink.lanes must be between 1 and 64".into());
                }
                if rabbit.tls_cert_file.is_some() != rabbit.tls_key_file.is_some() {
                    return Err("sink.tls_cert_file and sink.tls_key_file go together".into());
                }
                let tls = rabbit.tls_ca_file.is_some() || rabbit.tls_cert_file.is_some();
                if tls && !rabbit.url.expose().starts_with("amqps://") {
                    return Err("sink.tls_ca_file, tls_cert_file and tls_key_file need an \
                                amqps:// sink.url"
                        .into());
                }
            }
        }
        crate::router::Router::new(&self.route, &self.pipeline.name).map_err(|e| e.to_string())?;
        Ok(())
    }
}

#[cfg(feature = "kafka")]
impl From<KafkaDelivery> for outbox_relay_kafka::Delivery {
    fn from(delivery: KafkaDelivery) -> Self {
        match delivery {
            KafkaDelivery::Idempotent => outbox_relay_kafka::Delivery::Idempotent,
            KafkaDelivery::Transactional => outbox_relay_kafka::Delivery::Transactional,
        }
    }
}

/// A librdkafka property value as text (`true`, `5`, `lz4`).
#[cfg_attr(not(feature = "kafka"), allow(dead_code, reason = "librdkafka takes them"))]
pub(crate) fn property_text(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Sets `SECTION__KEY` (case-insensitive) in `table`. The value is read as a TOML literal when it
/// is one (`100`, `true`, `"quoted"`), else taken as a plain string.
fn override_from_env(table: &mut toml::Table, path: &str, value: &str) -> Result<(), String> {
    let segments: Vec<String> = path.split("__").map(str::to_lowercase).collect();
    if segments.iter().any(String::is_empty) {
        return Err("empty path segment (use SECTION__KEY)".into());
    }
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    let (last, parents) = segments.split_last().expect("at least one segment");
    let mut current = table;
    for segment in parents {
        let entry = current
            .entry(segment.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{segment}` is not a section, cannot set a key inside it"))?;
    }
    current.insert(last.clone(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [postgres]
        url = "postgres://relay:hunter2@db/app"
        [sink]
        kind = "kafka"
        brokers = "k:9092"
    "#;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, String> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::from_sources(text, env, "test.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn the_issue_example_loads_with_defaults() {
        let config = load(MINIMAL, &[]).unwrap();
        assert_eq!(config.pipeline.name, "default");
        assert_eq!(config.source.table, "public.outbox");
        assert_eq!(config.route.topic, "outbox.event.${aggregatetype}");
        assert!(matches!(config.sink, SinkConfig::Kafka(ref k) if k.brokers == "k:9092"));
    }

    #[test]
    fn unknown_keys_are_named_with_their_path() {
        let err = load(&format!("{MINIMAL}\nbrokerz = 1"), &[]).unwrap_err();
        assert!(err.contains("brokerz"), "{err}");
        let err = load(&format!("{MINIMAL}\n[source]\ntabel = \"x\""), &[]).unwrap_err();
        assert!(err.contains("source") && err.contains("tabel"), "{err}");
        let err = load(&format!("{MINIMAL}\n[sourc]\n"), &[]).unwrap_err();
        assert!(err.contains("sourc"), "{err}");
    }

    #[test]
    fn environment_overrides_keep_their_types() {
        let config = load(
            MINIMAL,
            &[
                ("OUTBOX_RELAY__PIPELINE__MAX_IN_FLIGHT", "7"),
                ("OUTBOX_RELAY__SOURCE__POLL_INTERVAL", "250ms"),
                ("OUTBOX_RELAY__SINK__BROKERS", "other:9092"),
                ("OUTBOX_RELAY__SINK__PROPERTIES__LINGER.MS", "5"),
                ("UNRELATED", "x"),
            ],
        )
        .unwrap();
        assert_eq!(config.pipeline.max_in_flight, 7);
        assert_eq!(config.source.poll_interval, Duration::from_millis(250));
        let SinkConfig::Kafka(kafka) = &config.sink else { panic!("kafka") };
        assert_eq!(kafka.brokers, "other:9092");
        assert_eq!(property_text(&kafka.properties["linger.ms"]), "5");
        let err = load(MINIMAL, &[("OUTBOX_RELAY__PIPELINE__MAX_IN_FLIGHT", "lots")]).unwrap_err();
        assert!(err.contains("pipeline.max_in_flight"), "{err}");
    }

    #[test]
    fn guarantees_cannot_be_configured_away() {
        let text = format!("{MINIMAL}\n[sink.properties]\n\"enable.idempotence\" = false");
        let err = load(&text, &[]).unwrap_err();
        assert!(err.contains("enable.idempotence"), "{err}");
        let text = format!("{MINIMAL}\n[sink.properties]\nacks = \"-1\"\n\"linger.ms\" = 10");
        assert!(load(&text, &[]).is_ok());
    }

    #[test]
    fn rabbitmq_sink_and_topology_parse() {
        let text = r#"
            [postgres]
            url = "postgres://db/app"
            [sink]
            kind = "rabbitmq"
            url = "amqp://guest:guest@127.0.0.1:5672/%2f"
            lanes = 2
            [[sink.exchanges]]
            name = "orders"
            kind = "x-consistent-hash"
            [[sink.queues]]
            name = "orders.1"
            arguments = { "x-queue-type" = "quorum" }
            [[sink.bindings]]
            queue = "orders.1"
            exchange = "orders"
            routing_key = "1"
        "#;
        let config = load(text, &[]).unwrap();
        let SinkConfig::Rabbitmq(rabbit) = &config.sink else { panic!("rabbitmq") };
        assert_eq!(rabbit.lanes, 2);
        assert_eq!(rabbit.exchanges[0].kind, "x-consistent-hash");
        assert!(rabbit.exchanges[0].durable);
        assert_eq!(rabbit.bindings[0].routing_key, "1");
    }

    /// The commented examples in config/ must stay loadable.
    #[test]
    fn the_shipped_examples_load() {
        for (name, text) in [
            ("poll-kafka.toml", include_str!("../config/poll-kafka.toml")),
            ("poll-rabbitmq.toml", include_str!("../config/poll-rabbitmq.toml")),
            ("wal-kafka.toml", include_str!("../config/wal-kafka.toml")),
        ] {
            if let Err(error) = Config::from_sources(text, Vec::new(), name) {
                panic!("config/{name}: {error}");
            }
        }
    }

    #[test]
    fn secrets_do_not_print() {
        let config = load(MINIMAL, &[]).unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
    }
}
