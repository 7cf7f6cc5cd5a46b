//! Request/asynchronous reply: a command row names its reply channel and correlation id
//! (`route.reply_to`, `route.correlation_id`); the relay puts them in each broker's own place —
//! AMQP `reply_to`/`correlation_id` properties, Kafka `reply-to`/`correlation-id` headers — and
//! a service answers on that channel, quoting the id. An event among the commands (NULL in both
//! columns) goes out without them.

use crate::support;

use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions};
use lapin::BasicProperties;
use support::config::RelayConfig;
use support::kafka::{create_topic, read_all};
use support::pg::{connect, count, fresh_database};
use support::relay::{migrate, Relay};
use support::{services, unique, wait_for};
use tokio_postgres::Client;

/// `sink`, routing each row's reply channel and correlation id.
fn config(sink: RelayConfig) -> String {
    sink.pipeline("retry_max_backoff", "1s")
        .route("key", "${aggregateid}")
        .route("reply_to", "${reply_to}")
        .route("correlation_id", "${correlation_id}")
        .to_string()
}

/// The outbox with the two columns, a command asking for a reply on `reply_to`, and an event.
async fn command_and_event(db: &str, config: &str, reply_to: &str) -> Client {
    migrate(config).await;
    let client = connect(db).await;
    client
        .batch_execute(
            "alter table outbox add column reply_to text, add column correlation_id text",
        )
        .await
        .unwrap();
    client
        .execute(
            "insert into outbox (id, aggregatetype, aggregateid, type, payload, reply_to, correlation_id) \
             values ('11111111-1111-4111-8111-111111111111', 'order', 'k', 'ReserveStock', \
                     '{\"sku\": \"a\"}', $1, 'corr-1'), \
                    ('22222222-2222-4222-8222-222222222222', 'order', 'k', 'OrderPlaced', \
                     '{}', null, null)",
            &[&reply_to],
        )
        .await
        .unwrap();
    client
}

async fn drained(client: &Client) {
    wait_for("the outbox to drain", Duration::from_secs(60), || async move {
        count(client, "select count(*) from outbox").await == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_over_rabbitmq_is_answered_on_its_reply_to_with_its_correlation_id() {
    let db = fresh_database("reply_rabbit").await;
    let prefix = unique("replyrabbit");
    let (commands, replies) = (format!("{prefix}.commands"), format!("{prefix}.replies"));
    let config = config(
        RelayConfig::rabbitmq(&db, &prefix)
            .topology(&prefix, "direct", &[&commands], "k")
            .queue(&replies),
    );
    let client = command_and_event(&db, &config, &replies).await;
    let relay = Relay::spawn(&config);
    drained(&client).await;

    // The service: takes each command, answers on its reply_to quoting its correlation_id.
    let connection = support::rabbit::connect(&services().amqp).await;
    let channel = connection.create_channel().await.unwrap();
    let mut seen = Vec::new();
    while let Some(delivery) =
        channel.basic_get(commands.as_str().into(), BasicGetOptions::default()).await.unwrap()
    {
        let properties = delivery.properties.clone();
        let reply_to = properties.reply_to().as_ref().map(|s| s.to_string());
        let correlation_id = properties.correlation_id().as_ref().map(|s| s.to_string());
        seen.push((
            properties.kind().as_ref().map(|s| s.to_string()),
            reply_to.clone(),
            correlation_id.clone(),
        ));
        if let (Some(reply_to), Some(correlation_id)) = (reply_to, correlation_id) {
            let answer = BasicProperties::default().with_correlation_id(correlation_id.into());
            channel
                .basic_publish(
                    "".into(),
                    reply_to.into(),
                    BasicPublishOptions::default(),
                    br#"{"reserved": true}"#,
                    answer,
                )
                .await
                .unwrap()
                .await
                .unwrap();
        }
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    assert_eq!(
        seen,
        [
            (Some("ReserveStock".into()), Some(replies.clone()), Some("corr-1".into())),
            (Some("OrderPlaced".into()), None, None),
        ],
        "the command carries both properties; the event neither"
    );

    // The requester: one answer, matched by the correlation id.
    let reply = channel
        .basic_get(replies.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("a reply");
    assert_eq!(reply.properties.correlation_id().as_ref().map(|s| s.as_str()), Some("corr-1"));
    assert_eq!(reply.data, br#"{"reserved": true}"#);
    drop(relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_over_kafka_is_answered_on_its_reply_to_header_with_its_correlation_id() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let db = fresh_database("reply_kafka").await;
    let prefix = unique("replykafka");
    let (commands, replies) = (format!("{prefix}.order"), format!("{prefix}.replies"));
    create_topic(&services().kafka, &commands, 1).await;
    create_topic(&services().kafka, &replies, 1).await;
    let config = config(RelayConfig::kafka(&db, &prefix));
    let client = command_and_event(&db, &config, &replies).await;
    let relay = Relay::spawn(&config);
    drained(&client).await;

    let records: Vec<_> =
        read_all(&services().kafka, &commands).await.into_iter().flatten().collect();
    let seen: Vec<_> = records
        .iter()
        .map(|r| (r.header("type"), r.header("reply-to"), r.header("correlation-id")))
        .collect();
    assert_eq!(
        seen,
        [
            (Some("ReserveStock"), Some(replies.as_str()), Some("corr-1")),
            (Some("OrderPlaced"), None, None),
        ],
        "the command carries both headers; the event neither"
    );

    // The service answers the command on its reply-to topic, quoting its correlation id.
    let producer: FutureProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", services().kafka).create().unwrap();
    let command = &records[0];
    let headers = OwnedHeaders::new()
        .insert(Header { key: "correlation-id", value: command.header("correlation-id") });
    producer
        .send(
            FutureRecord::to(command.header("reply-to").unwrap())
                .key("k")
                .payload(r#"{"reserved": true}"#)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let answers: Vec<_> =
        read_all(&services().kafka, &replies).await.into_iter().flatten().collect();
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0].header("correlation-id"), Some("corr-1"));
    drop(relay);
}
