//! Recognising replays (DESIGN §3.4). A message that may have been delivered by an earlier run
//! (`Message::possible_replay`) is looked up in the tail of the partition it maps to now, among
//! the records of this pipeline (header `outbox-pipeline`). It counts as delivered only on proof
//! that **this very message** is there: a record with its id *and* its source position. Nothing
//! is inferred from other records — not from a higher position (a forged or mirrored record, a
//! route or partition count that changed, two relays sharing a pipeline name, LSNs reused after
//! a point-in-time restore would all turn that inference into a loss). A record found there was
//! acknowledged by the brokers (committed records only: the reader is `read_committed`, so an
//! aborted transaction proves nothing), so the message counts as confirmed without being sent
//! again. Invariant: when in doubt, the message is sent: a duplicate is a nuisance, a false
//! "already there" is a loss.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use outbox_relay_core::{headers, Message, Position};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::KafkaSinkError;

/// Records read from a tail before a WAL scan widens (×8 each time, up to the window).
const FIRST_SCAN: i64 = 1024;
/// Deadline for reading one tail.
const TAIL_DEADLINE: Duration = Duration::from_secs(60);

/// What this pipeline left at the end of one partition: `(id, position)` of each record.
#[derive(Debug, Default)]
struct Tail {
    records: HashSet<(String, Position)>,
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

    /// What was read is stale, and at least `window` records back are to be looked at from now.
    pub(crate) fn forget_and_widen(&mut self, window: usize) {
        self.read.clear();
        self.window = self.window.max(window);
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
            let topic = message.destination.clone();
            // WAL messages come in commit order: the first one that asks for this tail is the
            // oldest this run can replay into it, so the scan may stop below it.
            let floor =
                matches!(message.position, Position::Wal { .. }).then_some(message.position);
            let tail = tokio::task::spawn_blocking(move || {
                read_tail(&config, &topic, partition, &pipeline, window, floor)
            })
            .await
            .expect("tail reader does not panic")
            .map_err(|source| KafkaSinkError::Tail {
                topic: message.destination.clone(),
                partition,
                source: Box::new(source),
            })?;
            tracing::info!(topic = %message.destination, partition, records = tail.records.len(), "read the partition's tail to recognise replays");
            self.read.insert(key.clone(), tail);
        }
        // One lookup for every kind of entry (WAL, poll, redriven dead letter): its own record.
        let wanted = (message.id.clone(), message.position);
        Ok(self.read[&key].records.contains(&wanted))
    }
}

/// Reads the end of `topic`/`partition` (on to the partition's end, which may have moved on
/// since the watermarks were read) and collects what `pipeline` wrote there: polling, `window`
/// records back; WAL (`floor`), back until a record of `pipeline` older than `floor` shows up,
/// widening the scan up to `window` records. Stopping early can only cost a duplicate: a record
/// not read is a message sent again.
fn read_tail(
    config: &ClientConfig,
    topic: &str,
    partition: i32,
    pipeline: &str,
    window: usize,
    floor: Option<Position>,
) -> Result<Tail, KafkaError> {
    let consumer: BaseConsumer<TailContext> = config.create_with_context(TailContext)?;
    let timeout = Duration::from_secs(10);
    let (low, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
    let window = i64::try_from(window).unwrap_or(i64::MAX).max(1);
    let mut scan = if floor.is_some() { FIRST_SCAN.min(window) } else { window };
    loop {
        let start = high.saturating_sub(scan).max(low);
        let tail = read_from(&consumer, topic, partition, start, pipeline)?;
        let below_floor = floor.is_none_or(|floor| {
            tail.records.iter().any(|(_, p)| matches!(p, Position::Wal { .. }) && *p < floor)
        });
        if below_floor || start == low || scan >= window {
            return Ok(tail);
        }
        scan = scan.saturating_mul(8).min(window);
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
        // A copy `outbox-relay replay` sent proves nothing of the relay's own delivery (when in
        // doubt, send).
        if header(headers::PIPELINE) != Some(pipeline) || header(headers::REPLAY).is_some() {
            continue;
        }
        let position = header(headers::POSITION).and_then(|p| p.parse::<Position>().ok());
        if let (Some(id), Some(position)) = (header(headers::ID), position) {
            tail.records.insert((id.to_owned(), position));
        }
    }
}

/// The tail reader's client callbacks: reaching the end of a partition is how a read ends, not
/// an error worth a log line.
struct TailContext;

impl ClientContext for TailContext {
    fn error(&self, error: KafkaError, reason: &str) {
        match error {
            KafkaError::PartitionEOF(_)
            | KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF) => {}
            error => tracing::warn!(error = %error, reason, "reading a partition's tail"),
        }
    }
}

impl ConsumerContext for TailContext {}
