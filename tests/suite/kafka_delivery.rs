//! Kafka-specific delivery guarantees on Apache Kafka itself:
//! - replay suppression skips a message only on proof that its own record is in the partition:
//!   a forged record of this pipeline (a higher position, or the same id at another position)
//!   suppresses nothing;
//! - transactional delivery: a producer that takes over the pipeline's `transactional.id` fences
//!   the running relay, which halts loudly;
//! - a three-node cluster (replication factor 3, `min.insync.replicas=2`) whose partition leader
//!   is killed mid-run: 0 lost, 0 duplicates, key order kept, in both delivery modes.

use crate::support;

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;
use support::brokers::KafkaCluster;
use support::check::{kafka_streams, verify};
use support::config::RelayConfig;
use support::kafka::{create_replicated_topic, create_topic, java_partition, read_all};
use support::pg::{connect, count, fresh_database};
use support::relay::{command, migrate, Relay};
use support::workload::{self, Workload};
use support::{services, unique, wait_for};
use tokio_postgres::Client;

fn config(db: &str, brokers: &str, mode: &str, slot: &str, prefix: &str) -> RelayConfig {
    RelayConfig::kafka_at(db, brokers, prefix)
        .pipeline("retry_max_backoff", "1s")
        .source("mode", mode)
        .source("slot", slot)
}

async fn empty(client: &Client, timeout: Duration) {
    wait_for("the relay to empty the outbox", timeout, || async move {
        count(client, "select count(*) from outbox").await == 0
    })
    .await;
}

/// Puts one record into `topic`'s `partition` with the relay's own headers.
async fn produce_forged(brokers: &str, topic: &str, partition: i32, id: &str, position: &str) {
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", brokers).set("acks", "all").create().unwrap();
    let headers = OwnedHeaders::new()
        .insert(Header { key: "id", value: Some(id) })
        .insert(Header { key: "outbox-position", value: Some(position) })
        .insert(Header { key: "outbox-pipeline", value: Some("default") });
    let record = FutureRecord::to(topic)
        .partition(partition)
        .key("forged")
        .payload("{\"key\": \"forged\", \"version\": 0}")
        .headers(headers);
    producer.send(record, Duration::from_secs(10)).await.expect("forged record written");
}

/// The state a crash leaves: every entry may have been sent (`max_sent` beyond all of them),
/// none acknowledged.
async fn as_if_a_run_crashed_after_sending(client: &Client, max_sent: &str) {
    let updated = client
        .execute(
            "update outbox_relay.pipelines set max_sent = $1 where name = 'default'",
            &[&max_sent],
        )
        .await
        .unwrap();
    assert_eq!(updated, 1, "the first run left its pipeline row");
}

