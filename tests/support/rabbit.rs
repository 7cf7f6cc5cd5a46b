//! RabbitMQ helpers: a consumer that drains queues in order.

use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};

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
    let mut out = Vec::new();
    while let Some(message) =
        channel.basic_get(queue.into(), BasicGetOptions::default()).await.unwrap()
    {
        let delivery = &message.delivery;
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
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    let _ = connection.close(200, "bye".into()).await;
    out
}
