//! The relay's own spans, exported with OTLP/HTTP (JSON) when `telemetry.otlp_endpoint` is set.
//! A message whose entry carries a sampled W3C `traceparent` gets a `publish <destination>`
//! span (kind PRODUCER, from the send to the broker's confirm) in that trace, as a child of the
//! writing transaction's span, with a `confirm <destination>` child (from the hand-over to the
//! confirm); the message then carries the publish span as its `traceparent`, so the consumer's
//! span follows the relay's. Invariants: tracing never holds up or fails delivery — spans go
//! through a bounded queue to one background task, and what does not fit or cannot be exported
//! is dropped and counted in a warning; entries without a sampled traceparent cost nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use outbox_relay_core::headers::{self, TRACEPARENT};
use outbox_relay_core::{Confirm, ConnectorError, Header, Message};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::config::{endpoint, Endpoint, TelemetryConfig};

/// Spans waiting for export; more are dropped.
const QUEUE: usize = 8_192;
/// Spans per export request.
const BATCH: usize = 512;
/// Longest a span waits for its batch.
const LINGER: Duration = Duration::from_secs(1);
/// Deadline of one export request.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

static EXPORTER: OnceLock<Exporter> = OnceLock::new();

#[derive(Debug)]
struct Exporter {
    spans: mpsc::Sender<Value>,
    dropped: Arc<AtomicU64>,
    done: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Starts the export task, once per process, when an endpoint is configured.
pub(crate) fn init(config: &TelemetryConfig) {
    let Ok(Some(endpoint)) = endpoint(&config.otlp_endpoint) else { return };
    let (spans, queue) = mpsc::channel(QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    let resource = json!({"attributes": [
        attribute("service.name", &config.service_name),
        attribute("service.version", env!("CARGO_PKG_VERSION")),
    ]});
    let task = tokio::spawn(export(endpoint, resource, queue, Arc::clone(&dropped)));
    let exporter = Exporter { spans, dropped, done: tokio::sync::Mutex::new(Some(task)) };
    let _ = EXPORTER.set(exporter);
}

/// Exports what is queued and stops the export task (at the end of the process).
pub(crate) async fn flush() {
    let Some(exporter) = EXPORTER.get() else { return };
    let Some(task) = exporter.done.lock().await.take() else { return };
    // The task ends at the end marker; a full queue (a collector that does not answer) is not
    // waited for longer than one export.
    let ending = async {
        let _ = exporter.spans.send(Value::Null).await;
        let _ = task.await;
    };
    let _ = tokio::time::timeout(EXPORT_TIMEOUT + LINGER, ending).await;
}

async fn export(
    endpoint: Endpoint,
    resource: Value,
    mut queue: mpsc::Receiver<Value>,
    dropped: Arc<AtomicU64>,
) {
    let mut warned_dropped = 0;
    loop {
        let Some(first) = queue.recv().await else { return };
        let mut ending = first.is_null();
        let mut batch: Vec<Value> = Vec::with_capacity(BATCH);
        if !ending {
            batch.push(first);
        }
        let deadline = tokio::time::Instant::now() + LINGER;
        while !ending && batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(Value::Null)) | Ok(None) => ending = true,
                Ok(Some(span)) => batch.push(span),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            let count = batch.len();
            let body = json!({"resourceSpans": [{
                "resource": resource,
                "scopeSpans": [{
                    "scope": {"name": "outbox-relay", "version": env!("CARGO_PKG_VERSION")},
                    "spans": batch,
                }],
            }]});
            if let Err(error) = post(&endpoint, body.to_string()).await {
                dropped.fetch_add(count as u64, Ordering::Relaxed);
                tracing::warn!(%error, spans = count, endpoint = %endpoint.authority, "OTLP export failed; spans dropped");
            }
        }
        let now = dropped.load(Ordering::Relaxed);
        if now > warned_dropped {
            tracing::warn!(dropped = now, "spans dropped so far (export failed or queue full)");
            warned_dropped = now;
        }
        if ending {
            return;
        }
    }
}

async fn post(endpoint: &Endpoint, body: String) -> Result<(), String> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(&endpoint.authority)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(connection);
        let request = Request::post(&endpoint.path)
            .header(hyper::header::HOST, &endpoint.authority)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await.map_err(|e| format!("request: {e}"))?;
        let status = response.status();
        let text = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&text)))
        }
    };
    tokio::time::timeout(EXPORT_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {EXPORT_TIMEOUT:?}"))?
}

