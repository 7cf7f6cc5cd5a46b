//! `[sink]`: the broker, one variant per sink (each exists only in builds with its feature), and
//! how its settings become the connector's options.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::defaults;
use super::secret::Secret;

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
