//! Message conventions: CloudEvents 1.0 in binary and structured mode (`route.cloudevents`),
//! checked by the official CloudEvents SDK (`tests/js/cloudevents.mjs`, npm `cloudevents`), W3C
//! trace context (`route.traceparent`), and the relay's own spans over OTLP. The two CloudEvents
//! tests write the same three entries — one with a traceparent, one with a malformed one, one
//! with none — into a database whose time zone and date style are not the relay's, and read
//! what each broker got.

use crate::support;

use std::time::Duration;

use base64::Engine as _;
use lapin::options::BasicGetOptions;
use lapin::types::AMQPValue;
use serde_json::{json, Value};
use support::config::RelayConfig;
use support::kafka::{create_topic, read_all};
use support::pg::{connect, count, fresh_database};
use support::relay::{migrate, Relay};
use support::{services, unique, wait_for};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// `sink` with trace context and CloudEvents in `mode`.
fn config(sink: RelayConfig, mode: &str) -> String {
    sink.pipeline("retry_max_backoff", "1s")
        .route("traceparent", "${traceparent}")
        .route("tracestate", "${tracestate}")
        .set("route.cloudevents", "mode", mode)
        .set("route.cloudevents", "source", "/orders-service")
        .set("route.cloudevents", "time", "${created_at}")
        .to_string()
}

/// Runs the relay on three entries until they are delivered.
async fn deliver(db: &str, config: &str) {
    migrate(config).await;
    let client = connect(db).await;
    client
        .batch_execute(
            "alter table outbox add column traceparent text, add column tracestate text, \
             alter column created_at drop not null;
             insert into outbox (id, aggregatetype, aggregateid, type, payload, created_at, \
                                 traceparent, tracestate) values
               ('00000000-0000-4000-8000-000000000001', 'order', 'o-1', 'OrderCreated', '{\"total\": 12.5, \"note\": \"\\\"ü\\\"\"}',
                '2026-12-04 15:30:00.25+05:30', \
                '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01', 'acme=1'),
               ('00000000-0000-4000-8000-000000000002', 'order', 'o-1', 'OrderPaid', '[1, 2]', '2026-12-04 16:00:00+05:30', \
                'garbage', 'acme=2'),
               ('00000000-0000-4000-8000-000000000003', 'order', 'o-2', 'OrderShipped', '{}', null, null, null)",
        )
        .await
        .unwrap();
    // The relay's sessions render dates their own way, whatever the database's defaults.
    let name: String = client.query_one("select current_database()", &[]).await.unwrap().get(0);
    client
        .batch_execute(&format!(
            "alter database \"{name}\" set timezone = 'Asia/Kolkata'; \
             alter database \"{name}\" set datestyle = 'SQL, DMY'"
        ))
        .await
        .unwrap();
    let relay = Relay::spawn(config);
    wait_for("the outbox to drain", Duration::from_secs(60), || async {
        count(&client, "select count(*) from outbox").await == 0
    })
    .await;
    drop(relay);
}

/// What the SDK must make of the three entries, whichever the mode and broker. `time` comes
/// from `created_at` (a `timestamptz`), rendered in UTC whatever the server's time zone.
fn expected() -> Value {
    let event = |id: &str, kind: &str, subject: &str, time: Option<&str>, data: Value| {
        let mut event = json!({
            "specversion": "1.0", "id": id, "source": "/orders-service", "type": kind,
            "subject": subject, "datacontenttype": "application/json", "data": data,
        });
        if let Some(time) = time {
            event["time"] = time.into();
        }
        event
    };
    json!([
        event(
            "00000000-0000-4000-8000-000000000001",
            "OrderCreated",
            "o-1",
            Some("2026-12-04T10:00:00.25+00:00"),
            json!({"total": 12.5, "note": "\"ü\""})
        ),
        event(
            "00000000-0000-4000-8000-000000000002",
            "OrderPaid",
            "o-1",
            Some("2026-12-04T10:30:00+00:00"),
            json!([1, 2])
        ),
        event("00000000-0000-4000-8000-000000000003", "OrderShipped", "o-2", None, json!({})),
    ])
}

