//! The sink this relay was configured with. Config chooses one variant; there is no plugin
//! system. Invariant: a variant exists only in builds with its feature.

use outbox_relay_core::{Capabilities, Checked, Confirm, ConnectorError, Message, Sink};

use crate::config::SinkConfig;
use crate::error::RelayError;

#[derive(Debug)]
#[allow(clippy::large_enum_variant, reason = "one sink per process, never moved in a hot path")]
pub(crate) enum AnySink {
    #[cfg(feature = "kafka")]
    Kafka(outbox_relay_kafka::KafkaSink),
    #[cfg(feature = "rabbitmq")]
    Rabbit(outbox_relay_rabbitmq::RabbitSink),
}

impl AnySink {
    #[cfg_attr(not(feature = "kafka"), allow(unused_variables, reason = "Kafka's options use it"))]
    pub(crate) fn new(config: &SinkConfig, pipeline: &str) -> Result<Self, RelayError> {
        let invalid = |message: String| RelayError::Config { origin: "sink".into(), message };
        match config {
            #[cfg(feature = "kafka")]
            SinkConfig::Kafka(kafka) => {
                let options = outbox_relay_kafka::KafkaOptions {
                    brokers: kafka.brokers.clone(),
                    properties: kafka.property_texts(),
                    max_message_bytes: kafka.max_message_bytes,
                    metadata_timeout: kafka.metadata_timeout,
                    pipeline: pipeline.into(),
                    delivery: kafka.delivery.into(),
                    transactional_id: kafka
                        .transactional_id
                        .clone()
                        .unwrap_or_else(|| format!("outbox-relay.{pipeline}")),
                    transactions: outbox_relay_kafka::TransactionSettings {
                        interval: kafka.transaction_interval,
                        max_messages: kafka.transaction_max_messages,
                        timeout: kafka.metadata_timeout,
                    },
                };
                outbox_relay_kafka::KafkaSink::new(options)
                    .map(AnySink::Kafka)
                    .map_err(|e| invalid(chain(&e)))
            }
            #[cfg(feature = "rabbitmq")]
            SinkConfig::Rabbitmq(rabbit) => {
                let options = outbox_relay_rabbitmq::RabbitOptions {
                    url: rabbit.url.expose().to_owned(),
                    lanes: rabbit.lanes,
                    max_message_bytes: rabbit.max_message_bytes,
                    connect_timeout: rabbit.connect_timeout,
                    topology: topology(rabbit).map_err(invalid)?,
                    tls: outbox_relay_rabbitmq::TlsFiles {
                        ca: rabbit.tls_ca_file.clone(),
                        identity: rabbit.tls_cert_file.clone().zip(rabbit.tls_key_file.clone()),
                    },
                };
                outbox_relay_rabbitmq::RabbitSink::new(options)
                    .map(AnySink::Rabbit)
                    .map_err(|e| invalid(chain(&e)))
            }
            #[allow(unreachable_patterns)]
            _ => Err(invalid("this build of outbox-relay does not include that sink".into())),
        }
    }
}

impl AnySink {
    /// A new run starts: replays of earlier runs may follow (see [`crate::store::state`]); `window`
    /// bounds how far back the Kafka sink looks for them. Returns once nothing of an earlier run
    /// can still land behind this run's messages (Kafka: drained, or fenced and aborted).
    #[cfg_attr(not(feature = "kafka"), allow(unused_variables, reason = "only Kafka looks back"))]
    pub(crate) async fn begin_run(&mut self, window: usize) -> Result<(), ConnectorError> {
        match self {
            #[cfg(feature = "kafka")]
            AnySink::Kafka(sink) => sink.begin_run(window).await.map_err(ConnectorError::from),
            #[cfg(feature = "rabbitmq")]
            AnySink::Rabbit(_) => Ok(()),
        }
    }
}

