//! Decoding the parts of the `pgoutput` protocol (version 1, text values) the relay needs:
//! Relation and Insert. Begin, Commit and logical messages are decoded by the replication client;
//! Update, Delete, Truncate, Type and Origin are not needed by an outbox and are skipped.
//!
//! Invariant: decoding never guesses — a truncated or malformed message is an error that names
//! what was wrong, never a row with shifted columns.

use bytes::Bytes;

/// A decoding failure: the stream does not say what the protocol says it must.
#[derive(Debug, thiserror::Error)]
#[error("malformed pgoutput {message} message: {reason}")]
pub struct DecodeError {
    message: &'static str,
    reason: String,
}

impl DecodeError {
    /// An Insert for a relation no Relation message described.
    pub(crate) fn unknown_relation(oid: u32) -> Self {
        DecodeError { message: "Insert", reason: format!("relation {oid} was never described") }
    }

    /// A change outside Begin/Commit.
    pub(crate) fn outside_transaction() -> Self {
        DecodeError { message: "Insert", reason: "a change arrived outside a transaction".into() }
    }
}

/// One column of a relation, as the Relation message describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Column {
    pub(crate) name: String,
    pub(crate) type_oid: u32,
}

/// A Relation message: the shape of a table as of the changes that follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Relation {
    pub(crate) oid: u32,
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) columns: Vec<Column>,
}

/// A column value of a tuple.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Value {
    Null,
    /// An unchanged TOASTed value (only in updates; never in inserts).
    Unchanged,
    Text(Bytes),
}

/// The messages the relay acts on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Relation(Relation),
    Insert {
        relation: u32,
        values: Vec<Value>,
    },
    /// Any other message: Update, Delete, Truncate, Type, Origin.
    Other(u8),
}

struct Reader<'a> {
    message: &'static str,
    data: &'a Bytes,
    at: usize,
}

impl<'a> Reader<'a> {
    fn fail(&self, reason: impl Into<String>) -> DecodeError {
        DecodeError { message: self.message, reason: reason.into() }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end =
            self.at.checked_add(n).filter(|end| *end <= self.data.len()).ok_or_else(|| {
                self.fail(format!(
                    "needs {n} more bytes at offset {}, has {}",
                    self.at,
                    self.data.len() - self.at
                ))
            })?;
        let slice = &self.data[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let rest = &self.data[self.at..];
        let len =
            rest.iter().position(|b| *b == 0).ok_or_else(|| self.fail("unterminated string"))?;
        let text =
            std::str::from_utf8(&rest[..len]).map_err(|_| self.fail("string is not UTF-8"))?;
        self.at += len + 1;
        Ok(text.to_owned())
    }

    fn bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        let start = self.at;
        self.take(n)?;
        Ok(self.data.slice(start..start + n))
    }
}

/// Decodes one XLogData payload.
pub(crate) fn decode(data: &Bytes) -> Result<Change, DecodeError> {
    let Some(&tag) = data.first() else {
        return Err(DecodeError { message: "(empty)", reason: "no tag byte".into() });
    };
    match tag {
        b'R' => relation(data).map(Change::Relation),
        b'I' => insert(data),
        other => Ok(Change::Other(other)),
    }
}

fn relation(data: &Bytes) -> Result<Relation, DecodeError> {
    let mut r = Reader { message: "Relation", data, at: 1 };
    let oid = r.u32()?;
    let namespace = r.string()?;
    let name = r.string()?;
    let _replica_identity = r.u8()?;
    let count = r.u16()?;
    let mut columns = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let _flags = r.u8()?;
        let name = r.string()?;
        let type_oid = r.u32()?;
        let _type_modifier = r.u32()?;
        columns.push(Column { name, type_oid });
    }
    // pgoutput writes an empty namespace for pg_catalog.
    let namespace = if namespace.is_empty() { "pg_catalog".into() } else { namespace };
    Ok(Relation { oid, namespace, name, columns })
}

