//! A plain consumer for the quickstart and the benchmark: prints what the relay delivered.
//!
//!   cargo run --example consume -- kafka 127.0.0.1:9092 outbox.event.order 10
//!   cargo run --example consume -- rabbitmq amqp://guest:guest@127.0.0.1:5672/%2f q1,q2 10
//!
//! Reads from the beginning (Kafka: every partition; RabbitMQ: the queues, comma-separated)
//! until COUNT messages arrived, then exits 0; exits 1 if they do not arrive within 60 s.

use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::{AMQPValue, FieldTable};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kind, address, source, count] = <[String; 4]>::try_from(args).map_err(|_| {
        anyhow::anyhow!(
            "usage: consume kafka|rabbitmq <brokers|amqp-url> <topic|queue,...> <count>"
        )
    })?;
    let count: usize = count.parse()?;
    match kind.as_str() {
        "kafka" => kafka(&address, &source, count).await,
        "rabbitmq" => rabbitmq(&address, &source, count).await,
        other => anyhow::bail!("unknown broker kind {other:?}"),
    }
}

async fn kafka(brokers: &str, topic: &str, count: usize) -> anyhow::Result<()> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "outbox-relay-example")
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut assignment = TopicPartitionList::new();
    for partition in metadata.topics()[0].partitions() {
        assignment.add_partition_offset(topic, partition.id(), Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let started = Instant::now();
    for n in 1..=count {
        let remaining = DEADLINE.saturating_sub(started.elapsed());
        let message = tokio::time::timeout(remaining, consumer.recv())
            .await
            .map_err(|_| anyhow::anyhow!("only {} of {count} messages arrived", n - 1))??;
        let headers: Vec<String> = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        format!(
                            "{}={}",
                            h.key,
                            String::from_utf8_lossy(h.value.unwrap_or_default())
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "[{topic} p{} @{}] key={} {} payload={}",
            message.partition(),
            message.offset(),
            String::from_utf8_lossy(message.key().unwrap_or_default()),
            headers.join(" "),
            String::from_utf8_lossy(message.payload().unwrap_or_default())
        );
    }
    Ok(())
}

async fn rabbitmq(url: &str, queues: &str, count: usize) -> anyhow::Result<()> {
    let connection =
        lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let mut consumers = Vec::new();
    for queue in queues.split(',') {
        let consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        consumers.push(consumer);
    }
    let mut consumer = futures::stream::select_all(consumers);
    let started = Instant::now();
    for n in 1..=count {
        let remaining = DEADLINE.saturating_sub(started.elapsed());
        let delivery = tokio::time::timeout(remaining, consumer.next())
            .await
            .map_err(|_| anyhow::anyhow!("only {} of {count} messages arrived", n - 1))?
            .ok_or_else(|| anyhow::anyhow!("consumer closed"))??;
        let headers: Vec<String> = delivery
            .properties
            .headers()
            .as_ref()
            .map(|t| {
                t.inner()
                    .iter()
                    .map(|(k, v)| match v {
                        AMQPValue::LongString(s) => {
                            format!("{k}={}", String::from_utf8_lossy(s.as_bytes()))
                        }
                        other => format!("{k}={other:?}"),
                    })
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "[{}] routing_key={} message_id={} {} payload={}",
            delivery.exchange,
            delivery.routing_key,
            delivery.properties.message_id().as_ref().map(ToString::to_string).unwrap_or_default(),
            headers.join(" "),
            String::from_utf8_lossy(&delivery.data)
        );
        delivery.ack(BasicAckOptions::default()).await?;
    }
    connection.close(200, "done".into()).await?;
    Ok(())
}
