//! The outbox table: its name, and the shape the relay needs it to have. Invariant: every
//! identifier that reaches SQL text is quoted.

use std::fmt;
use std::str::FromStr;

use outbox_relay_core::PayloadKind;

use crate::{quote_ident, PostgresError, Session};

/// The relay's ordering column, stamped by the `outbox_relay.stamp_outbox_seq` trigger.
pub(crate) const SEQ_COLUMN: &str = "seq";
/// Set instead of deleting rows when `after_publish = "mark"`.
pub(crate) const PUBLISHED_AT_COLUMN: &str = "published_at";

/// `schema.table`, parsed from config (`outbox`, `public.outbox`, `"My Schema"."Outbox"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    /// `"schema"."name"`, for SQL text.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

impl FromStr for TableName {
    type Err = PostgresError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts = split_identifiers(s).ok_or_else(|| PostgresError::TableName(s.into()))?;
        match <[String; 2]>::try_from(parts) {
            Ok([schema, name]) => Ok(TableName { schema, name }),
            Err(parts) if parts.len() == 1 => {
                Ok(TableName { schema: "public".into(), name: parts.into_iter().next().unwrap() })
            }
            Err(_) => Err(PostgresError::TableName(s.into())),
        }
    }
}

/// Splits `a.b` / `"a.x"."b"` into identifiers; unquoted parts fold to lower case, as in SQL.
fn split_identifiers(s: &str) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    let mut chars = s.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    '"' => break,
                    c => part.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                if !(c.is_alphanumeric() || c == '_' || c == '$') {
                    return None;
                }
                part.extend(c.to_lowercase());
                chars.next();
            }
        }
        if part.is_empty() {
            return None;
        }
        parts.push(part);
        match chars.next() {
            None => return Some(parts),
            Some('.') => continue,
            Some(_) => return None,
        }
    }
}

/// Column names and types, in table order.
#[derive(Clone, Debug)]
pub struct TableShape {
    pub columns: Vec<(String, String)>,
}

impl TableShape {
    /// Reads the table's columns; [`PostgresError::MissingTable`] if it does not exist.
    pub async fn load(session: &Session, table: &TableName) -> Result<Self, PostgresError> {
        let rows = session
            .timed(
                "reading the outbox table's columns",
                session.client().query(
                    "select a.attname::text, format_type(a.atttypid, a.atttypmod) \
                     from pg_attribute a \
                     where a.attrelid = to_regclass($1) and a.attnum > 0 and not a.attisdropped \
                     order by a.attnum",
                    &[&table.quoted()],
                ),
            )
            .await?;
        if rows.is_empty() {
            return Err(PostgresError::MissingTable { table: table.to_string() });
        }
        Ok(TableShape { columns: rows.iter().map(|r| (r.get(0), r.get(1))).collect() })
    }

    pub fn column_type(&self, column: &str) -> Option<&str> {
        self.columns.iter().find(|(name, _)| name == column).map(|(_, ty)| ty.as_str())
    }
}

/// An outbox table whose shape was checked against what the relay needs.
#[derive(Clone, Debug)]
pub struct OutboxTable {
    pub name: TableName,
    /// The table's OID: how WAL tailing recognises it, also after a rename.
    pub oid: u32,
    pub shape: TableShape,
    pub id_column: String,
    pub payload_column: String,
    pub payload_kind: PayloadKind,
}

impl OutboxTable {
    /// Loads the table and checks that it has the id and payload columns and, when `polled`,
    /// the `seq` column and the trigger that stamps it (WAL tailing needs neither).
    pub async fn inspect(
        session: &Session,
        name: TableName,
        id_column: &str,
        payload_column: &str,
        polled: bool,
    ) -> Result<Self, PostgresError> {
        let shape = TableShape::load(session, &name).await?;
        let missing = |column: &str, hint: &'static str| PostgresError::MissingColumn {
            table: name.to_string(),
            column: column.into(),
            hint,
        };
        if shape.column_type(id_column).is_none() {
            return Err(missing(id_column, "set source.id_column to the entry id column"));
        }
        if polled {
            if shape.column_type(SEQ_COLUMN).is_none() {
                return Err(missing(
                    SEQ_COLUMN,
                    "run `outbox-relay migrate`, which adds the relay's ordering column and trigger",
                ));
            }
            crate::prerequisites::check_seq_stamping(session, &name).await?;
        }
        let payload_type = shape
            .column_type(payload_column)
            .ok_or_else(|| missing(payload_column, "set source.payload_column"))?;
        let payload_kind = payload_kind(payload_type);
        let oid: u32 = session
            .timed(
                "reading the outbox table's oid",
                session.client().query_one("select to_regclass($1)::oid", &[&name.quoted()]),
            )
            .await?
            .get(0);
        Ok(Self {
            oid,
            name,
            shape,
            id_column: id_column.into(),
            payload_column: payload_column.into(),
            payload_kind,
        })
    }

    pub fn has_column(&self, column: &str) -> bool {
        self.shape.column_type(column).is_some()
    }

    /// Columns offered to routing templates and headers: all but the payload.
    pub(crate) fn field_columns(&self) -> impl Iterator<Item = &str> {
        self.shape
            .columns
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(move |name| *name != self.payload_column)
    }
}

fn payload_kind(type_name: &str) -> PayloadKind {
    match type_name {
        "jsonb" | "json" => PayloadKind::Json,
        "bytea" => PayloadKind::Binary,
        _ => PayloadKind::Text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Option<(String, String)> {
        s.parse::<TableName>().ok().map(|t| (t.schema, t.name))
    }

    #[test]
    fn table_names_parse_like_sql() {
        assert_eq!(parse("outbox"), Some(("public".into(), "outbox".into())));
        assert_eq!(parse("App.Outbox"), Some(("app".into(), "outbox".into())));
        assert_eq!(parse(r#""My Schema"."Out.box""#), Some(("My Schema".into(), "Out.box".into())));
        assert_eq!(parse(r#""we""ird".t"#), Some(("we\"ird".into(), "t".into())));
        for bad in ["", "a.", ".a", "a.b.c", "a b", "\"open", "a;drop"] {
            assert_eq!(parse(bad), None, "{bad:?} must be rejected");
        }
    }

    #[test]
    fn quoted_names_are_safe() {
        let t: TableName = r#""x""y".t"#.parse().unwrap();
        assert_eq!(t.quoted(), r#""x""y"."t""#);
    }
}
