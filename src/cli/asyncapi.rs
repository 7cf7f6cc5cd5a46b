//! `outbox-relay asyncapi`: an AsyncAPI 3.0 document of what the pipeline publishes — the
//! written contract between the producing service and its consumers. Invariant: the document is
//! derived from the same config the relay routes with (topic template, key, headers, the
//! optional reply/trace headers, CloudEvents), so it cannot describe messages the relay does not
//! send; what the config cannot know (payload schemas, the event types) is declared in
//! `[asyncapi]`, or observed in the outbox table with `--observe`.

use std::io::Write;
use std::path::Path;

use outbox_relay_core::cloudevents::STRUCTURED_CONTENT_TYPE;
use outbox_relay_core::headers::{
    CORRELATION_ID, ID, PIPELINE, POSITION, REDELIVERED, REPLAY, REPLY_TO, TRACEPARENT, TRACESTATE,
};
use serde_json::{json, Map, Value};

use crate::config::{AsyncApiMessage, CloudEventsMode, Config, SinkConfig};
use crate::error::RelayError;
use crate::router::Template;

/// What `--observe` found in the database.
#[derive(Debug, Default)]
pub(crate) struct Observed {
    /// Distinct values of the column the `type` header comes from.
    types: Vec<String>,
    /// The payload column's SQL type (`jsonb`, `text`, `bytea`, ...).
    payload_type: Option<String>,
}

pub(crate) async fn asyncapi(
    config: &Config,
    config_dir: &Path,
    observe: bool,
    out: &mut impl Write,
) -> Result<(), RelayError> {
    let observed = if observe { Some(observed(config).await?) } else { None };
    let document = document(config, config_dir, observed.as_ref())?;
    writeln!(out, "{}", serde_json::to_string_pretty(&document).expect("JSON values serialize"))?;
    Ok(())
}

/// The column a `${column}` template consists of, if it is nothing else.
fn single_column(template: &str) -> Option<String> {
    let template = Template::parse("route", template).ok()?;
    template.single_column().map(str::to_owned)
}

async fn observed(config: &Config) -> Result<Observed, RelayError> {
    let session = crate::store::connect(config).await?;
    let client = session.client();
    let table: outbox_relay_postgres::TableName = config.source.table.parse()?;
    let quoted = table.quoted();
    let row = session
        .timed(
            "reading the outbox table's payload column type",
            client.query_opt(
                "select format_type(atttypid, atttypmod) from pg_attribute \
                 where attrelid = $1::text::regclass and attname = $2 and not attisdropped",
                &[&quoted, &config.source.payload_column],
            ),
        )
        .await?;
    let payload_type = row.map(|row| row.get(0));
    let mut types = Vec::new();
    if let Some(column) = config.route.headers.get("type").and_then(|t| single_column(t)) {
        let column = format!("\"{}\"", column.replace('"', "\"\""));
        let sql = format!(
            "select distinct {column}::text from {quoted} where {column} is not null \
             order by 1 limit 1000"
        );
        let rows =
            session.timed("reading the event types in the outbox", client.query(&sql, &[])).await?;
        types = rows.iter().map(|row| row.get(0)).collect();
    }
    Ok(Observed { types, payload_type })
}

/// A name as an AsyncAPI id (`^[\w\d.\-_]+$`).
fn id_of(name: &str) -> String {
    let id: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' })
        .collect();
    if id.is_empty() {
        "_".into()
    } else {
        id
    }
}

/// `${column}` placeholders as AsyncAPI `{column}` parameters (the config was validated, so
/// the template parses).
fn address(template: &str) -> (String, Vec<String>) {
    Template::parse("route.topic", template)
        .map(|t| t.parameterised())
        .unwrap_or_else(|_| (template.to_owned(), Vec::new()))
}

fn string(description: &str) -> Value {
    json!({"type": "string", "description": description})
}

