//! Routing: how an [`Entry`] becomes a [`Message`] (destination, shard key, headers), Debezium
//! outbox-router compatible by default. Invariant: routing never guesses — a NULL in a key,
//! destination or header column makes the entry poison, named, rather than a message with an
//! empty key or a wrong topic.

use std::sync::Arc;

use outbox_relay_core::{Entry, Header, Message};

use crate::error::RelayError;

mod config;
mod events;
mod template;

pub(crate) use config::{CloudEventsMode, RouteConfig};

use events::{cloudevents_name, CloudEventsTemplates};
pub(crate) use template::Template;

use outbox_relay_core::headers::{
    self, CORRELATION_ID, ID as ID_HEADER, PIPELINE as PIPELINE_HEADER,
    POSITION as POSITION_HEADER, REPLY_TO, TRACEPARENT, TRACESTATE,
};

/// Headers sent only when their columns are not NULL, with the config key that sets each, in
/// the order of [`optional_templates`]; `route.headers` may not name them.
const OPTIONAL: [(&str, &str); 4] = [
    (REPLY_TO, "route.reply_to"),
    (CORRELATION_ID, "route.correlation_id"),
    (TRACEPARENT, "route.traceparent"),
    (TRACESTATE, "route.tracestate"),
];

fn optional_templates(config: &RouteConfig) -> [&String; 4] {
    [&config.reply_to, &config.correlation_id, &config.traceparent, &config.tracestate]
}

/// An entry that cannot become a message, handed back with the reason (to halt on, or to set
/// aside).
#[derive(Debug)]
pub(crate) struct Poisoned {
    pub(crate) entry: Entry,
    pub(crate) error: RelayError,
}

#[derive(Clone, Debug)]
pub(crate) struct Router {
    topic: Template,
    key: Option<Template>,
    headers: Vec<(Arc<str>, Template)>,
    /// Headers sent only when their columns are not NULL: reply channel, correlation id, trace
    /// context.
    optional: Vec<(&'static str, Arc<str>, Template)>,
    cloudevents: Option<CloudEventsTemplates>,
    id_header: Arc<str>,
    position_header: Arc<str>,
    pipeline_header: Header,
}

impl Router {
    /// `pipeline` goes into every message's `outbox-pipeline` header.
    pub(crate) fn new(config: &RouteConfig, pipeline: &str) -> Result<Self, RelayError> {
        let topic = Template::parse("route.topic", &config.topic)?;
        if config.topic.is_empty() {
            return Err(RelayError::Template {
                key: "route.topic",
                template: String::new(),
                reason: "must not be empty".into(),
            });
        }
        let key = if config.key.is_empty() {
            None
        } else {
            Some(Template::parse("route.key", &config.key)?)
        };
        let mut headers = Vec::with_capacity(config.headers.len());
        for (name, template) in &config.headers {
            if headers::is_reserved(name) {
                return Err(RelayError::Template {
                    key: "route.headers",
                    template: name.clone(),
                    reason: format!(
                        "header {name:?} is reserved: `id` and `outbox-*` are set by the relay \
                         itself; rename it"
                    ),
                });
            }
            if let Some((_, key)) = OPTIONAL.iter().find(|(h, _)| name.eq_ignore_ascii_case(h)) {
                return Err(RelayError::Template {
                    key: "route.headers",
                    template: name.clone(),
                    reason: format!("set {key} instead (it maps to each broker's own place)"),
                });
            }
            headers.push((Arc::from(name.as_str()), Template::parse("route.headers", template)?));
        }
        let mut optional = Vec::new();
        for ((header, key), template) in OPTIONAL.into_iter().zip(optional_templates(config)) {
            if !template.is_empty() {
                optional.push((key, Arc::from(header), Template::parse(key, template)?));
            }
        }
        let cloudevents = CloudEventsTemplates::new(&config.cloudevents)?;
        if cloudevents.is_some() {
            if let Some(name) = config.headers.keys().find(|name| cloudevents_name(name)) {
                return Err(RelayError::Template {
                    key: "route.headers",
                    template: name.clone(),
                    reason: "`ce_*`, `cloudEvents:*` and `content-type` headers carry the \
                             CloudEvents attributes (route.cloudevents); rename it"
                        .into(),
                });
            }
        }
        Ok(Self {
            topic,
            key,
            headers,
            optional,
            cloudevents,
            id_header: Arc::from(ID_HEADER),
            position_header: Arc::from(POSITION_HEADER),
            pipeline_header: Header { name: Arc::from(PIPELINE_HEADER), value: pipeline.into() },
        })
    }

