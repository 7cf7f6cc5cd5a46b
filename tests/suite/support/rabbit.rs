//! RabbitMQ helpers: a consumer that drains queues in order.

use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};

use super::check::Delivered;

/// One delivery as a consumer saw it.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub routing_key: String,
    pub message_id: Option<String>,
    pub redelivered: bool,
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl Delivery {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The relay marked it as a possible redelivery (`outbox-redelivered: true`).
    pub fn marked(&self) -> bool {
        self.header("outbox-redelivered") == Some("true")
    }

    /// As the checks see it: id from `message_id`, key and version from the payload; a
    /// redelivery if the broker or the relay says so.
    pub fn delivered(&self) -> Delivered {
        let id = self.message_id.clone().expect("message_id");
        Delivered::from_payload(id, &self.payload, self.redelivered || self.marked())
    }
}

pub async fn connect(url: &str) -> Connection {
    Connection::connect(url, ConnectionProperties::default()).await.unwrap()
}

/// Messages ready in `queue` right now.
pub async fn ready(url: &str, queue: &str) -> u32 {
    let connection = connect(url).await;
    let channel = connection.create_channel().await.unwrap();
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let q = channel.queue_declare(queue.into(), passive, FieldTable::default()).await.unwrap();
    let count = q.message_count();
    let _ = connection.close(200, "bye".into()).await;
    count
}

/// Takes every message now in `queue`, in queue order (acknowledging them).
pub async fn drain(url: &str, queue: &str) -> Vec<Delivery> {
    let connection = connect(url).await;
    let channel = connection.create_channel().await.unwrap();
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let total = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .unwrap()
        .message_count() as usize;
    channel.basic_qos(2_000, BasicQosOptions::default()).await.unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "drain".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut out = Vec::with_capacity(total);
    while out.len() < total {
        let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .unwrap_or_else(|_| panic!("{queue}: {} of {total} messages arrived", out.len()))
            .expect("consumer open")
            .unwrap();
        let headers = delivery
            .properties
            .headers()
            .as_ref()
            .map(|table| {
                table
                    .inner()
                    .iter()
                    .map(|(k, v)| {
                        let value = match v {
                            AMQPValue::LongString(s) => {
                                String::from_utf8_lossy(s.as_bytes()).into_owned()
                            }
                            AMQPValue::Boolean(b) => b.to_string(),
                            other => format!("{other:?}"),
                        };
                        (k.to_string(), value)
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(Delivery {
            routing_key: delivery.routing_key.to_string(),
            message_id: delivery.properties.message_id().as_ref().map(ToString::to_string),
            redelivered: delivery.redelivered,
            headers,
            payload: delivery.data.clone(),
        });
        if out.len() % 500 == 0 || out.len() == total {
            delivery.ack(BasicAckOptions { multiple: true }).await.unwrap();
        }
    }
    let _ = connection.close(200, "bye".into()).await;
    out
}
