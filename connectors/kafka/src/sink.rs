//! The Kafka sink proper. Invariant: the properties of [`crate::properties::enforced`] are always
//! set on the producer; configuration that contradicts them is refused, not silently overridden.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use outbox_relay_core::{
    cloudevents, Capabilities, Checked, Confirm, ConnectorError, Message, Replays, Sink,
};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::context::{Health, RelayContext};
use crate::partition::partition_for;
use crate::properties::{enforced, Delivery};
use crate::replay::Tails;
use crate::transaction::{TransactionSettings, Transactions};
use crate::KafkaSinkError;

/// Distinct topics remembered (with their partition count) before the memo is reset.
const KNOWN_TOPICS_MAX: usize = 10_000;
/// Pause before retrying a produce that found librdkafka's local queue full.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(5);
/// How often a new run looks whether the previous run's messages have left the producer.
const DRAIN_PAUSE: Duration = Duration::from_millis(10);

#[derive(Clone, Debug)]
pub struct KafkaOptions {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Any librdkafka producer property (security, compression, batching, ...).
    pub properties: BTreeMap<String, String>,
    /// Largest message (payload + key + headers) the relay hands to Kafka; bigger ones are
    /// poison.
    pub max_message_bytes: usize,
    /// Deadline for metadata requests (topic checks, connectivity checks).
    pub metadata_timeout: Duration,
    /// The pipeline's name: messages carry it (header `outbox-pipeline`), and replays are looked
    /// for among its records.
    pub pipeline: String,
    /// Idempotent producer with replay suppression, or Kafka transactions.
    pub delivery: Delivery,
    /// `transactional.id` in transactional mode: stable per pipeline, so a new producer fences
    /// the old one.
    pub transactional_id: String,
    pub transactions: TransactionSettings,
}

/// What `check` learned about the cluster.
#[derive(Clone, Debug)]
pub struct ClusterInfo {
    pub brokers: usize,
    pub topics: Vec<String>,
}

/// What the cluster says of a topic.
enum TopicState {
    Ready(i32),
    Unknown,
    NotReady(String),
}

pub struct KafkaSink {
    options: KafkaOptions,
    producer: FutureProducer<RelayContext>,
    health: Arc<Health>,
    /// Partition count of each topic seen (and checked to exist).
    partitions: HashMap<String, i32>,
    tails: Tails,
    /// Possible replays found in their partition and not sent again.
    recognised: u64,
    /// In transactional mode: the open transaction and its committer.
    transactions: Option<Transactions>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink").field("brokers", &self.options.brokers).finish()
    }
}

impl KafkaSink {
    pub fn new(options: KafkaOptions) -> Result<Self, KafkaSinkError> {
        let health = Arc::new(Health::default());
        let producer = producer(&options, &health)?;
        let mut tails = Tails::new(replay_consumer(&options));
        tails.reset(&options.pipeline, 0);
        let transactions = (options.delivery == Delivery::Transactional)
            .then(|| Transactions::new(producer.clone(), options.transactions));
        Ok(Self {
            options,
            producer,
            health,
            partitions: HashMap::new(),
            tails,
            recognised: 0,
            transactions,
        })
    }

    /// A run starts: replays of earlier runs may follow; look `window` records back for them.
    ///
    /// First, nothing of an earlier run may still be on its way, or it could land after this
    /// run's re-sends: transactional mode fences older producers and aborts what this one left
    /// open; idempotent mode waits until the producer has delivered everything it holds (while
    /// the cluster is away, that wait lasts as long as the outage).
    pub async fn begin_run(&mut self, window: usize) -> Result<(), KafkaSinkError> {
        match &self.transactions {
            Some(transactions) => {
                if transactions.unfit_for_a_run().await {
                    // An abort returns before its markers are in the partitions; a new
                    // producer's `init_transactions` aborts the transaction and returns only
                    // once it is complete, so the tails this run reads are decided. A producer
                    // that aborted is never used again, even with confirms of it outstanding
                    // (its retries would carry the aborted batches' sequence numbers).
                    tracing::info!(
                        "an earlier run left a Kafka transaction open or aborted; a new producer ends it"
                    );
                    self.replace_transactional_producer()?;
                }
                let transactions = self.transactions.as_ref().expect("transactional");
                transactions.forget_absent();
                transactions.begin_run().await?;
            }
            None => {
                let mut logged = false;
                while self.producer.in_flight_count() > 0 {
                    if !logged {
                        tracing::info!(messages = self.producer.in_flight_count(), "waiting for the previous run's messages to reach Kafka before reading partition tails");
                        logged = true;
                    }
                    tokio::time::sleep(DRAIN_PAUSE).await;
                }
            }
        }
        self.tails.reset(&self.options.pipeline, window);
        Ok(())
    }

