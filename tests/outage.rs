//! Brokers stopped mid-run and restarted: the relay retries, resumes, loses nothing and keeps
//! each key's order (duplicates of messages whose confirm was lost are allowed and counted).

mod support;

use std::time::Duration;

use support::brokers::{RabbitNode, Tansu};
use support::check::{verify, Delivered};
use support::kafka::{create_topic, read_all};
use support::pg::{connect, count, fresh_database};
use support::rabbit::drain;
use support::relay::{migrate, Relay};
use support::workload::{self, Workload};
use support::{unique, wait_for};

/// Rows that must pile up in the outbox while the broker is away.
const BACKLOG_DURING_OUTAGE: i64 = 1_500;

fn workload() -> Workload {
    Workload { rows: 6_000, ..Workload::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_broker_killed_and_restarted_mid_run_loses_nothing() {
    let mut tansu = Tansu::start().await;
    let db = fresh_database("outage_kafka").await;
    let prefix = unique("ok");
    let topic = format!("{prefix}.order");
    create_topic(&tansu.brokers(), &topic, 4).await;
    let config = format!(
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
"#,
        brokers = tansu.brokers()
    );
    migrate(&config).await;
    let mut relay = Relay::spawn(&config);
    let workload = workload();
    let writers = tokio::spawn({
        let (db, workload) = (db.clone(), workload.clone());
        async move { workload::run(&db, &workload).await }
    });

    let client = connect(&db).await;
    let (client, relay_ref) = (&client, &relay);
    wait_for("1 000 messages published", Duration::from_secs(60), || async move {
        relay_ref.metric("outbox_relay_messages_published_total").await.unwrap_or(0.0) >= 1_000.0
    })
    .await;
    tansu.kill9().await;
    wait_for("a backlog to build up while the broker is down", Duration::from_secs(60), || async move {
        count(client, "select count(*) from outbox").await >= BACKLOG_DURING_OUTAGE
    })
    .await;
    tansu.start_again().await;

    let committed = writers.await.unwrap();
    wait_for("the relay to empty the outbox", Duration::from_secs(180), || async move {
        count(client, "select count(*) from outbox").await == 0
    })
    .await;
    let streams: Vec<Vec<Delivered>> = read_all(&tansu.brokers(), &topic)
        .await
        .iter()
        .map(|records| {
            records
                .iter()
                .map(|r| {
                    let id = r.header("id").unwrap().to_owned();
                    Delivered::from_payload(id, r.payload.as_deref().unwrap(), false)
                })
                .collect()
        })
        .collect();
    let outcome = verify(&streams, &committed, true);
    relay.terminate();
    assert!(relay.wait(Duration::from_secs(30)).await.success(), "{}", relay.log());
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
    migrate(&config).await;
    let mut relay = Relay::spawn(&config);
    let workload = workload();
    let writers = tokio::spawn({
        let (db, workload) = (db.clone(), workload.clone());
        async move { workload::run(&db, &workload).await }
    });

    let client = connect(&db).await;
    let (client, relay_ref) = (&client, &relay);
    wait_for("1 000 messages published", Duration::from_secs(60), || async move {
        relay_ref.metric("outbox_relay_messages_published_total").await.unwrap_or(0.0) >= 1_000.0
    })
    .await;
    node.stop().await;
    wait_for("a backlog to build up while the broker is down", Duration::from_secs(60), || async move {
        count(client, "select count(*) from outbox").await >= BACKLOG_DURING_OUTAGE
    })
    .await;
    assert_eq!(relay.http_get("/readyz").await.as_deref(), Some("retrying\n"));
    node.start_again().await;

    let committed = writers.await.unwrap();
    wait_for("the relay to empty the outbox", Duration::from_secs(180), || async move {
        count(client, "select count(*) from outbox").await == 0
    })
    .await;
    let deliveries = drain(&node.url(), &format!("{prefix}.all")).await;
    let stream: Vec<Delivered> = deliveries
        .iter()
        .map(|d| Delivered::from_payload(d.message_id.clone().unwrap(), &d.payload, d.redelivered))
        .collect();
    let outcome = verify(&[stream], &committed, true);
    relay.terminate();
    assert!(relay.wait(Duration::from_secs(30)).await.success(), "{}", relay.log());
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
    let config = format!(
        r#"
[postgres]
url = "{db}"
[sink]
kind = "kafka"
brokers = "{brokers}"
[route]
topic = "{prefix}.${{aggregatetype}}"
"#,
        brokers = services.kafka
    );
    migrate(&config).await;
    let mut relay = Relay::spawn(&config);
    let workload = workload();
    let writers = tokio::spawn({
        let (db, workload) = (db.clone(), workload.clone());
        async move { workload::run(&db, &workload).await }
    });
    let client = connect(&db).await;
    let client = &client;
    let relay_ref = &relay;
    wait_for("1 000 messages published", Duration::from_secs(60), || async move {
        relay_ref.metric("outbox_relay_messages_published_total").await.unwrap_or(0.0) >= 1_000.0
    })
    .await;
    relay.kill9().await;
    let mut relay = Relay::spawn(&config);

    let committed = writers.await.unwrap();
    wait_for("the relay to empty the outbox", Duration::from_secs(120), || async move {
        count(client, "select count(*) from outbox").await == 0
    })
    .await;
    let streams: Vec<Vec<Delivered>> = read_all(&services.kafka, &topic)
        .await
        .iter()
        .map(|records| {
            records
                .iter()
                .map(|r| {
                    let id = r.header("id").unwrap().to_owned();
                    Delivered::from_payload(id, r.payload.as_deref().unwrap(), false)
                })
                .collect()
        })
        .collect();
    let outcome = verify(&streams, &committed, true);
    relay.terminate();
    assert!(relay.wait(Duration::from_secs(30)).await.success(), "{}", relay.log());
    println!(
        "relay kill -9 + restart: {} rows committed, {} messages read, {} duplicates, 0 lost, \
         key order kept",
        committed.rows(),
        outcome.messages,
        outcome.duplicates
    );
}