    /// Every column a template refers to, with the config key it appears in.
    pub(crate) fn columns(&self) -> impl Iterator<Item = (&'static str, &str)> {
        let topic = self.topic.columns().map(|c| ("route.topic", c));
        let key = self.key.iter().flat_map(|k| k.columns()).map(|c| ("route.key", c));
        let headers =
            self.headers.iter().flat_map(|(_, t)| t.columns()).map(|c| ("route.headers", c));
        let optional =
            self.optional.iter().flat_map(|(key, _, t)| t.columns().map(move |c| (*key, c)));
        let cloudevents = self.cloudevents.iter().flat_map(CloudEventsTemplates::columns);
        topic.chain(key).chain(headers).chain(optional).chain(cloudevents)
    }

    /// Routes one entry. `Err` means the entry is poison (see the module invariant).
    pub(crate) fn route(&self, mut entry: Entry) -> Result<Message, Box<Poisoned>> {
        // An envelope's own traceparent obeys the same rule as route.traceparent's.
        entry.headers.retain(|h| {
            let malformed = h.name.eq_ignore_ascii_case(TRACEPARENT)
                && !headers::is_valid_traceparent(&h.value);
            if malformed {
                malformed_traceparent(&entry.id, &h.value);
            }
            !malformed
        });
        let cloudevent = match &self.cloudevents {
            Some(templates) => templates.render(&entry).map(|ce| Some(Box::new(ce))),
            None => Ok(None),
        };
        match self.render(&entry).and_then(|parts| Ok((parts, cloudevent?))) {
            Ok(((destination, key, headers), cloudevent)) => {
                let mut message = into_message(entry, destination, key, headers);
                message.cloudevent = cloudevent;
                Ok(message)
            }
            Err(reason) => {
                let error =
                    RelayError::Route { id: entry.id.clone(), position: entry.position, reason };
                Err(Box::new(Poisoned { entry, error }))
            }
        }
    }

    /// An entry that could not be routed, as a message to set aside: whatever routing can still
    /// tell (the key, for holding its later entries; the destination, if it renders).
    pub(crate) fn unroutable(&self, entry: Entry) -> Message {
        let destination = self.topic.render(&entry).unwrap_or_default();
        let key = self.key.as_ref().and_then(|k| k.render(&entry).ok());
        into_message(entry, destination, key, Vec::new())
    }