    /// Fetches cluster metadata: proves the brokers are reachable and lists the topics.
    pub async fn check(&self) -> Result<ClusterInfo, KafkaSinkError> {
        let producer = self.producer.clone();
        let timeout = self.options.metadata_timeout;
        let metadata = tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(None, timeout).map(|m| ClusterInfo {
                brokers: m.brokers().len(),
                topics: m.topics().iter().map(|t| t.name().to_owned()).collect(),
            })
        })
        .await
        .expect("metadata task does not panic");
        metadata.map_err(|source| KafkaSinkError::Unreachable {
            brokers: self.options.brokers.clone(),
            source: Box::new(source),
        })
    }

    /// Checks once per topic that it exists, so a missing topic is a clear, immediate error
    /// rather than a message stuck in librdkafka's queue; returns its partition count.
    async fn ensure_topic(&mut self, topic: &str) -> Result<i32, KafkaSinkError> {
        if let Some(partitions) = self.partitions.get(topic) {
            return Ok(*partitions);
        }
        let producer = self.producer.clone();
        let timeout = self.options.metadata_timeout;
        let name = topic.to_owned();
        let state = tokio::task::spawn_blocking(move || {
            let metadata = producer.client().fetch_metadata(Some(&name), timeout)?;
            let topic = metadata.topics().iter().find(|t| t.name() == name);
            Ok::<_, KafkaError>(match topic {
                None => TopicState::Unknown,
                Some(t) => match t.error().map(RDKafkaErrorCode::from) {
                    Some(RDKafkaErrorCode::UnknownTopicOrPartition) => TopicState::Unknown,
                    Some(code) => TopicState::NotReady(format!("{code:?}")),
                    None if t.partitions().is_empty() => {
                        TopicState::NotReady("no partitions".into())
                    }
                    None => TopicState::Ready(t.partitions().len() as i32),
                },
            })
        })
        .await
        .expect("metadata task does not panic")
        .map_err(|source| KafkaSinkError::Metadata {
            topic: topic.into(),
            source: Box::new(source),
        })?;
        let partitions = match state {
            TopicState::Ready(partitions) => partitions,
            TopicState::Unknown => {
                return Err(KafkaSinkError::UnknownTopic { topic: topic.into() })
            }
            // Leaders moving, a broker still loading: wait and retry.
            TopicState::NotReady(why) => {
                return Err(KafkaSinkError::TopicNotReady { topic: topic.into(), why })
            }
        };
        if self.partitions.len() >= KNOWN_TOPICS_MAX {
            self.partitions.clear();
        }
        self.partitions.insert(topic.to_owned(), partitions);
        Ok(partitions)
    }

    /// A producer in a fatal state (e.g. a gapless-guarantee violation) cannot send again. While
    /// it still holds messages, sending on a fresh producer could overtake them: fail instead, so
    /// the engine waits for every confirm and re-sends in order — by then nothing is in flight
    /// and the producer is replaced.
    async fn renew_if_fatal(&mut self, id: &str) -> Result<(), KafkaSinkError> {
        if self.transactions.is_some() {
            return self.renew_transactional_if_lost(id).await;
        }
        let Some((code, reason)) = self.producer.client().fatal_error() else { return Ok(()) };
        if self.producer.in_flight_count() > 0 {
            return Err(KafkaSinkError::ProducerFailed { id: id.into(), reason });
        }
        tracing::warn!(?code, reason = %reason, "Kafka producer hit a fatal error; starting a new one");
        self.producer = producer(&self.options, &self.health)?;
        // What the old producer delivered is not in the tails read so far.
        self.tails.forget();
        Ok(())
    }
}

