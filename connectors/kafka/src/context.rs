//! librdkafka's callbacks into our logs. Invariant: an outage produces a handful of log lines,
//! not one per reconnect attempt — each distinct error is logged at once, then at most once per
//! [`QUIET_FOR`] with the number of repeats in between.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::producer::ProducerContext;

/// How long a repeated message stays quiet.
const QUIET_FOR: Duration = Duration::from_secs(30);
/// Distinct messages remembered; beyond this the memo restarts.
const REMEMBERED: usize = 256;

#[derive(Debug, Default)]
pub(crate) struct RelayContext {
    seen: Mutex<HashMap<String, (Instant, u64)>>,
    health: Arc<Health>,
}

/// The cluster's reachability as the client reports it: set by connection-level errors,
/// cleared by the next delivered message.
#[derive(Debug, Default)]
pub(crate) struct Health {
    trouble: Mutex<Option<String>>,
}

impl Health {
    pub(crate) fn trouble(&self) -> Option<String> {
        self.trouble.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn delivered(&self) {
        let mut trouble = self.trouble.lock().unwrap_or_else(|p| p.into_inner());
        if trouble.is_some() {
            *trouble = None;
        }
    }

    fn failing(&self, reason: String) {
        *self.trouble.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
    }
}

impl RelayContext {
    pub(crate) fn new(health: Arc<Health>) -> Self {
        Self { seen: Mutex::default(), health }
    }

    /// `Some(repeats since last logged)` if `key` may be logged now.
    fn admit(&self, key: &str) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        if seen.len() >= REMEMBERED && !seen.contains_key(key) {
            seen.clear();
        }
        match seen.get_mut(key) {
            Some((last, repeats)) if now.duration_since(*last) < QUIET_FOR => {
                *repeats += 1;
                None
            }
            Some((last, repeats)) => {
                let suppressed = *repeats;
                *last = now;
                *repeats = 0;
                Some(suppressed)
            }
            None => {
                seen.insert(key.to_owned(), (now, 0));
                Some(0)
            }
        }
    }
}

impl ClientContext for RelayContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        if facility == "CONFWARN" && message.contains("enable.gapless.guarantee is experimental") {
            // Our deliberate choice (see `properties::enforced`), not news for the operator.
            tracing::debug!(facility, "librdkafka: {message}");
            return;
        }
        let Some(repeats) = self.admit(&format!("log:{facility}")) else { return };
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => {
                tracing::warn!(facility, repeats, "librdkafka: {message}");
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(facility, repeats, "librdkafka: {message}");
            }
            RDKafkaLogLevel::Debug => tracing::debug!(facility, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        use rdkafka::types::RDKafkaErrorCode as C;
        if let Some(
            C::AllBrokersDown | C::BrokerTransportFailure | C::Resolve | C::Authentication,
        ) = error.rdkafka_error_code()
        {
            self.health.failing(format!("Kafka: {reason}"));
        }
        let code =
            error.rdkafka_error_code().map_or_else(|| error.to_string(), |c| format!("{c:?}"));
        if let Some(repeats) = self.admit(&format!("error:{code}")) {
            tracing::warn!(error = %error, repeats, "Kafka client: {reason}");
        }
    }
}

impl ProducerContext for RelayContext {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_quiet_then_counted() {
        let context = RelayContext::default();
        assert_eq!(context.admit("AllBrokersDown"), Some(0));
        for _ in 0..5 {
            assert_eq!(context.admit("AllBrokersDown"), None);
        }
        assert_eq!(context.admit("Other"), Some(0), "distinct errors are not held back");
        let mut seen = context.seen.lock().unwrap();
        seen.get_mut("AllBrokersDown").unwrap().0 -= QUIET_FOR;
        drop(seen);
        assert_eq!(context.admit("AllBrokersDown"), Some(5));
    }
}
