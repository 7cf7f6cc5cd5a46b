//! How connectors report failure. Invariant: whether a failure is retried is decided where the
//! error is born, by the connector that understands it, and travels with the error.

use std::error::Error;
use std::fmt;

/// Whether retrying can succeed, and whose fault it is if not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Network, broker or database unavailability: retry with backoff, in the same order.
    Transient,
    /// This message can never be delivered as it is (oversize, unroutable, unknown topic, NULL
    /// key, undecodable): the poison policy decides (halt, or dead-letter and go on).
    Permanent,
    /// Nothing can be delivered until an operator acts (bad credentials, missing table, invalid
    /// client configuration): the relay halts whatever the poison policy.
    Fatal,
}

/// A connector failure, classified. `Display` shows the connector's own message; `source()`
/// continues with that error's cause, so a printed chain names each cause once.
pub struct ConnectorError {
    retry: Retry,
    inner: Box<dyn Error + Send + Sync + 'static>,
}

impl ConnectorError {
    pub fn new(retry: Retry, error: impl Error + Send + Sync + 'static) -> Self {
        Self { retry, inner: Box::new(error) }
    }

    pub fn transient(error: impl Error + Send + Sync + 'static) -> Self {
        Self::new(Retry::Transient, error)
    }

    pub fn permanent(error: impl Error + Send + Sync + 'static) -> Self {
        Self::new(Retry::Permanent, error)
    }

    pub fn fatal(error: impl Error + Send + Sync + 'static) -> Self {
        Self::new(Retry::Fatal, error)
    }

    pub fn retry(&self) -> Retry {
        self.retry
    }

    /// The error as the connector raised it, for downcasting.
    pub fn inner(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.inner
    }
}

impl fmt::Debug for ConnectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectorError")
            .field("retry", &self.retry)
            .field("inner", &self.inner)
            .finish()
    }
}

impl fmt::Display for ConnectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

impl Error for ConnectorError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.inner.source()
    }
}

/// `error: cause: cause`, for one-line reports.
pub fn chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
