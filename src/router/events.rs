//! `[route.cloudevents]`: the CloudEvent attribute templates, and the header names the
//! CloudEvents bindings take.

use outbox_relay_core::cloudevents::{self, CloudEvent};
use outbox_relay_core::{Entry, PayloadKind};

use super::config::{CloudEventsConfig, CloudEventsMode};
use super::template::Template;
use crate::error::RelayError;

/// Header name prefixes CloudEvents bindings use (Kafka, AMQP): taken by the relay when
/// `route.cloudevents` is on.
const CLOUDEVENTS_PREFIXES: [&str; 2] = ["ce_", "cloudEvents:"];

/// Whether a header `name` is one the CloudEvents bindings use for attributes (and Kafka's
/// `content-type`, which carries `datacontenttype`).
pub(super) fn cloudevents_name(name: &str) -> bool {
    name.eq_ignore_ascii_case("content-type")
        || CLOUDEVENTS_PREFIXES.iter().any(|prefix| {
            name.get(..prefix.len()).is_some_and(|head| head.eq_ignore_ascii_case(prefix))
        })
}

/// `[route.cloudevents]` parsed: the attribute templates.
#[derive(Clone, Debug)]
pub(super) struct CloudEventsTemplates {
    mode: cloudevents::Mode,
    source: Template,
    kind: Template,
    subject: Option<Template>,
    time: Option<Template>,
}

impl CloudEventsTemplates {
    pub(super) fn new(config: &CloudEventsConfig) -> Result<Option<Self>, RelayError> {
        let mode = match config.mode {
            CloudEventsMode::Off => return Ok(None),
            CloudEventsMode::Binary => cloudevents::Mode::Binary,
            CloudEventsMode::Structured => cloudevents::Mode::Structured,
        };
        for (key, value) in
            [("route.cloudevents.source", &config.source), ("route.cloudevents.type", &config.kind)]
        {
            if value.is_empty() {
                return Err(RelayError::Template {
                    key,
                    template: String::new(),
                    reason: "required with route.cloudevents.mode: a URI-reference naming the \
                             producer (e.g. \"/orders-service\") for source, the event type for \
                             type"
                        .into(),
                });
            }
        }
        let optional = |key, text: &str| {
            if text.is_empty() {
                Ok(None)
            } else {
                Template::parse(key, text).map(Some)
            }
        };
        Ok(Some(Self {
            mode,
            source: Template::parse("route.cloudevents.source", &config.source)?,
            kind: Template::parse("route.cloudevents.type", &config.kind)?,
            subject: optional("route.cloudevents.subject", &config.subject)?,
            time: optional("route.cloudevents.time", &config.time)?,
        }))
    }

    pub(super) fn columns(&self) -> impl Iterator<Item = (&'static str, &str)> {
        let named = [
            ("route.cloudevents.source", Some(&self.source)),
            ("route.cloudevents.type", Some(&self.kind)),
            ("route.cloudevents.subject", self.subject.as_ref()),
            ("route.cloudevents.time", self.time.as_ref()),
        ];
        named.into_iter().flat_map(|(key, t)| {
            t.into_iter().flat_map(move |t| t.columns().map(move |c| (key, c)))
        })
    }

    /// The event of `entry`, or why it has none (poison).
    pub(super) fn render(&self, entry: &Entry) -> Result<CloudEvent, String> {
        let required = |key: &str, template: &Template| {
            let value = template.render(entry).map_err(|r| format!("{key}: {r}"))?;
            if value.is_empty() {
                return Err(format!("{key} rendered to an empty value"));
            }
            Ok(value)
        };
        let optional = |key: &str, template: &Option<Template>| match template {
            Some(t) => t.render_optional(entry).map_err(|r| format!("{key}: {r}")),
            None => Ok(None),
        };
        let time = match optional("route.cloudevents.time", &self.time)? {
            Some(text) => Some(rfc3339(&text).ok_or_else(|| {
                format!(
                    "route.cloudevents.time: {text:?} is not a timestamp with a time zone \
                     (use a timestamptz column, or RFC 3339 text)"
                )
            })?),
            None => None,
        };
        if self.mode == cloudevents::Mode::Structured && entry.payload_kind == PayloadKind::Json {
            if let Some(payload) = &entry.payload {
                // It becomes the event's `data` as it is, so it must be JSON.
                serde_json::from_slice::<serde::de::IgnoredAny>(payload)
                    .map_err(|e| format!("the JSON payload does not parse ({e})"))?;
            }
        }
        Ok(CloudEvent {
            mode: self.mode,
            source: required("route.cloudevents.source", &self.source)?,
            kind: required("route.cloudevents.type", &self.kind)?,
            subject: optional("route.cloudevents.subject", &self.subject)?,
            time,
        })
    }
}

/// `text` as an RFC 3339 timestamp: RFC 3339 itself, or PostgreSQL's ISO output of a
/// `timestamptz` (`2026-12-04 10:00:00.5+01`, offsets as `+hh`, `+hh:mm` or `+hh:mm:00`).
/// `None` for anything else, a timestamp without a time zone included (it would be a guess).
pub(super) fn rfc3339(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        b.get(range).is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    let date_time = b.len() >= 19
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && matches!(b[10], b' ' | b'T' | b't')
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    let number = |range: std::ops::Range<usize>| text[range].parse::<u32>().unwrap_or(99);
    let in_range = date_time
        && (1..=12).contains(&number(5..7))
        && (1..=31).contains(&number(8..10))
        && number(11..13) <= 23
        && number(14..16) <= 59
        && number(17..19) <= 60;
    if !in_range {
        return None;
    }
    let mut rest = &text[19..];
    let fraction_len =
        rest.strip_prefix('.').map_or(0, |r| 1 + r.bytes().take_while(u8::is_ascii_digit).count());
    if fraction_len == 1 {
        return None;
    }
    let fraction = &rest[..fraction_len];
    rest = &rest[fraction_len..];
    let offset = match rest.as_bytes() {
        [b'Z' | b'z'] => "Z".to_string(),
        [sign @ (b'+' | b'-'), h1, h2, tail @ ..] if h1.is_ascii_digit() && h2.is_ascii_digit() => {
            let minutes = match tail {
                [] => "00",
                [b':', m1, m2] | [b':', m1, m2, b':', b'0', b'0']
                    if m1.is_ascii_digit() && m2.is_ascii_digit() =>
                {
                    &rest[4..6]
                }
                _ => return None,
            };
            format!("{}{}{}:{minutes}", *sign as char, *h1 as char, *h2 as char)
        }
        _ => return None,
    };
    Some(format!("{}T{}{fraction}{offset}", &text[..10], &text[11..19]))
}
