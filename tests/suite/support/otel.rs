//! A real OTLP receiver: the OpenTelemetry Collector (built from the Go module proxy by
//! `scripts/otelcol.sh`), receiving OTLP/HTTP and forwarding every trace, OTLP/JSON, to a
//! recorder in the test — so what the test reads is what the collector made of the relay's
//! export.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

use super::free_port;

fn binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/otelcol.sh");
            let out =
                std::process::Command::new("bash").arg(script).output().expect("run otelcol.sh");
            assert!(
                out.status.success(),
                "scripts/otelcol.sh failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            PathBuf::from(stdout.lines().last().expect("the binary's path").trim())
        })
        .clone()
}

/// The collector and what it forwarded.
pub struct Collector {
    /// `http://127.0.0.1:<port>`: where the relay exports to.
    pub endpoint: String,
    child: Child,
    received: Arc<Mutex<Vec<Value>>>,
    _dir: tempfile::TempDir,
}

impl Collector {
    pub async fn start() -> Collector {
        let received = Arc::new(Mutex::new(Vec::new()));
        let recorder = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let recorder_port = recorder.local_addr().unwrap().port();
        tokio::spawn(record(recorder, Arc::clone(&received)));

        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("otelcol.yaml");
        std::fs::write(&config, config_yaml(port, recorder_port)).unwrap();
        let child = Command::new(binary())
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("otelcol.log")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("start the collector");
        let collector =
            Collector { endpoint: format!("http://127.0.0.1:{port}"), child, received, _dir: dir };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the collector did not start:\n{}",
                collector.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        collector
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("otelcol.log")).unwrap_or_default()
    }

    /// Every span forwarded so far (the `spans` of every `scopeSpans`), with its resource's
    /// `service.name` added as `"service"`.
    pub fn spans(&self) -> Vec<Value> {
        let received = self.received.lock().unwrap();
        let mut spans = Vec::new();
        for body in received.iter() {
            for resource in body["resourceSpans"].as_array().into_iter().flatten() {
                let service = resource["resource"]["attributes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|a| a["key"] == "service.name")
                    .map(|a| a["value"]["stringValue"].clone())
                    .unwrap_or(Value::Null);
                for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                    for span in scope["spans"].as_array().into_iter().flatten() {
                        let mut span = span.clone();
                        span["service"] = service.clone();
                        spans.push(span);
                    }
                }
            }
        }
        spans
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn config_yaml(port: u16, recorder_port: u16) -> String {
    format!(
        "receivers:\n  otlp:\n    protocols:\n      http:\n        endpoint: 127.0.0.1:{port}\n\
         exporters:\n  otlp_http:\n    traces_endpoint: http://127.0.0.1:{recorder_port}/v1/traces\n\
         \x20   encoding: json\n    compression: none\n    retry_on_failure:\n      enabled: false\n\
         \x20   sending_queue:\n      enabled: false\n\
         service:\n  telemetry:\n    metrics:\n      level: none\n\
         \x20 pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [otlp_http]\n"
    )
}

/// A minimal HTTP/1.1 server: stores each request body (JSON) and answers 200 `{}`.
async fn record(listener: TcpListener, received: Arc<Mutex<Vec<Value>>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { return };
        let received = Arc::clone(&received);
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut read = BufReader::new(read);
            loop {
                let mut length = 0usize;
                let mut line = String::new();
                loop {
                    line.clear();
                    if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let header = line.trim_end();
                    if header.is_empty() {
                        break;
                    }
                    if let Some((name, value)) = header.split_once(':') {
                        if name.eq_ignore_ascii_case("content-length") {
                            length = value.trim().parse().unwrap_or(0);
                        }
                    }
                }
                let mut body = vec![0; length];
                if read.read_exact(&mut body).await.is_err() {
                    return;
                }
                if let Ok(json) = serde_json::from_slice(&body) {
                    received.lock().unwrap().push(json);
                }
                let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                if write.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}
