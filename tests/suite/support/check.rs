//! Comparing what a real consumer received with what was committed, with readable failures.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write;

use super::kafka::Record;
use super::workload::Committed;

/// One message as a consumer saw it.
#[derive(Clone, Debug)]
pub struct Delivered {
    pub id: String,
    pub key: String,
    pub version: u32,
    /// Flagged as a possible redelivery by the broker or the relay.
    pub redelivered: bool,
}

impl Delivered {
    /// Reads `key` and `version` from a workload payload.
    pub fn from_payload(id: String, payload: &[u8], redelivered: bool) -> Delivered {
        let value: serde_json::Value = serde_json::from_slice(payload)
            .unwrap_or_else(|e| panic!("payload of {id} is not JSON ({e}): {payload:?}"));
        Delivered {
            id,
            key: value["key"].as_str().expect("payload.key").to_owned(),
            version: value["version"].as_u64().expect("payload.version") as u32,
            redelivered,
        }
    }
}

/// Kafka partitions (as read) as delivery streams; ids come from the `id` header.
pub fn kafka_streams(partitions: &[Vec<Record>]) -> Vec<Vec<Delivered>> {
    partitions
        .iter()
        .map(|records| {
            records
                .iter()
                .map(|r| {
                    let id = r.header("id").expect("id header").to_owned();
                    Delivered::from_payload(id, r.payload.as_deref().expect("payload"), false)
                })
                .collect()
        })
        .collect()
}

/// What the comparison found besides the guarantees (which it asserts).
#[derive(Debug, Default)]
pub struct Outcome {
    pub messages: usize,
    pub duplicates: usize,
    /// Duplicates not flagged as a possible redelivery.
    pub unmarked_duplicates: usize,
}

/// Asserts: every committed row delivered, no rolled-back row delivered, each key in exactly
/// one stream (partition or queue), and each key's versions in commit order (1, 2, 3, ...).
/// With `allow_duplicates`, repeats of an id are dropped (first occurrence kept) and counted;
/// without, any repeat fails.
pub fn verify(
    streams: &[Vec<Delivered>],
    committed: &Committed,
    allow_duplicates: bool,
) -> Outcome {
    let mut problems = String::new();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut duplicates = 0usize;
    let mut unmarked_duplicates = 0usize;

    let mut stream_of_key: HashMap<&str, usize> = HashMap::new();
    let mut versions: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    let mut messages = 0usize;
    for (s, stream) in streams.iter().enumerate() {
        for message in stream {
            messages += 1;
            if !seen.insert(&message.id) {
                duplicates += 1;
                if !message.redelivered {
                    unmarked_duplicates += 1;
                }

                if !allow_duplicates {
                    let _ = writeln!(
                        problems,
                        "duplicate: {} (key {} v{})",
                        message.id, message.key, message.version
                    );
                }
                continue;
            }
            if committed.rolled_back_ids.contains(&message.id) {
                let _ = writeln!(problems, "rolled-back row delivered: {}", message.id);
            } else if !committed.ids.contains(&message.id) {
                let _ = writeln!(problems, "unknown message delivered: {}", message.id);
            }
            if let Some(previous) = stream_of_key.insert(&message.key, s) {
                if previous != s {
                    let _ = writeln!(
                        problems,
                        "key {} appears in streams {previous} and {s}",
                        message.key
                    );
                }
            }
            versions.entry(&message.key).or_default().push(message.version);
        }
    }
    let missing: Vec<&String> =
        committed.ids.iter().filter(|id| !seen.contains(id.as_str())).collect();
    if !missing.is_empty() {
        let _ = writeln!(
            problems,
            "{} committed rows never delivered, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
    }
    for (key, last) in &committed.versions {
        let got = versions.get(key.as_str()).cloned().unwrap_or_default();
        let expected: Vec<u32> = (1..=*last).collect();
        if got != expected {
            let at = got
                .iter()
                .zip(&expected)
                .position(|(g, e)| g != e)
                .unwrap_or(got.len().min(expected.len()));
            let from = at.saturating_sub(3);
            let _ = writeln!(
                problems,
                "key {key}: expected versions 1..={last} in order, got {} messages; first difference at \
                 index {at}: expected {:?}, got {:?}",
                got.len(),
                &expected[from..(at + 4).min(expected.len())],
                &got[from..(at + 4).min(got.len())],
            );
        }
    }
    for key in versions.keys() {
        if !committed.versions.contains_key(*key) {
            let _ = writeln!(problems, "messages for key {key}, which has no committed rows");
        }
    }
    assert!(
        problems.is_empty(),
        "delivery does not match what was committed ({} committed rows, {} messages received):\n{problems}",
        committed.rows(),
        messages
    );
    Outcome { messages, duplicates, unmarked_duplicates }
}