impl KafkaSink {
    /// Transactional mode: a producer fenced by a newer one never comes back (another relay
    /// leads now); one lost otherwise, or one that aborted a transaction, is replaced once
    /// every confirm it gave out resolved (see [`crate::transaction`]), and what a lost one may
    /// have committed is read anew from the partitions.
    async fn renew_transactional_if_lost(&mut self, id: &str) -> Result<(), KafkaSinkError> {
        let Some(transactions) = &self.transactions else { return Ok(()) };
        if let Some((code, reason)) = self.producer.client().fatal_error() {
            if matches!(
                code,
                RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch
            ) {
                return Err(KafkaSinkError::Fenced { reason });
            }
        }
        if !transactions.needs_new_producer() {
            return Ok(());
        }
        tracing::warn!(id, "replacing the Kafka producer (it failed or aborted a transaction); messages whose transaction's outcome is unknown are looked up first");
        self.replace_transactional_producer()?;
        // The lost transaction's records, if it committed, are the last of each partition.
        self.tails.forget_and_widen(self.options.transactions.max_messages.saturating_add(16));
        // If this fails, the next enlist initialises the new producer again.
        self.transactions.as_ref().expect("just set").begin_run().await
    }
}

impl KafkaSink {
    /// A new producer (and its transactions) in place of the current one: its
    /// `init_transactions`, on the next `begin_run`, bumps the epoch and waits until the old
    /// producer's transaction is complete. What is known of messages (unknown, absent) carries
    /// over.
    fn replace_transactional_producer(&mut self) -> Result<(), KafkaSinkError> {
        let producer = producer(&self.options, &self.health)?;
        let transactions = self.transactions.as_ref().expect("transactional mode");
        self.transactions = Some(transactions.renewed(producer.clone()));
        self.producer = producer;
        Ok(())
    }

    /// Whether `message` may already be in Kafka, so its partition is looked at first: a
    /// possible replay (of an earlier run, or of an earlier round of this one) that is not
    /// known absent, or a message of a transaction whose outcome is unknown.
    fn needs_lookup(&self, message: &Message) -> bool {
        let Some(transactions) = &self.transactions else { return message.possible_replay };
        if transactions.take_unknown(&message.id, message.position) {
            return true;
        }
        let absent = transactions.take_absent(&message.id, message.position);
        message.possible_replay && !absent
    }
}

