//! Polling source → Kafka (tansu), end to end with the real binary.

use crate::support;

use std::time::{Duration, Instant};

use support::check::{kafka_streams, verify};
use support::config::RelayConfig;
use support::kafka::{create_topic, java_murmur2, java_partition, read_all};
use support::pg::{connect, count, fresh_database};
use support::relay::{migrate, Relay};
use support::workload::{self, Workload};
use support::{services, unique, wait_for};

const PARTITIONS: i32 = 6;

fn config(db: &str, brokers: &str, prefix: &str) -> String {
    RelayConfig::kafka_at(db, brokers, prefix)
        .poll()
        .source("table", "public.outbox")
        .route("key", "${aggregateid}")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_out_of_order_commits_arrive_exactly_once_in_commit_order_per_key() {
    let services = services();
    let db = fresh_database("poll_kafka").await;
    let prefix = unique("pk");
    let topic = format!("{prefix}.order");
    create_topic(&services.kafka, &topic, PARTITIONS).await;
    let config = config(&db, &services.kafka, &prefix);
    migrate(&config).await;
    let mut relay = Relay::spawn(&config);

    let started = Instant::now();
    let workload = Workload::default();
    let committed = workload::run(&db, &workload).await;
    assert_eq!(committed.rows(), workload.rows);
    assert!(committed.late_commits > 0, "the workload must commit seq values out of order");
    assert!(!committed.rolled_back_ids.is_empty(), "the workload must roll some rows back");

    let client = connect(&db).await;
    let client = &client;
    wait_for("the relay to empty the outbox", Duration::from_secs(120), || async move {
        count(client, "select count(*) from outbox").await == 0
    })
    .await;
    let elapsed = started.elapsed();

    let partitions = read_all(&services.kafka, &topic).await;
    let outcome = verify(&kafka_streams(&partitions), &committed, false);
    assert_eq!(outcome.messages, workload.rows);

    // Keys land where the Java client's murmur2 partitioner puts them; headers are complete.
    for record in partitions.iter().flatten() {
        let key = record.key.as_deref().expect("keyed");
        assert_eq!(record.partition, java_partition(key, PARTITIONS), "partition of key {key}");
        assert_eq!(record.header("type"), Some("OrderUpdated"));
        let position = record.header("outbox-position").expect("position header");
        assert!(position.starts_with("poll:"), "{position}");
    }

    relay.terminate();
    let status = relay.wait(Duration::from_secs(30)).await;
    assert!(status.success(), "SIGTERM must exit 0, got {status}; log:\n{}", relay.log());
    println!(
        "poll→kafka: {} rows in {} transactions ({} committed out of seq order, {} rolled-back \
         rows) delivered exactly once in key order in {elapsed:?}",
        committed.rows(),
        committed.transactions,
        committed.late_commits,
        committed.rolled_back_ids.len()
    );
}

/// Known answers from Kafka's own `UtilsTest.testMurmur2`.
#[test]
fn murmur2_matches_the_java_client() {
    let cases: [(&[u8], i32); 6] = [
        (b"21", -973_932_308),
        (b"foobar", -790_332_482),
        (b"a-little-bit-long-string", -985_981_536),
        (b"a-little-bit-longer-string", -1_486_304_829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
        (b"abc", 479_470_107),
    ];
    for (input, expected) in cases {
        assert_eq!(java_murmur2(input), expected, "{}", String::from_utf8_lossy(input));
    }
}
