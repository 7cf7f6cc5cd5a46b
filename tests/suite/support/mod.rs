//! Harness for the integration tests: real Postgres, real brokers, the real binary.
//! Each test binary uses a different part of it.
#![allow(dead_code, unreachable_pub)]

pub mod brokers;
pub mod check;
pub mod cluster;
pub mod config;
pub mod js;
pub mod kafka;
pub mod otel;
pub mod pg;
pub mod proxy;
pub mod rabbit;
pub mod relay;
pub mod tls;
pub mod workload;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Where the services run; written by `scripts/services.sh up` to `.services/env`.
#[derive(Clone, Debug)]
pub struct Services {
    pub pg: String,
    pub pg_bin: PathBuf,
    pub pg_data: PathBuf,
    pub kafka: String,
    pub amqp: String,
    /// Apache Kafka's jars (`scripts/services.sh kafka-libs`).
    pub kafka_libs: PathBuf,
    /// `scripts/kafka`: the node template and logging setup.
    pub kafka_config: PathBuf,
}

pub fn services() -> Services {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set. These tests need real services: run `scripts/test.sh`, or \
                 `scripts/services.sh up && source .services/env` before `cargo test`."
            )
        })
    };
    Services {
        pg: var("OUTBOX_RELAY_TEST_PG"),
        pg_bin: var("OUTBOX_RELAY_TEST_PG_BIN").into(),
        pg_data: var("OUTBOX_RELAY_TEST_PG_DATA").into(),
        kafka: var("OUTBOX_RELAY_TEST_KAFKA"),
        amqp: var("OUTBOX_RELAY_TEST_AMQP"),
        kafka_libs: var("OUTBOX_RELAY_KAFKA_LIBS").into(),
        kafka_config: var("OUTBOX_RELAY_KAFKA_CONFIG").into(),
    }
}

/// A name no other test (or earlier run) uses: `prefix_<pid>_<n>_<random>`.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}_{}_{n}_{:06x}", std::process::id(), rand::random::<u32>() & 0xFF_FFFF)
}

/// Polls `condition` every 50 ms until it holds; panics with `what` after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
