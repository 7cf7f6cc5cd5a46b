//! Routing: how an [`Entry`] becomes a [`Message`] (destination, shard key, headers), Debezium
//! outbox-router compatible by default. Invariant: routing never guesses — a NULL in a key,
//! destination or header column makes the entry poison, named, rather than a message with an
//! empty key or a wrong topic.

use std::sync::Arc;

use outbox_relay_core::{Entry, Header, Message};

use crate::config::RouteConfig;
use crate::error::RelayError;

use outbox_relay_core::headers::{
    self, CORRELATION_ID, ID as ID_HEADER, PIPELINE as PIPELINE_HEADER,
    POSITION as POSITION_HEADER, REPLY_TO,
};

/// Headers sent only when their columns are not NULL, with the config key that sets each
/// (`route.reply_to`, `route.correlation_id`, in that order); `route.headers` may not name them.
const OPTIONAL: [(&str, &str); 2] =
    [(REPLY_TO, "route.reply_to"), (CORRELATION_ID, "route.correlation_id")];

/// An entry that cannot become a message, handed back with the reason (to halt on, or to set
/// aside).
#[derive(Debug)]
pub(crate) struct Poisoned {
    pub(crate) entry: Entry,
    pub(crate) error: RelayError,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Field(String),
}

/// A string with `${column}` placeholders.
#[derive(Clone, Debug)]
pub(crate) struct Template {
    parts: Vec<Part>,
}

impl Template {
    fn parse(key: &'static str, text: &str) -> Result<Self, RelayError> {
        let fail = |reason: &str| RelayError::Template {
            key,
            template: text.into(),
            reason: reason.into(),
        };
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            if start > 0 {
                parts.push(Part::Literal(rest[..start].into()));
            }
            let after = &rest[start + 2..];
            let end = after.find('}').ok_or_else(|| fail("`${` without a closing `}`"))?;
            let name = &after[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
                return Err(fail("a placeholder holds a column name: letters, digits, `_`"));
            }
            parts.push(Part::Field(name.into()));
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.into()));
        }
        Ok(Self { parts })
    }

    fn columns(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Field(name) => Some(name.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// As [`Self::render`], but a NULL column means "none" (`Ok(None)`).
    fn render_optional(&self, entry: &Entry) -> Result<Option<String>, String> {
        let null = self.columns().any(|name| matches!(entry.fields.get(name), Some(None)));
        if null {
            return Ok(None);
        }
        self.render(entry).map(Some)
    }

    /// Substitutes the entry's columns; `Err` names the column that is NULL or absent.
    fn render(&self, entry: &Entry) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Field(name) => match entry.fields.get(name) {
                    Some(Some(value)) => out.push_str(value),
                    Some(None) => return Err(format!("column {name:?} is NULL")),
                    None => return Err(format!("the entry has no column {name:?}")),
                },
            }
        }
        Ok(out)
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Router {
    topic: Template,
    key: Option<Template>,
    headers: Vec<(Arc<str>, Template)>,
    /// Headers sent only when their columns are not NULL: reply channel and correlation id.
    optional: Vec<(&'static str, Arc<str>, Template)>,
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
        for ((header, key), template) in
            OPTIONAL.into_iter().zip([&config.reply_to, &config.correlation_id])
        {
            if !template.is_empty() {
                optional.push((key, Arc::from(header), Template::parse(key, template)?));
            }
        }
        Ok(Self {
            topic,
            key,
            headers,
            optional,
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
        topic.chain(key).chain(headers).chain(optional)
    }

    /// Routes one entry. `Err` means the entry is poison (see the module invariant).
    pub(crate) fn route(&self, entry: Entry) -> Result<Message, Box<Poisoned>> {
        match self.render(&entry) {
            Ok((destination, key, headers)) => Ok(into_message(entry, destination, key, headers)),
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
        for (key, name, template) in &self.optional {
            if let Some(value) =
                template.render_optional(entry).map_err(|r| format!("{key}: {r}"))?
            {
                headers.push(Header { name: Arc::clone(name), value });
            }
        }
        Ok((destination, key, headers))
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
    }
}

#[cfg(test)]
mod tests {
    use outbox_relay_core::{Fields, PayloadKind, Position};

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
