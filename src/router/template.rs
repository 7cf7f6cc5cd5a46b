//! `${column}` templates: parsed once, rendered per entry.

use outbox_relay_core::Entry;

use crate::error::RelayError;

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
    pub(crate) fn parse(key: &'static str, text: &str) -> Result<Self, RelayError> {
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

    pub(super) fn columns(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Field(name) => Some(name.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// The column the template consists of, if it is nothing else (`${type}`).
    pub(crate) fn single_column(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [Part::Field(name)] => Some(name),
            _ => None,
        }
    }

    /// The template with each placeholder written `{column}` (an AsyncAPI channel address),
    /// and its columns, each once, in order.
    pub(crate) fn parameterised(&self) -> (String, Vec<String>) {
        let mut address = String::new();
        let mut columns: Vec<String> = Vec::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => address.push_str(text),
                Part::Field(name) => {
                    address.push('{');
                    address.push_str(name);
                    address.push('}');
                    if !columns.contains(name) {
                        columns.push(name.clone());
                    }
                }
            }
        }
        (address, columns)
    }

    /// As [`Self::render`], but a NULL column means "none" (`Ok(None)`).
    pub(super) fn render_optional(&self, entry: &Entry) -> Result<Option<String>, String> {
        let null = self.columns().any(|name| matches!(entry.fields.get(name), Some(None)));
        if null {
            return Ok(None);
        }
        self.render(entry).map(Some)
    }

    /// Substitutes the entry's columns; `Err` names the column that is NULL or absent.
    pub(super) fn render(&self, entry: &Entry) -> Result<String, String> {
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
