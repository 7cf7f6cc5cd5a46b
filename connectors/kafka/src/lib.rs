//! Kafka sink: librdkafka's idempotent producer, one delivery report per message.
//!
//! Invariants this sink keeps (DESIGN §3.1–3.2):
//! - A confirm resolves `Ok` only for a delivery report with `acks=all`.
//! - Per key, order is the order of `send`: the same key always lands on the same partition
//!   (`murmur2_random`, the Java client's choice), and the idempotent producer keeps a partition's
//!   order across its internal retries (≤5 requests in flight).
//! - Nothing is dropped to make room or time: `message.timeout.ms = 0` (never give up on a
//!   transient failure) and `enable.gapless.guarantee = true` (a permanent failure stops the
//!   producer instead of letting later messages of the partition overtake the failed one).
//! - A message that may have been delivered by an earlier run is sent only if it is not already
//!   in its partition (see `replay`).

mod context;
mod error;
mod partition;
mod replay;
mod sink;

pub use error::KafkaSinkError;
pub use sink::{ClusterInfo, KafkaOptions, KafkaSink, ENFORCED_PROPERTIES};