fn insert(data: &Bytes) -> Result<Change, DecodeError> {
    let mut r = Reader { message: "Insert", data, at: 1 };
    let relation = r.u32()?;
    match r.u8()? {
        b'N' => {}
        other => {
            return Err(r.fail(format!("expected 'N' before the new tuple, found {other:#04x}")))
        }
    }
    let count = r.u16()?;
    let mut values = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let value = match r.u8()? {
            b'n' => Value::Null,
            b'u' => Value::Unchanged,
            b't' => {
                let len = r.u32()? as usize;
                Value::Text(r.bytes(len)?)
            }
            b'b' => return Err(r.fail("binary values were not requested")),
            other => return Err(r.fail(format!("unknown tuple value kind {other:#04x}"))),
        };
        values.push(value);
    }
    if r.at != data.len() {
        return Err(r.fail(format!("{} trailing bytes", data.len() - r.at)));
    }
    Ok(Change::Insert { relation, values })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds protocol messages the way pgoutput writes them.
    pub(crate) fn relation_message(
        oid: u32,
        ns: &str,
        name: &str,
        columns: &[(&str, u32)],
    ) -> Bytes {
        let mut m = vec![b'R'];
        m.extend(oid.to_be_bytes());
        for s in [ns, name] {
            m.extend(s.as_bytes());
            m.push(0);
        }
        m.push(b'd');
        m.extend((columns.len() as u16).to_be_bytes());
        for (column, type_oid) in columns {
            m.push(0);
            m.extend(column.as_bytes());
            m.push(0);
            m.extend(type_oid.to_be_bytes());
            m.extend((-1i32).to_be_bytes());
        }
        Bytes::from(m)
    }

    pub(crate) fn insert_message(oid: u32, values: &[Option<&str>]) -> Bytes {
        let mut m = vec![b'I'];
        m.extend(oid.to_be_bytes());
        m.push(b'N');
        m.extend((values.len() as u16).to_be_bytes());
        for value in values {
            match value {
                None => m.push(b'n'),
                Some(text) => {
                    m.push(b't');
                    m.extend((text.len() as u32).to_be_bytes());
                    m.extend(text.as_bytes());
                }
            }
        }
        Bytes::from(m)
    }

    #[test]
    fn relation_and_insert_decode() {
        let rel = relation_message(16384, "public", "outbox", &[("id", 2950), ("payload", 3802)]);
        let Change::Relation(relation) = decode(&rel).unwrap() else { panic!("relation") };
        assert_eq!(relation.oid, 16384);
        assert_eq!((relation.namespace.as_str(), relation.name.as_str()), ("public", "outbox"));
        assert_eq!(relation.columns[1], Column { name: "payload".into(), type_oid: 3802 });

        let ins = insert_message(16384, &[Some("6f1c"), None]);
        assert_eq!(
            decode(&ins).unwrap(),
            Change::Insert {
                relation: 16384,
                values: vec![Value::Text(Bytes::from_static(b"6f1c")), Value::Null]
            }
        );
        assert_eq!(decode(&Bytes::from_static(b"D\0\0\0\x01")).unwrap(), Change::Other(b'D'));
    }

    #[test]
    fn truncated_or_malformed_messages_are_errors_not_rows() {
        let ins = insert_message(1, &[Some("abc")]);
        for cut in 1..ins.len() {
            assert!(decode(&ins.slice(..cut)).is_err(), "cut at {cut} must fail");
        }
        let mut extra = ins.to_vec();
        extra.push(0);
        assert!(decode(&Bytes::from(extra)).is_err(), "trailing bytes");
        let rel = relation_message(1, "public", "t", &[("a", 25)]);
        for cut in 1..rel.len() {
            assert!(decode(&rel.slice(..cut)).is_err(), "relation cut at {cut} must fail");
        }
    }
}