pub(crate) fn document(
    config: &Config,
    config_dir: &Path,
    observed: Option<&Observed>,
) -> Result<Value, RelayError> {
    let spec = &config.asyncapi;
    let (kafka, servers) = match &config.sink {
        SinkConfig::Kafka(kafka) => {
            let servers: Map<String, Value> = kafka
                .brokers
                .split(',')
                .map(str::trim)
                .filter(|b| !b.is_empty())
                .enumerate()
                .map(|(i, host)| (format!("kafka-{i}"), json!({"host": host, "protocol": "kafka"})))
                .collect();
            (true, servers)
        }
        SinkConfig::Rabbitmq(rabbit) => {
            let (protocol, host, vhost) = amqp_server(rabbit.url.expose());
            let mut server = json!({"host": host, "protocol": protocol});
            if !vhost.is_empty() {
                server["pathname"] = format!("/{vhost}").into();
            }
            (false, Map::from_iter([("rabbitmq".to_string(), server)]))
        }
    };

    if spec.messages.iter().any(|m| m.kind.is_empty()) {
        return Err(RelayError::AsyncApi(
            "every [[asyncapi.messages]] needs its `type` (the `type` header's value)".into(),
        ));
    }
    let mut declared: Vec<AsyncApiMessage> = spec.messages.clone();
    for kind in observed.map(|o| o.types.as_slice()).unwrap_or_default() {
        if !declared.iter().any(|m| &m.kind == kind) {
            declared.push(AsyncApiMessage { kind: kind.clone(), ..AsyncApiMessage::default() });
        }
    }
    let content_type = match observed.and_then(|o| o.payload_type.as_deref()) {
        Some("json" | "jsonb") | None => "application/json",
        Some("bytea") => "application/octet-stream",
        Some(_) => "text/plain; charset=utf-8",
    };

    let mut messages = Map::new();
    if declared.is_empty() {
        let any = AsyncApiMessage {
            summary: "An outbox entry (declare the event types in [[asyncapi.messages]], or \
                      run with --observe)"
                .into(),
            ..AsyncApiMessage::default()
        };
        messages.insert("entry".into(), message(config, kafka, &any, content_type, config_dir)?);
    }
    for declared in &declared {
        let id = id_of(&declared.kind);
        if messages.contains_key(&id) {
            return Err(RelayError::AsyncApi(format!(
                "asyncapi.messages: two types become the message id {id:?}"
            )));
        }
        messages.insert(id, message(config, kafka, declared, content_type, config_dir)?);
    }

    let (address, parameters) = address(&config.route.topic);
    let channel_id = id_of(&config.pipeline.name);
    let mut channel = json!({
        "address": address,
        "title": if kafka { "Kafka topic" } else { "RabbitMQ exchange" },
        "description": format!("route.topic = {:?}", config.route.topic),
        "messages": Map::from_iter(messages.keys().map(|id| {
            (id.clone(), json!({"$ref": format!("#/components/messages/{id}")}))
        })),
    });
    if !parameters.is_empty() {
        channel["parameters"] = Map::from_iter(parameters.iter().map(|name| {
            let description = format!("The entry's column `{name}`.");
            (name.clone(), json!({ "description": description }))
        }))
        .into();
    }
    if !kafka {
        channel["bindings"] = json!({"amqp": {
            "is": "routingKey",
            "exchange": {"name": address, "durable": true, "autoDelete": false},
            "bindingVersion": "0.3.0",
        }});
    }
    let mut operation = json!({
        "action": "send",
        "summary": "The relay publishes each committed outbox entry, in commit order per key.",
        "channel": {"$ref": format!("#/channels/{channel_id}")},
        "messages": messages.keys().map(|id| {
            json!({"$ref": format!("#/channels/{channel_id}/messages/{id}")})
        }).collect::<Vec<_>>(),
    });
    if !kafka {
        operation["bindings"] = json!({"amqp": {
            "deliveryMode": 2, "mandatory": true, "bindingVersion": "0.3.0"
        }});
    }
    let title = if spec.title.is_empty() {
        format!("outbox-relay pipeline {}", config.pipeline.name)
    } else {
        spec.title.clone()
    };
    let mut info = json!({"title": title, "version": spec.version});
    if !spec.description.is_empty() {
        info["description"] = spec.description.clone().into();
    }
    Ok(json!({
        "asyncapi": "3.0.0",
        "info": info,
        "defaultContentType": content_type,
        "servers": servers,
        "channels": {channel_id.clone(): channel},
        "operations": {"publish": operation},
        "components": {"messages": messages},
    }))
}