impl AnySink {
    /// The broker's name, in spans and reports: "kafka", "rabbitmq".
    pub(crate) fn system(&self) -> &'static str {
        match self {
            #[cfg(feature = "kafka")]
            AnySink::Kafka(_) => "kafka",
            #[cfg(feature = "rabbitmq")]
            AnySink::Rabbit(_) => "rabbitmq",
        }
    }

    async fn send_untraced(&mut self, message: &Message) -> Result<Confirm, ConnectorError> {
        match self {
            #[cfg(feature = "kafka")]
            AnySink::Kafka(sink) => sink.send(message).await,
            #[cfg(feature = "rabbitmq")]
            AnySink::Rabbit(sink) => sink.send(message).await,
        }
    }
}

impl Sink for AnySink {
    /// Sends through the configured sink; a message in a sampled trace gets the relay's publish
    /// span (see [`crate::spans`]).
    async fn send(&mut self, message: &Message) -> Result<Confirm, ConnectorError> {
        let Some(span) = crate::spans::start(message, self.system()) else {
            return self.send_untraced(message).await;
        };
        match self.send_untraced(&span.traced(message)).await {
            Ok(confirm) => Ok(span.confirming(confirm)),
            Err(error) => {
                span.failed(&error);
                Err(error)
            }
        }
    }

    fn trouble(&self) -> Option<String> {
        match self {
            #[cfg(feature = "kafka")]
            AnySink::Kafka(sink) => sink.trouble(),
            #[cfg(feature = "rabbitmq")]
            AnySink::Rabbit(sink) => sink.trouble(),
        }
    }

    fn replays_recognised(&self) -> u64 {
        match self {
            #[cfg(feature = "kafka")]
            AnySink::Kafka(sink) => sink.replays_recognised(),
            #[cfg(feature = "rabbitmq")]
            AnySink::Rabbit(sink) => sink.replays_recognised(),
        }
    }

    fn capabilities(&self) -> Capabilities {
        match self {
            #[cfg(feature = "kafka")]
            AnySink::Kafka(sink) => sink.capabilities(),
            #[cfg(feature = "rabbitmq")]
            AnySink::Rabbit(sink) => sink.capabilities(),
        }
    }

    async fn check(&mut self, destination: Option<&str>) -> Result<Checked, ConnectorError> {
        match self {
            #[cfg(feature = "kafka")]
            AnySink::Kafka(sink) => Sink::check(sink, destination).await,
            #[cfg(feature = "rabbitmq")]
            AnySink::Rabbit(sink) => Sink::check(sink, destination).await,
        }
    }
}

#[cfg(feature = "rabbitmq")]
fn topology(
    config: &crate::config::RabbitConfig,
) -> Result<outbox_relay_rabbitmq::Topology, String> {
    use outbox_relay_rabbitmq::{ArgValue, BindingSpec, ExchangeSpec, QueueSpec, Topology};
    use std::collections::BTreeMap;

    let arguments = |what: &str, args: &BTreeMap<String, toml::Value>| {
        args.iter()
            .map(|(name, value)| {
                let value = match value {
                    toml::Value::String(s) => ArgValue::Str(s.clone()),
                    toml::Value::Integer(i) => ArgValue::Int(*i),
                    toml::Value::Boolean(b) => ArgValue::Bool(*b),
                    other => {
                        return Err(format!(
                            "{what} argument {name:?}: {other} is not a string, integer or boolean"
                        ))
                    }
                };
                Ok((name.clone(), value))
            })
            .collect::<Result<BTreeMap<_, _>, String>>()
    };
    Ok(Topology {
        exchanges: config
            .exchanges
            .iter()
            .map(|e| {
                Ok(ExchangeSpec {
                    name: e.name.clone(),
                    kind: e.kind.clone(),
                    durable: e.durable,
                    arguments: arguments("sink.exchanges", &e.arguments)?,
                })
            })
            .collect::<Result<_, String>>()?,
        queues: config
            .queues
            .iter()
            .map(|q| {
                Ok(QueueSpec {
                    name: q.name.clone(),
                    durable: q.durable,
                    arguments: arguments("sink.queues", &q.arguments)?,
                })
            })
            .collect::<Result<_, String>>()?,
        bindings: config
            .bindings
            .iter()
            .map(|b| BindingSpec {
                queue: b.queue.clone(),
                exchange: b.exchange.clone(),
                routing_key: b.routing_key.clone(),
            })
            .collect(),
    })
}

pub(crate) use outbox_relay_core::chain;
