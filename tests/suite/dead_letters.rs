//! `pipeline.on_poison = "dead-letter"`: poison entries are set aside with their reason, the
//! rest keeps flowing, and `dlq redrive` delivers them after a fix.

use crate::support;

use std::time::Duration;

use lapin::options::QueueBindOptions;
use lapin::types::FieldTable;
use support::config::RelayConfig;
use support::kafka::{create_topic, read_all};
use support::pg::{connect, count, fresh_database};
use support::rabbit::drain;
use support::relay::{command, migrate, Relay};
use support::{services, unique, wait_for};
use tokio_postgres::Client;

/// Poison becomes a dead letter; later entries of its key wait (`"wait"`) or go on.
fn kafka_config(db: &str, prefix: &str, same_key: &str) -> RelayConfig {
    RelayConfig::kafka(db, prefix)
        .pipeline("on_poison", "dead-letter")
        .pipeline("dead_letter_same_key", same_key)
        .pipeline("retry_max_backoff", "1s")
        .sink("metadata_timeout", "2s")
}

fn rabbit_config(db: &str, prefix: &str) -> String {
    RelayConfig::rabbitmq(db, prefix)
        .pipeline("on_poison", "dead-letter")
        .pipeline("retry_max_backoff", "1s")
        .topology(prefix, "direct", &[prefix], "a")
        .to_string()
}

