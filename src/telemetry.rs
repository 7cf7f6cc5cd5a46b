//! Logs, metrics and health. Invariant: metric names live here as constants, labels stay
//! low-cardinality, and neither logs nor metrics ever carry payloads or secrets.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, TelemetryConfig};
use crate::error::RelayError;

/// Metric names (Prometheus adds `_total` to counters).
pub(crate) mod names {
    pub(crate) const PUBLISHED: &str = "outbox_relay_messages_published";
    pub(crate) const READ: &str = "outbox_relay_entries_read";
    pub(crate) const ACKED: &str = "outbox_relay_entries_acknowledged";
    pub(crate) const CONFIRM_LATENCY: &str = "outbox_relay_confirm_latency_seconds";
    pub(crate) const IN_FLIGHT: &str = "outbox_relay_in_flight_messages";
    pub(crate) const RETRIES: &str = "outbox_relay_retries";
    pub(crate) const SOURCE_RESTARTS: &str = "outbox_relay_source_restarts";
    pub(crate) const STATE: &str = "outbox_relay_state";
    pub(crate) const DEAD_LETTERS: &str = "outbox_relay_dead_letters";
    pub(crate) const REPLAYS_RECOGNISED: &str = "outbox_relay_replays_recognised";
    pub(crate) const SLOT_WAL_RETAINED: &str = "outbox_relay_slot_wal_retained_bytes";
    pub(crate) const SLOT_LAG: &str = "outbox_relay_slot_lag_bytes";
    pub(crate) const SLOT_SAFE_WAL: &str = "outbox_relay_slot_safe_wal_bytes";
    pub(crate) const DEAD_LETTERS_WAITING: &str = "outbox_relay_dead_letters_waiting";
    pub(crate) const START_TIME: &str = "outbox_relay_start_time_seconds";
}

/// What the relay is doing, for `/readyz` and the `outbox_relay_state` gauge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Activity {
    Starting = 0,
    /// Another relay holds the pipeline lock.
    Standby = 1,
    Running = 2,
    /// Publishing failed; retrying with backoff.
    Retrying = 3,
    Halted = 4,
    Stopping = 5,
}

impl Activity {
    fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Standby,
            2 => Self::Running,
            3 => Self::Retrying,
            4 => Self::Halted,
            5 => Self::Stopping,
            _ => Self::Starting,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Standby => "standby",
            Self::Running => "running",
            Self::Retrying => "retrying",
            Self::Halted => "halted",
            Self::Stopping => "stopping",
        }
    }
}

#[derive(Debug)]
pub(crate) struct Metrics {
    pub(crate) published: Counter,
    pub(crate) read: Counter,
    pub(crate) acknowledged: Counter,
    pub(crate) confirm_latency: Histogram,
    pub(crate) in_flight: Gauge,
    pub(crate) retries: Counter,
    pub(crate) source_restarts: Counter,
    pub(crate) dead_letters: Counter,
    pub(crate) replays_recognised: Counter,
    pub(crate) slot_wal_retained: Gauge,
    pub(crate) slot_lag: Gauge,
    pub(crate) slot_safe_wal: Gauge,
    pub(crate) dead_letters_waiting: Gauge,
    state_gauge: Gauge,
    state: AtomicU8,
}

impl Metrics {
    pub(crate) fn set_state(&self, state: Activity) {
        self.state.store(state as u8, Ordering::Relaxed);
        self.state_gauge.set(state as i64);
    }

    pub(crate) fn state(&self) -> Activity {
        Activity::from_u8(self.state.load(Ordering::Relaxed))
    }
}

#[derive(Debug)]
pub(crate) struct Telemetry {
    pub(crate) metrics: Metrics,
    registry: Registry,
}