    /// Destination, key and headers of `entry`, or why it has none.
    fn render(&self, entry: &Entry) -> Result<(String, Option<String>, Vec<Header>), String> {
        if let Some(defect) = &entry.defect {
            return Err(defect.clone());
        }
        if entry.id.is_empty() {
            return Err("the id column is NULL or empty".into());
        }
        if let Some(forged) = entry.headers.iter().find(|h| headers::is_reserved(&h.name)) {
            return Err(format!(
                "the entry carries header {:?}, which is reserved (`id` and `outbox-*` are set \
                 by the relay): a consumer would dedup or order on the forged value",
                forged.name
            ));
        }
        if self.cloudevents.is_some() {
            if let Some(forged) = entry.headers.iter().find(|h| cloudevents_name(&h.name)) {
                return Err(format!(
                    "the entry carries header {:?}, but `ce_*`, `cloudEvents:*` and \
                     `content-type` headers carry the CloudEvents attributes (route.cloudevents)",
                    forged.name
                ));
            }
        }
        let destination = self.topic.render(entry).map_err(|r| format!("route.topic: {r}"))?;
        if destination.is_empty() {
            return Err("route.topic rendered to an empty name".into());
        }
        let key = match &self.key {
            Some(template) => Some(template.render(entry).map_err(|r| format!("route.key: {r}"))?),
            None => None,
        };
        let mut headers = Vec::with_capacity(self.headers.len() + 3 + entry.headers.len());
        headers.push(Header { name: Arc::clone(&self.id_header), value: entry.id.clone() });
        headers.push(Header {
            name: Arc::clone(&self.position_header),
            value: entry.position.to_string(),
        });
        headers.push(self.pipeline_header.clone());
        for (name, template) in &self.headers {
            let value = template.render(entry).map_err(|r| format!("header {name:?}: {r}"))?;
            headers.push(Header { name: Arc::clone(name), value });
        }
        let mut traced = false;
        for (key, name, template) in &self.optional {
            let Some(value) = template.render_optional(entry).map_err(|r| format!("{key}: {r}"))?
            else {
                continue;
            };
            if &**name == TRACEPARENT {
                // W3C: a malformed traceparent is not propagated (the trace restarts there).
                traced = headers::is_valid_traceparent(&value);
                if !traced {
                    malformed_traceparent(&entry.id, &value);
                    continue;
                }
            }
            if &**name == TRACESTATE && !traced {
                continue;
            }
            headers.push(Header { name: Arc::clone(name), value });
        }
        Ok((destination, key, headers))
    }
}

/// A traceparent that is not W3C's is not sent (W3C: the trace restarts there); said once at
/// warning level, then at debug level, so a table full of them does not flood the log.
fn malformed_traceparent(id: &str, value: &str) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::debug!(%id, %value, "not a W3C traceparent; not sent");
    } else {
        tracing::warn!(%id, %value, "not a W3C traceparent; not sent (further ones are logged at debug level)");
    }
}

/// `entry` as a message to `destination`: `headers` first, then the entry's own.
fn into_message(
    entry: Entry,
    destination: String,
    key: Option<String>,
    mut headers: Vec<Header>,
) -> Message {
    let Entry { id, position, fields, payload, payload_kind, headers: own, defect: _ } = entry;
    let own_headers = own.len();
    headers.extend(own);
    Message {
        id,
        position,
        destination,
        key,
        headers,
        payload,
        payload_kind,
        fields,
        own_headers,
        possible_replay: false,
        redrive: false,
        cloudevent: None,
    }
}

#[cfg(test)]
mod tests {
    use outbox_relay_core::{Fields, PayloadKind, Position};

    use super::config::CloudEventsConfig;
    use super::events::rfc3339;
    use super::*;

    fn entry(aggregateid: Option<&str>) -> Entry {
        let names: Arc<[Arc<str>]> =
            ["id", "aggregatetype", "aggregateid", "type"].map(Arc::from).into();
        Entry {
            position: Position::Poll { seq: 7 },
            id: "e-1".into(),
            fields: Fields::new(
                names,
                vec![
                    Some("e-1".into()),
                    Some("order".into()),
                    aggregateid.map(Into::into),
                    Some("OrderCreated".into()),
                ],
            ),
            payload: Some("{}".into()),
            payload_kind: PayloadKind::Json,
            headers: Vec::new(),
            defect: None,
        }
    }

    #[test]
    fn defaults_route_like_the_debezium_outbox_router() {
        let router = Router::new(&RouteConfig::default(), "p1").unwrap();
        let message = router.route(entry(Some("42"))).unwrap();
        assert_eq!(message.destination, "outbox.event.order");
        assert_eq!(message.key.as_deref(), Some("42"));
        let headers: Vec<(&str, &str)> =
            message.headers.iter().map(|h| (&*h.name, h.value.as_str())).collect();
        assert_eq!(
            headers,
            vec![
                ("id", "e-1"),
                ("outbox-position", "poll:7"),
                ("outbox-pipeline", "p1"),
                ("type", "OrderCreated")
            ]
        );
    }

    #[test]
    fn a_null_key_is_poison_naming_the_entry_and_column() {
        let router = Router::new(&RouteConfig::default(), "p1").unwrap();
        let err = router.route(entry(None)).unwrap_err().error.to_string();
        assert!(
            err.contains("e-1") && err.contains("aggregateid") && err.contains("NULL"),
            "{err}"
        );
    }