/// Binds queue `<prefix>` to exchange `<prefix>.order` by `routing_key` too.
async fn bind(prefix: &str, routing_key: &str) {
    let connection = support::rabbit::connect(&services().amqp).await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_bind(
            prefix.into(),
            format!("{prefix}.order").as_str().into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
}

/// SIGTERM (the relay must stop cleanly), then the test's slot goes.
async fn stop_and_drop_slot(mut relay: Relay, slot: &str) {
    relay.terminate();
    assert!(relay.wait(Duration::from_secs(30)).await.success(), "{}", relay.log());
    let admin = connect(&services().pg).await;
    let _ = admin.execute("select pg_drop_replication_slot($1)", &[&slot]).await;
}

/// Inserts one row per call (in order); returns its id.
async fn row(client: &Client, aggregatetype: &str, key: &str, payload: &str) -> String {
    client
        .query_one(
            "insert into outbox (id, aggregatetype, aggregateid, type, payload) \
             values (gen_random_uuid(), $1, $2, 'T', $3::text::jsonb) returning id::text",
            &[&aggregatetype, &key, &payload],
        )
        .await
        .unwrap()
        .get(0)
}

async fn drained(client: &Client) {
    wait_for("the outbox to drain", Duration::from_secs(60), || async move {
        count(client, "select count(*) from outbox").await == 0
    })
    .await;
}

async fn ids(topic: &str) -> Vec<String> {
    read_all(&services().kafka, topic)
        .await
        .into_iter()
        .flatten()
        .map(|r| r.header("id").unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_rows_are_set_aside_the_rest_flows_and_redrive_delivers_after_a_fix() {
    let db = fresh_database("dlq").await;
    let prefix = unique("dlq");
    let (orders, missing) = (format!("{prefix}.order"), format!("{prefix}.missing"));
    create_topic(&services().kafka, &orders, 1).await;
    let config = kafka_config(&db, &prefix, "continue")
        .set("route.headers", "tenant", "${tenant}")
        .to_string();
    migrate(&config).await;
    let client = connect(&db).await;
    client.batch_execute("alter table outbox add column tenant text default 'acme'").await.unwrap();
    let big = format!("{{\"blob\": \"{}\"}}", "x".repeat(2_000_000));
    let a = row(&client, "order", "k1", "{}").await;
    let b = row(&client, "missing", "k2", "{}").await; // no such topic
    let c = row(&client, "order", "k3", "{}").await;
    client.execute("update outbox set tenant = null where id::text = $1", &[&c]).await.unwrap(); // NULL header
    let d = row(&client, "order", "k4", &big).await; // over 1 MB
    let e = row(&client, "order", "k2", "{}").await; // same key as b: continues

    let mut relay = Relay::spawn(&config);
    let client = &client;
    drained(client).await;
    assert_eq!(ids(&orders).await, vec![a.clone(), e.clone()], "the rest flowed, in order");
    let list = command(&config, &["dlq", "list"]).await.stdout;
    for (id, reason) in [
        (&b, "does not exist: create it"),
        (&c, "header \"tenant\": column \"tenant\" is NULL"),
        (&d, "over the limit of 1000000 bytes"),
    ] {
        let line = list
            .lines()
            .position(|l| l.contains(id.as_str()))
            .unwrap_or_else(|| panic!("{id} listed:\n{list}"));
        assert!(list.lines().nth(line + 1).unwrap().contains(reason), "{id}: {reason}\n{list}");
    }
    let status = command(&config, &["status"]).await;
    assert!(status.stdout.contains("dead letters: 3 live"), "{status:?}");
    assert_eq!(relay.metric("outbox_relay_dead_letters_total").await, Some(3.0));

    // Fix two of them and redrive everything: those two go out, the oversize one stays, with
    // its reason, and the command says so (exit non-zero).
    create_topic(&services().kafka, &missing, 1).await;
    client
        .execute(
            "update outbox_relay.dead_letters set fields = fields || '{\"tenant\": \"fixed\"}' where entry_id = $1",
            &[&c],
        )
        .await
        .unwrap();
    let out = command(&config, &["dlq", "redrive", "--all"]).await;
    assert!(out.stdout.contains("requested a redrive of 3 dead letter(s)"), "{out:?}");
    assert!(out.stdout.contains("delivered 2 dead letter(s)"), "{out:?}");
    assert!(
        out.stdout.contains(&format!("entry {d} failed again and stays:"))
            && out.stdout.contains("over the limit"),
        "{out:?}"
    );
    assert!(
        !out.status.success() && out.stderr.contains("1 dead letter(s) failed again"),
        "{out:?}"
    );
    assert_eq!(ids(&orders).await, vec![a, e, c]);
    assert_eq!(ids(&missing).await, vec![b]);
    let list = command(&config, &["dlq", "list"]).await.stdout;
    assert!(list.contains(&d) && list.lines().count() == 2, "only the oversize row stays:\n{list}");
    relay.terminate();
    assert!(relay.wait(Duration::from_secs(30)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_later_entries_of_the_key_are_held_and_redriven_in_order() {
    let db = fresh_database("dlq_wait").await;
    let prefix = unique("dlqwait");
    let (orders, missing) = (format!("{prefix}.order"), format!("{prefix}.missing"));
    create_topic(&services().kafka, &orders, 1).await;
    let config = kafka_config(&db, &prefix, "wait").to_string();
    migrate(&config).await;
    let client = connect(&db).await;
    let a1 = row(&client, "order", "a", "{}").await;
    let a2 = row(&client, "missing", "a", "{}").await; // poison
    let a3 = row(&client, "order", "a", "{}").await; // held behind a2
    let b1 = row(&client, "order", "b", "{}").await;

    let mut relay = Relay::spawn(&config);
    let client = &client;
    drained(client).await;
    assert_eq!(ids(&orders).await, vec![a1.clone(), b1.clone()]);
    let held: Option<String> = client
        .query_one("select held_behind from outbox_relay.dead_letters where entry_id = $1", &[&a3])
        .await
        .unwrap()
        .get(0);
    assert_eq!(held.as_ref(), Some(&a2), "a3 waits behind a2");
    let a4 = row(client, "order", "a", "{}").await; // still held while a2 is dead
    drained(client).await;
    assert_eq!(ids(&orders).await, vec![a1.clone(), b1.clone()]);

    create_topic(&services().kafka, &missing, 1).await;
    let out = command(&config, &["dlq", "redrive", "--id", &a3]).await;
    assert!(
        !out.status.success() && out.stderr.contains("redrive --id"),
        "a held entry goes with its first: {out:?}"
    );
    let out = command(&config, &["dlq", "redrive", "--id", &a2]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("delivered 3 dead letter(s)"), "{out:?}");
    assert_eq!(ids(&missing).await, vec![a2]);
    assert_eq!(ids(&orders).await, vec![a1, b1, a3, a4], "the key's entries, in order");
    assert!(command(&config, &["dlq", "list"]).await.stdout.contains("no dead letters"));
    relay.terminate();
    assert!(relay.wait(Duration::from_secs(30)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_message_is_set_aside_and_redriven_once_a_queue_is_bound() {
    let db = fresh_database("dlq_amqp").await;
    let prefix = unique("dlqamqp");
    let config = rabbit_config(&db, &prefix);
    migrate(&config).await;
    let client = connect(&db).await;
    let first = row(&client, "order", "a", "{}").await;
    let lost = row(&client, "order", "b", "{}").await; // no binding for "b"
    let last = row(&client, "order", "a", "{}").await;
    let mut relay = Relay::spawn(&config);
    let client = &client;
    drained(client).await;
    let got: Vec<String> =
        drain(&services().amqp, &prefix).await.into_iter().map(|d| d.message_id.unwrap()).collect();
    assert!(got.contains(&first) && got.contains(&last) && !got.contains(&lost), "{got:?}");
    assert!(command(&config, &["dlq", "list"]).await.stdout.contains("is unroutable"));

    bind(&prefix, "b").await;
    // As if a run cut short had sent it already: it goes out marked as a possible repeat.
    client
        .execute("update outbox_relay.dead_letters set redrive_sent_at = now()", &[])
        .await
        .unwrap();
    let out = command(&config, &["dlq", "redrive", "--all"]).await;
    assert!(out.status.success() && out.stdout.contains("delivered 1 dead letter(s)"), "{out:?}");
    let got = drain(&services().amqp, &prefix).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].message_id.as_ref(), Some(&lost));
    assert!(got[0].marked(), "{got:?}");
    relay.terminate();
    assert!(relay.wait(Duration::from_secs(30)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_logical_message_is_set_aside_with_its_reason() {
    let db = fresh_database("dlq_wal").await;
    let (slot, prefix) = (unique("slot"), unique("dlqwal"));
    let orders = format!("{prefix}.order");
    create_topic(&services().kafka, &orders, 1).await;
    let config = kafka_config(&db, &prefix, "continue").wal(&slot).to_string();
    migrate(&config).await;
    let client = connect(&db).await;
    client
        .execute("select pg_logical_emit_message(true, 'outbox', 'not json')", &[])
        .await
        .unwrap();
    let good = row(&client, "order", "k", "{}").await;
    let mut relay = Relay::spawn(&config);
    let client = &client;
    drained(client).await;
    assert_eq!(ids(&orders).await, vec![good]);
    let list = command(&config, &["dlq", "list"]).await.stdout;
    assert!(list.contains("the logical message is not a JSON envelope"), "{list}");

    // Correct the stored message and redrive it: it is decoded again and delivered. It is marked
    // as sent by a run cut short that never reached Kafka: looked for by id (its old position is
    // below what the partition holds), not found, so sent.
    client
        .execute(
            "update outbox_relay.dead_letters set payload = convert_to($1, 'UTF8'), \
             redrive_sent_at = now()",
            &[&r#"{"id": "fixed-1", "aggregatetype": "order", "aggregateid": "k", "type": "T", "payload": {"n": 1}}"#],
        )
        .await
        .unwrap();
    let out = command(&config, &["dlq", "redrive", "--all"]).await;
    assert!(out.status.success() && out.stdout.contains("delivered 1 dead letter(s)"), "{out:?}");
    let records =
        read_all(&services().kafka, &orders).await.into_iter().flatten().collect::<Vec<_>>();
    assert_eq!(records.len(), 2);
    assert_eq!(records[1].header("id"), Some("fixed-1"));
    assert_eq!(records[1].payload.as_deref(), Some(&br#"{"n":1}"#[..]));

    // A crash after Kafka confirmed it but before it was marked redriven: the next run finds it
    // by id and does not send it again.
    relay.kill9().await;
    client.execute("update outbox_relay.dead_letters set redriven_at = null", &[]).await.unwrap();
    let relay = Relay::spawn(&config);
    let out = command(&config, &["dlq", "redrive", "--all"]).await;
    assert!(out.status.success() && out.stdout.contains("delivered 1 dead letter(s)"), "{out:?}");
    assert_eq!(read_all(&services().kafka, &orders).await.into_iter().flatten().count(), 2);
    stop_and_drop_slot(relay, &slot).await;
}

/// The gap a redrive through the outbox table would leave: an entry of the held key committed
/// before the redrive but read after it must still follow the redriven entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_committed_before_the_redrive_still_follows_the_redriven_ones() {
    let db = fresh_database("dlq_order").await;
    let prefix = unique("dlqorder");
    let orders = format!("{prefix}.order");
    create_topic(&services().kafka, &orders, 1).await;
    let config =
        kafka_config(&db, &prefix, "wait").set("route.headers", "tenant", "${tenant}").to_string();
    migrate(&config).await;
    let client = connect(&db).await;
    client.batch_execute("alter table outbox add column tenant text default 'acme'").await.unwrap();
    let a1 = row(&client, "order", "a", "{}").await;
    let a2 = row(&client, "order", "a", "{}").await;
    client.execute("update outbox set tenant = null where id::text = $1", &[&a2]).await.unwrap();
    let a3 = row(&client, "order", "a", "{}").await; // held behind a2
    let b1 = row(&client, "order", "b", "{}").await;

    let mut relay = Relay::spawn(&config);
    let client = &client;
    drained(client).await;
    assert_eq!(ids(&orders).await, vec![a1.clone(), b1.clone()]);
    relay.terminate();
    assert!(relay.wait(Duration::from_secs(30)).await.success());

    // Committed while no relay reads, before the redrive is asked for.
    let a4 = row(client, "order", "a", "{}").await;
    client
        .execute(
            "update outbox_relay.dead_letters set fields = fields || '{\"tenant\": \"fixed\"}' where entry_id = $1",
            &[&a2],
        )
        .await
        .unwrap();
    let out = command(&config, &["dlq", "redrive", "--id", &a2, "--no-wait"]).await;
    assert!(out.status.success() && out.stdout.contains("requested a redrive of 2"), "{out:?}");
    let out = command(&config, &["dlq", "redrive", "--id", &a2, "--timeout", "1s"]).await;
    assert!(!out.status.success() && out.stderr.contains("is a relay running"), "{out:?}");

    let mut relay = Relay::spawn(&config);
    drained(client).await;
    wait_for("the redrive", Duration::from_secs(60), || async move {
        count(client, "select count(*) from outbox_relay.dead_letters where redriven_at is null")
            .await
            == 0
    })
    .await;
    let b2 = row(client, "order", "b", "{}").await;
    let a5 = row(client, "order", "a", "{}").await;
    drained(client).await;
    let got = ids(&orders).await;
    let key_a: Vec<&String> = got.iter().filter(|id| ![&b1, &b2].contains(id)).collect();
    assert_eq!(key_a, vec![&a1, &a2, &a3, &a4, &a5], "key a in commit order: {got:?}");
    relay.terminate();
    assert!(relay.wait(Duration::from_secs(30)).await.success());
}

/// Emits a logical-message envelope: `id`, key `key`, and its own `headers` (JSON).
async fn emit(client: &Client, id: &str, key: &str, headers: &str) {
    let envelope = format!(
        r#"{{"id": "{id}", "aggregatetype": "order", "aggregateid": "{key}", "type": "T", "payload": {{}}, "headers": {headers}}}"#
    );
    client
        .execute("select pg_logical_emit_message(true, 'outbox', $1)", &[&envelope])
        .await
        .unwrap();
}

/// Live dead letters in the order they were set aside: (id, key, held behind).
async fn letters(client: &Client) -> Vec<(String, String, Option<String>)> {
    client
        .query(
            "select entry_id, shard_key, held_behind from outbox_relay.dead_letters \
             where redriven_at is null order by seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

fn wal_config(db: &str, prefix: &str, slot: &str, same_key: &str) -> String {
    kafka_config(db, prefix, same_key).route("key", "${aggregateid}").wal(slot).to_string()
}

/// Two entries with one id are two dead letters; poison of a held key waits behind the key's
/// first; a redrive keeps the key's order when one of them fails again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_per_entry_and_a_held_key_keeps_its_order_through_a_redrive() {
    let db = fresh_database("dlq_order").await;
    let (slot, prefix) = (unique("slot"), unique("dlqorder"));
    let orders = format!("{prefix}.order");
    create_topic(&services().kafka, &orders, 1).await;
    let config = wal_config(&db, &prefix, &slot, "wait");
    migrate(&config).await;
    let client = connect(&db).await;
    let forged = r#"{"outbox-position": "forged"}"#;
    emit(&client, "dup", "k", forged).await; // poison: key k is held from here on
    emit(&client, "dup", "j", forged).await; // the same id, another entry
    emit(&client, "k-poison", "k", r#"{"ID": "forged"}"#).await; // poison of a held key
    emit(&client, "k-good", "k", "{}").await; // held
    emit(&client, "z-good", "z", "{}").await; // another key flows
    let relay = Relay::spawn(&config);
    let client = &client;
    let orders_ref = &orders;
    wait_for("the entry of key z", Duration::from_secs(60), || async move {
        ids(orders_ref).await == ["z-good"]
    })
    .await;
    let expected = |id: &str, key: &str, behind: Option<&str>| {
        (id.to_string(), key.to_string(), behind.map(str::to_owned))
    };
    assert_eq!(
        letters(client).await,
        [
            expected("dup", "k", None),
            expected("dup", "j", None),
            expected("k-poison", "k", Some("dup")),
            expected("k-good", "k", Some("dup")),
        ]
    );
    let out = command(&config, &["dlq", "redrive", "--id", "k-poison"]).await;
    assert!(
        !out.status.success() && out.stderr.contains("is held behind dead letter \"dup\""),
        "{out:?}"
    );

    // Fix the first of key k only; `k-poison` fails again, so `k-good` must stay behind it.
    client
        .execute(
            "update outbox_relay.dead_letters set own_headers = '[]' \
             where entry_id = 'dup' and shard_key = 'k'",
            &[],
        )
        .await
        .unwrap();
    let out = command(&config, &["dlq", "redrive", "--all"]).await;
    assert!(!out.status.success(), "two fail again: {out:?}");
    assert!(out.stdout.contains("delivered 1 dead letter(s)"), "{out:?}");
    assert_eq!(ids(&orders).await, ["z-good", "dup"], "k-good may not overtake k-poison");
    assert_eq!(
        letters(client).await,
        [
            expected("dup", "j", None),
            expected("k-poison", "k", None),
            expected("k-good", "k", Some("k-poison")),
        ]
    );
    stop_and_drop_slot(relay, &slot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_continue_a_key_flows_after_its_dead_letter_also_after_a_restart() {
    let db = fresh_database("dlq_continue").await;
    let (slot, prefix) = (unique("slot"), unique("dlqcont"));
    let orders = format!("{prefix}.order");
    create_topic(&services().kafka, &orders, 1).await;
    let config = wal_config(&db, &prefix, &slot, "continue");
    migrate(&config).await;
    let client = connect(&db).await;
    emit(&client, "poison", "k", r#"{"outbox-pipeline": "x"}"#).await;
    emit(&client, "first", "k", "{}").await;
    let mut relay = Relay::spawn(&config);
    let orders_ref = &orders;
    wait_for("the first entry", Duration::from_secs(60), || async move {
        ids(orders_ref).await == ["first"]
    })
    .await;
    relay.terminate();
    assert!(relay.wait(Duration::from_secs(30)).await.success());

    emit(&client, "second", "k", "{}").await;
    let relay = Relay::spawn(&config);
    wait_for("the second entry, not held", Duration::from_secs(60), || async move {
        ids(orders_ref).await == ["first", "second"]
    })
    .await;
    assert_eq!(letters(&client).await, vec![("poison".into(), "k".into(), None)]);
    stop_and_drop_slot(relay, &slot).await;
}

/// An entry an earlier run may have sent (at or below the recorded `max_sent`) that is then set
/// aside: its redrive goes out marked, since a consumer may have it already.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_an_earlier_run_may_have_sent_is_redriven_marked() {
    let db = fresh_database("dlq_replay").await;
    let prefix = unique("dlqreplay");
    let config = rabbit_config(&db, &prefix);
    migrate(&config).await;
    let client = connect(&db).await;
    let sent = row(&client, "order", "a", "{}").await;
    let lost = row(&client, "order", "b", "{}").await; // no binding for "b": unroutable
                                                       // As a run that crashed after sending both would have left it.
    client
        .execute(
            "insert into outbox_relay.pipelines (name, source, max_sent) \
             values ('default', 'poll', 'poll:' || (select max(seq) from outbox))",
            &[],
        )
        .await
        .unwrap();
    let mut relay = Relay::spawn(&config);
    let client = &client;
    drained(client).await;
    let got = drain(&services().amqp, &prefix).await;
    assert_eq!(got.iter().map(|d| d.message_id.clone().unwrap()).collect::<Vec<_>>(), [sent]);
    assert!(got[0].marked(), "a possible replay is marked: {got:?}");

    bind(&prefix, "b").await;
    let out = command(&config, &["dlq", "redrive", "--all"]).await;
    assert!(out.status.success() && out.stdout.contains("delivered 1 dead letter(s)"), "{out:?}");
    let got = drain(&services().amqp, &prefix).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].message_id.as_ref(), Some(&lost));
    assert!(got[0].marked(), "the redrive of a possible replay is marked: {got:?}");
    relay.terminate();
    assert!(relay.wait(Duration::from_secs(30)).await.success());
}
