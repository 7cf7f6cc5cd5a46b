//! Entries made from rows and from logical messages.

use outbox_relay_core::Header;

use super::*;
use crate::wal::pgoutput::tests::insert_message;

/// The outbox shape `(id, aggregateid, payload)` with the payload of type `payload_type`.
fn shape(payload_type: u32) -> Shape {
    let payload_kind = match payload_type {
        BYTEA_OID => PayloadKind::Binary,
        JSONB_OID => PayloadKind::Json,
        _ => PayloadKind::Text,
    };
    let names: Arc<[Arc<str>]> = ["id", "aggregateid"].map(Arc::from).into();
    Shape { names, field_columns: vec![0, 1], id_field: 0, payload_column: 2, payload_kind }
}

fn values(items: &[Option<&str>]) -> Vec<Value> {
    let Ok(Change::Insert { values, .. }) = pgoutput::decode(&insert_message(1, items)) else {
        panic!("insert")
    };
    values
}

#[test]
fn rows_become_entries_with_their_columns_and_payload() {
    let entry =
        row_entry(&shape(JSONB_OID), values(&[Some("e1"), Some("order-7"), Some("{\"a\": 1}")]));
    assert_eq!(entry.id, "e1");
    assert_eq!(entry.fields.get("aggregateid"), Some(Some("order-7")));
    assert_eq!(entry.payload.as_deref(), Some(&b"{\"a\": 1}"[..]));
    assert_eq!(entry.payload_kind, PayloadKind::Json);
    assert!(entry.defect.is_none());

    let null_payload = row_entry(&shape(JSONB_OID), values(&[Some("e2"), None, None]));
    assert_eq!(null_payload.payload, None);
    assert_eq!(null_payload.fields.get("aggregateid"), Some(None));
}

#[test]
fn bytea_payloads_are_decoded_and_bad_ones_are_defects() {
    let entry = row_entry(&shape(BYTEA_OID), values(&[Some("e1"), Some("k"), Some("\\x6869")]));
    assert_eq!(entry.payload.as_deref(), Some(&b"hi"[..]));
    let escape = row_entry(&shape(BYTEA_OID), values(&[Some("e1"), Some("k"), Some("h\\151")]));
    assert_eq!(escape.payload.as_deref(), Some(&b"hi"[..]), "bytea_output = escape");
    assert!(escape.defect.is_none());
    let bad = row_entry(&shape(BYTEA_OID), values(&[Some("e1"), Some("k"), Some("\\x6")]));
    assert!(bad.defect.unwrap().contains("bytea"));
    assert_eq!(bad.payload.as_deref(), Some(&b"\\x6"[..]), "kept as sent, never dropped");
}

#[test]
fn an_envelope_gives_routing_fields_payload_and_headers() {
    let content = br#"{"aggregatetype": "order", "aggregateid": 42, "type": "OrderPaid",
                       "payload": {"total": 30}, "headers": {"tenant": "acme"}}"#;
    let entry = message_entry(
        MessageFormat::Envelope,
        Lsn(0x16_0000_0010),
        "outbox",
        Bytes::from_static(content),
    );
    assert!(entry.defect.is_none(), "{:?}", entry.defect);
    assert_eq!(entry.id, "lsn:16/10", "the LSN is the stable id when the envelope has none");
    assert_eq!(entry.fields.get("aggregateid"), Some(Some("42")));
    assert_eq!(entry.fields.get("type"), Some(Some("OrderPaid")));
    assert_eq!(entry.fields.get("prefix"), Some(Some("outbox")));
    assert_eq!(entry.payload.as_deref(), Some(&br#"{"total":30}"#[..]));
    assert_eq!(entry.headers, vec![Header { name: Arc::from("tenant"), value: "acme".into() }]);

    let with_id = message_entry(
        MessageFormat::Envelope,
        Lsn(1),
        "outbox",
        Bytes::from_static(br#"{"id": "e-9"}"#),
    );
    assert_eq!(with_id.id, "e-9");
    assert_eq!(
        with_id.fields.get("aggregateid"),
        Some(None),
        "absent members are NULL to templates"
    );
}

#[test]
fn an_undecodable_envelope_is_a_defect_naming_the_problem() {
    for (content, needle) in [
        (&b"not json"[..], "expected ident"),
        (br#"[1, 2]"#, "expected a JSON object"),
        (br#"{"aggregateid": {"nested": 1}}"#, "\"aggregateid\" must be a string"),
        (br#"{"headers": {"n": 1}}"#, "header \"n\" must be a string"),
    ] {
        let entry = message_entry(
            MessageFormat::Envelope,
            Lsn(1),
            "outbox",
            Bytes::copy_from_slice(content),
        );
        let defect = entry.defect.expect("a defect");
        assert!(defect.contains(needle), "{defect}");
    }
}

#[test]
fn raw_messages_are_passed_through() {
    let entry =
        message_entry(MessageFormat::Raw, Lsn(5), "outbox", Bytes::from_static(b"\x00binary"));
    assert_eq!(entry.payload.as_deref(), Some(&b"\x00binary"[..]));
    assert_eq!(entry.payload_kind, PayloadKind::Binary);
    assert_eq!(entry.id, "lsn:0/5");
    assert!(entry.defect.is_none());
}

#[test]
fn a_silent_stream_is_given_up_within_the_servers_own_timeout() {
    let (ten, sixty) = (Duration::from_secs(10), Duration::from_secs(60));
    assert_eq!(stall_timeout(ten, Some(sixty)), sixty, "three heartbeats fit in 60 s");
    assert_eq!(stall_timeout(Duration::from_secs(30), Some(sixty)), Duration::from_secs(90));
    assert_eq!(stall_timeout(ten, None), sixty, "no server timeout: 60 s");
    assert_eq!(stall_timeout(ten, Some(Duration::from_secs(5))), Duration::from_secs(30));
}

#[test]
fn status_goes_out_at_least_twice_per_sender_timeout() {
    assert_eq!(status_interval(Some(Duration::from_secs(60))), Duration::from_secs(1));
    assert_eq!(status_interval(Some(Duration::from_secs(1))), Duration::from_millis(500));
    assert_eq!(status_interval(Some(Duration::from_millis(50))), Duration::from_millis(100));
    assert_eq!(status_interval(None), Duration::from_secs(1));
}
