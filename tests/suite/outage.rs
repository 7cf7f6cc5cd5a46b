//! Interruptions mid-run — a broker down for 30 s, Postgres restarted, connections cut by a TCP
//! proxy the test owns, the relay itself killed — lose nothing, keep each key's order and need
//! no operator. On Kafka nothing is published twice (replays are recognised in the partitions);
//! on RabbitMQ duplicates of messages whose confirm was lost are allowed, counted, and marked.

use crate::support;

use std::time::{Duration, Instant};

use support::brokers::{KafkaCluster, RabbitNode};
use support::check::{kafka_streams, verify, Delivered};
use support::cluster::Cluster;
use support::config::RelayConfig;
use support::kafka::{create_topic, read_all};
use support::pg::{connect, count, fresh_database};
use support::proxy::Proxy;
use support::rabbit::{drain, Delivery};
use support::relay::{command, migrate, Relay};
use support::workload::{self, Committed, Workload};
use support::{services, unique, wait_for};
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
    // Paced so the writers are still writing while the outage lasts (~10 s in all): unpaced,
    // they could finish before a broker was down, and no backlog would build up behind it.
    let workload = Workload { rows: 6_000, pace: Duration::from_millis(20), ..Workload::default() };
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

/// A partition's tail is read (to recognise replays) only when everything earlier producers of
/// the transactional id did there is decided: after an `init_transactions` (which returns once
/// the transaction they left is complete), never between an abort (which returns before its
/// markers are in the partitions) and the next initialisation.
fn tails_read_only_when_decided(log: &str) {
    let mut decided = true;
    for line in log.lines() {
        if line.contains("Kafka transaction aborted") {
            decided = false;
        } else if line.contains("Kafka transactions initialised") {
            decided = true;
        } else if line.contains("read the partition's tail") {
            assert!(decided, "a tail was read right after an abort:\n{line}\n{log}");
        }
    }
}

async fn stop(mut relay: Relay) {
    relay.terminate();
    assert!(relay.wait(Duration::from_secs(30)).await.success(), "{}", relay.log());
}

fn kafka_config(db: &str, brokers: &str, prefix: &str, delivery: &str) -> RelayConfig {
    RelayConfig::kafka_at(db, brokers, prefix)
        .pipeline("retry_max_backoff", "2s")
        .sink("metadata_timeout", "2s")
        .delivery(delivery)
}

