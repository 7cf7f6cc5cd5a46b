//! Exchanges, queues and bindings the sink declares from config on every (re)connect.
//! Invariant: declarations are idempotent; a declaration that contradicts what the broker has
//! (different type or arguments) is a fatal configuration error, never silently ignored.

use std::collections::BTreeMap;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

use crate::RabbitSinkError;

/// An `x-…` argument value.
#[derive(Clone, Debug, PartialEq)]
pub enum ArgValue {
    Str(String),
    Int(i64),
    Bool(bool),
}

#[derive(Clone, Debug)]
pub struct ExchangeSpec {
    pub name: String,
    /// `direct`, `fanout`, `topic`, `headers`, or a plugin type such as `x-consistent-hash`.
    pub kind: String,
    pub durable: bool,
    pub arguments: BTreeMap<String, ArgValue>,
}

#[derive(Clone, Debug)]
pub struct QueueSpec {
    pub name: String,
    pub durable: bool,
    pub arguments: BTreeMap<String, ArgValue>,
}

#[derive(Clone, Debug)]
pub struct BindingSpec {
    pub queue: String,
    pub exchange: String,
    /// For an `x-consistent-hash` exchange: the queue's weight, e.g. `"1"`.
    pub routing_key: String,
}

#[derive(Clone, Debug, Default)]
pub struct Topology {
    pub exchanges: Vec<ExchangeSpec>,
    pub queues: Vec<QueueSpec>,
    pub bindings: Vec<BindingSpec>,
}

impl Topology {
    pub(crate) async fn declare(&self, channel: &Channel) -> Result<(), RabbitSinkError> {
        for exchange in &self.exchanges {
            let kind = match exchange.kind.as_str() {
                "direct" => ExchangeKind::Direct,
                "fanout" => ExchangeKind::Fanout,
                "topic" => ExchangeKind::Topic,
                "headers" => ExchangeKind::Headers,
                other => ExchangeKind::Custom(other.to_owned()),
            };
            let options =
                ExchangeDeclareOptions { durable: exchange.durable, ..Default::default() };
            channel
                .exchange_declare(
                    exchange.name.as_str().into(),
                    kind,
                    options,
                    table(&exchange.arguments),
                )
                .await
                .map_err(|source| RabbitSinkError::Topology {
                    what: format!("exchange {:?} of type {:?}", exchange.name, exchange.kind),
                    source: Box::new(source),
                })?;
        }
        for queue in &self.queues {
            let options = QueueDeclareOptions { durable: queue.durable, ..Default::default() };
            channel
                .queue_declare(queue.name.as_str().into(), options, table(&queue.arguments))
                .await
                .map_err(|source| RabbitSinkError::Topology {
                    what: format!("queue {:?}", queue.name),
                    source: Box::new(source),
                })?;
        }
        for binding in &self.bindings {
            channel
                .queue_bind(
                    binding.queue.as_str().into(),
                    binding.exchange.as_str().into(),
                    binding.routing_key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|source| RabbitSinkError::Topology {
                    what: format!(
                        "binding of queue {:?} to exchange {:?}",
                        binding.queue, binding.exchange
                    ),
                    source: Box::new(source),
                })?;
        }
        Ok(())
    }
}

fn table(arguments: &BTreeMap<String, ArgValue>) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in arguments {
        let value = match value {
            ArgValue::Str(s) => AMQPValue::LongString(LongString::from(s.as_str())),
            ArgValue::Int(i) => AMQPValue::LongLongInt(*i),
            ArgValue::Bool(b) => AMQPValue::Boolean(*b),
        };
        table.insert(name.as_str().into(), value);
    }
    table
}