/// The SDK's reading of `messages`; it panics on an event the SDK refuses.
fn sdk_reads(messages: Vec<Value>) -> Value {
    let output = support::js::run("cloudevents.mjs", Value::Array(messages).to_string().as_bytes());
    serde_json::from_str(&output).expect("JSON from cloudevents.mjs")
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_messages_are_cloudevents_the_sdk_reads_in_both_modes_with_trace_context() {
    for mode in ["binary", "structured"] {
        let db = fresh_database(&format!("ce_kafka_{mode}")).await;
        let prefix = unique(&format!("cekafka{mode}"));
        let topic = format!("{prefix}.order");
        create_topic(&services().kafka, &topic, 1).await;
        deliver(&db, &config(RelayConfig::kafka(&db, &prefix), mode)).await;

        let records: Vec<_> =
            read_all(&services().kafka, &topic).await.into_iter().flatten().collect();
        assert_eq!(records.len(), 3, "{records:?}");
        let traces: Vec<_> =
            records.iter().map(|r| (r.header("traceparent"), r.header("tracestate"))).collect();
        assert_eq!(
            traces,
            [(Some(TRACEPARENT), Some("acme=1")), (None, None), (None, None)],
            "{mode}: a valid traceparent travels with its tracestate; a malformed one does not"
        );
        let content_type = records[0].header("content-type").map(str::to_string);
        match mode {
            "binary" => {
                assert_eq!(content_type.as_deref(), Some("application/json"));
                assert_eq!(
                    records[0].header("ce_id"),
                    Some("00000000-0000-4000-8000-000000000001")
                );
            }
            _ => assert_eq!(
                content_type.as_deref(),
                Some("application/cloudevents+json; charset=utf-8")
            ),
        }
        let messages = records
            .iter()
            .map(|r| {
                let headers: serde_json::Map<String, Value> =
                    r.headers.iter().map(|(n, v)| (n.clone(), Value::from(v.as_str()))).collect();
                json!({"binding": "kafka", "headers": headers, "content_type": null,
                       "value": base64(r.payload.as_deref().unwrap_or_default())})
            })
            .collect();
        assert_eq!(sdk_reads(messages), expected(), "{mode}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_messages_are_cloudevents_the_sdk_reads_in_both_modes_with_trace_context() {
    for mode in ["binary", "structured"] {
        let db = fresh_database(&format!("ce_rabbit_{mode}")).await;
        let prefix = unique(&format!("cerabbit{mode}"));
        let queue = format!("{prefix}.q");
        // WAL tailing here (polling on Kafka): the walsender renders dates as the relay asks too.
        let sink = RelayConfig::rabbitmq(&db, &prefix).wal(&unique("slot")).topology(
            &prefix,
            "fanout",
            &[&queue],
            "",
        );
        deliver(&db, &config(sink, mode)).await;

        let connection = support::rabbit::connect(&services().amqp).await;
        let channel = connection.create_channel().await.unwrap();
        let mut messages = Vec::new();
        let mut traces = Vec::new();
        while let Some(delivery) = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            let properties = &delivery.properties;
            let mut headers = serde_json::Map::new();
            for (name, value) in properties.headers().as_ref().unwrap().inner() {
                if let AMQPValue::LongString(text) = value {
                    headers.insert(name.to_string(), text.to_string().into());
                }
            }
            traces.push((headers.get("traceparent").cloned(), headers.get("tracestate").cloned()));
            let content_type = properties.content_type().as_ref().map(|c| c.to_string());
            messages.push(json!({"binding": "amqp", "headers": headers,
                                 "content_type": content_type, "value": base64(&delivery.data)}));
        }
        assert_eq!(messages.len(), 3, "{messages:?}");
        assert_eq!(
            traces,
            [(Some(TRACEPARENT.into()), Some("acme=1".into())), (None, None), (None, None)],
            "{mode}"
        );
        if mode == "binary" {
            assert_eq!(
                messages[0]["headers"]["cloudEvents:id"],
                "00000000-0000-4000-8000-000000000001"
            );
            assert_eq!(messages[0]["content_type"], "application/json");
        } else {
            assert_eq!(messages[0]["content_type"], "application/cloudevents+json; charset=utf-8");
        }
        assert_eq!(sdk_reads(messages), expected(), "{mode}");
    }
}

/// With `telemetry.otlp_endpoint`, the relay's own spans reach a real OpenTelemetry Collector:
/// a `publish` span (PRODUCER) in the writing transaction's trace, its child `confirm`, and the
/// record's `traceparent` naming the publish span — for a sampled trace only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relays_publish_and_confirm_spans_reach_an_otlp_collector_in_the_entrys_trace() {
    let collector = support::otel::Collector::start().await;
    let db = fresh_database("otlp").await;
    let prefix = unique("otlp");
    let topic = format!("{prefix}.order");
    create_topic(&services().kafka, &topic, 1).await;
    let config = RelayConfig::kafka(&db, &prefix)
        .route("traceparent", "${traceparent}")
        .set("telemetry", "otlp_endpoint", collector.endpoint.as_str())
        .set("telemetry", "service_name", "relay-under-test")
        .to_string();
    migrate(&config).await;
    let client = connect(&db).await;
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    client.batch_execute("alter table outbox add column traceparent text").await.unwrap();
    client
        .execute(
            "insert into outbox (id, aggregatetype, aggregateid, type, payload, traceparent) values \
             (gen_random_uuid(), 'order', 'o-1', 'OrderCreated', '{}', $1), \
             (gen_random_uuid(), 'order', 'o-2', 'OrderCreated', '{}', $2), \
             (gen_random_uuid(), 'order', 'o-3', 'OrderCreated', '{}', null)",
            &[&TRACEPARENT, &unsampled],
        )
        .await
        .unwrap();
    let mut relay = Relay::spawn(&config);
    wait_for("the outbox to drain", Duration::from_secs(60), || async {
        count(&client, "select count(*) from outbox").await == 0
    })
    .await;
    relay.terminate();
    assert!(relay.wait(Duration::from_secs(30)).await.success(), "{}", relay.log());

    let records: Vec<_> = read_all(&services().kafka, &topic).await.into_iter().flatten().collect();
    let sent: Vec<_> = records.iter().map(|r| r.header("traceparent")).collect();
    let (trace, writer) = (&TRACEPARENT[3..35], &TRACEPARENT[36..52]);
    let relayed = sent[0].expect("the sampled entry's traceparent");
    assert_eq!(&relayed[..36], &TRACEPARENT[..36], "the same trace");
    assert_ne!(&relayed[36..52], writer, "the relay's span is the consumer's parent");
    assert_eq!(sent[1..], [Some(unsampled), None], "unsampled: passed on as it was");

    wait_for("the spans at the collector", Duration::from_secs(20), || async {
        collector.spans().len() >= 2
    })
    .await;
    let spans = collector.spans();
    assert_eq!(spans.len(), 2, "only the sampled entry has spans: {spans:#?}");
    let publish = spans.iter().find(|s| s["name"] == format!("publish {topic}")).expect("publish");
    let confirm = spans.iter().find(|s| s["name"] == format!("confirm {topic}")).expect("confirm");
    assert_eq!(publish["service"], "relay-under-test");
    assert_eq!(publish["traceId"], trace);
    assert_eq!(publish["parentSpanId"], writer, "a child of the writing transaction's span");
    assert_eq!(publish["spanId"], &relayed[36..52]);
    assert_eq!(publish["kind"], 4, "PRODUCER");
    assert_eq!(confirm["traceId"], trace);
    assert_eq!(confirm["parentSpanId"], publish["spanId"]);
    let attribute = |name: &str| {
        publish["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == name)
            .map(|a| a["value"]["stringValue"].clone())
    };
    assert_eq!(attribute("messaging.system"), Some("kafka".into()));
    assert_eq!(attribute("messaging.destination.name"), Some(topic.clone().into()));
    assert_eq!(attribute("messaging.message.id"), Some(records[0].header("id").unwrap().into()));
    let nanos = |span: &Value, field: &str| span[field].as_str().unwrap().parse::<u64>().unwrap();
    assert!(nanos(publish, "startTimeUnixNano") <= nanos(confirm, "startTimeUnixNano"));
    assert!(nanos(confirm, "endTimeUnixNano") <= nanos(publish, "endTimeUnixNano"));
    assert_eq!(publish["status"]["code"], 1, "OK");
}
