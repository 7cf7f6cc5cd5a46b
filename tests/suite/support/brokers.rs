//! Brokers a test owns, so it can stop and restart them: Apache Kafka nodes (one, or a
//! three-node cluster), and a RabbitMQ node of its own. Both keep what they confirmed across a
//! restart.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::{free_port, services, unique, wait_for};

async fn port_open(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
}

/// Apache Kafka nodes of the test's own (KRaft, each a combined broker + controller): one node,
/// or a three-node cluster whose internal topics have replication factor 3. Each node keeps its
/// log directory across a kill, so a restarted node still has what it acknowledged.
pub struct KafkaCluster {
    nodes: Vec<KafkaNode>,
    dir: tempfile::TempDir,
}

struct KafkaNode {
    id: u32,
    port: u16,
    child: Option<Child>,
}

impl KafkaCluster {
    /// One node.
    pub async fn single() -> KafkaCluster {
        Self::start(1).await
    }

    /// Three nodes; topics made by [`super::kafka::create_replicated_topic`] get replication
    /// factor 3 and `min.insync.replicas=2`.
    pub async fn three() -> KafkaCluster {
        Self::start(3).await
    }

    /// One node with a second listener, TLS on `tls_port`, requiring a client certificate:
    /// its key and certificate chain in `keystore` (PEM, key first), the CAs it trusts in
    /// `truststore` (PEM). The plain listener stays for the test's own clients.
    pub async fn single_with_tls(
        tls_port: u16,
        keystore: &std::path::Path,
        truststore: &std::path::Path,
    ) -> KafkaCluster {
        let tls = |properties: String, port: u16| {
            let plain = format!("PLAINTEXT://127.0.0.1:{port}");
            let both = format!("{plain},SSL://127.0.0.1:{tls_port}");
            let properties = properties
                .replace(&format!("listeners={plain}"), &format!("listeners={both}"))
                .replace(
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SSL:SSL,",
                );
            format!(
                "{properties}\nssl.keystore.type=PEM\nssl.keystore.location={}\n\
                 ssl.truststore.type=PEM\nssl.truststore.location={}\nssl.client.auth=required\n",
                keystore.display(),
                truststore.display()
            )
        };
        Self::start_with(1, tls).await
    }

    async fn start(count: u32) -> KafkaCluster {
        Self::start_with(count, |properties, _| properties).await
    }

    /// `count` nodes; `adapt` may change a node's properties (given its plain port).
    async fn start_with(count: u32, adapt: impl Fn(String, u16) -> String) -> KafkaCluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..count).map(|_| (free_port(), free_port())).collect();
        let voters: Vec<String> =
            (1..=count).zip(&ports).map(|(id, (_, c))| format!("{id}@127.0.0.1:{c}")).collect();
        let template = std::fs::read_to_string(services().kafka_config.join("server.properties"))
            .expect("scripts/kafka/server.properties");
        let cluster_id = kafka_tool(&["kafka.tools.StorageTool", "random-uuid"]).await;
        let mut nodes = Vec::new();
        for (id, (port, controller)) in (1..=count).zip(ports) {
            let properties = template
                .replace("@ID@", &id.to_string())
                .replace("@PORT@", &port.to_string())
                .replace("@CONTROLLER_PORT@", &controller.to_string())
                .replace("@VOTERS@", &voters.join(","))
                .replace("@DATA@", &dir.path().join(format!("node-{id}")).display().to_string())
                .replace("@RF@", &count.to_string());
            let properties = adapt(properties, port);
            let file = dir.path().join(format!("node-{id}.properties"));
            std::fs::write(&file, properties).unwrap();
            let file = file.display().to_string();
            kafka_tool(&[
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id.trim(),
                "-c",
                &file,
            ])
            .await;
            nodes.push(KafkaNode { id, port, child: None });
        }
        let mut cluster = KafkaCluster { nodes, dir };
        for id in 1..=count {
            cluster.spawn(id);
        }
        for id in 1..=count {
            cluster.wait_listening(id).await;
        }
        cluster
    }

    /// `bootstrap.servers` for all nodes.
    pub fn brokers(&self) -> String {
        let all: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        all.join(",")
    }

    fn spawn(&mut self, id: u32) {
        let dir = self.dir.path().to_owned();
        let node = &mut self.nodes[id as usize - 1];
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(dir.join(format!("node-{}.log", node.id)))
            .unwrap();
        let child = kafka_java()
            .arg("kafka.Kafka")
            .arg(dir.join(format!("node-{id}.properties")))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("java is installed");
        node.child = Some(child);
    }

    async fn wait_listening(&self, id: u32) {
        let port = self.nodes[id as usize - 1].port;
        wait_for("a Kafka node to listen", Duration::from_secs(120), || port_open(port)).await;
    }

    /// SIGKILL to node `id` (1-based): it dies without a chance to flush anything.
    pub async fn kill9(&mut self, id: u32) {
        let mut child = self.nodes[id as usize - 1].child.take().expect("running");
        child.start_kill().unwrap();
        child.wait().await.unwrap();
    }

    /// Starts node `id` again on the same ports and log directory.
    pub async fn start_again(&mut self, id: u32) {
        self.spawn(id);
        self.wait_listening(id).await;
    }

    /// The node's log, for a failing test's message.
    pub fn log(&self, id: u32) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node-{id}.log"))).unwrap_or_default()
    }
}

/// `java -cp <Kafka's jars> ...`, with the scripts' logging setup.
fn kafka_java() -> Command {
    let services = services();
    let mut command = Command::new("java");
    command
        .args(["-Xms128m", "-Xmx512m", "-XX:+UseG1GC", "-Djava.awt.headless=true"])
        .arg(format!(
            "-Dlog4j2.configurationFile={}",
            services.kafka_config.join("log4j2.properties").display()
        ))
        .arg("-cp")
        .arg(format!("{}/*", services.kafka_libs.display()));
    command
}

/// Runs one of Kafka's tools to completion and returns its standard output.
async fn kafka_tool(args: &[&str]) -> String {
    let output = kafka_java().args(args).stdin(Stdio::null()).output().await.unwrap();
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
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
        Self::start_with(|_| String::new()).await
    }

    /// With more `rabbitmq.conf` lines, written by `extra` given the node's directory (where
    /// files the node reads, certificates say, go).
    pub async fn start_with(extra: impl FnOnce(&std::path::Path) -> String) -> RabbitNode {
        let port = free_port();
        let dir = std::env::temp_dir().join(unique("rabbit-node"));
        std::fs::create_dir_all(&dir).unwrap();
        let extra = extra(&dir);
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.default = 127.0.0.1:{port}\n{extra}"),
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
