//! The real `outbox-relay` binary, run as a child process.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_outbox-relay")
}

/// Output of a one-shot command (`migrate`, `check`).
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `outbox-relay --config <file> <args>` to completion.
pub async fn command(config: &str, args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, config).unwrap();
    let output = Command::new(bin())
        .arg("--config")
        .arg(&path)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    Output {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `migrate`, which must succeed.
pub async fn migrate(config: &str) {
    let out = command(config, &["migrate"]).await;
    assert!(out.status.success(), "migrate failed:\n{}{}", out.stdout, out.stderr);
}

/// A running `outbox-relay run`, killed on drop.
pub struct Relay {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub metrics_port: u16,
}

impl Relay {
    /// Starts `run` with `config`, its `[telemetry]` (added if missing) listening on a free port.
    pub fn spawn(config: &str) -> Relay {
        let dir = tempfile::tempdir().unwrap();
        let metrics_port = super::free_port();
        let listen = format!("listen = \"127.0.0.1:{metrics_port}\"\n");
        let config = match config.split_once("[telemetry]\n") {
            Some((before, after)) => format!("{before}[telemetry]\n{listen}{after}"),
            None => format!("{config}\n[telemetry]\n{listen}"),
        };
        std::fs::write(dir.path().join("relay.toml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("relay.log")).unwrap();
        let child = Command::new(bin())
            .arg("--config")
            .arg(dir.path().join("relay.toml"))
            .arg("run")
            .env("RUST_LOG", std::env::var("RELAY_LOG").unwrap_or_else(|_| "info".into()))
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Relay { child: Some(child), dir, metrics_port }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().and_then(Child::id).expect("running")
    }

    /// VmHWM: the process's peak resident set, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("relay.log")
    }

    /// Everything the relay logged so far (ANSI colours stripped).
    pub fn log(&self) -> String {
        let raw = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        strip_ansi(&raw)
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        signal(self.pid(), "TERM");
    }

    /// SIGKILL, and reaps the process.
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id().unwrap(), "KILL");
            let _ = child.wait().await;
        }
    }

    /// The process has not exited (it recovers from failures on its own).
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|child| child.try_wait().unwrap().is_none())
    }

    /// Waits for the process to exit.
    pub async fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!("relay did not exit within {timeout:?}; log:\n{}", self.log()),
        }
    }

    /// The value of a Prometheus metric (first sample whose name starts with `name`).
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let body = self.http_get("/metrics").await?;
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// `GET path` on the telemetry port; `None` if not reachable yet.
    pub async fn http_get(&self, path: &str) -> Option<String> {
        let mut stream =
            tokio::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).await.ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        Some(response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // A failed test's relay log outlives the test (its directory does not): CI prints only
        // the tail. `RELAY_KEEP_LOGS=1` keeps every relay's log, for studying a rare failure.
        let failed = std::thread::panicking();
        if failed || std::env::var_os("RELAY_KEEP_LOGS").is_some() {
            let log = self.log();
            let kept = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("relay-logs");
            let name = format!("{}.log", super::unique("relay"));
            if std::fs::create_dir_all(&kept).is_ok()
                && std::fs::write(kept.join(&name), &log).is_ok()
            {
                eprintln!("---- the whole relay log: {} ----", kept.join(&name).display());
            }
        }
        if failed {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            eprintln!("---- relay log (last {} lines) ----", tail.len());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

fn signal(pid: u32, name: &str) {
    let _ =
        std::process::Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status();
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