/// `(protocol, host:port, vhost)` of an AMQP URL, without its credentials.
fn amqp_server(url: &str) -> (&'static str, String, String) {
    let (protocol, rest) = match url.split_once("://") {
        Some(("amqps", rest)) => ("amqps", rest),
        Some((_, rest)) => ("amqp", rest),
        None => ("amqp", url),
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, vhost) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    (protocol, host.to_string(), vhost.to_string())
}

/// One message of the document: its headers as the relay sets them for `declared.kind`.
fn message(
    config: &Config,
    kafka: bool,
    declared: &AsyncApiMessage,
    content_type: &str,
    config_dir: &Path,
) -> Result<Value, RelayError> {
    let route = &config.route;
    let kind = (!declared.kind.is_empty()).then_some(declared.kind.as_str());
    let mut headers = Map::new();
    let mut required: Vec<String> = [ID, POSITION, PIPELINE].map(String::from).into();
    headers.insert(ID.into(), string("The outbox entry id; consumers deduplicate on it."));
    headers.insert(
        POSITION.into(),
        string("The entry's source position: `wal:<commit LSN>:<index>` or `poll:<seq>`."),
    );
    headers.insert(
        PIPELINE.into(),
        json!({"type": "string", "const": config.pipeline.name, "description": "The pipeline that published it."}),
    );
    if !kafka {
        headers.insert(
            REDELIVERED.into(),
            json!({"type": "boolean", "description": "Present (true) on a message that may have been delivered before: check the inbox."}),
        );
    }
    headers.insert(
        REPLAY.into(),
        json!({"type": "string", "description": "Present on a copy `outbox-relay replay` sent again: the replay's label."}),
    );
    for (name, template) in &route.headers {
        let mut schema = string(&format!("route.headers.{name} = {template:?}"));
        if let (Some(kind), "type") = (kind, name.as_str()) {
            schema["const"] = kind.into();
        }
        headers.insert(name.clone(), schema);
        required.push(name.clone());
    }
    let optional = [
        (REPLY_TO, &route.reply_to, "Where the reply to this command goes (route.reply_to)."),
        (CORRELATION_ID, &route.correlation_id, "What the reply quotes (route.correlation_id)."),
        (TRACEPARENT, &route.traceparent, "W3C trace context of the writing transaction."),
        (TRACESTATE, &route.tracestate, "W3C trace state, beside a traceparent."),
    ];
    for (name, template, description) in optional {
        if !template.is_empty() {
            headers.insert(name.into(), string(description));
        }
    }
    let payload = match &declared.payload {
        Some(path) => {
            let path = config_dir.join(path);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                RelayError::AsyncApi(format!(
                    "asyncapi.messages type {:?}: reading the payload schema {}: {e}",
                    declared.kind,
                    path.display()
                ))
            })?;
            serde_json::from_str::<Value>(&text).map_err(|e| {
                RelayError::AsyncApi(format!(
                    "asyncapi.messages type {:?}: the payload schema {} is not JSON: {e}",
                    declared.kind,
                    path.display()
                ))
            })?
        }
        None => json!({}),
    };
    let ce = &route.cloudevents;
    let (payload, content_type) = match ce.mode {
        CloudEventsMode::Off => (payload, content_type),
        CloudEventsMode::Binary => {
            let prefix = if kafka { "ce_" } else { "cloudEvents:" };
            for (name, schema, always) in cloudevent_attributes(config, kind) {
                let name = format!("{prefix}{name}");
                if always {
                    required.push(name.clone());
                }
                headers.insert(name, schema);
            }
            if kafka {
                headers.insert(
                    "content-type".into(),
                    json!({"type": "string", "const": content_type}),
                );
            }
            (payload, content_type)
        }
        CloudEventsMode::Structured => {
            let mut properties: Map<String, Value> = cloudevent_attributes(config, kind)
                .into_iter()
                .map(|(name, schema, _)| (name.to_string(), schema))
                .collect();
            properties.insert("datacontenttype".into(), json!({"const": content_type}));
            if content_type == "application/octet-stream" {
                let bytes = json!({"type": "string", "contentEncoding": "base64"});
                properties.insert("data_base64".into(), bytes);
            } else {
                properties.insert("data".into(), payload);
            }
            let envelope = json!({
                "type": "object",
                "required": ["specversion", "id", "source", "type"],
                "properties": properties,
            });
            (envelope, STRUCTURED_CONTENT_TYPE)
        }
    };
    let name = kind.unwrap_or("entry");
    let mut message = json!({
        "name": name,
        "contentType": content_type,
        "headers": {"type": "object", "required": required, "properties": headers},
        "payload": payload,
    });
    if !declared.summary.is_empty() {
        message["summary"] = declared.summary.clone().into();
    }
    if !route.correlation_id.is_empty() {
        message["correlationId"] =
            json!({"location": format!("$message.header#/{CORRELATION_ID}")});
    }
    if kafka && !route.key.is_empty() {
        message["bindings"] = json!({"kafka": {
            "key": {"type": "string", "description": format!("route.key = {:?}: the shard key; one key, one partition, commit order kept.", route.key)},
            "bindingVersion": "0.5.0",
        }});
    }
    Ok(message)
}

