//! Property tests of the decoders that read what the server (or an application) sends: the
//! pgoutput decoder, the logical-message envelope, and the text values of a row. Malformed
//! input gives a classified error or a defect, never a panic. The case count is raised with
//! `PROPTEST_CASES` (the suite runs the default, a few seconds).

use bytes::Bytes;
use proptest::prelude::*;

use super::pgoutput::tests::{insert_message, relation_message};
use super::pgoutput::{decode, Change, Value};
use super::*;

fn cases() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2000);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// A well-formed relation or insert message, then damaged: bytes replaced, cut or added.
fn damaged_message() -> impl Strategy<Value = Vec<u8>> {
    let valid = prop_oneof![
        (
            any::<u32>(),
            "[a-z]{0,8}",
            "[a-z]{0,8}",
            prop::collection::vec(("[a-z]{0,6}", any::<u32>()), 0..6)
        )
            .prop_map(|(oid, ns, name, columns)| {
                let columns: Vec<(&str, u32)> =
                    columns.iter().map(|(c, t)| (c.as_str(), *t)).collect();
                relation_message(oid, &ns, &name, &columns).to_vec()
            }),
        (any::<u32>(), prop::collection::vec(prop::option::of(".{0,12}"), 0..6)).prop_map(
            |(oid, values)| {
                let values: Vec<Option<&str>> = values.iter().map(Option::as_deref).collect();
                insert_message(oid, &values).to_vec()
            }
        ),
    ];
    (valid, prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 0..4)).prop_map(
        |(mut bytes, edits)| {
            for (at, byte, kind) in edits {
                if bytes.is_empty() {
                    bytes.push(byte);
                    continue;
                }
                let at = at % bytes.len();
                match kind {
                    0 => bytes[at] = byte,
                    1 => bytes.truncate(at),
                    _ => bytes.insert(at, byte),
                }
            }
            bytes
        },
    )
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn pgoutput_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode(&Bytes::from(bytes));
    }

    #[test]
    fn pgoutput_never_panics_on_damaged_messages(bytes in damaged_message()) {
        let _ = decode(&Bytes::from(bytes));
    }

    #[test]
    fn an_insert_decodes_to_exactly_its_values(
        oid in any::<u32>(),
        values in prop::collection::vec(prop::option::of(prop::collection::vec(any::<u8>(), 0..16)), 0..8),
    ) {
        let mut message = vec![b'I'];
        message.extend(oid.to_be_bytes());
        message.push(b'N');
        message.extend((values.len() as u16).to_be_bytes());
        for value in &values {
            match value {
                None => message.push(b'n'),
                Some(bytes) => {
                    message.push(b't');
                    message.extend((bytes.len() as u32).to_be_bytes());
                    message.extend(bytes);
                }
            }
        }
        let Ok(Change::Insert { relation, values: decoded }) = decode(&Bytes::from(message)) else {
            return Err(TestCaseError::fail("a well-formed insert must decode"));
        };
        prop_assert_eq!(relation, oid);
        let expected: Vec<Value> = values
            .into_iter()
            .map(|v| v.map_or(Value::Null, |b| Value::Text(Bytes::from(b))))
            .collect();
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn an_envelope_is_decoded_or_has_a_defect(content in prop::collection::vec(any::<u8>(), 0..200)) {
        let entry = envelope_entry("lsn:0/1".into(), "outbox", Bytes::from(content.clone()));
        if entry.defect.is_some() {
            prop_assert_eq!(entry.payload.as_deref(), Some(&content[..]), "kept as it came");
        }
    }

    #[test]
    fn json_shaped_envelopes_never_panic(
        id in prop::option::of(any::<i64>()),
        key in "\\PC{0,12}",
        payload in prop_oneof![Just("{}".to_string()), Just("null".to_string()), "\\PC{0,20}".prop_map(|s| format!("{s:?}")), any::<f64>().prop_map(|f| f.to_string())],
        headers in prop_oneof![Just("{}".to_string()), Just("[]".to_string()), Just("{\"a\": 1}".to_string()), Just("{\"a\": {\"b\": \"c\"}}".to_string()), "\\PC{0,8}".prop_map(|s| format!("{{{s:?}: {s:?}}}"))],
    ) {
        let id = id.map_or_else(|| "null".to_string(), |n| n.to_string());
        let content = format!(
            r#"{{"id": {id}, "aggregatetype": "order", "aggregateid": {key:?}, "type": "T", "payload": {payload}, "headers": {headers}}}"#
        );
        let _ = envelope_entry("lsn:0/1".into(), "outbox", Bytes::from(content));
    }

    #[test]
    fn row_values_are_kept_whatever_their_bytes(
        id in prop::collection::vec(any::<u8>(), 0..16),
        payload in prop::collection::vec(any::<u8>(), 0..64),
        payload_type in prop_oneof![Just(BYTEA_OID), Just(JSONB_OID), Just(25u32)],
    ) {
        let kind = match payload_type {
            BYTEA_OID => PayloadKind::Binary,
            JSONB_OID => PayloadKind::Json,
            _ => PayloadKind::Text,
        };
        let shape = Shape {
            names: Arc::from(vec![Arc::from("id")]),
            field_columns: vec![0],
            id_field: 0,
            payload_column: 1,
            payload_kind: kind,
        };
        let values = vec![Value::Text(Bytes::from(id)), Value::Text(Bytes::from(payload.clone()))];
        let entry = row_entry(&shape, values);
        // Decoded if it can be; else what the server sent, and the entry is poison.
        let decoded = match kind {
            PayloadKind::Binary => crate::text::bytea_from_text(&payload),
            PayloadKind::Json | PayloadKind::Text => Some(payload.clone()),
        };
        match decoded {
            Some(bytes) => prop_assert_eq!(entry.payload.as_deref(), Some(&bytes[..])),
            None => {
                prop_assert_eq!(entry.payload.as_deref(), Some(&payload[..]));
                prop_assert!(entry.defect.is_some());
            }
        }
        if std::str::from_utf8(&payload).is_err() && kind != PayloadKind::Binary {
            prop_assert!(entry.defect.is_some(), "text that is not UTF-8 is poison");
        }
    }
}