/// One queue behind a topic exchange: an x-consistent-hash exchange may move keys to other
/// queues when the node restarts (rabbitmq-server#3386), which would hide what the relay does.
fn rabbit_config(db: &str, url: &str, prefix: &str) -> String {
    RelayConfig::rabbitmq_at(db, url, prefix)
        .pipeline("retry_max_backoff", "2s")
        .sink("connect_timeout", "2s")
        .topology(prefix, "topic", &[&format!("{prefix}.all")], "#")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_broker_killed_for_30s_and_restarted_mid_run_loses_nothing() {
    kafka_broker_outage("idempotent").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_broker_killed_for_30s_and_restarted_mid_run_transactional_exactly_once() {
    kafka_broker_outage("transactional").await;
}

/// A short outage: the broker is back before librdkafka gives up, so a transaction open at the
/// kill is usually aborted by the relay (about half the runs here; in the others the coordinator
/// has already ended it and the outcome counts as unknown) and its messages, some of them
/// perhaps in the partitions as aborted batches, go out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_broker_killed_for_3s_mid_run_transactional_exactly_once() {
    let mut kafka = KafkaCluster::single().await;
    let db = fresh_database("outage_kafka_brief").await;
    let prefix = unique("okb");
    let topic = format!("{prefix}.order");
    create_topic(&kafka.brokers(), &topic, 4).await;
    let config = kafka_config(&db, &kafka.brokers(), &prefix, "transactional").to_string();
    let (committed, relay) = interrupted_run(&db, &config, async |relay, _| {
        kafka.kill9(1).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        kafka.start_again(1).await;
        relay
    })
    .await;
    let outcome =
        verify(&kafka_streams(&read_all(&kafka.brokers(), &topic).await), &committed, false);
    tails_read_only_when_decided(&relay.log());
    stop(relay).await;
    println!(
        "kafka outage (transactional; kill -9, down 3 s, restart): {} rows committed, {} \
         messages read, {} duplicates, 0 lost, key order kept",
        committed.rows(),
        outcome.messages,
        outcome.duplicates
    );
}

async fn kafka_broker_outage(delivery: &str) {
    let mut kafka = KafkaCluster::single().await;
    let db = fresh_database("outage_kafka").await;
    let prefix = unique("ok");
    let topic = format!("{prefix}.order");
    create_topic(&kafka.brokers(), &topic, 4).await;
    let config = kafka_config(&db, &kafka.brokers(), &prefix, delivery).to_string();
    let mut down_for = Duration::ZERO;
    let (committed, relay) = interrupted_run(&db, &config, async |relay, client| {
        kafka.kill9(1).await;
        let down_since = Instant::now();
        backlog_builds_up(client).await;
        // The open circuit is visible to operators: `status` and /readyz say why messages wait.
        let config = &config;
        wait_for("status to show the Kafka outage", Duration::from_secs(30), || async move {
            let status = command(config, &["status"]).await.stdout;
            status.contains("state:       retrying") && status.contains("last error:  Kafka:")
        })
        .await;
        assert_eq!(relay.http_get("/readyz").await.as_deref(), Some("retrying\n"));
        tokio::time::sleep(Duration::from_secs(30).saturating_sub(down_since.elapsed())).await;
        down_for = down_since.elapsed();
        kafka.start_again(1).await;
        relay
    })
    .await;
    let status = command(&config, &["status"]).await.stdout;
    assert!(status.contains("state:       running"), "the circuit closes again:\n{status}");
    // Replays are recognised in the partitions and not sent again: no duplicates.
    let outcome =
        verify(&kafka_streams(&read_all(&kafka.brokers(), &topic).await), &committed, false);
    if delivery == "transactional" {
        tails_read_only_when_decided(&relay.log());
    }
    stop(relay).await;
    println!(
        "kafka outage ({delivery}; kill -9, down {down_for:.1?}, restart): {} rows committed, {} messages \
         read, {} duplicates, 0 lost, key order kept",
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
    let config = rabbit_config(&db, &node.url(), &prefix);
    let (committed, relay) = interrupted_run(&db, &config, async |relay, client| {
        node.stop().await;
        backlog_builds_up(client).await;
        assert_eq!(relay.http_get("/readyz").await.as_deref(), Some("retrying\n"));
        node.start_again().await;
        relay
    })
    .await;
    let deliveries = drain(&node.url(), &format!("{prefix}.all")).await;
    let stream: Vec<Delivered> = deliveries.iter().map(Delivery::delivered).collect();
    let outcome = verify(&[stream], &committed, true);
    assert_eq!(outcome.unmarked_duplicates, 0, "every duplicate carries outbox-redelivered");
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
    let config = kafka_config(&db, &services.kafka, &prefix, "idempotent").to_string();
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

/// Postgres restarted (fast shutdown: every session of the relay ends) while a backlog flows;
/// the relay reconnects, resumes from its recorded state, and later writes flow too.
async fn postgres_restart_case(mode: &str) {
    let cluster = Cluster::start("wal_level = logical").await;
    let db = cluster.url("postgres");
    let kafka = services().kafka;
    let prefix = unique("pr");
    let topic = format!("{prefix}.order");
    create_topic(&kafka, &topic, 4).await;
    // Small batches and window: the backlog takes a while, so the restart lands mid-stream.
    // WAL runs in transactional mode: an in-process restart aborts what the old run left open.
    let delivery = if mode == "wal" { "transactional" } else { "idempotent" };
    let config = kafka_config(&db, &kafka, &prefix, delivery)
        .pipeline("max_in_flight", 200)
        .source("mode", mode)
        .source("batch_size", 100)
        .to_string();
    migrate(&config).await;
    let workload =
        Workload { rows: 30_000, keys: 200, rows_per_txn: 10..=40, ..Workload::default() };
    let before = workload::run(&db, &workload).await;
    let mut relay = Relay::spawn(&config);
    let relay_ref = &relay;
    wait_for("1 000 messages published", Duration::from_secs(60), || async move {
        relay_ref.metric("outbox_relay_messages_published_total").await.unwrap_or(0.0) >= 1_000.0
    })
    .await;
    let left = count(&connect(&db).await, "select count(*) from outbox").await;
    assert!(left > 0, "the restart must land while the backlog flows");
    cluster.pg_ctl(&["restart", "-m", "fast", "-w", "-t", "60"]).await;
    let after = workload::run(&db, &Workload { rows: 5_000, ..workload }).await;
    let committed = before.and_then(after);
    let client = connect(&db).await;
    let client = &client;
    wait_for("the relay to empty the outbox", Duration::from_secs(180), || async move {
        count(client, "select count(*) from outbox").await == 0
    })
    .await;
    assert!(relay.running(), "the relay recovers on its own:\n{}", relay.log());
    assert!(relay.log().contains("starting again"), "the relay noticed the lost connections");
    let outcome = verify(&kafka_streams(&read_all(&kafka, &topic).await), &committed, false);
    stop(relay).await;
    println!(
        "postgres restart ({mode}): {left} rows in the outbox at the restart, {} rows committed, \
         {} messages read, 0 duplicates, 0 lost, key order kept",
        committed.rows(),
        outcome.messages
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarted_mid_run_wal_tailing_resumes_without_an_operator() {
    postgres_restart_case("wal").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarted_mid_run_polling_resumes_without_an_operator() {
    postgres_restart_case("poll").await;
}

/// The relay's Postgres connections (replication stream, state session) cut mid-run by a proxy
/// that also refuses new ones for 3 s; writers keep committing directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_connections_cut_by_a_proxy_mid_run_lose_nothing() {
    let services = services();
    let db = fresh_database("cut_pg").await;
    let database = db.rsplit('/').next().unwrap().to_owned();
    let server = services.pg.split('@').nth(1).unwrap().split('/').next().unwrap().to_owned();
    let proxy = Proxy::start(&server).await;
    let via_proxy = format!("postgres://postgres@{}/{database}", proxy.address());
    let prefix = unique("cp");
    let topic = format!("{prefix}.order");
    create_topic(&services.kafka, &topic, 4).await;
    let slot = unique("slot");
    let config =
        kafka_config(&via_proxy, &services.kafka, &prefix, "idempotent").wal(&slot).to_string();
    let (committed, mut relay) = interrupted_run(&db, &config, async |relay, _| {
        proxy.cut_for(Duration::from_secs(3)).await;
        relay
    })
    .await;
    assert!(relay.running(), "the relay recovers on its own:\n{}", relay.log());
    assert!(relay.log().contains("starting again"), "the relay noticed the lost connections");
    let outcome =
        verify(&kafka_streams(&read_all(&services.kafka, &topic).await), &committed, false);
    stop(relay).await;
    let admin = connect(&services.pg).await;
    let _ = admin.execute("select pg_drop_replication_slot($1)", &[&slot]).await;
    println!(
        "postgres connections cut (wal): {} rows committed, {} messages read, 0 duplicates, \
         0 lost, key order kept",
        committed.rows(),
        outcome.messages
    );
}

/// The relay's RabbitMQ connections cut mid-run by a proxy that refuses new ones for 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rabbitmq_connections_cut_by_a_proxy_mid_run_lose_nothing() {
    let services = services();
    let db = fresh_database("cut_rabbit").await;
    let (user_info, rest) = services.amqp.split_once('@').unwrap();
    let (server, vhost) = rest.split_once('/').unwrap_or((rest, ""));
    let proxy = Proxy::start(server).await;
    let via_proxy = format!("{user_info}@{}/{vhost}", proxy.address());
    let prefix = unique("cr");
    let config = rabbit_config(&db, &via_proxy, &prefix);
    let (committed, mut relay) = interrupted_run(&db, &config, async |relay, _| {
        proxy.cut_for(Duration::from_secs(3)).await;
        relay
    })
    .await;
    assert!(relay.running(), "the relay recovers on its own:\n{}", relay.log());
    let retries = relay.metric("outbox_relay_retries_total").await.unwrap_or(0.0);
    assert!(retries > 0.0, "the relay noticed the lost connections");
    let deliveries = drain(&services.amqp, &format!("{prefix}.all")).await;
    let stream: Vec<Delivered> = deliveries.iter().map(Delivery::delivered).collect();
    let outcome = verify(&[stream], &committed, true);
    assert_eq!(outcome.unmarked_duplicates, 0, "every duplicate carries outbox-redelivered");
    stop(relay).await;
    println!(
        "rabbitmq connections cut: {} rows committed, {} messages read, {} duplicates (all \
         marked), 0 lost, key order kept",
        committed.rows(),
        outcome.messages,
        outcome.duplicates
    );
}