fn attribute(key: &str, value: &str) -> Value {
    json!({"key": key, "value": {"stringValue": value}})
}

fn now_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn span_id() -> String {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return format!("{id:016x}");
        }
    }
}

/// A publish in progress.
#[derive(Debug)]
pub(crate) struct Publish {
    trace_id: String,
    parent_id: String,
    span_id: String,
    flags: String,
    name: String,
    attributes: Vec<Value>,
    started: u64,
}

/// The publish span of `message`, if spans are exported and its entry is in a sampled trace;
/// `system` names the broker ("kafka", "rabbitmq").
pub(crate) fn start(message: &Message, system: &str) -> Option<Publish> {
    EXPORTER.get()?;
    let traceparent = message.headers.iter().rev().find(|h| &*h.name == TRACEPARENT)?;
    if !headers::is_valid_traceparent(&traceparent.value) {
        return None;
    }
    let value = &traceparent.value;
    let flags = &value[53..55];
    let sampled = u8::from_str_radix(flags, 16).is_ok_and(|f| f & 1 == 1);
    if !sampled {
        return None;
    }
    let mut attributes = vec![
        attribute("messaging.system", system),
        attribute("messaging.operation.type", "send"),
        attribute("messaging.operation.name", "publish"),
        attribute("messaging.destination.name", &message.destination),
        attribute("messaging.message.id", &message.id),
        attribute("outbox.position", &message.position.to_string()),
    ];
    if let Some(key) = &message.key {
        let name = match system {
            "kafka" => "messaging.kafka.message.key",
            _ => "messaging.rabbitmq.destination.routing_key",
        };
        attributes.push(attribute(name, key));
    }
    Some(Publish {
        trace_id: value[3..35].into(),
        parent_id: value[36..52].into(),
        span_id: span_id(),
        flags: flags.into(),
        name: message.destination.clone(),
        attributes,
        started: now_nanos(),
    })
}

impl Publish {
    /// `message` as sent: its `traceparent` names this span.
    pub(crate) fn traced(&self, message: &Message) -> Message {
        let mut traced = message.clone();
        let value = format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags);
        for header in traced.headers.iter_mut().filter(|h| &*h.name == TRACEPARENT) {
            *header = Header { name: Arc::clone(&header.name), value: value.clone() };
        }
        traced
    }

    /// The send failed: the span ends with the error.
    pub(crate) fn failed(self, error: &ConnectorError) {
        let end = now_nanos();
        self.record(None, end, Some(error.to_string()));
    }

    /// The message was handed over: the spans end when `confirm` resolves.
    pub(crate) fn confirming(self, confirm: Confirm) -> Confirm {
        let handed = now_nanos();
        Box::pin(async move {
            let result = confirm.await;
            let error = result.as_ref().err().map(ToString::to_string);
            self.record(Some(handed), now_nanos(), error);
            result
        })
    }

    fn record(self, handed: Option<u64>, end: u64, error: Option<String>) {
        let Some(exporter) = EXPORTER.get() else { return };
        let status = match &error {
            Some(message) => json!({"code": 2, "message": message}),
            None => json!({"code": 1}),
        };
        let mut spans = vec![json!({
            "traceId": self.trace_id,
            "spanId": self.span_id,
            "parentSpanId": self.parent_id,
            "flags": u32::from_str_radix(&self.flags, 16).unwrap_or(1),
            "name": format!("publish {}", self.name),
            "kind": 4,
            "startTimeUnixNano": self.started.to_string(),
            "endTimeUnixNano": end.to_string(),
            "attributes": self.attributes,
            "status": status,
        })];
        if let Some(handed) = handed {
            spans.push(json!({
                "traceId": self.trace_id,
                "spanId": span_id(),
                "parentSpanId": self.span_id,
                "name": format!("confirm {}", self.name),
                "kind": 1,
                "startTimeUnixNano": handed.to_string(),
                "endTimeUnixNano": end.to_string(),
                "status": status,
            }));
        }
        for span in spans {
            if exporter.spans.try_send(span).is_err() {
                exporter.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
