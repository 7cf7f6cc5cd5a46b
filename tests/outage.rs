//! Interruptions mid-run — a broker stopped or killed and restarted, the relay itself killed —
//! lose nothing and keep each key's order. On Kafka nothing is published twice (replays are
//! recognised in the partitions); on RabbitMQ duplicates of messages whose confirm was lost are
//! allowed, counted, and marked.

mod support;

use std::time::Duration;

use support::brokers::{RabbitNode, Tansu};
use support::check::{kafka_streams, verify, Delivered};
use support::kafka::{create_topic, read_all};
use support::pg::{connect, count, fresh_database};
use support::rabbit::drain;
use support::relay::{migrate, Relay};
use support::workload::{self, Committed, Workload};
use support::{unique, wait_for};
use tokio_postgres::Client;

/// Rows that must pile up in the outbox while the broker is away.
const BACKLOG_DURING_OUTAGE: i64 = 1_500;

/// Starts the relay and 6 000 rows of concurrent writes; once 1 000 messages are published,
/// hands the relay to `interrupt` (which may replace it); then waits for the writers and for an
/// empty outbox. Returns what was committed and the relay running at the end.
async fn interrupted_run(
    db: &str,
    config: &str,
    interrupt: impl AsyncFnOnce(Relay, &Client) -> Relay,
) -> (Committed, Relay) {
    migrate(config).await;
    let relay = Relay::spawn(config);
    let workload = Workload { rows: 6_000, ..Workload::default() };
    let writers = tokio::spawn({
        let db = db.to_owned();
        async move { workload::run(&db, &workload).await }
    });
    let client = connect(db).await;
    let relay_ref = &relay;
    wait_for("1 000 messages published", Duration::from_secs(60), || async move {
        relay_ref.metric("outbox_relay_messages_published_total").await.unwrap_or(0.0) >= 1_000.0
    })
    .await;
    let relay = interrupt(relay, &client).await;
    let committed = writers.await.unwrap();
    let client = &client;
    wait_for("the relay to empty the outbox", Duration::from_secs(180), || async move {
        count(client, "select count(*) from outbox").await == 0
    })
    .await;
    (committed, relay)
}

/// Waits until the writers have piled up a backlog (the broker is away, nothing is deleted).
async fn backlog_builds_up(client: &Client) {
    wait_for("a backlog to build up while the broker is down", Duration::from_secs(60), || async move {
        count(client, "select count(*) from outbox").await >= BACKLOG_DURING_OUTAGE
    })
    .await;
}

async fn stop(mut relay: Relay) {
    relay.terminate();
    assert!(relay.wait(Duration::from_secs(30)).await.success(), "{}", relay.log());
}

fn kafka_config(db: &str, brokers: &str, prefix: &str) -> String {
    format!(
        r#"
[postgres]
url = "{db}"
[pipeline]
retry_max_backoff = "2s"
[sink]
kind = "kafka"
brokers = "{brokers}"
metadata_timeout = "2s"
[route]
topic = "{prefix}.${{aggregatetype}}"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_broker_killed_and_restarted_mid_run_loses_nothing() {
    let mut tansu = Tansu::start().await;
    let db = fresh_database("outage_kafka").await;
    let prefix = unique("ok");
    let topic = format!("{prefix}.order");
    create_topic(&tansu.brokers(), &topic, 4).await;
    let config = kafka_config(&db, &tansu.brokers(), &prefix);
    let (committed, relay) = interrupted_run(&db, &config, async |relay, client| {
        tansu.kill9().await;
        backlog_builds_up(client).await;
        tansu.start_again().await;
        relay
    })
    .await;
    // Replays are recognised in the partitions and not sent again: no duplicates.
    let outcome =
        verify(&kafka_streams(&read_all(&tansu.brokers(), &topic).await), &committed, false);
    stop(relay).await;
    println!(
        "kafka outage (kill -9 + restart): {} rows committed, {} messages read, {} duplicates, \
         0 lost, key order kept",
        committed.rows(),
        outcome.messages,
        outcome.duplicates
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rabbitmq_node_stopped_and_restarted_mid_run_loses_nothing() {
    let mut node = RabbitNode::start().await;
    let db = fresh_database("outage_rabbit").await;
    let prefix = unique("or");
    // One queue behind a topic exchange: an x-consistent-hash exchange may move keys to other
    // queues when the node restarts (rabbitmq-server#3386), which would hide what the relay does.
    let config = format!(
        r##"
[postgres]
url = "{db}"
[pipeline]
retry_max_backoff = "2s"
[sink]
kind = "rabbitmq"
url = "{url}"
connect_timeout = "2s"
[[sink.exchanges]]
name = "{prefix}.order"
kind = "topic"
[[sink.queues]]
name = "{prefix}.all"
[[sink.bindings]]
queue = "{prefix}.all"
exchange = "{prefix}.order"
routing_key = "#"
[route]
topic = "{prefix}.${{aggregatetype}}"
"##,
        url = node.url()
    );
    let (committed, relay) = interrupted_run(&db, &config, async |relay, client| {
        node.stop().await;
        backlog_builds_up(client).await;
        assert_eq!(relay.http_get("/readyz").await.as_deref(), Some("retrying\n"));
        node.start_again().await;
        relay
    })
    .await;
    let deliveries = drain(&node.url(), &format!("{prefix}.all")).await;
    let stream: Vec<Delivered> = deliveries
        .iter()
        .map(|d| Delivered::from_payload(d.message_id.clone().unwrap(), &d.payload, d.redelivered))
        .collect();
    let outcome = verify(&[stream], &committed, true);
    stop(relay).await;
    println!(
        "rabbitmq outage (node stop + start): {} rows committed, {} messages read, {} duplicates, \
         0 lost, key order kept",
        committed.rows(),
        outcome.messages,
        outcome.duplicates
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_killed_mid_run_and_restarted_loses_nothing() {
    let services = support::services();
    let db = fresh_database("relay_kill").await;
    let prefix = unique("rk");
    let topic = format!("{prefix}.order");
    create_topic(&services.kafka, &topic, 4).await;
    let config = kafka_config(&db, &services.kafka, &prefix);
    let (committed, relay) = interrupted_run(&db, &config, async |mut relay, _| {
        relay.kill9().await;
        Relay::spawn(&config)
    })
    .await;
    let outcome =
        verify(&kafka_streams(&read_all(&services.kafka, &topic).await), &committed, false);
    stop(relay).await;
    println!(
        "relay kill -9 + restart: {} rows committed, {} messages read, {} duplicates, 0 lost, \
         key order kept",
        committed.rows(),
        outcome.messages,
        outcome.duplicates
    );
}
