//! Polling source → RabbitMQ, end to end with the real binary.

use crate::support;

use std::time::{Duration, Instant};

use support::check::{verify, Delivered};
use support::config::RelayConfig;
use support::pg::{connect, count, fresh_database};
use support::rabbit::drain;
use support::relay::{migrate, Relay};
use support::workload::{self, Workload};
use support::{services, unique, wait_for};

const QUEUES: usize = 4;

/// A consistent-hash exchange `<prefix>.order` sharding over `QUEUES` queues, declared by the
/// relay from its config.
fn config(db: &str, amqp: &str, prefix: &str) -> String {
    let queues: Vec<String> = (0..QUEUES).map(|q| format!("{prefix}.q{q}")).collect();
    let queues: Vec<&str> = queues.iter().map(String::as_str).collect();
    RelayConfig::rabbitmq_at(db, amqp, prefix)
        .poll()
        .sink("lanes", 4)
        .topology(prefix, "x-consistent-hash", &queues, "1")
        .route("key", "${aggregateid}")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_out_of_order_commits_arrive_exactly_once_in_commit_order_per_key() {
    let services = services();
    let db = fresh_database("poll_rabbit").await;
    let prefix = unique("pr");
    let config = config(&db, &services.amqp, &prefix);
    migrate(&config).await;
    let mut relay = Relay::spawn(&config);

    let started = Instant::now();
    let workload = Workload::default();
    let committed = workload::run(&db, &workload).await;
    assert!(committed.late_commits > 0, "the workload must commit seq values out of order");

    let client = connect(&db).await;
    let client = &client;
    wait_for("the relay to empty the outbox", Duration::from_secs(120), || async move {
        count(client, "select count(*) from outbox").await == 0
    })
    .await;
    let elapsed = started.elapsed();

    let mut streams = Vec::new();
    for q in 0..QUEUES {
        let deliveries = drain(&services.amqp, &format!("{prefix}.q{q}")).await;
        assert!(!deliveries.is_empty(), "consistent hashing must use queue {q}");
        let stream: Vec<Delivered> = deliveries
            .iter()
            .map(|d| {
                let id = d.message_id.clone().expect("message_id");
                assert_eq!(d.header("id"), Some(id.as_str()));
                assert_eq!(d.header("type"), Some("OrderUpdated"));
                d.delivered()
            })
            .collect();
        streams.push(stream);
    }
    let outcome = verify(&streams, &committed, false);
    assert_eq!(outcome.messages, workload.rows);

    relay.terminate();
    let status = relay.wait(Duration::from_secs(30)).await;
    assert!(status.success(), "SIGTERM must exit 0, got {status}; log:\n{}", relay.log());
    println!(
        "poll→rabbitmq: {} rows ({} late commits) delivered exactly once in key order over {QUEUES} \
         consistent-hash queues in {elapsed:?}",
        committed.rows(),
        committed.late_commits
    );
}
