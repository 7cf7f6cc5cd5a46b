//! Commit → consumer latency at a fixed offered load, for `bench/latency.sh` (not a test).
//!
//!   cargo run --release --example latency -- <postgres-url> <brokers> <topic> <rows/s> <seconds> [table|message]
//!
//! `brokers` is Kafka's bootstrap list, or an `amqp://` URL: then `topic` names the RabbitMQ
//! queues to consume (comma-separated; declared and purged first) and an entry's id is its
//! `message_id`.
//!
//! An application's side and a consumer's side in one process, so one clock serves both: the
//! application commits transactions of ROWS_PER_TXN outbox entries (about 200-byte JSON
//! payloads, 1 000 keys) at the offered rate — into the outbox table, or as
//! `pg_logical_emit_message(true, 'outbox', envelope)` — and notes when each COMMIT returned; the
//! consumer (read_committed, from the partitions' ends when the load starts) notes when each
//! entry's record arrived. Latency is arrival minus commit, per entry id. The application's
//! session commits with `synchronous_commit = on`, as applications do. Prints the counts and
//! p50/p90/p99/p99.9/max; exits 1 if an entry never arrived within 30 s after the load.
//! `NOTE_BYTES` (default 80) sets the length of the payload's filler, as in `bench/run.sh`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Entries per application transaction.
const ROWS_PER_TXN: usize = 10;
const KEYS: usize = 1000;
/// How long entries may take to arrive after the load ends.
const STRAGGLERS: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage =
        "usage: latency <postgres-url> <brokers> <topic> <rows/s> <seconds> [table|message]";
    let (url, brokers, topic) = match &args[..] {
        [url, brokers, topic, _, _, ..] => (url, brokers, topic),
        _ => anyhow::bail!(usage),
    };
    let rate: f64 = args[3].parse()?;
    let seconds: f64 = args[4].parse()?;
    let logical = match args.get(5).map(String::as_str) {
        None | Some("table") => false,
        Some("message") => true,
        Some(other) => anyhow::bail!("{other:?}: {usage}"),
    };

    let arrivals = Arc::new(Mutex::new(HashMap::<String, Instant>::new()));
    let consuming = if brokers.starts_with("amqp://") || brokers.starts_with("amqps://") {
        let (connection, consumers) = queues_emptied(brokers, topic).await?;
        tokio::spawn(consume_amqp(connection, consumers, Arc::clone(&arrivals)))
    } else {
        let consumer = consumer_at_the_end(brokers, topic).await?;
        tokio::spawn(consume(consumer, Arc::clone(&arrivals)))
    };

    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    // As an application commits: durably. (The test cluster's default is off, which leaves
    // commits in memory for up to wal_writer_delay, 200 ms, before a walsender may send them.)
    client.batch_execute("set synchronous_commit = on").await?;
    let commits = offer(&client, rate, seconds, logical).await?;
    let offered = commits.len();

    let deadline = Instant::now() + STRAGGLERS;
    while arrivals.lock().unwrap().len() < offered && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    consuming.abort();
    let arrivals = arrivals.lock().unwrap();
    let mut micros: Vec<u64> = commits
        .iter()
        .filter_map(|(id, committed)| {
            let arrived = arrivals.get(id)?;
            // An arrival before COMMIT returned (the relay saw the commit first): no wait.
            Some(arrived.saturating_duration_since(*committed).as_micros() as u64)
        })
        .collect();
    micros.sort_unstable();
    let missing = offered - micros.len();
    let at = |q: f64| {
        let i = ((micros.len() as f64 * q).ceil() as usize).clamp(1, micros.len().max(1)) - 1;
        micros.get(i).map_or(f64::NAN, |us| *us as f64 / 1000.0)
    };
    println!(
        "offered {offered} entries at {rate} rows/s for {seconds} s ({}): received {}, missing \
         {missing}; commit → consumer latency ms: p50 {:.1}, p90 {:.1}, p99 {:.1}, p99.9 {:.1}, \
         max {:.1}",
        if logical { "logical messages" } else { "outbox rows" },
        micros.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        at(0.999),
        micros.last().map_or(f64::NAN, |us| *us as f64 / 1000.0),
    );
    if missing > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// A read_committed consumer assigned every partition of `topic` at its current end.
async fn consumer_at_the_end(brokers: &str, topic: &str) -> anyhow::Result<StreamConsumer> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "outbox-relay-latency")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "5")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata.topics().first().map_or(0, |t| t.partitions().len());
    anyhow::ensure!(partitions > 0, "topic {topic:?} has no partitions: create it first");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions as i32 {
        let (_, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
        assignment.add_partition_offset(topic, partition, Offset::Offset(high))?;
    }
    consumer.assign(&assignment)?;
    Ok(consumer)
}

