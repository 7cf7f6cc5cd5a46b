//! The librdkafka properties the relay's guarantees rest on. Invariant: each of them is set by
//! the relay on every producer, and a `sink.properties` entry that names one — by its name or by
//! one of librdkafka's aliases, in any letter case — is refused unless it says the same thing.

use std::collections::BTreeMap;

/// How messages reach Kafka (`sink.delivery`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Idempotent producer; after a crash, possible replays are looked up in their partition and
    /// sent again unless that very record is there (see `replay`). Works on any Kafka-protocol
    /// broker, with or without transactions.
    Idempotent,
    /// Batches are Kafka transactions under a stable `transactional.id` per pipeline: a new
    /// producer fences every older one (a crashed run, a deposed leader) and aborts what it left
    /// open; a confirm means the transaction holding the message committed.
    Transactional,
}

/// Default `transaction.timeout.ms` (librdkafka's own default).
pub(crate) const DEFAULT_TRANSACTION_TIMEOUT_MS: u64 = 60_000;

/// `(property, value, why)` the relay sets on its producer for `delivery`. In transactional mode
/// a message may not outlive its transaction, so `message.timeout.ms` follows
/// `transaction.timeout.ms`: a message still undelivered then fails, its transaction aborts, and
/// the engine sends it again (nothing of an aborted transaction is visible to consumers).
pub(crate) fn enforced(
    delivery: Delivery,
    properties: &BTreeMap<String, String>,
) -> Vec<(&'static str, String, &'static str)> {
    let mut fixed = vec![
        (
            "enable.idempotence",
            "true".into(),
            "keeps each partition's order across retries, no duplicates",
        ),
        ("acks", "all".into(), "a confirm means every in-sync replica has the message"),
        (
            "partitioner",
            "murmur2_random".into(),
            "a key lands on the partition Java clients choose",
        ),
    ];
    match delivery {
        Delivery::Idempotent => {
            fixed.push((
                "message.timeout.ms",
                "0".into(),
                "a message is never given up on while the broker is away",
            ));
            fixed.push((
                "enable.gapless.guarantee",
                "true".into(),
                "a failed message is never overtaken in its partition",
            ));
        }
        Delivery::Transactional => fixed.push((
            "message.timeout.ms",
            transaction_timeout_ms(properties).to_string(),
            "a message cannot outlive its transaction (it follows transaction.timeout.ms)",
        )),
    }
    fixed
}

/// `transaction.timeout.ms` as configured, else librdkafka's default.
pub(crate) fn transaction_timeout_ms(properties: &BTreeMap<String, String>) -> u64 {
    properties
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("transaction.timeout.ms"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(DEFAULT_TRANSACTION_TIMEOUT_MS)
}

/// librdkafka's aliases: `(alias, canonical name)`.
const ALIASES: &[(&str, &str)] = &[
    ("request.required.acks", "acks"),
    ("delivery.timeout.ms", "message.timeout.ms"),
    ("metadata.broker.list", "bootstrap.servers"),
];

/// Properties the relay owns outright, whatever their value.
const OWNED: &[(&str, &str)] = &[
    ("bootstrap.servers", "set the brokers with sink.brokers"),
    ("transactional.id", "the relay derives it from the pipeline (sink.transactional_id)"),
];

fn canonical(key: &str) -> String {
    let key = key.trim().to_ascii_lowercase();
    ALIASES.iter().find(|(alias, _)| *alias == key).map_or(key, |(_, name)| (*name).to_owned())
}

/// Equal for librdkafka: `acks` = `-1` = `all`, booleans in any case.
fn same_value(key: &str, given: &str, fixed: &str) -> bool {
    let given = given.trim().to_ascii_lowercase();
    given == fixed || (key == "acks" && given == "-1")
}

/// Refuses `properties` that would weaken what the relay promises, naming the property and why.
pub fn validate(delivery: Delivery, properties: &BTreeMap<String, String>) -> Result<(), String> {
    let fixed = enforced(delivery, properties);
    for (key, value) in properties {
        let name = canonical(key);
        if let Some((_, why)) = OWNED.iter().find(|(owned, _)| *owned == name) {
            return Err(format!("sink.properties.{key} is not allowed: {why}"));
        }
        if let Some((_, wanted, why)) = fixed.iter().find(|(k, ..)| *k == name) {
            if !same_value(&name, value, wanted) {
                let alias = if name == *key {
                    String::new()
                } else {
                    format!(" (librdkafka's alias of {name})")
                };
                return Err(format!(
                    "sink.properties.{key}{alias} = {value:?} is not allowed: the relay fixes \
                     {name} to {wanted:?} because {why}"
                ));
            }
        }
    }
    if delivery == Delivery::Transactional && transaction_timeout_ms(properties) == 0 {
        return Err("sink.properties.\"transaction.timeout.ms\" must be above 0".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn aliases_and_letter_case_do_not_slip_past() {
        for (key, value) in [
            ("delivery.timeout.ms", "30000"),
            ("request.required.acks", "1"),
            ("ACKS", "1"),
            ("Enable.Idempotence", "false"),
            ("metadata.broker.list", "elsewhere:9092"),
            ("transactional.id", "mine"),
            ("enable.gapless.guarantee", "false"),
        ] {
            let err = validate(Delivery::Idempotent, &props(&[(key, value)])).unwrap_err();
            assert!(err.contains(key), "{err}");
        }
        let err =
            validate(Delivery::Idempotent, &props(&[("delivery.timeout.ms", "1")])).unwrap_err();
        assert!(err.contains("alias of message.timeout.ms"), "{err}");
    }

    #[test]
    fn agreeing_values_and_unrelated_properties_pass() {
        let ok = props(&[
            ("acks", "-1"),
            ("request.required.acks", "all"),
            ("enable.idempotence", "TRUE"),
            ("linger.ms", "5"),
            ("compression.type", "lz4"),
        ]);
        validate(Delivery::Idempotent, &ok).unwrap();
    }

    #[test]
    fn transactional_messages_follow_the_transaction_timeout() {
        let given = props(&[("transaction.timeout.ms", "20000")]);
        let fixed = enforced(Delivery::Transactional, &given);
        assert!(fixed.iter().any(|(k, v, _)| *k == "message.timeout.ms" && v == "20000"));
        assert!(!fixed.iter().any(|(k, ..)| *k == "enable.gapless.guarantee"));
        let err = validate(
            Delivery::Transactional,
            &props(&[("transaction.timeout.ms", "20000"), ("delivery.timeout.ms", "0")]),
        )
        .unwrap_err();
        assert!(err.contains("20000"), "{err}");
        validate(Delivery::Transactional, &props(&[("message.timeout.ms", "60000")])).unwrap();
    }
}
