//! Column values as Postgres sends them in text form, turned into what an entry holds.
//! Invariant: nothing read is thrown away — a value that cannot be decoded is kept in a
//! lossless form (hex), and the entry gets a defect naming the problem, so it becomes poison
//! (halted on or set aside with its content) rather than a message with a hole.

use std::error::Error;
use std::fmt::Write as _;

use tokio_postgres::types::{FromSql, Type};

/// A text value as the server's bytes, in whatever encoding the database uses: a `String`
/// would refuse (and `Row::get` panic on) anything that is not UTF-8, as in a `SQL_ASCII`
/// database. Read from a text column, or as bytea (`convert_to(...)`) where the server would
/// refuse to send the text.
pub(crate) struct RawText(pub(crate) Vec<u8>);

impl<'a> FromSql<'a> for RawText {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(Self(raw.to_vec()))
    }

    fn accepts(ty: &Type) -> bool {
        <&str as FromSql>::accepts(ty) || *ty == Type::BYTEA
    }
}

/// `bytes` as a `String`; bytes that are not UTF-8 are kept as `\x` hex text, and `defect`
/// says which column's value it was (named only then: this runs for every column of every row).
pub(crate) fn text_or_hex(bytes: &[u8], column: &str, defect: &mut Option<String>) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => {
            defect.get_or_insert_with(|| {
                format!(
                    "column {column:?} is not valid UTF-8 (kept as hex: the database encoding is \
                     not UTF-8?)"
                )
            });
            let mut hex = String::with_capacity(2 + 2 * bytes.len());
            hex.push_str("\\x");
            for byte in bytes {
                let _ = write!(hex, "{byte:02x}");
            }
            hex
        }
    }
}

/// A text or JSON payload: valid UTF-8 is sent; anything else is kept as it is, with a defect.
pub(crate) fn check_text_payload(bytes: &[u8], defect: &mut Option<String>) {
    if std::str::from_utf8(bytes).is_err() {
        defect.get_or_insert_with(|| {
            "the text payload is not valid UTF-8 (kept as read: the database encoding is not \
             UTF-8?)"
                .into()
        });
    }
}

/// The bytes of a bytea in text form, in either `bytea_output` format: `hex` (`\x6869`) or
/// `escape` (`hi`, `\\` for a backslash, `\ooo` octal for other bytes). `None` if it is neither.
pub(crate) fn bytea_from_text(text: &[u8]) -> Option<Vec<u8>> {
    match text.strip_prefix(b"\\x") {
        Some(hex) => bytea_from_hex(hex),
        None => bytea_from_escape(text),
    }
}

fn bytea_from_hex(hex: &[u8]) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    hex.chunks_exact(2).map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?)).collect()
}

fn bytea_from_escape(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    while let Some((&byte, tail)) = rest.split_first() {
        if byte != b'\\' {
            out.push(byte);
            rest = tail;
            continue;
        }
        match tail {
            [b'\\', more @ ..] => {
                out.push(b'\\');
                rest = more;
            }
            [a @ b'0'..=b'3', b @ b'0'..=b'7', c @ b'0'..=b'7', more @ ..] => {
                out.push((a - b'0') << 6 | (b - b'0') << 3 | (c - b'0'));
                rest = more;
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytea_text_decodes_in_both_output_formats() {
        assert_eq!(bytea_from_text(b"\\x00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(bytea_from_text(b"\\x"), Some(vec![]));
        assert_eq!(bytea_from_text(b"\\x0"), None);
        assert_eq!(bytea_from_text(b"\\xzz"), None);
        assert_eq!(bytea_from_text(b"hi"), Some(b"hi".to_vec()));
        assert_eq!(bytea_from_text(b""), Some(vec![]));
        assert_eq!(bytea_from_text(b"a\\\\b\\000\\377"), Some(b"a\\b\x00\xff".to_vec()));
        assert_eq!(bytea_from_text(b"\\"), None);
        assert_eq!(bytea_from_text(b"\\400"), None);
        assert_eq!(bytea_from_text(b"\\12"), None);
    }

    #[test]
    fn text_that_is_not_utf8_is_kept_as_hex_with_a_defect() {
        let mut defect = None;
        assert_eq!(text_or_hex(b"ok", "a", &mut defect), "ok");
        assert!(defect.is_none());
        assert_eq!(text_or_hex(b"\xe9t\xe9", "a", &mut defect), "\\xe974e9");
        assert!(defect.unwrap().contains("column \"a\""));

        let mut defect = None;
        check_text_payload(b"{\"a\": \"\xff\"}", &mut defect);
        assert!(defect.unwrap().contains("UTF-8"));
    }
}