    #[test]
    fn an_entry_header_with_a_reserved_name_is_poison() {
        let router = Router::new(&RouteConfig::default(), "p1").unwrap();
        for forged in ["id", "outbox-position", "OUTBOX-PIPELINE", "outbox-redelivered"] {
            let mut e = entry(Some("42"));
            e.headers.push(Header { name: Arc::from(forged), value: "x".into() });
            let err = router.route(e).unwrap_err().error.to_string();
            assert!(err.contains("reserved") && err.contains(forged), "{err}");
        }
        let mut e = entry(Some("42"));
        e.headers.push(Header { name: Arc::from("tenant"), value: "acme".into() });
        assert!(router.route(e).is_ok());
    }

    #[test]
    fn reply_to_and_correlation_id_are_sent_unless_their_column_is_null() {
        let config = RouteConfig {
            reply_to: "replies.${aggregateid}".into(),
            correlation_id: "${aggregateid}".into(),
            ..RouteConfig::default()
        };
        let router = Router::new(&config, "p1").unwrap();
        let columns: Vec<_> = router.columns().map(|(key, _)| key).collect();
        assert!(columns.contains(&"route.reply_to") && columns.contains(&"route.correlation_id"));
        let message = router.route(entry(Some("42"))).unwrap();
        let value =
            |name: &str| message.headers.iter().find(|h| &*h.name == name).map(|h| h.value.clone());
        assert_eq!(value(REPLY_TO).as_deref(), Some("replies.42"));
        assert_eq!(value(CORRELATION_ID).as_deref(), Some("42"));

        // A NULL column means no reply channel (an event), not poison — here the key is
        // left out so that the NULL aggregateid does not make the entry poison for its key.
        let keyless = RouteConfig { key: String::new(), ..config };
        let message = Router::new(&keyless, "p1").unwrap().route(entry(None)).unwrap();
        assert!(message.headers.iter().all(|h| &*h.name != REPLY_TO && &*h.name != CORRELATION_ID));

        let mut headers = RouteConfig::default().headers;
        headers.insert("Reply-To".into(), "${aggregateid}".into());
        let error = Router::new(&RouteConfig { headers, ..RouteConfig::default() }, "p1")
            .expect_err("refused")
            .to_string();
        assert!(error.contains("set route.reply_to instead"), "{error}");
    }

    #[test]
    fn a_traceparent_is_sent_only_when_well_formed_and_tracestate_only_beside_it() {
        let config = RouteConfig {
            traceparent: "${type}".into(),
            tracestate: "vendor=${aggregateid}".into(),
            ..RouteConfig::default()
        };
        let router = Router::new(&config, "p1").unwrap();
        let traced = |kind: &str| {
            let mut e = entry(Some("42"));
            let names = e.fields.names().to_vec();
            let mut values = e.fields.values().to_vec();
            values[3] = Some(kind.into());
            e.fields = Fields::new(names.into(), values);
            let message = router.route(e).expect("routed, never poison");
            let value = |name: &str| {
                message.headers.iter().find(|h| &*h.name == name).map(|h| h.value.clone())
            };
            (value(TRACEPARENT), value(TRACESTATE))
        };
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(traced(good), (Some(good.into()), Some("vendor=42".into())));
        assert_eq!(traced("not-a-trace"), (None, None));
    }

