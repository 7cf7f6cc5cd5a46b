//! RabbitMQ sink: publisher confirms on one channel per lane, `mandatory` publishes.
//!
//! Invariants this sink keeps (DESIGN §3.1–3.2):
//! - A confirm resolves `Ok` only for a broker ack of a message that was **not** returned as
//!   unroutable; messages are persistent (`delivery_mode = 2`).
//! - Per key, order is the order of `send`: a key always maps to the same lane, and a lane is one
//!   channel, which RabbitMQ keeps in order. Sharding across queues is the broker's job: publish
//!   to an `x-consistent-hash` exchange and the routing key (the shard key) picks the queue.
//! - A channel or connection failure fails every unconfirmed message on it (transient); the
//!   engine re-sends them in order on a fresh connection, marked as possible redeliveries.

mod error;
mod properties;
mod sink;
mod topology;

pub use error::RabbitSinkError;
pub use sink::{RabbitOptions, RabbitSink, TlsFiles};
pub use topology::{ArgValue, BindingSpec, ExchangeSpec, QueueSpec, Topology};
