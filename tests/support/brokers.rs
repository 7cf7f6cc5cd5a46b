//! Brokers a test owns, so it can stop and restart them: tansu on an SQLite file, and a
//! RabbitMQ node of its own. Both keep what they confirmed across a restart.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::{free_port, services, unique, wait_for};

async fn port_open(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
}

/// A tansu broker storing into `tansu.db` in its own directory.
pub struct Tansu {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Tansu {
    pub async fn start() -> Tansu {
        let mut tansu = Tansu { port: free_port(), dir: tempfile::tempdir().unwrap(), child: None };
        tansu.start_again().await;
        tansu
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker on the same port and file.
    pub async fn start_again(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
            .unwrap();
        let child = Command::new(services().tansu)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let port = self.port;
        wait_for("tansu to listen", Duration::from_secs(30), || port_open(port)).await;
    }

    /// SIGKILL: the broker dies without a chance to flush anything.
    pub async fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.start_kill().unwrap();
        child.wait().await.unwrap();
    }
}

/// A RabbitMQ node of the test's own (own name, port, data directory).
pub struct RabbitNode {
    pub port: u16,
    name: String,
    dir: PathBuf,
    running: bool,
}

impl RabbitNode {
    pub async fn start() -> RabbitNode {
        let port = free_port();
        let dir = std::env::temp_dir().join(unique("rabbit-node"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.default = 127.0.0.1:{port}\n"),
        )
        .unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[rabbitmq_consistent_hash_exchange].\n")
            .unwrap();
        // The Debian wrapper runs the node as the rabbitmq user.
        let _ = std::process::Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&dir)
            .status();
        let name = format!("{}@localhost", unique("outboxtest"));
        let mut node = RabbitNode { port, name, dir, running: false };
        node.start_again().await;
        node
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    pub async fn start_again(&mut self) {
        let dist_port = free_port();
        let status = Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_CONFIG_FILE", self.dir.join("rabbitmq"))
            .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", self.dir.join("enabled_plugins"))
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .expect("rabbitmq-server is installed");
        assert!(status.success(), "rabbitmq-server -detached failed for {}", self.name);
        self.running = true;
        let port = self.port;
        wait_for("the RabbitMQ node to listen", Duration::from_secs(90), || port_open(port)).await;
    }

    /// Stops the node (`rabbitmqctl stop`); durable queues and confirmed messages survive.
    pub async fn stop(&mut self) {
        let status = Command::new("rabbitmqctl")
            .args(["-n", &self.name, "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .unwrap();
        assert!(status.success(), "rabbitmqctl stop failed for {}", self.name);
        self.running = false;
        let port = self.port;
        wait_for("the RabbitMQ node to stop listening", Duration::from_secs(30), || async move {
            !port_open(port).await
        })
        .await;
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        if self.running {
            let _ = std::process::Command::new("rabbitmqctl")
                .args(["-n", &self.name, "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
