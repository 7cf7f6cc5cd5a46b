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
//! - A message that may have been delivered by an earlier run is sent again unless that very
//!   record (its id and position) is in its partition (see `replay`).
//! - With `Delivery::Transactional`, a confirm means the Kafka transaction holding the message
//!   committed, and a new producer fences every older one of the pipeline (see `transaction`).
//! - The properties these rest on cannot be overridden, not even through librdkafka's aliases
//!   (see `properties`).

mod context;
mod error;
mod partition;
mod properties;
mod replay;
mod sink;
mod transaction;

pub use error::KafkaSinkError;
pub use properties::{validate as validate_properties, Delivery};
pub use sink::{ClusterInfo, KafkaOptions, KafkaSink};
pub use transaction::TransactionSettings;