impl Telemetry {
    pub(crate) fn new() -> Arc<Self> {
        let metrics = Metrics {
            published: Counter::default(),
            read: Counter::default(),
            acknowledged: Counter::default(),
            confirm_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            in_flight: Gauge::default(),
            retries: Counter::default(),
            source_restarts: Counter::default(),
            dead_letters: Counter::default(),
            replays_recognised: Counter::default(),
            slot_wal_retained: Gauge::default(),
            slot_lag: Gauge::default(),
            slot_safe_wal: Gauge::default(),
            dead_letters_waiting: Gauge::default(),
            state_gauge: Gauge::default(),
            state: AtomicU8::new(Activity::Starting as u8),
        };
        let mut registry = Registry::default();
        registry.register(
            names::PUBLISHED,
            "Messages confirmed by the broker",
            metrics.published.clone(),
        );
        registry.register(names::READ, "Entries read from the source", metrics.read.clone());
        registry.register(
            names::ACKED,
            "Entries acknowledged to the source (rows deleted/marked, LSN flushed)",
            metrics.acknowledged.clone(),
        );
        registry.register(
            names::CONFIRM_LATENCY,
            "Time from handing a message to the broker client to its confirm",
            metrics.confirm_latency.clone(),
        );
        registry.register(
            names::IN_FLIGHT,
            "Messages sent, not yet confirmed",
            metrics.in_flight.clone(),
        );
        registry.register(
            names::RETRIES,
            "Re-send rounds after transient failures",
            metrics.retries.clone(),
        );
        registry.register(
            names::SOURCE_RESTARTS,
            "Times the source was rebuilt after a transient failure",
            metrics.source_restarts.clone(),
        );
        registry.register(
            names::DEAD_LETTERS,
            "Entries set aside in outbox_relay.dead_letters",
            metrics.dead_letters.clone(),
        );
        registry.register(
            names::REPLAYS_RECOGNISED,
            "Possible replays of an earlier run found already in Kafka and not sent again",
            metrics.replays_recognised.clone(),
        );
        registry.register(
            names::SLOT_WAL_RETAINED,
            "WAL the replication slot keeps on the server's disk (from its restart_lsn; WAL mode)",
            metrics.slot_wal_retained.clone(),
        );
        registry.register(
            names::SLOT_LAG,
            "WAL written since the slot's confirmed position: not yet acknowledged (WAL mode)",
            metrics.slot_lag.clone(),
        );
        registry.register(
            names::SLOT_SAFE_WAL,
            "WAL that can still be written before max_slot_wal_keep_size invalidates the slot; \
             -1 when there is no limit (WAL mode)",
            metrics.slot_safe_wal.clone(),
        );
        registry.register(
            names::DEAD_LETTERS_WAITING,
            "Dead letters of this pipeline not redriven yet (read from Postgres)",
            metrics.dead_letters_waiting.clone(),
        );
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let start_time = Gauge::<i64>::default();
        start_time.set(i64::try_from(started).unwrap_or(i64::MAX));
        registry.register(
            names::START_TIME,
            "When this relay process started (Unix time): restarts show as changes",
            start_time,
        );
        registry.register(
            names::STATE,
            "0 starting, 1 standby, 2 running, 3 retrying, 4 halted, 5 stopping",
            metrics.state_gauge.clone(),
        );
        Arc::new(Self { metrics, registry })
    }

    fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Installs the global tracing subscriber (stderr). `RUST_LOG` wins over the configured level.
pub(crate) fn init_logging(config: &TelemetryConfig) {
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| config.log_level.clone());
    let filter = EnvFilter::try_new(log_filter(&spec))
        .unwrap_or_else(|_| EnvFilter::new(log_filter(&config.log_level)));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match config.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// `spec` plus directives that keep data out of the log at debug level: tokio-postgres logs
/// every statement's parameters (payloads, ids) at debug, lapin every frame at trace. Naming either crate in
/// `spec` keeps what it says.
fn log_filter(spec: &str) -> String {
    let mut filter = spec.to_owned();
    for (krate, directive) in
        [("tokio_postgres", "tokio_postgres::query=info"), ("lapin", "lapin=debug")]
    {
        if !spec.contains(krate) {
            if !filter.is_empty() {
                filter.push(',');
            }
            filter.push_str(directive);
        }
    }
    filter
}

/// Serves `/metrics`, `/healthz` and `/readyz` until `shutdown`; `None` when disabled.
pub(crate) async fn serve(
    listen: &str,
    telemetry: Arc<Telemetry>,
    shutdown: CancellationToken,
) -> Result<Option<AbortOnDropHandle<()>>, RelayError> {
    if listen.is_empty() {
        return Ok(None);
    }
    let fail = |source| RelayError::Telemetry { listen: listen.into(), source };
    let addr: SocketAddr = listen
        .parse()
        .map_err(|e| fail(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(fail)?;
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(telemetry);
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.cancelled().await;
        // Let the last scrape see the final state.
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
    Ok(Some(AbortOnDropHandle::new(tokio::spawn(async move {
        if let Err(error) = server.await {
            tracing::warn!(error = %error, "telemetry server stopped");
        }
    }))))
}

async fn metrics(State(telemetry): State<Arc<Telemetry>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        telemetry.encode(),
    )
}

async fn ready(State(telemetry): State<Arc<Telemetry>>) -> impl IntoResponse {
    let state = telemetry.metrics.state();
    let code =
        if state == Activity::Running { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, format!("{}\n", state.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_parameters_stay_out_of_a_debug_log() {
        assert_eq!(log_filter("debug"), "debug,tokio_postgres::query=info,lapin=debug");
        assert_eq!(log_filter(""), "tokio_postgres::query=info,lapin=debug");
        assert_eq!(
            log_filter("info,tokio_postgres=trace"),
            "info,tokio_postgres=trace,lapin=debug"
        );
    }
}