/// `(attribute, schema, always present)` of the CloudEvents attributes the relay sets.
fn cloudevent_attributes(config: &Config, kind: Option<&str>) -> Vec<(&'static str, Value, bool)> {
    let ce = &config.route.cloudevents;
    let mut kind_schema = string(&format!("route.cloudevents.type = {:?}", ce.kind));
    if let (Some(kind), Some("type")) = (kind, single_column(&ce.kind).as_deref()) {
        kind_schema["const"] = kind.into();
    }
    let mut attributes = vec![
        ("specversion", json!({"type": "string", "const": "1.0"}), true),
        ("id", string("The outbox entry id."), true),
        (
            "source",
            json!({"type": "string", "format": "uri-reference", "description": format!("route.cloudevents.source = {:?}", ce.source)}),
            true,
        ),
        ("type", kind_schema, true),
    ];
    if !ce.subject.is_empty() {
        attributes.push((
            "subject",
            string(&format!("route.cloudevents.subject = {:?}", ce.subject)),
            false,
        ));
    }
    if !ce.time.is_empty() {
        attributes.push(("time", json!({"type": "string", "format": "date-time"}), false));
    }
    attributes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_become_addresses_with_parameters() {
        assert_eq!(
            address("outbox.${aggregatetype}.${type}.${aggregatetype}"),
            (
                "outbox.{aggregatetype}.{type}.{aggregatetype}".into(),
                vec!["aggregatetype".into(), "type".into()]
            )
        );
        assert_eq!(address("plain"), ("plain".into(), vec![]));
        assert_eq!(single_column("${type}").as_deref(), Some("type"));
        assert_eq!(single_column("x${type}"), None);
        assert_eq!(id_of("order.created/v1 é"), "order.created_v1__");
    }

    #[test]
    fn amqp_servers_are_named_without_credentials() {
        assert_eq!(
            amqp_server("amqps://user:p@ss@mq.example:5671/prod?heartbeat=10"),
            ("amqps", "mq.example:5671".into(), "prod".into())
        );
        assert_eq!(
            amqp_server("amqp://127.0.0.1:5672/%2f"),
            ("amqp", "127.0.0.1:5672".into(), "%2f".into())
        );
        assert_eq!(amqp_server("amqp://h"), ("amqp", "h".into(), String::new()));
    }
}