async fn forged_records_suppress_nothing(mode: &str, delivery: &str) {
    let kafka = &services().kafka;
    let db = fresh_database(&format!("forged_{mode}")).await;
    let (slot, prefix) = (unique("slot"), unique("fk"));
    let topic = format!("{prefix}.order");
    create_topic(kafka, &topic, 3).await;
    let config = config(&db, kafka, mode, &slot, &prefix).delivery(delivery).to_string();
    migrate(&config).await;
    let client = connect(&db).await;

    // A first run delivers a first batch and stops cleanly (its pipeline row exists).
    let mut relay = Relay::spawn(&config);
    let first = workload::run(&db, &Workload { rows: 300, ..Workload::default() }).await;
    empty(&client, Duration::from_secs(60)).await;
    relay.terminate();
    assert!(relay.wait(Duration::from_secs(30)).await.success(), "{}", relay.log());

    // More entries are committed while no relay runs; the next run must take each of them for a
    // possible replay. Then records claiming to be ours are put into every partition: one whose
    // position is beyond every real one, and, for each entry still in the outbox (poll), one
    // with its id at another position.
    let later = workload::run(&db, &Workload { rows: 300, ..Workload::default() }).await;
    let beyond = if mode == "wal" { "wal:FFFFFFFF/0:0" } else { "poll:9223372036854775807" };
    as_if_a_run_crashed_after_sending(&client, beyond).await;
    for partition in 0..3 {
        produce_forged(kafka, &topic, partition, &unique("forged"), beyond).await;
    }
    if mode == "poll" {
        let rows = client.query("select id::text, aggregateid from outbox", &[]).await.unwrap();
        for row in &rows {
            let (id, key): (String, String) = (row.get(0), row.get(1));
            produce_forged(kafka, &topic, java_partition(&key, 3), &id, "poll:-7").await;
        }
    }

    let mut relay = Relay::spawn(&config);
    empty(&client, Duration::from_secs(60)).await;
    relay.terminate();
    assert!(relay.wait(Duration::from_secs(30)).await.success(), "{}", relay.log());

    let committed = first.and_then(later);
    let real: Vec<Vec<_>> = read_all(kafka, &topic)
        .await
        .into_iter()
        .map(|p| p.into_iter().filter(|r| r.key.as_deref() != Some("forged")).collect())
        .collect();
    let outcome = verify(&kafka_streams(&real), &committed, false);
    assert_eq!(outcome.messages, committed.rows(), "every entry arrived once");
    println!(
        "forged records ({mode}, {delivery}): {} entries, every one delivered once despite \
         forged records of this pipeline in every partition",
        committed.rows()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_record_beyond_every_position_does_not_suppress_wal_entries() {
    forged_records_suppress_nothing("wal", "idempotent").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_records_with_the_entries_ids_do_not_suppress_poll_entries() {
    forged_records_suppress_nothing("poll", "idempotent").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_record_does_not_suppress_transactional_entries() {
    forged_records_suppress_nothing("wal", "transactional").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_producer_taking_the_transactional_id_fences_the_relay_which_halts() {
    let kafka = &services().kafka;
    let db = fresh_database("fenced").await;
    let (slot, prefix) = (unique("slot"), unique("fe"));
    let topic = format!("{prefix}.order");
    create_topic(kafka, &topic, 3).await;
    let transactional_id = unique("txid");
    let config = config(&db, kafka, "wal", &slot, &prefix)
        .sink("delivery", "transactional")
        .sink("transactional_id", transactional_id.as_str())
        .sink("transaction_interval", "50ms")
        .to_string();
    migrate(&config).await;
    let client = connect(&db).await;
    let mut relay = Relay::spawn(&config);
    let first = workload::run(&db, &Workload { rows: 200, ..Workload::default() }).await;
    empty(&client, Duration::from_secs(60)).await;

    // Another producer (as a new leader would) initialises the same transactional.id.
    let usurper: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .set("transactional.id", &transactional_id)
        .create()
        .unwrap();
    // Kept alive until the end of the test: it holds the transactional.id's newest epoch.
    let _usurper = tokio::task::spawn_blocking(move || {
        usurper.init_transactions(Duration::from_secs(30)).unwrap();
        usurper
    })
    .await
    .unwrap();

    // The relay's next transaction is refused: it halts, naming the cause, and acknowledges
    // nothing it could not commit.
    let later = workload::run(&db, &Workload { rows: 50, ..Workload::default() }).await;
    let status = relay.wait(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(1), "a fenced relay halts: {}", relay.log());
    assert!(relay.log().contains("fenced"), "the log names the fencing:\n{}", relay.log());
    let left = count(&client, "select count(*) from outbox").await;
    assert!(left > 0, "the entries it could not commit stay in the outbox");
    let status = command(&config, &["status"]).await.stdout;
    assert!(status.contains("halted"), "{status}");

    // A relay started again fences the usurper in its turn and delivers the rest exactly once.
    let mut relay = Relay::spawn(&config);
    empty(&client, Duration::from_secs(60)).await;
    relay.terminate();
    assert!(relay.wait(Duration::from_secs(30)).await.success(), "{}", relay.log());
    let committed = first.and_then(later);
    let outcome = verify(&kafka_streams(&read_all(kafka, &topic).await), &committed, false);
    println!(
        "fencing: the relay halted when its transactional.id was taken ({left} entries kept), \
         and a restarted one delivered all {} exactly once",
        outcome.messages
    );
}

/// Which node leads `partition` of `topic`, from cluster metadata.
async fn leader_of(brokers: &str, topic: &str, partition: i32) -> u32 {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let client: rdkafka::consumer::BaseConsumer =
            ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
        let metadata = rdkafka::consumer::Consumer::fetch_metadata(
            &client,
            Some(&topic),
            Duration::from_secs(10),
        )
        .unwrap();
        metadata.topics()[0].partitions()[partition as usize].leader() as u32
    })
    .await
    .unwrap()
}

async fn cluster_leader_killed(mode: &str, delivery: &str) {
    let mut cluster = KafkaCluster::three().await;
    let brokers = cluster.brokers();
    let db = fresh_database(&format!("cluster_{mode}")).await;
    let (slot, prefix) = (unique("slot"), unique("kc"));
    let topic = format!("{prefix}.order");
    create_replicated_topic(&brokers, &topic, 4).await;
    let config = config(&db, &brokers, mode, &slot, &prefix)
        .delivery(delivery)
        .sink("metadata_timeout", "5s")
        .to_string();
    migrate(&config).await;
    let relay = Relay::spawn(&config);
    let workload = Workload { rows: 8_000, pace: Duration::from_millis(15), ..Workload::default() };
    let writers = tokio::spawn({
        let db = db.to_owned();
        async move { workload::run(&db, &workload).await }
    });
    let relay_ref = &relay;
    wait_for("1 000 messages published", Duration::from_secs(120), || async move {
        relay_ref.metric("outbox_relay_messages_published_total").await.unwrap_or(0.0) >= 1_000.0
    })
    .await;
    let leader = leader_of(&brokers, &topic, 0).await;
    let published_before = relay.metric("outbox_relay_messages_published_total").await.unwrap();
    cluster.kill9(leader).await;
    let killed_at = std::time::Instant::now();
    // The relay goes on through the new leaders by itself.
    wait_for("publishing to resume on the new leaders", Duration::from_secs(120), || async {
        relay.metric("outbox_relay_messages_published_total").await.unwrap_or(0.0)
            >= published_before + 1_000.0
    })
    .await;
    let resumed_after = killed_at.elapsed();
    let committed = writers.await.unwrap();
    let client = connect(&db).await;
    empty(&client, Duration::from_secs(180)).await;
    let retries = relay.metric("outbox_relay_retries_total").await.unwrap_or(0.0);
    let status = command(&config, &["status"]).await.stdout;
    assert!(status.contains("state:       running"), "recovered by itself:\n{status}");
    let outcome = verify(&kafka_streams(&read_all(&brokers, &topic).await), &committed, false);
    let mut relay = relay;
    relay.terminate();
    assert!(relay.wait(Duration::from_secs(30)).await.success(), "{}", relay.log());
    let admin = connect(&services().pg).await;
    let _ = admin.execute("select pg_drop_replication_slot($1)", &[&slot]).await;
    println!(
        "cluster ({mode}, {delivery}): leader node {leader} of 3 killed mid-run; 1 000 more \
         published {resumed_after:.1?} later; {} rows committed, {} messages read, 0 lost, 0 \
         duplicates, key order kept ({retries} engine retries)",
        committed.rows(),
        outcome.messages
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_partition_leader_killed_mid_run_loses_and_duplicates_nothing_idempotent() {
    cluster_leader_killed("wal", "idempotent").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_partition_leader_killed_mid_run_loses_and_duplicates_nothing_transactional() {
    cluster_leader_killed("poll", "transactional").await;
}
