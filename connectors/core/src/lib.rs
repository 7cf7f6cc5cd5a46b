//! Contracts between the relay engine and the systems it connects.
//!
//! The engine depends on connectors, never the reverse: everything a source and a sink must
//! agree on with the engine lives here — the [`Entry`] a source reads, the routed [`Message`] a
//! sink publishes, the [`Position`] that orders them, and the [`ConnectorError`] that says, where
//! the failure was born, whether retrying can help.

pub mod cloudevents;
mod entry;
mod error;
pub mod headers;
mod position;
mod sink;
mod source;
#[cfg(feature = "test-util")]
pub mod testing;

pub use entry::{Entry, Fields, Header, Message, PayloadKind};
pub use error::{chain, ConnectorError, Retry};
pub use position::{Lsn, Position, PositionParseError};
pub use sink::{Capabilities, Checked, Confirm, Replays, Sink};
pub use source::Source;
