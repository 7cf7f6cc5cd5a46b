//! Recognising replays (DESIGN §3.4). A message that may have been delivered by an earlier run
//! (`Message::possible_replay`) is looked up in the tail of the partition it would go to, among
//! the records of this pipeline (header `outbox-pipeline`):
//! - WAL positions are commit-ordered and a partition holds a prefix of what was sent to it, so
//!   a message whose position is at or below the newest one found there is already there;
//! - poll positions are not ordered that way, so the tail's ids decide;
//! - a redriven dead letter keeps its old position but is sent behind newer ones, so its id
//!   decides too (the relay sends nothing else until a redriven entry is recorded as delivered,
//!   so one cut short by a crash is among the last records of ours).
//!
//! A record found there was acknowledged by the brokers (it is readable only once replicated),
//! so the message counts as confirmed without being sent again. Invariant: only a record that
//! is really in the partition suppresses a send; when in doubt, the message is sent.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use outbox_relay_core::{headers, Message, Position};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::KafkaSinkError;

/// Records read from a tail before the WAL scan widens (it only needs the newest of ours).
const FIRST_SCAN: i64 = 512;
/// Deadline for reading one tail.
const TAIL_DEADLINE: Duration = Duration::from_secs(60);

/// What this pipeline left at the end of one partition.
#[derive(Debug, Default)]
struct Tail {
    newest: Option<Position>,
    ids: HashSet<String>,
}

#[derive(Debug)]
pub(crate) struct Tails {
    pipeline: String,
    /// How many records back to look.
    window: usize,
    consumer: ClientConfig,
    read: HashMap<(String, i32), Tail>,
}

impl Tails {
    pub(crate) fn new(consumer: ClientConfig) -> Self {
        Self { pipeline: String::new(), window: 0, consumer, read: HashMap::new() }
    }

    /// A new run (or a new producer): what was read is stale.
    pub(crate) fn reset(&mut self, pipeline: &str, window: usize) {
        self.pipeline = pipeline.to_owned();
        self.window = window;
        self.read.clear();
    }

    pub(crate) fn forget(&mut self) {
        self.read.clear();
    }

    /// Whether `message` is already in `partition` of its topic.
    pub(crate) async fn contains(
        &mut self,
        message: &Message,
        partition: i32,
    ) -> Result<bool, KafkaSinkError> {
        let key = (message.destination.clone(), partition);
        if !self.read.contains_key(&key) {
            let (config, pipeline, window) =
                (self.consumer.clone(), self.pipeline.clone(), self.window);
            let (topic, wal) =
                (message.destination.clone(), matches!(message.position, Position::Wal { .. }));
            let tail = tokio::task::spawn_blocking(move || {
                read_tail(&config, &topic, partition, &pipeline, window, wal)
            })
            .await
            .expect("tail reader does not panic")
            .map_err(|source| KafkaSinkError::Tail {
                topic: message.destination.clone(),
                partition,
                source: Box::new(source),
            })?;
            tracing::info!(topic = %message.destination, partition, newest = ?tail.newest, ids = tail.ids.len(), "read the partition's tail to recognise replays");
            self.read.insert(key.clone(), tail);
        }
        let tail = &self.read[&key];
        Ok(match message.position {
            _ if message.redrive => tail.ids.contains(&message.id),
            Position::Wal { .. } => tail.newest.is_some_and(|newest| message.position <= newest),
            Position::Poll { .. } => tail.ids.contains(&message.id),
        })
    }
}

/// Reads the end of `topic`/`partition` back to `window` records (for WAL, only until a record
/// of `pipeline` is found) and collects what `pipeline` wrote there.
fn read_tail(
    config: &ClientConfig,
    topic: &str,
    partition: i32,
    pipeline: &str,
    window: usize,
    wal: bool,
) -> Result<Tail, KafkaError> {
    let consumer: BaseConsumer<TailContext> = config.create_with_context(TailContext)?;
    let timeout = Duration::from_secs(10);
    let (low, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
    let window = i64::try_from(window).unwrap_or(i64::MAX).max(1);
    let mut scan = if wal { FIRST_SCAN.min(window) } else { window };
    loop {
        // `high` can lag the real end (tansu reports the last batch's base offset + 1): reading
        // on to the end of the partition covers that.
        let start = high.saturating_sub(scan).max(low);
        let tail = read_from(&consumer, topic, partition, start, pipeline)?;
        let found = tail.newest.is_some() || !tail.ids.is_empty();
        if !wal || found || start == low || scan >= window {
            return Ok(tail);
        }
        scan = (scan * 8).min(window);
    }
}

fn read_from(
    consumer: &BaseConsumer<TailContext>,
    topic: &str,
    partition: i32,
    start: i64,
    pipeline: &str,
) -> Result<Tail, KafkaError> {
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Offset(start))?;
    consumer.assign(&assignment)?;
    let mut tail = Tail::default();
    let deadline = Instant::now() + TAIL_DEADLINE;
    loop {
        if Instant::now() >= deadline {
            return Err(KafkaError::MessageConsumption(
                rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
            ));
        }
        let record = match consumer.poll(Duration::from_millis(500)) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(tail),
            Some(Err(error)) => return Err(error),
            Some(Ok(record)) => record,
        };
        let Some(record_headers) = record.headers() else { continue };
        let header = |name: &str| {
            record_headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .and_then(|v| std::str::from_utf8(v).ok())
        };
        if header(headers::PIPELINE) != Some(pipeline) {
            continue;
        }
        if let Some(position) = header(headers::POSITION).and_then(|p| p.parse::<Position>().ok()) {
            if matches!(position, Position::Wal { .. }) && tail.newest.is_none_or(|n| position > n)
            {
                tail.newest = Some(position);
            }
        }
        if let Some(id) = header(headers::ID) {
            tail.ids.insert(id.to_owned());
        }
    }
}

/// The tail reader's client callbacks: reaching the end of a partition is how a read ends, not
/// an error worth a log line.
struct TailContext;

impl ClientContext for TailContext {
    fn error(&self, error: KafkaError, reason: &str) {
        match error {
            KafkaError::PartitionEOF(_) => {}
            error => tracing::warn!(error = %error, reason, "reading a partition's tail"),
        }
    }
}

impl ConsumerContext for TailContext {}
