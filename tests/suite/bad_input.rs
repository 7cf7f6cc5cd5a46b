//! Bad input gets a clear, actionable error and loses nothing.

use crate::support;

use std::time::Duration;

use support::config::RelayConfig;
use support::kafka::{create_topic, read_all};
use support::pg::{connect, fresh_database};
use support::rabbit::drain;
use support::relay::{command, migrate, Relay};
use support::{free_port, services, unique, wait_for};
use tokio_postgres::Client;

fn kafka_config(db: &str, brokers: &str, topic_prefix: &str) -> RelayConfig {
    RelayConfig::kafka_at(db, brokers, topic_prefix).sink("metadata_timeout", "1s")
}

/// Inserts rows one statement at a time (so `seq` follows the list); returns their ids.
async fn insert(client: &Client, rows: &[(&str, &str)]) -> Vec<String> {
    let mut ids = Vec::new();
    for (key, payload) in rows {
        let row = client
            .query_one(
                "insert into outbox (id, aggregatetype, aggregateid, type, payload) \
                 values (gen_random_uuid(), 'order', $1, 'OrderCreated', $2::text::jsonb) \
                 returning id::text",
                &[key, payload],
            )
            .await
            .unwrap();
        ids.push(row.get(0));
    }
    ids
}

async fn remaining_ids(client: &Client) -> Vec<String> {
    client
        .query("select id::text from outbox order by seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn an_unknown_config_key_is_named_with_its_section() {
    let config = r#"
[postgres]
url = "postgres://127.0.0.1/x"
[source]
tabel = "public.outbox"
[sink]
kind = "kafka"
brokers = "127.0.0.1:9092"
"#;
    for subcommand in ["run", "check", "migrate"] {
        let out = command(config, &[subcommand]).await;
        assert_eq!(out.status.code(), Some(2), "{subcommand}: {out:?}");
        assert!(
            out.stderr.contains(
                "at `source.tabel`: unknown field `tabel`, expected one of `mode`, `table`"
            ),
            "{subcommand} must name the bad key: {}",
            out.stderr
        );
    }
    let out = command(config.replace("kafka", "kafka_streams").as_str(), &["check"]).await;
    assert!(out.stderr.contains("unknown variant `kafka_streams`"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_kafka_broker_is_explained_and_rows_stay_until_it_answers() {
    let services = services();
    let db = fresh_database("unreachable").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let config = kafka_config(&db, &dead, &unique("unreach")).to_string();
    migrate(&config).await;

    let out = command(&config, &["check"]).await;
    assert!(!out.status.success());
    assert!(
        out.stdout.contains(&format!("[FAIL] kafka: cannot reach the Kafka cluster at {dead}"))
            && out.stdout.contains("is the broker running"),
        "check must explain: {}",
        out.stdout
    );

    let client = connect(&db).await;
    let ids = insert(&client, &[("a", "{}"), ("b", "{}"), ("c", "{}")]).await;
    let mut relay = Relay::spawn(&config);
    let relay_ref = &relay;
    wait_for("the relay to retry publishing twice", Duration::from_secs(60), || async move {
        relay_ref.metric("outbox_relay_retries_total").await.unwrap_or(0.0) >= 2.0
    })
    .await;
    assert_eq!(relay.http_get("/readyz").await.as_deref(), Some("retrying\n"));
    assert_eq!(remaining_ids(&client).await, ids, "nothing may leave the outbox unconfirmed");
    assert!(relay.log().contains("cannot read metadata for Kafka topic"), "{}", relay.log());

    relay.terminate();
    let status = relay.wait(Duration::from_secs(40)).await;
    assert!(status.success(), "{status}");
    assert_eq!(remaining_ids(&client).await, ids);
    drop(services);
}

#[tokio::test]
async fn an_unreachable_rabbitmq_is_explained() {
    let db = fresh_database("unreachable_amqp").await;
    let port = free_port();
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let config = RelayConfig::rabbitmq_at(&db, &url, "x").sink("connect_timeout", "2s").to_string();
    migrate(&config).await;
    let out = command(&config, &["check"]).await;
    assert!(!out.status.success());
    assert!(
        out.stdout
            .contains(&format!("[FAIL] rabbitmq: cannot connect to RabbitMQ at 127.0.0.1:{port}")),
        "{}",
        out.stdout
    );
}

#[tokio::test]
async fn a_missing_outbox_table_or_schema_fails_with_what_to_run() {
    let services = services();
    let db = fresh_database("missing_table").await;
    let configured = kafka_config(&db, &services.kafka, "missing");
    let config = configured.to_string();

    // Nothing migrated yet.
    let out = command(&config, &["run"]).await;
    assert_eq!(out.status.code(), Some(3));
    assert!(out.stderr.contains("outbox-relay migrate"), "{}", out.stderr);
    let out = command(&config, &["check"]).await;
    assert!(
        out.stdout.contains("[FAIL] migrations")
            && out.stdout.contains("run `outbox-relay migrate`"),
        "{}",
        out.stdout
    );

    // Migrated, but the config names another table.
    migrate(&config).await;
    let other = configured.source("table", "public.events").to_string();
    let out = command(&other, &["run"]).await;
    assert_eq!(out.status.code(), Some(3));
    assert!(
        out.stderr
            .contains("outbox table public.events does not exist: run `outbox-relay migrate`"),
        "{}",
        out.stderr
    );
    let out = command(&other, &["check"]).await;
    assert!(
        out.stdout.contains("[FAIL] outbox table: outbox table public.events does not exist"),
        "{}",
        out.stdout
    );
    // The broker was reached: what it guarantees is said, as a note, not a check.
    assert!(
        out.stdout.contains(
            "[info] kafka delivery: messages of a shard key stay in commit order; possible \
             replays are looked up and not sent again"
        ),
        "{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_null_key_halts_naming_the_row_and_nothing_from_it_on_is_deleted() {
    let services = services();
    let db = fresh_database("null_key").await;
    let prefix = unique("nullkey");
    create_topic(&services.kafka, &format!("{prefix}.order"), 2).await;
    let config = kafka_config(&db, &services.kafka, &prefix).route("key", "${tenant}").to_string();
    migrate(&config).await;
    let client = connect(&db).await;
    client.batch_execute("alter table outbox add column tenant text").await.unwrap();
    let ids =
        insert(&client, &[("a", "{}"), ("b", "{}"), ("c", "{}"), ("d", "{}"), ("e", "{}")]).await;
    client
        .execute("update outbox set tenant = 'acme' where id::text <> $1", &[&ids[2]])
        .await
        .unwrap();

    let mut relay = Relay::spawn(&config);
    let status = relay.wait(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(1), "a poison row halts the relay");
    let log = relay.log();
    assert!(
        log.contains(&format!("halted on poison message: entry \"{}\"", ids[2]))
            && log.contains("route.key: column \"tenant\" is NULL"),
        "the halt must name the row and the reason:\n{log}"
    );
    assert_eq!(
        remaining_ids(&client).await,
        ids[2..],
        "rows before the poison are done, none after"
    );
    let delivered: Vec<String> = read_all(&services.kafka, &format!("{prefix}.order"))
        .await
        .into_iter()
        .flatten()
        .map(|r| r.header("id").unwrap().to_owned())
        .collect();
    let mut expected = ids[..2].to_vec();
    let mut got = delivered.clone();
    expected.sort();
    got.sort();
    assert_eq!(got, expected);
}

/// Commits a small row, a 2 MB row and a small row for one key, runs the relay to its halt, and
/// checks that the halt names the big row and that it and the row after it stayed. Returns the
/// ids, in order.
async fn halts_on_an_oversize_row(db: &str, config: &str, limit: &str) -> Vec<String> {
    migrate(config).await;
    let client = connect(db).await;
    let big = format!("{{\"blob\": \"{}\"}}", "x".repeat(2_000_000));
    let ids = insert(&client, &[("a", "{}"), ("a", &big), ("a", "{}")]).await;
    let mut relay = Relay::spawn(config);
    let status = relay.wait(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(1));
    let log = relay.log();
    assert!(
        log.contains(&format!("entry \"{}\"", ids[1]))
            && log.contains(&format!("over the limit of {limit} bytes")),
        "{log}"
    );
    assert_eq!(remaining_ids(&client).await, ids[1..]);
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_message_halts_naming_the_row_kafka() {
    let services = services();
    let db = fresh_database("oversize_kafka").await;
    let prefix = unique("big");
    create_topic(&services.kafka, &format!("{prefix}.order"), 1).await;
    let config = kafka_config(&db, &services.kafka, &prefix).to_string();
    let ids = halts_on_an_oversize_row(&db, &config, "1000000").await;
    let delivered = read_all(&services.kafka, &format!("{prefix}.order")).await;
    let delivered: Vec<&str> =
        delivered.iter().flatten().map(|r| r.header("id").unwrap()).collect();
    assert_eq!(delivered, vec![ids[0].as_str()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_message_halts_naming_the_row_rabbitmq() {
    let services = services();
    let db = fresh_database("oversize_amqp").await;
    let prefix = unique("bigamqp");
    let config = RelayConfig::rabbitmq(&db, &prefix)
        .sink("max_message_bytes", 1_048_576)
        .topology(&prefix, "direct", &[&prefix], "a")
        .to_string();
    let ids = halts_on_an_oversize_row(&db, &config, "1048576").await;
    let delivered = drain(&services.amqp, &prefix).await;
    let delivered: Vec<&str> = delivered.iter().map(|d| d.message_id.as_deref().unwrap()).collect();
    assert_eq!(delivered, vec![ids[0].as_str()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_message_halts_naming_the_row_rabbitmq() {
    let services = services();
    let db = fresh_database("unroutable").await;
    let prefix = unique("unroutable");
    // Only routing key "a" reaches a queue.
    let config = RelayConfig::rabbitmq(&db, &prefix)
        .topology(&prefix, "direct", &[&prefix], "a")
        .to_string();
    migrate(&config).await;
    let client = connect(&db).await;
    let ids = insert(&client, &[("a", "{}"), ("nobody-listens", "{}"), ("a", "{}")]).await;
    let mut relay = Relay::spawn(&config);
    let status = relay.wait(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(1));
    let log = relay.log();
    assert!(
        log.contains(&format!("entry \"{}\"", ids[1]))
            && log.contains("is unroutable")
            && log.contains("routing key \"nobody-listens\""),
        "{log}"
    );
    assert_eq!(remaining_ids(&client).await, ids[1..]);
    // Row 3 was in flight when row 2 came back; it may have reached the queue (it stays in the
    // outbox and is sent again after a restart: at least once).
    let delivered = drain(&services.amqp, &prefix).await;
    let delivered: Vec<&str> = delivered.iter().map(|d| d.message_id.as_deref().unwrap()).collect();
    assert_eq!(delivered[0], ids[0]);
    assert!(!delivered.contains(&ids[1].as_str()));
}
