//! WAL tailing, end to end with the real binary: concurrency and commit order, mixed traffic,
//! the table-less (logical message) outbox, restarts, WAL release, a million-row transaction.

use crate::support;

use std::time::{Duration, Instant};

use support::check::{kafka_streams, verify, Delivered};
use support::config::RelayConfig;
use support::kafka::{create_topic, read_all};
use support::pg::{connect, count, fresh_database};
use support::rabbit::{drain, Delivery};
use support::relay::{migrate, Relay};
use support::workload::{self, Via, Workload};
use support::{services, unique, wait_for};
use tokio_postgres::Client;

/// To the test Kafka, tailing the WAL through `slot` (each test has its own: slots are
/// cluster-wide).
fn kafka(db: &str, slot: &str, prefix: &str) -> RelayConfig {
    RelayConfig::kafka(db, prefix).wal(slot)
}

/// Kept rows (`after_publish = "keep"`) and heartbeats every second.
fn keeping(config: RelayConfig) -> String {
    config.source("after_publish", "keep").source("heartbeat_interval", "1s").to_string()
}

async fn slot_lsn(client: &Client, slot: &str) -> String {
    client
        .query_one(
            "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0)
}

/// Waits until the slot's confirmed flush position is at or past `lsn`.
async fn slot_reaches(client: &Client, slot: &str, lsn: &str, what: &str) {
    wait_for(what, Duration::from_secs(60), || async move {
        client
            .query_one(
                "select confirmed_flush_lsn >= $2::text::pg_lsn from pg_replication_slots where slot_name = $1",
                &[&slot, &lsn],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
    })
    .await;
}

async fn drop_slot(slot: &str) {
    let admin = connect(&services().pg).await;
    let _ = admin.execute("select pg_drop_replication_slot($1)", &[&slot]).await;
}

/// Writes to a table that is in the publication but is not the outbox, until `stop` is set.
async fn noise(db: String, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> u64 {
    let client = connect(&db).await;
    let mut rows = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        client
            .execute("insert into noise (note) select 'n' from generate_series(1, 10)", &[])
            .await
            .unwrap();
        rows += 10;
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commits_and_mixed_traffic_arrive_exactly_once_in_commit_order_kafka() {
    let db = fresh_database("wal_kafka").await;
    let (slot, prefix) = (unique("slot"), unique("wk"));
    let topic = format!("{prefix}.order");
    create_topic(&services().kafka, &topic, 6).await;
    let config = kafka(&db, &slot, &prefix).to_string();
    migrate(&config).await;
    let client = connect(&db).await;
    client
        .batch_execute("create table noise (id bigserial primary key, note text); alter publication outbox_relay add table noise")
        .await
        .unwrap();
    let mut relay = Relay::spawn(&config);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let noise_task = tokio::spawn(noise(db.clone(), stop.clone()));
    let started = Instant::now();
    let workload = Workload::default();
    let committed = workload::run(&db, &workload).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let noise_rows = noise_task.await.unwrap();
    assert!(committed.late_commits > 0, "the workload must commit out of insertion order");
    let client = &client;
    wait_for(
        "the relay to publish (and delete) every row",
        Duration::from_secs(120),
        || async move { count(client, "select count(*) from outbox").await == 0 },
    )
    .await;
    let elapsed = started.elapsed();
    let outcome =
        verify(&kafka_streams(&read_all(&services().kafka, &topic).await), &committed, false);
    assert_eq!(outcome.messages, workload.rows);
    let position = read_all(&services().kafka, &topic).await[0][0]
        .header("outbox-position")
        .unwrap()
        .to_owned();
    assert!(position.starts_with("wal:"), "{position}");
    relay.terminate();
    assert!(relay.wait(Duration::from_secs(30)).await.success(), "{}", relay.log());
    drop_slot(&slot).await;
    println!(
        "wal→kafka: {} rows ({} late commits, {} rolled-back rows, {noise_rows} rows of another \
         published table) exactly once in commit order per key in {elapsed:?}",
        committed.rows(),
        committed.late_commits,
        committed.rolled_back_ids.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commits_arrive_exactly_once_in_commit_order_rabbitmq() {
    let db = fresh_database("wal_rabbit").await;
    let (slot, prefix) = (unique("slot"), unique("wr"));
    let config =
        RelayConfig::rabbitmq(&db, &prefix).wal(&slot).two_hashed_queues(&prefix).to_string();
    migrate(&config).await;
    let mut relay = Relay::spawn(&config);
    let workload = Workload::default();
    let committed = workload::run(&db, &workload).await;
    let client = connect(&db).await;
    let client = &client;
    wait_for("the relay to publish every row", Duration::from_secs(120), || async move {
        count(client, "select count(*) from outbox").await == 0
    })
    .await;
    let mut streams = Vec::new();
    for q in 0..2 {
        let deliveries = drain(&services().amqp, &format!("{prefix}.q{q}")).await;
        streams.push(deliveries.iter().map(Delivery::delivered).collect::<Vec<_>>());
    }
    let outcome = verify(&streams, &committed, false);
    assert_eq!(outcome.messages, workload.rows);
    relay.terminate();
    assert!(relay.wait(Duration::from_secs(30)).await.success(), "{}", relay.log());
    drop_slot(&slot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logical_messages_committed_are_delivered_and_rolled_back_are_not() {
    let db = fresh_database("wal_messages").await;
    let (slot, prefix) = (unique("slot"), unique("wm"));
    let topic = format!("{prefix}.order");
    create_topic(&services().kafka, &topic, 4).await;
    let config = keeping(kafka(&db, &slot, &prefix));
    migrate(&config).await;
    let mut relay = Relay::spawn(&config);
    let workload = Workload { via: Via::Message, ..Workload::default() };
    let committed = workload::run(&db, &workload).await;
    assert!(!committed.rolled_back_ids.is_empty());
    let relay_ref = &relay;
    let rows = workload.rows as f64;
    wait_for("every committed message acknowledged", Duration::from_secs(120), || async move {
        relay_ref.metric("outbox_relay_entries_acknowledged_total").await.unwrap_or(0.0) >= rows
    })
    .await;
    let outcome =
        verify(&kafka_streams(&read_all(&services().kafka, &topic).await), &committed, false);
    assert_eq!(outcome.messages, workload.rows);
    relay.terminate();
    assert!(relay.wait(Duration::from_secs(30)).await.success(), "{}", relay.log());
    drop_slot(&slot).await;
    println!(
        "logical messages: {} committed delivered exactly once in key order, {} rolled back \
         never delivered",
        committed.rows(),
        committed.rolled_back_ids.len()
    );
}

/// Runs 6 000 rows of writes; after 1 000 messages the relay is stopped (`kill9` or SIGTERM)
/// and started again.
async fn restart_mid_stream(kill9: bool) -> (support::workload::Committed, Vec<Vec<Delivered>>) {
    let db = fresh_database(if kill9 { "wal_kill" } else { "wal_term" }).await;
    let (slot, prefix) = (unique("slot"), unique("wt"));
    let topic = format!("{prefix}.order");
    create_topic(&services().kafka, &topic, 4).await;
    let config = kafka(&db, &slot, &prefix).to_string();
    migrate(&config).await;
    let mut relay = Relay::spawn(&config);
    let workload = Workload { rows: 6_000, ..Workload::default() };
    let writers = tokio::spawn({
        let (db, workload) = (db.clone(), workload.clone());
        async move { workload::run(&db, &workload).await }
    });
    let relay_ref = &relay;
    wait_for("1 000 messages published", Duration::from_secs(60), || async move {
        relay_ref.metric("outbox_relay_messages_published_total").await.unwrap_or(0.0) >= 1_000.0
    })
    .await;
    if kill9 {
        relay.kill9().await;
    } else {
        relay.terminate();
        let status = relay.wait(Duration::from_secs(30)).await;
        assert!(status.success(), "SIGTERM exits 0: {}", relay.log());
    }
    let mut relay = Relay::spawn(&config);
    let committed = writers.await.unwrap();
    let client = connect(&db).await;
    let client = &client;
    wait_for("the relay to publish every row", Duration::from_secs(120), || async move {
        count(client, "select count(*) from outbox").await == 0
    })
    .await;
    let streams = kafka_streams(&read_all(&services().kafka, &topic).await);
    relay.terminate();
    assert!(relay.wait(Duration::from_secs(30)).await.success(), "{}", relay.log());
    drop_slot(&slot).await;
    (committed, streams)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_mid_stream_resumes_without_loss_or_duplicates() {
    let (committed, streams) = restart_mid_stream(false).await;
    let outcome = verify(&streams, &committed, false);
    println!(
        "wal SIGTERM + restart: {} rows, {} messages, 0 duplicates",
        committed.rows(),
        outcome.messages
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_mid_stream_resumes_without_loss() {
    let (committed, streams) = restart_mid_stream(true).await;
    // Replays are recognised in the partitions and not sent again: no duplicates.
    let outcome = verify(&streams, &committed, false);
    println!(
        "wal kill -9 + restart: {} rows, {} messages, {} duplicates, 0 lost, key order kept",
        committed.rows(),
        outcome.messages,
        outcome.duplicates
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slot_advances_past_the_last_commit_also_while_only_other_databases_write() {
    let db = fresh_database("wal_release").await;
    let (slot, prefix) = (unique("slot"), unique("wrl"));
    create_topic(&services().kafka, &format!("{prefix}.order"), 2).await;
    let config = kafka(&db, &slot, &prefix).source("heartbeat_interval", "1s").to_string();
    migrate(&config).await;
    let mut relay = Relay::spawn(&config);
    let client = connect(&db).await;
    client
        .execute(
            "insert into outbox (id, aggregatetype, aggregateid, type, payload) \
             select gen_random_uuid(), 'order', 'k', 'T', '{}' from generate_series(1, 100)",
            &[],
        )
        .await
        .unwrap();
    let after_commit: String =
        client.query_one("select pg_current_wal_lsn()::text", &[]).await.unwrap().get(0);
    slot_reaches(&client, &slot, &after_commit, "the slot to pass the last commit").await;

    // Only another database writes now; the outbox is idle.
    let other = connect(&fresh_database("wal_other").await).await;
    other
        .batch_execute(
            "create table busy (n int); insert into busy select generate_series(1, 50000)",
        )
        .await
        .unwrap();
    let after_other: String =
        other.query_one("select pg_current_wal_lsn()::text", &[]).await.unwrap().get(0);
    slot_reaches(&client, &slot, &after_other, "the slot to pass another database's writes").await;
    let confirmed = slot_lsn(&client, &slot).await;
    relay.terminate();
    assert!(relay.wait(Duration::from_secs(30)).await.success(), "{}", relay.log());
    drop_slot(&slot).await;
    println!("slot {slot}: confirmed_flush_lsn {confirmed} >= {after_commit} (last commit) and >= {after_other} (other database)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_million_row_transaction_streams_through_in_bounded_memory() {
    const ROWS: usize = 1_000_000;
    let db = fresh_database("wal_million").await;
    let (slot, prefix) = (unique("slot"), unique("w1m"));
    let topic = format!("{prefix}.order");
    create_topic(&services().kafka, &topic, 4).await;
    let config = keeping(kafka(&db, &slot, &prefix));
    migrate(&config).await;
    let mut relay = Relay::spawn(&config);
    let client = connect(&db).await;
    let started = Instant::now();
    client
        .execute(
            "insert into outbox (id, aggregatetype, aggregateid, type, payload) \
             select gen_random_uuid(), 'order', 'k' || (i % 64), 'Bulk', jsonb_build_object('n', i) \
             from generate_series(1, $1::int) i",
            &[&(ROWS as i32)],
        )
        .await
        .unwrap();
    let relay_ref = &relay;
    wait_for("a million rows acknowledged", Duration::from_secs(600), || async move {
        relay_ref.metric("outbox_relay_entries_acknowledged_total").await.unwrap_or(0.0)
            >= ROWS as f64
    })
    .await;
    let elapsed = started.elapsed();
    let peak_kib = relay.peak_rss_kib();
    let records = read_all(&services().kafka, &topic).await;
    let total: usize = records.iter().map(Vec::len).sum();
    assert_eq!(total, ROWS, "every row delivered once");
    for partition in &records {
        let mut last = None;
        for record in partition {
            let position = record.header("outbox-position").unwrap();
            let index: u32 = position.rsplit(':').next().unwrap().parse().unwrap();
            assert!(last.is_none_or(|l| index > l), "transaction order kept in a partition");
            last = Some(index);
        }
    }
    relay.terminate();
    assert!(relay.wait(Duration::from_secs(60)).await.success(), "{}", relay.log());
    drop_slot(&slot).await;
    println!(
        "1M-row transaction: {ROWS} messages in {elapsed:?}, relay peak RSS {} MiB",
        peak_kib / 1024
    );
    assert!(peak_kib < 256 * 1024, "peak RSS {peak_kib} KiB is over 256 MiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_change_mid_stream_is_followed() {
    let db = fresh_database("wal_schema").await;
    let (slot, prefix) = (unique("slot"), unique("ws"));
    let topic = format!("{prefix}.order");
    create_topic(&services().kafka, &topic, 1).await;
    let config = kafka(&db, &slot, &prefix).to_string();
    migrate(&config).await;
    let client = connect(&db).await;
    // Two unused columns before the payload: (id, aggregatetype, aggregateid, type, created_at,
    // junk, payload).
    client
        .batch_execute("alter table outbox drop column payload, add column junk text, add column payload jsonb")
        .await
        .unwrap();
    let mut relay = Relay::spawn(&config);
    let insert = "insert into outbox (id, aggregatetype, aggregateid, type, payload) \
                  select gen_random_uuid(), 'order', 'k', 'T', jsonb_build_object('n', i) \
                  from generate_series($1::int, $2::int) i";
    client.execute(insert, &[&1, &100]).await.unwrap();
    // Mid-stream, the payload moves two places left and a column follows it: the relay must
    // decode the next rows with the new Relation message.
    client
        .batch_execute("alter table outbox drop column junk, drop column created_at, add column note text default 'x'")
        .await
        .unwrap();
    client.execute(insert, &[&101, &200]).await.unwrap();
    let client = &client;
    wait_for("all 200 rows published", Duration::from_secs(60), || async move {
        count(client, "select count(*) from outbox").await == 0
    })
    .await;
    let records: Vec<_> = read_all(&services().kafka, &topic).await.into_iter().flatten().collect();
    let numbers: Vec<u64> = records
        .iter()
        .map(|r| {
            let payload: serde_json::Value =
                serde_json::from_slice(r.payload.as_deref().unwrap()).unwrap();
            payload["n"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(
        numbers,
        (1..=200).collect::<Vec<u64>>(),
        "payloads decoded with each layout, in order"
    );
    relay.terminate();
    assert!(relay.wait(Duration::from_secs(30)).await.success(), "{}", relay.log());
    drop_slot(&slot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_outbox_is_still_followed_and_a_lost_payload_column_halts_without_loss() {
    let db = fresh_database("wal_rename").await;
    let (slot, prefix) = (unique("slot"), unique("wrn"));
    let topic = format!("{prefix}.order");
    create_topic(&services().kafka, &topic, 1).await;
    let config = keeping(kafka(&db, &slot, &prefix));
    migrate(&config).await;
    let mut relay = Relay::spawn(&config);
    let client = connect(&db).await;
    let insert = |table: &str| {
        format!(
            "insert into {table} (id, aggregatetype, aggregateid, type, payload) \
             select gen_random_uuid(), 'order', 'k', 'T', jsonb_build_object('n', i) \
             from generate_series($1::int, $2::int) i"
        )
    };
    client.execute(&insert("outbox"), &[&1, &10]).await.unwrap();
    let relay_ref = &relay;
    wait_for("10 rows acknowledged", Duration::from_secs(30), || async move {
        relay_ref.metric("outbox_relay_entries_acknowledged_total").await.unwrap_or(0.0) >= 10.0
    })
    .await;
    // Renamed while streaming: the same table (same OID), still published.
    client.batch_execute("alter table outbox rename to outbox_renamed").await.unwrap();
    // Heartbeats check the publication meanwhile: it publishes the table under its new name.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    client.execute(&insert("outbox_renamed"), &[&11, &20]).await.unwrap();
    wait_for("20 rows acknowledged", Duration::from_secs(30), || async move {
        relay_ref.metric("outbox_relay_entries_acknowledged_total").await.unwrap_or(0.0) >= 20.0
    })
    .await;

    // The payload column renamed away: the relay must stop, not skip these rows.
    client.batch_execute("alter table outbox_renamed rename column payload to body").await.unwrap();
    client
        .execute(
            "insert into outbox_renamed (id, aggregatetype, aggregateid, type, body) \
             values (gen_random_uuid(), 'order', 'k', 'T', '{\"n\": 21}')",
            &[],
        )
        .await
        .unwrap();
    let status = relay.wait(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(1));
    assert!(
        relay.log().contains("changed while streaming: it has no column \"payload\" any more"),
        "{}",
        relay.log()
    );
    assert_eq!(read_all(&services().kafka, &topic).await[0].len(), 20);
    // The halted relay let go of the slot: what it still holds is the row it could not read
    // (other databases' WAL, written meanwhile by other tests, may have moved it on before).
    let held: i64 = client
        .query_one(
            "select count(*) from pg_logical_slot_peek_binary_changes($1, null, null, \
             'proto_version', '1', 'publication_names', 'outbox_relay') \
             where get_byte(data, 0) = ascii('I')",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(held, 1, "the slot stays before the row it could not read");
    drop_slot(&slot).await;
}
