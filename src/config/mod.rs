//! Configuration: one TOML file, overridden by `OUTBOX_RELAY__SECTION__KEY` environment
//! variables. Invariant: unknown keys are errors (every struct denies them), every error names
//! the key path, and secrets never print (`Secret` redacts `Debug`).
//!
//! The doc comment on each field is the reference; `config/*.toml` repeats it as comments.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::RelayError;

mod otlp;
mod secret;
mod sink;
mod source;

pub(crate) use crate::router::{CloudEventsMode, RouteConfig};
pub(crate) use otlp::{endpoint, Endpoint};
pub(crate) use secret::Secret;
pub(crate) use sink::*;
pub(crate) use source::{AfterPublishConfig, MessageFormatConfig, SourceConfig, SourceMode};

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

pub(super) mod defaults {
    use std::time::Duration;

    pub(crate) fn connect_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub(crate) fn query_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub(crate) fn kafka_max_message_bytes() -> usize {
        1_000_000
    }
    pub(crate) fn transaction_interval() -> Duration {
        Duration::from_millis(100)
    }
    pub(crate) fn transaction_max_messages() -> usize {
        10_000
    }
    pub(crate) fn rabbit_max_message_bytes() -> usize {
        128 << 20
    }
    pub(crate) fn lanes() -> usize {
        4
    }
    pub(crate) fn yes() -> bool {
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
        endpoint(&self.telemetry.otlp_endpoint)?;
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
            ("poll-kafka.toml", include_str!("../../config/poll-kafka.toml")),
            ("poll-rabbitmq.toml", include_str!("../../config/poll-rabbitmq.toml")),
            ("wal-kafka.toml", include_str!("../../config/wal-kafka.toml")),
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