impl Sink for KafkaSink {
    async fn send(&mut self, message: &Message) -> Result<Confirm, ConnectorError> {
        let size = message.wire_size();
        if size > self.options.max_message_bytes {
            return Err(KafkaSinkError::TooLarge {
                id: message.id.clone(),
                size,
                limit: self.options.max_message_bytes,
            }
            .into());
        }
        self.renew_if_fatal(&message.id).await?;
        let partitions = self.ensure_topic(&message.destination).await?;
        let partition = partition_for(message, partitions);
        if self.needs_lookup(message) && self.tails.contains(message, partition).await? {
            tracing::debug!(id = %message.id, position = %message.position, partition, "already in Kafka; not sent again");
            self.recognised += 1;
            return Ok(Box::pin(futures::future::ready(Ok(()))));
        }
        // From here on the message is not in Kafka: never sent, not found, or sent only in
        // transactions that aborted.
        let refused = |error: KafkaSinkError| {
            if let Some(transactions) = &self.transactions {
                transactions.still_absent(&message.id, message.position);
            }
            ConnectorError::from(error)
        };

        let (headers, structured) = record_headers(message);
        let mut record = FutureRecord::<[u8], [u8]>::to(&message.destination)
            .headers(headers)
            .partition(partition);
        if let Some(key) = &message.key {
            record = record.key(key.as_bytes());
        }
        if let Some(body) = &structured {
            record = record.payload(body);
        } else if let Some(payload) = &message.payload {
            record = record.payload(payload);
        }
        let enlisted = match &self.transactions {
            Some(transactions) => Some(transactions.enlist(&message.id).await.map_err(refused)?),
            None => None,
        };
        let full_since = std::time::Instant::now();
        let delivery = loop {
            match self.producer.send_result(record) {
                Ok(delivery) => break delivery,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // Wait for room, but not forever: the engine backs off and re-sends.
                    if full_since.elapsed() >= self.options.metadata_timeout {
                        return Err(refused(KafkaSinkError::QueueFull {
                            id: message.id.clone(),
                            after: self.options.metadata_timeout,
                        }));
                    }
                    record = back;
                    tokio::time::sleep(QUEUE_FULL_PAUSE).await;
                }
                Err((source, _)) => {
                    return Err(refused(KafkaSinkError::Produce {
                        id: message.id.clone(),
                        topic: message.destination.clone(),
                        source: Box::new(source),
                    }));
                }
            }
        };
        let id = message.id.clone();
        let topic = message.destination.clone();
        let health = Arc::clone(&self.health);
        let delivered: Confirm = Box::pin(delivery.map(move |report| match report {
            Ok(Ok(_delivered)) => {
                health.delivered();
                Ok(())
            }
            Ok(Err((source, _message))) => {
                Err(KafkaSinkError::Produce { id, topic, source: Box::new(source) }.into())
            }
            Err(_canceled) => Err(KafkaSinkError::Canceled { id }.into()),
        }));
        Ok(match enlisted {
            Some(enlisted) => enlisted.confirm(message.id.clone(), message.position, delivered),
            None => delivered,
        })
    }

    fn trouble(&self) -> Option<String> {
        self.health.trouble()
    }

    fn replays_recognised(&self) -> u64 {
        self.recognised
    }

    fn capabilities(&self) -> Capabilities {
        // The key picks the partition (`partition_for`), and a partition keeps order.
        Capabilities { orders_by_key: true, replays: Replays::Suppressed }
    }

    async fn check(&mut self, destination: Option<&str>) -> Result<Checked, ConnectorError> {
        let info = KafkaSink::check(self).await?;
        let reached = format!(
            "reached {} ({} brokers, {} topics)",
            self.options.brokers,
            info.brokers,
            info.topics.len()
        );
        let destination = destination.map(|topic| {
            if info.topics.iter().any(|t| t == topic) {
                Ok(format!("{topic:?} exists"))
            } else {
                Err(format!("{topic:?} does not exist: create it"))
            }
        });
        Ok(Checked { reached, destination_kind: "topic", destination })
    }
}

/// The record's headers — the message's, then a CloudEvent's in the Kafka binding (binary:
/// `ce_<attribute>`, with `datacontenttype` as `content-type`; structured: only `content-type`)
/// — and, in structured mode, the event that is the record's value.
fn record_headers(message: &Message) -> (OwnedHeaders, Option<Vec<u8>>) {
    let mut headers = OwnedHeaders::new_with_capacity(message.headers.len() + 8);
    for header in &message.headers {
        headers = headers.insert(Header { key: &header.name, value: Some(&header.value) });
    }
    let Some(event) = &message.cloudevent else { return (headers, None) };
    match event.mode {
        cloudevents::Mode::Binary => {
            for (name, value) in event.attributes(message) {
                let key = match name {
                    "datacontenttype" => "content-type".to_string(),
                    name => format!("ce_{name}"),
                };
                headers = headers.insert(Header { key: &key, value: Some(value) });
            }
            (headers, None)
        }
        cloudevents::Mode::Structured => {
            let value = Some(cloudevents::STRUCTURED_CONTENT_TYPE);
            headers = headers.insert(Header { key: "content-type", value });
            (headers, Some(event.structured(message)))
        }
    }
}

/// The client that reads partition tails: the producer's connection and security settings.
fn replay_consumer(options: &KafkaOptions) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &options.brokers);
    for (key, value) in &options.properties {
        let shared = ["security.", "sasl.", "ssl.", "socket.", "broker.", "client."];
        if shared.iter().any(|prefix| key.starts_with(prefix)) {
            config.set(key, value);
        }
    }
    config
        .set("group.id", format!("outbox-relay.{}.replay-check", options.pipeline))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        // Only committed records prove a delivery (transactional mode aborts what a crash left).
        .set("isolation.level", "read_committed")
        // The end of a partition is the point: do not let the broker hold a fetch for more.
        .set("fetch.wait.max.ms", "10");
    config
}

