//! Kafka helpers: topics, a consumer that reads a topic exactly up to its high watermarks, and
//! the Java client's partitioner for known-answer checks.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

pub async fn create_topic(brokers: &str, name: &str, partitions: i32) {
    create_topic_with(brokers, name, partitions, 1, &[]).await;
}

/// A topic on a three-node cluster: every partition on all three nodes, and a write acknowledged
/// only once two of them have it.
pub async fn create_replicated_topic(brokers: &str, name: &str, partitions: i32) {
    create_topic_with(brokers, name, partitions, 3, &[("min.insync.replicas", "2")]).await;
}

async fn create_topic_with(
    brokers: &str,
    name: &str,
    partitions: i32,
    replication: i32,
    config: &[(&str, &str)],
) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(replication));
    for (key, value) in config {
        topic = topic.set(key, value);
    }
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin.create_topics([&topic], &options).await.unwrap();
    for result in results {
        result.unwrap_or_else(|(topic, code)| panic!("cannot create topic {topic}: {code:?}"));
    }
}

/// One record as a consumer saw it.
#[derive(Clone, Debug)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, String)>,
}

impl Record {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Every committed record now in `topic`, per partition in offset order: reads each partition
/// from the beginning to its end (partition EOF) as a `read_committed` consumer, so records of
/// aborted Kafka transactions are not among them.
pub async fn read_all(brokers: &str, topic: &str) -> Vec<Vec<Record>> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || read_all_blocking(&brokers, &topic)).await.unwrap()
}

fn read_all_blocking(brokers: &str, topic: &str) -> Vec<Vec<Record>> {
    let timeout = Duration::from_secs(10);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", super::unique("test-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let metadata = consumer.fetch_metadata(Some(topic), timeout).unwrap();
    let partitions = metadata.topics()[0].partitions().len();
    assert!(partitions > 0, "topic {topic} has no partitions");
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment.add_partition_offset(topic, p as i32, Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut out: Vec<Vec<Record>> = vec![Vec::new(); partitions];
    let mut at_end = vec![false; partitions];
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !at_end.iter().all(|e| *e) {
        assert!(std::time::Instant::now() < deadline, "reading {topic} timed out");
        let message = match consumer.poll(Duration::from_millis(500)) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end[p as usize] = true;
                continue;
            }
            // A node of a cluster killed by the test: the reader goes on with the others.
            Some(Err(error)) if transient(&error) => continue,
            Some(Err(error)) => panic!("reading {topic}: {error}"),
            Some(Ok(message)) => message,
        };
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out[message.partition() as usize].push(Record {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
        });
    }
    out
}

fn transient(error: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        error.rdkafka_error_code(),
        Some(
            C::BrokerTransportFailure
                | C::AllBrokersDown
                | C::Resolve
                | C::OperationTimedOut
                | C::NotLeaderForPartition
                | C::LeaderNotAvailable
        )
    )
}

/// Kafka's `Utils.murmur2`, as the Java client computes it.
pub fn java_murmur2(data: &[u8]) -> i32 {
    const M: i32 = 0x5bd1_e995;
    let length = data.len() as i32;
    let mut h: i32 = (0x9747_b28c_u32 as i32) ^ length;
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for chunk in chunks {
        let mut k = i32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= ((k as u32) >> 24) as i32;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    if tail.len() >= 3 {
        h ^= i32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= i32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= i32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= ((h as u32) >> 13) as i32;
    h = h.wrapping_mul(M);
    h ^= ((h as u32) >> 15) as i32;
    h
}

/// The partition the Java client's default partitioner picks for a keyed record.
pub fn java_partition(key: &str, partitions: i32) -> i32 {
    (java_murmur2(key.as_bytes()) & 0x7fff_ffff) % partitions
}