    #[test]
    fn cloudevents_attributes_come_from_the_entry() {
        let config = RouteConfig {
            cloudevents: CloudEventsConfig {
                mode: CloudEventsMode::Structured,
                source: "/svc/${aggregatetype}".into(),
                time: "${aggregateid}".into(),
                ..CloudEventsConfig::default()
            },
            key: String::new(),
            ..RouteConfig::default()
        };
        let router = Router::new(&config, "p1").unwrap();
        let columns: Vec<_> = router.columns().collect();
        assert!(columns.contains(&("route.cloudevents.time", "aggregateid")), "{columns:?}");
        let message = router.route(entry(Some("2026-12-04 10:00:00.25+05:30"))).unwrap();
        let event = message.cloudevent.as_deref().expect("an event");
        assert_eq!(event.source, "/svc/order");
        assert_eq!(event.kind, "OrderCreated");
        assert_eq!(event.subject.as_deref(), Some("2026-12-04 10:00:00.25+05:30"));
        assert_eq!(event.time.as_deref(), Some("2026-12-04T10:00:00.25+05:30"));
        assert_eq!(message.payload.as_deref().unwrap(), b"{}", "the payload stays the entry's");

        let no_time = router.route(entry(None)).unwrap();
        assert_eq!(no_time.cloudevent.unwrap().time, None, "a NULL time sends none");
        let error = router.route(entry(Some("yesterday"))).unwrap_err().error.to_string();
        assert!(error.contains("route.cloudevents.time") && error.contains("yesterday"), "{error}");
        let mut bad_json = entry(Some("2026-12-04T10:00:00Z"));
        bad_json.payload = Some("{nope".into());
        let error = router.route(bad_json).unwrap_err().error.to_string();
        assert!(error.contains("JSON payload"), "{error}");
        let mut forged = entry(None);
        forged.headers.push(Header { name: Arc::from("CE_source"), value: "x".into() });
        assert!(router.route(forged).is_err());

        let off = Router::new(&RouteConfig::default(), "p1").unwrap();
        assert!(off.route(entry(Some("1"))).unwrap().cloudevent.is_none());
        let sourceless = RouteConfig {
            cloudevents: CloudEventsConfig {
                mode: CloudEventsMode::Binary,
                ..CloudEventsConfig::default()
            },
            ..RouteConfig::default()
        };
        let error = Router::new(&sourceless, "p1").unwrap_err().to_string();
        assert!(error.contains("route.cloudevents.source"), "{error}");
    }

    #[test]
    fn timestamps_become_rfc3339_and_nothing_else_is_guessed() {
        for (text, expected) in [
            ("2026-12-04 10:00:00+00", "2026-12-04T10:00:00+00:00"),
            ("2026-12-04 10:00:00.123456-03", "2026-12-04T10:00:00.123456-03:00"),
            ("1890-01-01 00:00:00+00:53:00", "1890-01-01T00:00:00+00:53"),
            ("2026-12-04T10:00:00Z", "2026-12-04T10:00:00Z"),
            ("2026-12-04t10:00:00.5+01:00", "2026-12-04T10:00:00.5+01:00"),
        ] {
            assert_eq!(rfc3339(text).as_deref(), Some(expected), "{text}");
        }
        for text in [
            "2026-12-04 10:00:00",
            "2026-12-04 10:00:00.+00",
            "1890-01-01 00:00:00+00:53:28",
            "infinity",
            "04.12.2026 10:00",
            "2026-12-04 10:00:00+0",
            "2026-12-04 10:00:00 BC+00",
            "2026-13-04 10:00:00+00",
            "2026-12-04 24:00:00+00",
            "",
        ] {
            assert_eq!(rfc3339(text), None, "{text}");
        }
    }

    #[test]
    fn templates_mix_literals_and_columns_and_reject_bad_syntax() {
        let config = RouteConfig {
            topic: "${aggregatetype}-events.${type}".into(),
            key: String::new(),
            headers: Default::default(),
            ..RouteConfig::default()
        };
        let router = Router::new(&config, "p1").unwrap();
        let message = router.route(entry(Some("1"))).unwrap();
        assert_eq!(message.destination, "order-events.OrderCreated");
        assert_eq!(message.key, None);
        let columns: Vec<_> = router.columns().map(|(_, c)| c).collect();
        assert_eq!(columns, vec!["aggregatetype", "type"]);

        for reserved in ["id", "outbox-redelivered", "Outbox-Position"] {
            let config = RouteConfig {
                headers: [(reserved.to_string(), "${type}".to_string())].into(),
                ..RouteConfig::default()
            };
            let err = Router::new(&config, "p1").unwrap_err().to_string();
            assert!(err.contains("reserved"), "{err}");
        }

        for bad in ["x.${", "x.${}", "x.${a b}"] {
            let config = RouteConfig { topic: bad.into(), ..RouteConfig::default() };
            assert!(Router::new(&config, "p1").is_err(), "{bad}");
        }
    }
}
