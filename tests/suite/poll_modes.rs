//! The poll source's modes: NOTIFY wake-ups, interval-only polling, marking instead of deleting,
//! extra header columns.

use crate::support;

use std::time::Duration;

use support::config::RelayConfig;
use support::kafka::{create_topic, read_all, Record};
use support::pg::{connect, count, fresh_database};
use support::relay::{migrate, Relay};
use support::{services, unique, wait_for};
use tokio_postgres::Client;

fn config(db: &str, prefix: &str) -> RelayConfig {
    RelayConfig::kafka(db, prefix)
}

async fn insert_rows(client: &Client, n: i32) {
    client
        .execute(
            "insert into outbox (id, aggregatetype, aggregateid, type, payload) \
             select gen_random_uuid(), 'order', 'k' || i % 3, 'OrderCreated', jsonb_build_object('n', i) \
             from generate_series(1, $1) i",
            &[&n],
        )
        .await
        .unwrap();
}

async fn delivered(topic: &str) -> Vec<Record> {
    read_all(&services().kafka, topic).await.into_iter().flatten().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wakes_the_relay_long_before_the_poll_interval_and_extra_headers_are_sent() {
    let db = fresh_database("notify").await;
    let prefix = unique("notify");
    let topic = format!("{prefix}.order");
    create_topic(&services().kafka, &topic, 2).await;
    let config = config(&db, &prefix)
        .source("poll_interval", "1h")
        .set("route.headers", "type", "${type}")
        .set("route.headers", "tenant", "${tenant}")
        .to_string();
    migrate(&config).await;
    let client = connect(&db).await;
    client.batch_execute("alter table outbox add column tenant text default 'acme'").await.unwrap();
    let mut relay = Relay::spawn(&config);
    let relay_ref = &relay;
    // The first read happens at start; after it only a NOTIFY can wake the relay within the hour.
    wait_for("the relay to read once", Duration::from_secs(30), || async move {
        relay_ref.http_get("/readyz").await.as_deref() == Some("running\n")
    })
    .await;
    insert_rows(&client, 5).await;
    let client = &client;
    wait_for("NOTIFY to bring the rows out", Duration::from_secs(30), || async move {
        count(client, "select count(*) from outbox").await == 0
    })
    .await;
    let records = delivered(&topic).await;
    assert_eq!(records.len(), 5);
    for record in &records {
        assert_eq!(record.header("tenant"), Some("acme"));
        assert_eq!(record.header("type"), Some("OrderCreated"));
    }
    relay.terminate();
    assert!(relay.wait(Duration::from_secs(30)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_notify_the_interval_finds_the_rows() {
    let db = fresh_database("interval").await;
    let prefix = unique("interval");
    let topic = format!("{prefix}.order");
    create_topic(&services().kafka, &topic, 2).await;
    let config = config(&db, &prefix)
        .source("notify_channel", "")
        .source("poll_interval", "200ms")
        .to_string();
    migrate(&config).await;
    let client = connect(&db).await;
    let trigger = "select count(*) from pg_trigger where tgname = 'outbox_relay_notify'";
    assert_eq!(
        count(&client, trigger).await,
        0,
        "migrate installs no NOTIFY trigger without a channel"
    );
    let mut relay = Relay::spawn(&config);
    insert_rows(&client, 7).await;
    let client = &client;
    wait_for("the interval to bring the rows out", Duration::from_secs(30), || async move {
        count(client, "select count(*) from outbox").await == 0
    })
    .await;
    assert_eq!(delivered(&topic).await.len(), 7);
    relay.terminate();
    assert!(relay.wait(Duration::from_secs(30)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mark_mode_keeps_published_rows_until_their_retention_ends() {
    let db = fresh_database("mark").await;
    let prefix = unique("mark");
    let topic = format!("{prefix}.order");
    create_topic(&services().kafka, &topic, 2).await;
    let config =
        config(&db, &prefix).source("after_publish", "mark").source("retention", "3s").to_string();
    migrate(&config).await;
    let client = connect(&db).await;
    let mut relay = Relay::spawn(&config);
    insert_rows(&client, 20).await;
    let client = &client;
    wait_for("all 20 rows marked published", Duration::from_secs(30), || async move {
        count(client, "select count(*) from outbox where published_at is not null").await == 20
    })
    .await;
    assert_eq!(delivered(&topic).await.len(), 20, "marked rows were published exactly once");
    wait_for("the retention clean-up to delete them", Duration::from_secs(30), || async move {
        count(client, "select count(*) from outbox").await == 0
    })
    .await;
    assert_eq!(delivered(&topic).await.len(), 20, "marked rows are never published again");
    relay.terminate();
    assert!(relay.wait(Duration::from_secs(30)).await.success());
}

/// More late rows than one read takes: the rest are read on the next polls, none skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_transaction_larger_than_a_batch_is_read_in_full() {
    late_transaction_case(|config| config.source("batch_size", 10)).await;
}

/// The same with batches cut by bytes: a quarter of `max_in_flight_bytes`, a few rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_transaction_larger_than_a_batch_in_bytes_is_read_in_full() {
    late_transaction_case(|config| config.pipeline("max_in_flight_bytes", 2000)).await;
}

async fn late_transaction_case(settings: fn(RelayConfig) -> RelayConfig) {
    let db = fresh_database("late_big").await;
    let prefix = unique("latebig");
    let topic = format!("{prefix}.order");
    create_topic(&services().kafka, &topic, 1).await;
    let config = settings(config(&db, &prefix)).to_string();
    migrate(&config).await;
    let mut relay = Relay::spawn(&config);

    // T1 draws seq 1..=50 and stays open; T2 draws 51 and commits first.
    let mut held = connect(&db).await;
    let t1 = held.transaction().await.unwrap();
    t1.execute(
        "insert into outbox (id, aggregatetype, aggregateid, type, payload) \
         select gen_random_uuid(), 'order', 'held', 'T', jsonb_build_object('n', i) \
         from generate_series(1, 50) i",
        &[],
    )
    .await
    .unwrap();
    let client = connect(&db).await;
    client
        .execute(
            "insert into outbox (id, aggregatetype, aggregateid, type, payload) \
             values (gen_random_uuid(), 'order', 'early', 'T', '{\"n\": 51}')",
            &[],
        )
        .await
        .unwrap();
    let client = &client;
    wait_for("the later commit to be published", Duration::from_secs(30), || async move {
        count(client, "select count(*) from outbox where aggregateid = 'early'").await == 0
    })
    .await;
    t1.commit().await.unwrap();
    wait_for("all 50 late rows published", Duration::from_secs(30), || async move {
        count(client, "select count(*) from outbox").await == 0
    })
    .await;
    assert_eq!(delivered(&topic).await.len(), 51);
    relay.terminate();
    assert!(relay.wait(Duration::from_secs(30)).await.success());
}
