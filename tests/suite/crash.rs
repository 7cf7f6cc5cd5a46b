//! Crash safety with the real binary: 20 rounds of SIGKILL (half at random moments, half soon
//! after the restarted relay published) while 100 000 messages flow, for WAL tailing and
//! polling, into Kafka and into RabbitMQ.
//! - 0 lost, each key's commit order kept;
//! - Kafka, both delivery modes: 0 duplicates (idempotent: replays are recognised in the
//!   partitions; transactional: what a killed run left open is aborted, what it committed is
//!   recognised), each key on the partition the Java client picks;
//! - RabbitMQ: duplicates happen (a confirm lost with the process), every one is marked, and a
//!   consumer using the inbox processes each message exactly once, in order.

use crate::support;

use std::collections::HashMap;
use std::time::Duration;

use outbox_relay_inbox::Inbox;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::check::{kafka_streams, verify, Delivered};
use support::config::RelayConfig;
use support::kafka::{create_topic, java_partition, read_all};
use support::pg::{connect, count, fresh_database};
use support::rabbit::{drain, Delivery};
use support::relay::{migrate, Relay};
use support::workload::{self, Committed, Workload};
use support::{services, unique, wait_for};

const ROWS: usize = 100_000;
const ROUNDS: usize = 20;
const PARTITIONS: i32 = 6;

fn workload() -> Workload {
    Workload {
        rows: ROWS,
        keys: 200,
        rows_per_txn: 10..=30,
        // Spread the rows over ~20-30 s, so the kills land while messages flow.
        pace: Duration::from_millis(30),
        ..Workload::default()
    }
}

/// What the kills hit.
#[derive(Debug, Default)]
struct Kills {
    /// Kills of a relay that had published messages, with entries still waiting in the outbox.
    mid_flow: usize,
    /// Possible replays the relays (all of them, the last one included) found already in Kafka.
    recognised: u64,
    /// At each kill: the relay's published counter (`None`: no metrics yet) and the rows waiting.
    seen: Vec<(Option<f64>, i64)>,
}

/// Waits until `relay` has published a message or nothing waits in the outbox; a relay that
/// publishes nothing for a minute while rows wait is a failure of its own.
async fn flowing_or_drained(relay: &Relay, client: &tokio_postgres::Client) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let published = relay.metric("outbox_relay_messages_published_total").await;
        if published.unwrap_or(0.0) > 0.0 || count(client, "select count(*) from outbox").await == 0
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a restarted relay published nothing in 60 s while rows waited; log:\n{}",
            relay.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes `ROWS` rows while killing the relay `ROUNDS` times; returns once everything committed
/// was acknowledged, with the relay then running.
async fn with_kills(db: &str, config: &str, seed: u64) -> (Committed, Relay, Kills) {
    migrate(config).await;
    let mut relay = Relay::spawn(config);
    let writers = tokio::spawn({
        let db = db.to_owned();
        async move { workload::run(&db, &workload()).await }
    });
    let client = connect(db).await;
    let client = &client;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut kills = Kills::default();
    for round in 0..ROUNDS {
        if round % 2 == 1 {
            // Every other kill waits for the new relay to publish first (or for the outbox to
            // be empty), so kills land while messages flow however slowly this machine starts
            // a relay; the other kills keep hitting start-up too.
            flowing_or_drained(&relay, client).await;
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        } else {
            // A random moment: the scenario's own clock, not a wait for a condition.
            tokio::time::sleep(Duration::from_millis(rng.random_range(200..1500))).await;
        }
        let published = relay.metric("outbox_relay_messages_published_total").await;
        kills.recognised += recognised(&relay).await;
        let waiting = count(client, "select count(*) from outbox").await;
        if published.unwrap_or(0.0) > 0.0 && waiting > 0 {
            kills.mid_flow += 1;
        }
        kills.seen.push((published, waiting));
        relay.kill9().await;
        relay = Relay::spawn(config);
    }
    let committed = writers.await.unwrap();
    // Both sources delete what they published (WAL tailing: after_publish = delete).
    wait_for("everything acknowledged", Duration::from_secs(600), || async move {
        count(client, "select count(*) from outbox").await == 0
    })
    .await;
    kills.recognised += recognised(&relay).await;
    println!("{kills:?}");
    // How many kills hit a flowing relay depends on the machine's load: when every kill came at
    // a random moment, 3 to 19 of 20 did, and in one CI run none (hence the rounds that wait for
    // a flow). At least one must, or the test tests nothing. The count goes into the notes.
    assert!(kills.mid_flow > 0, "no kill hit a relay while messages flowed: {kills:?}");
    (committed, relay, kills)
}

async fn recognised(relay: &Relay) -> u64 {
    relay.metric("outbox_relay_replays_recognised_total").await.unwrap_or(0.0) as u64
}