fn producer(
    options: &KafkaOptions,
    health: &Arc<Health>,
) -> Result<FutureProducer<RelayContext>, KafkaSinkError> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &options.brokers);
    config.set("client.id", "outbox-relay");
    for (key, value) in &options.properties {
        config.set(key, value);
    }
    for (key, value, _why) in enforced(options.delivery, &options.properties) {
        config.set(key, value);
    }
    if options.delivery == Delivery::Transactional {
        config.set("transactional.id", &options.transactional_id);
    }
    config
        .create_with_context(RelayContext::new(Arc::clone(health)))
        .map_err(|source| KafkaSinkError::Config { source: Box::new(source) })
}

/// Against the test broker (`scripts/services.sh up`; `OUTBOX_RELAY_TEST_KAFKA`).
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use outbox_relay_core::{Fields, PayloadKind, Position};
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;

    use super::*;
    use crate::TransactionSettings;

    fn message(topic: &str, seq: i64, payload: usize) -> Message {
        Message {
            id: format!("m{seq}"),
            position: Position::Poll { seq },
            destination: topic.into(),
            key: Some("k".into()),
            headers: Vec::new(),
            payload: Some(Bytes::from(vec![b'x'; payload])),
            payload_kind: PayloadKind::Binary,
            fields: Fields::default(),
            own_headers: 0,
            possible_replay: false,
            redrive: false,
            cloudevent: None,
        }
    }

    /// A topic that refuses records over 10 kB: a bigger one fails its transaction, which is
    /// then aborted.
    async fn small_record_topic(brokers: &str) -> String {
        let topic = format!("tx_abort_{}_{:08x}", std::process::id(), rand_suffix());
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
        let new =
            NewTopic::new(&topic, 1, TopicReplication::Fixed(1)).set("max.message.bytes", "10000");
        let created = admin.create_topics([&new], &AdminOptions::new()).await.unwrap();
        assert!(created.iter().all(Result::is_ok), "{created:?}");
        topic
    }

    fn rand_suffix() -> u32 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos()
    }

    #[tokio::test]
    async fn a_run_after_an_abort_never_uses_the_producer_that_aborted() {
        let brokers = std::env::var("OUTBOX_RELAY_TEST_KAFKA")
            .expect("OUTBOX_RELAY_TEST_KAFKA: run `scripts/test.sh` (it starts Kafka)");
        let topic = small_record_topic(&brokers).await;
        let mut sink = KafkaSink::new(KafkaOptions {
            brokers,
            // The client would refuse the big record itself; the broker must.
            properties: [("message.max.bytes".to_owned(), "1000000".to_owned())].into(),
            max_message_bytes: 500_000,
            metadata_timeout: Duration::from_secs(10),
            pipeline: "abort-test".into(),
            delivery: Delivery::Transactional,
            transactional_id: topic.clone(),
            transactions: TransactionSettings {
                interval: Duration::from_millis(200),
                max_messages: 1000,
                timeout: Duration::from_secs(10),
            },
        })
        .unwrap();
        sink.begin_run(16).await.unwrap();
        let aborting = sink.producer.client().native_ptr() as usize;

        // One transaction: a record the broker takes, one it refuses. The first one's confirm
        // is kept, unresolved, as a round cut short by a source failure leaves it.
        let kept = sink.send(&message(&topic, 1, 100)).await.unwrap();
        let refused = sink.send(&message(&topic, 2, 50_000)).await.unwrap();
        let error = tokio::time::timeout(Duration::from_secs(30), refused).await.unwrap();
        assert!(error.is_err(), "the broker refuses a record over max.message.bytes");
        assert!(sink.transactions.as_ref().unwrap().unfit_for_a_run().await, "it aborted");

        sink.begin_run(16).await.unwrap();
        assert_ne!(
            sink.producer.client().native_ptr() as usize,
            aborting,
            "a new run sends with a new producer"
        );
        let confirm = sink.send(&message(&topic, 3, 100)).await.unwrap();
        tokio::time::timeout(Duration::from_secs(30), confirm).await.unwrap().unwrap();
        let kept = tokio::time::timeout(Duration::from_secs(30), kept).await.unwrap();
        assert!(kept.is_err(), "the aborted transaction's other record is not confirmed");
    }
}