/// Notes when each record arrived, by its `id` header.
async fn consume(consumer: StreamConsumer, arrivals: Arc<Mutex<HashMap<String, Instant>>>) {
    let mut stream = consumer.stream();
    while let Some(Ok(record)) = stream.next().await {
        let now = Instant::now();
        let id = record.headers().and_then(|headers| {
            headers.iter().find(|h| h.key == "id").and_then(|h| h.value).map(<[u8]>::to_vec)
        });
        if let Some(id) = id.and_then(|id| String::from_utf8(id).ok()) {
            arrivals.lock().unwrap().entry(id).or_insert(now);
        }
    }
}

/// A consumer (no acknowledgements) of each of `queues`, comma-separated: declared as the relay
/// declares a configured queue by default (durable, no arguments; it declares its topology only
/// when it first sends) and emptied first.
async fn queues_emptied(
    url: &str,
    queues: &str,
) -> anyhow::Result<(lapin::Connection, Vec<lapin::Consumer>)> {
    use lapin::options::{BasicConsumeOptions, QueueDeclareOptions, QueuePurgeOptions};
    let connection =
        lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let mut consumers = Vec::new();
    for queue in queues.split(',') {
        let channel = connection.create_channel().await?;
        let durable = QueueDeclareOptions { durable: true, ..Default::default() };
        channel.queue_declare(queue.into(), durable, Default::default()).await?;
        channel.queue_purge(queue.into(), QueuePurgeOptions::default()).await?;
        let options = BasicConsumeOptions { no_ack: true, ..Default::default() };
        let table = lapin::types::FieldTable::default();
        let consumer = channel.basic_consume(queue.into(), "latency".into(), options, table);
        consumers.push(consumer.await?);
    }
    Ok((connection, consumers))
}

/// Notes when each message arrived, by its `message_id`.
async fn consume_amqp(
    connection: lapin::Connection,
    consumers: Vec<lapin::Consumer>,
    arrivals: Arc<Mutex<HashMap<String, Instant>>>,
) {
    let mut deliveries = futures::stream::select_all(consumers);
    while let Some(Ok(delivery)) = deliveries.next().await {
        let now = Instant::now();
        if let Some(id) = delivery.properties.message_id() {
            arrivals.lock().unwrap().entry(id.to_string()).or_insert(now);
        }
    }
    drop(connection);
}

/// Commits `rate` entries a second for `seconds`, ROWS_PER_TXN per transaction, each when it
/// is due (so a slow commit is caught up on, not spread out); returns each id with the instant
/// its COMMIT returned.
async fn offer(
    client: &tokio_postgres::Client,
    rate: f64,
    seconds: f64,
    logical: bool,
) -> anyhow::Result<Vec<(String, Instant)>> {
    // The payload as bench/run.sh writes it, ~200 bytes with the default filler.
    let note: usize = std::env::var("NOTE_BYTES").map_or(Ok(80), |n| n.parse())?;
    client
        .batch_execute(&format!(
            "create or replace function pg_temp.payload(i bigint) returns jsonb language sql as $$
               select jsonb_build_object('n', i, 'customer', 'c-' || (i % 977), 'items',
                 jsonb_build_array(jsonb_build_object('sku', 'sku-' || (i % 101), 'qty', i % 7 + 1,
                 'price', 19.99)), 'note', repeat('x', {note})) $$"
        ))
        .await?;
    let insert = client
        .prepare(
            "insert into outbox (id, aggregatetype, aggregateid, type, payload)
             select gen_random_uuid(), 'bench', 'key-' || ((n + i) % $2), 'Benchmarked', pg_temp.payload(n + i)
             from generate_series(1, $3::int) i, (select $1::bigint n) s
             returning id::text",
        )
        .await?;
    let emit = client
        .prepare(
            "select string_agg(id, ',') from (
               select gen_random_uuid()::text id, $1::bigint + i n from generate_series(1, $3::int) i
             ) m, lateral (select pg_logical_emit_message(true, 'outbox', jsonb_build_object(
               'id', id, 'aggregatetype', 'bench', 'aggregateid', 'key-' || (n % $2),
               'type', 'Benchmarked', 'payload', pg_temp.payload(n))::text)) e",
        )
        .await?;
    let total = (rate * seconds) as usize;
    let start = Instant::now();
    let mut commits = Vec::with_capacity(total);
    let mut n: i64 = 0;
    while commits.len() < total {
        let due = start + Duration::from_secs_f64(commits.len() as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let rows = ROWS_PER_TXN.min(total - commits.len()) as i32;
        let keys = KEYS as i64;
        client.batch_execute("begin").await?;
        let ids: Vec<String> = if logical {
            let row = client.query_one(&emit, &[&n, &keys, &rows]).await?;
            row.get::<_, String>(0).split(',').map(str::to_owned).collect()
        } else {
            let inserted = client.query(&insert, &[&n, &keys, &rows]).await?;
            inserted.iter().map(|row| row.get(0)).collect()
        };
        client.batch_execute("commit").await?;
        let committed = Instant::now();
        commits.extend(ids.into_iter().map(|id| (id, committed)));
        n += i64::from(rows);
    }
    Ok(commits)
}