async fn kafka_case(mode: &str, delivery: &str, seed: u64) {
    let db = fresh_database(&format!("crash_kafka_{mode}")).await;
    let (slot, prefix) = (unique("slot"), unique("ck"));
    let topic = format!("{prefix}.order");
    create_topic(&services().kafka, &topic, PARTITIONS).await;
    let config = RelayConfig::kafka(&db, &prefix).mode(mode, &slot).delivery(delivery).to_string();
    let (committed, mut relay, kills) = with_kills(&db, &config, seed).await;
    let partitions = read_all(&services().kafka, &topic).await;
    let outcome = verify(&kafka_streams(&partitions), &committed, false);
    for record in partitions.iter().flatten() {
        let key = record.key.as_deref().expect("keyed");
        assert_eq!(record.partition, java_partition(key, PARTITIONS), "partition of key {key}");
    }
    if delivery == "idempotent" {
        // Transactional runs abort what a kill left open, so they may have nothing to recognise.
        assert!(kills.recognised > 0, "the restarts replayed messages, recognised: {kills:?}");
    }
    relay.terminate();
    assert!(relay.wait(Duration::from_secs(60)).await.success(), "{}", relay.log());
    drop_slot(&slot).await;
    println!(
                "crash {mode}→kafka ({delivery}): {ROUNDS} kill -9 rounds ({} mid-flow), {} rows committed, {} messages \
         checked, 0 lost, 0 duplicates ({} replays recognised and not sent again), key order kept",
        kills.mid_flow,
        committed.rows(),
        outcome.messages,
        kills.recognised
    );
}

async fn rabbit_case(mode: &str, seed: u64) {
    let db = fresh_database(&format!("crash_rabbit_{mode}")).await;
    let (slot, prefix) = (unique("slot"), unique("cr"));
    let config = RelayConfig::rabbitmq(&db, &prefix)
        .mode(mode, &slot)
        .two_hashed_queues(&prefix)
        .to_string();
    let (committed, mut relay, kills) = with_kills(&db, &config, seed).await;
    let mut queues = Vec::new();
    for q in 0..2 {
        queues.push(drain(&services().amqp, &format!("{prefix}.q{q}")).await);
    }
    let streams: Vec<Vec<Delivered>> =
        queues.iter().map(|q| q.iter().map(Delivery::delivered).collect()).collect();
    let outcome = verify(&streams, &committed, true);
    // Every delivery after a message's first is marked as a possible redelivery.
    assert_eq!(outcome.unmarked_duplicates, 0, "every duplicate carries outbox-redelivered");
    assert!(outcome.duplicates > 0, "the kills lost confirms, so replays were delivered");

    // A consumer with the inbox processes every message once, in each key's order.
    let effects = consume_with_inbox(&db, &queues).await;
    assert_eq!(effects.len(), committed.rows(), "each committed message processed exactly once");
    let mut versions: HashMap<String, Vec<u32>> = HashMap::new();
    for (key, version) in effects {
        versions.entry(key).or_default().push(version);
    }
    for (key, last) in &committed.versions {
        assert_eq!(
            versions.get(key).cloned().unwrap_or_default(),
            (1..=*last).collect::<Vec<_>>(),
            "key {key}"
        );
    }
    relay.terminate();
    assert!(relay.wait(Duration::from_secs(60)).await.success(), "{}", relay.log());
    drop_slot(&slot).await;
    println!(
        "crash {mode}→rabbitmq: {ROUNDS} kill -9 rounds ({} mid-flow), {} rows committed, {} \
         deliveries, {} duplicates (all marked), processed exactly once through the inbox, key \
         order kept",
        kills.mid_flow,
        committed.rows(),
        outcome.messages,
        outcome.duplicates
    );
}

/// Processes the deliveries of each queue in order through the inbox (500 per transaction);
/// returns the effects, in the order they were made.
async fn consume_with_inbox(db: &str, queues: &[Vec<Delivery>]) -> Vec<(String, u32)> {
    let mut client = connect(db).await;
    client
        .batch_execute("create table effects (n bigserial, key text, version int)")
        .await
        .unwrap();
    let inbox = Inbox::new("crash-test-consumer");
    for queue in queues {
        for chunk in queue.chunks(500) {
            let tx = client.transaction().await.unwrap();
            for delivery in chunk {
                let message = Delivered::from_payload(
                    delivery.message_id.clone().unwrap(),
                    &delivery.payload,
                    false,
                );
                inbox
                    .process_once(&tx, &message.id, async |tx| {
                        tx.execute(
                            "insert into effects (key, version) values ($1, $2)",
                            &[&message.key, &(message.version as i32)],
                        )
                        .await
                    })
                    .await
                    .unwrap();
            }
            tx.commit().await.unwrap();
        }
    }
    client
        .query("select key, version from effects order by n", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get::<_, i32>(1) as u32))
        .collect()
}

async fn drop_slot(slot: &str) {
    let admin = connect(&services().pg).await;
    let _ = admin.execute("select pg_drop_replication_slot($1)", &[&slot]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wal_to_kafka_survives_20_kills_with_no_loss_and_no_duplicates() {
    kafka_case("wal", "idempotent", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poll_to_kafka_survives_20_kills_with_no_loss_and_no_duplicates() {
    kafka_case("poll", "idempotent", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wal_to_kafka_transactional_survives_20_kills_exactly_once() {
    kafka_case("wal", "transactional", 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poll_to_kafka_transactional_survives_20_kills_exactly_once() {
    kafka_case("poll", "transactional", 6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wal_to_rabbitmq_survives_20_kills_with_every_duplicate_marked() {
    rabbit_case("wal", 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poll_to_rabbitmq_survives_20_kills_with_every_duplicate_marked() {
    rabbit_case("poll", 4).await;
}
