//! The relay's config, built by section and key instead of TOML text: `RelayConfig::kafka(db,
//! prefix).wal(&slot).pipeline("retry_max_backoff", "1s")`. A key set twice keeps the last
//! value; `to_string()` is the TOML the relay reads (`command`, `Relay::spawn` take it).

use std::fmt;

use toml::{Table, Value};

use super::{services, unique};

#[derive(Clone, Debug)]
pub struct RelayConfig {
    doc: Table,
}

impl RelayConfig {
    /// Postgres at `db`, entries routed to `<prefix>.<aggregatetype>`; no sink yet.
    pub fn new(db: &str, prefix: &str) -> Self {
        Self { doc: Table::new() }
            .set("postgres", "url", db)
            .route("topic", format!("{prefix}.${{aggregatetype}}"))
    }

    /// To the test Kafka.
    pub fn kafka(db: &str, prefix: &str) -> Self {
        Self::kafka_at(db, &services().kafka, prefix)
    }

    /// To Kafka at `brokers` (a proxy, a cluster of the test's own).
    pub fn kafka_at(db: &str, brokers: &str, prefix: &str) -> Self {
        Self::new(db, prefix).sink("kind", "kafka").sink("brokers", brokers)
    }

    /// To the test RabbitMQ (declare the topology with [`RelayConfig::topology`]).
    pub fn rabbitmq(db: &str, prefix: &str) -> Self {
        Self::rabbitmq_at(db, &services().amqp, prefix)
    }

    pub fn rabbitmq_at(db: &str, url: &str, prefix: &str) -> Self {
        Self::new(db, prefix).sink("kind", "rabbitmq").sink("url", url)
    }

    /// WAL tailing through `slot`.
    pub fn wal(self, slot: &str) -> Self {
        self.source("mode", "wal").source("slot", slot)
    }

    pub fn poll(self) -> Self {
        self.source("mode", "poll")
    }

    /// `source.mode` by name ("wal" with `slot`, or "poll").
    pub fn mode(self, mode: &str, slot: &str) -> Self {
        if mode == "wal" {
            self.wal(slot)
        } else {
            self.poll()
        }
    }

    /// A Kafka delivery mode. Transactional delivery gets a `transactional_id` of the test's
    /// own: the default (`outbox-relay.<pipeline>`) is the same in every test, and a relay of
    /// another test running at the same time would fence this one's producer.
    pub fn delivery(self, delivery: &str) -> Self {
        let config = self.sink("delivery", delivery);
        if delivery == "transactional" {
            config.sink("transactional_id", unique("txid"))
        } else {
            config
        }
    }

    /// An exchange `<prefix>.order` of `kind` and `queues` bound to it by `routing_key`.
    pub fn topology(self, prefix: &str, kind: &str, queues: &[&str], routing_key: &str) -> Self {
        let exchange = format!("{prefix}.order");
        let mut config = self.exchange(&exchange, kind);
        for queue in queues {
            config = config.queue(queue).binding(queue, &exchange, routing_key);
        }
        config
    }

    /// An `x-consistent-hash` exchange `<prefix>.order` over the queues `<prefix>.q0` and
    /// `<prefix>.q1`.
    pub fn two_hashed_queues(self, prefix: &str) -> Self {
        let queues = [format!("{prefix}.q0"), format!("{prefix}.q1")];
        self.topology(prefix, "x-consistent-hash", &[&queues[0], &queues[1]], "1")
    }

    pub fn exchange(self, name: &str, kind: &str) -> Self {
        self.push("sink.exchanges", [("name", name), ("kind", kind)])
    }

    pub fn queue(self, name: &str) -> Self {
        self.push("sink.queues", [("name", name)])
    }

    pub fn binding(self, queue: &str, exchange: &str, routing_key: &str) -> Self {
        let binding = [("queue", queue), ("exchange", exchange), ("routing_key", routing_key)];
        self.push("sink.bindings", binding)
    }

    pub fn pipeline(self, key: &str, value: impl Into<Value>) -> Self {
        self.set("pipeline", key, value)
    }

    pub fn source(self, key: &str, value: impl Into<Value>) -> Self {
        self.set("source", key, value)
    }

    pub fn sink(self, key: &str, value: impl Into<Value>) -> Self {
        self.set("sink", key, value)
    }

    pub fn route(self, key: &str, value: impl Into<Value>) -> Self {
        self.set("route", key, value)
    }

    /// `key` of `section`, a dotted path for a nested table (`"route.cloudevents"`,
    /// `"sink.properties"`).
    pub fn set(mut self, section: &str, key: &str, value: impl Into<Value>) -> Self {
        self.table(section).insert(key.into(), value.into());
        self
    }

    /// The table at a dotted path, made if missing.
    fn table(&mut self, section: &str) -> &mut Table {
        let mut table = &mut self.doc;
        for name in section.split('.') {
            table = table
                .entry(name)
                .or_insert_with(|| Value::Table(Table::new()))
                .as_table_mut()
                .unwrap_or_else(|| panic!("{name} is not a table"));
        }
        table
    }

    /// Removes `key` of `section` (a default the test wants absent).
    pub fn unset(mut self, section: &str, key: &str) -> Self {
        if let Some(Value::Table(table)) = self.doc.get_mut(section) {
            table.remove(key);
        }
        self
    }

    /// One more entry of an array of tables: `[[sink.queues]]` is `push("sink.queues", ..)`.
    pub fn push<const N: usize>(mut self, array: &str, fields: [(&str, &str); N]) -> Self {
        let entry: Table = fields.iter().map(|(k, v)| ((*k).to_owned(), Value::from(*v))).collect();
        let (section, name) = array.rsplit_once('.').expect("section.array");
        let entries = self.table(section).entry(name).or_insert_with(|| Value::Array(Vec::new()));
        entries.as_array_mut().expect("an array of tables").push(Value::Table(entry));
        self
    }
}

impl fmt::Display for RelayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&toml::to_string(&self.doc).map_err(|_| fmt::Error)?)
    }
}

impl From<RelayConfig> for String {
    fn from(config: RelayConfig) -> String {
        config.to_string()
    }
}
