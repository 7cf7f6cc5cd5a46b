//! Operator mistakes and hostile data: each is stopped loudly or set aside with its content,
//! never dropped, never a crash.

use crate::support;

use std::time::Duration;

use support::config::RelayConfig;
use support::kafka::{create_topic, read_all, Record};
use support::pg::{connect, count, fresh_database};
use support::rabbit::drain;
use support::relay::{command, migrate, Relay};
use support::{services, unique, wait_for};
use tokio_postgres::Client;

/// Poison becomes a dead letter (tests that want a halt say so), short backoffs.
pub(super) fn relay(sink: RelayConfig) -> RelayConfig {
    sink.pipeline("on_poison", "dead-letter").pipeline("retry_max_backoff", "1s")
}

/// WAL tailing through `slot`, with heartbeats.
pub(super) fn wal(config: RelayConfig, slot: &str) -> RelayConfig {
    config.wal(slot).source("heartbeat_interval", "1s")
}

pub(super) fn kafka(db: &str, prefix: &str) -> RelayConfig {
    relay(RelayConfig::kafka(db, prefix).sink("metadata_timeout", "2s"))
}

/// RabbitMQ with a direct exchange `<prefix>.order` and a queue `<prefix>` bound by `key`.
fn rabbitmq(db: &str, prefix: &str, key: &str) -> RelayConfig {
    relay(RelayConfig::rabbitmq(db, prefix).topology(prefix, "direct", &[prefix], key))
}

pub(super) async fn drop_slot(slot: &str) {
    let admin = connect(&services().pg).await;
    let _ = admin.execute("select pg_drop_replication_slot($1)", &[&slot]).await;
}

/// Emits an outbox envelope for key `k` as a logical message.
async fn emit(client: &Client, envelope: &str) {
    client
        .execute("select pg_logical_emit_message(true, 'outbox', $1)", &[&envelope])
        .await
        .unwrap();
}

async fn dead_letters(client: &Client) -> Vec<(String, String)> {
    client
        .query(
            "select entry_id, reason from outbox_relay.dead_letters where redriven_at is null \
             order by seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn wait_dead_letters(client: &Client, n: i64) {
    wait_for(&format!("{n} dead letter(s)"), Duration::from_secs(60), || async move {
        count(client, "select count(*) from outbox_relay.dead_letters").await >= n
    })
    .await;
}

pub(super) const INSERT_ONE: &str =
    "insert into outbox (id, aggregatetype, aggregateid, type, payload) \
                          values (gen_random_uuid(), 'order', 'k', 'T', '{}')";

/// Inserts `count` entries of key `k`, each with a payload of `kib` KiB.
async fn insert_blobs(client: &Client, count: i32, kib: i32) {
    client
        .execute(
            "insert into outbox (id, aggregatetype, aggregateid, type, payload) \
             select gen_random_uuid(), 'order', 'k', 'T', \
                    jsonb_build_object('n', i, 'blob', repeat(md5(i::text), $2 * 32)) \
             from generate_series(1, $1) i",
            &[&count, &kib],
        )
        .await
        .unwrap();
}

/// Waits up to `seconds` for the outbox table to be empty.
pub(super) async fn drained(client: &Client, what: &str, seconds: u64) {
    wait_for(what, Duration::from_secs(seconds), || async move {
        count(client, "select count(*) from outbox").await == 0
    })
    .await;
}

/// SIGTERM: the relay must stop cleanly.
pub(super) async fn stop(mut relay: Relay) {
    relay.terminate();
    assert!(relay.wait(Duration::from_secs(30)).await.success(), "{}", relay.log());
}

pub(super) async fn records(topic: &str) -> Vec<Record> {
    read_all(&services().kafka, topic).await.into_iter().flatten().collect()
}

const FORGED: [&str; 3] = [
    r#"{"id": "forged-1", "aggregatetype": "order", "aggregateid": "k", "type": "T", "payload": {}, "headers": {"outbox-position": "wal:0/0:0"}}"#,
    r#"{"id": "forged-2", "aggregatetype": "order", "aggregateid": "k", "type": "T", "payload": {}, "headers": {"ID": "someone-else"}}"#,
    r#"{"id": "forged-3", "aggregatetype": "order", "aggregateid": "k", "type": "T", "payload": {}, "headers": {"Outbox-Redelivered": "false"}}"#,
];
const HONEST: &str = r#"{"id": "honest", "aggregatetype": "order", "aggregateid": "j", "type": "T", "payload": {}, "headers": {"tenant": "acme"}}"#;

async fn forged_headers_are_set_aside(sink: RelayConfig, slot: &str, db: &str) -> Client {
    let configured = wal(sink, slot).route("key", "${aggregateid}");
    let config = configured.to_string();
    // A route header cannot claim a reserved name either.
    let bad = configured.set("route.headers", "outbox-pipeline", "${type}").to_string();
    let out = command(&bad, &["check"]).await;
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("\"outbox-pipeline\" is reserved"), "{out:?}");

    migrate(&config).await;
    let client = connect(db).await;
    for forged in FORGED {
        emit(&client, forged).await;
    }
    emit(&client, HONEST).await;
    let relay = Relay::spawn(&config);
    wait_dead_letters(&client, 3).await;
    let letters = dead_letters(&client).await;
    let ids: Vec<&str> = letters.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["forged-1", "forged-2", "forged-3"]);
    assert!(letters.iter().all(|(_, reason)| reason.contains("which is reserved")), "{letters:?}");
    stop(relay).await;
    drop_slot(slot).await;
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_forging_the_relays_own_are_poison_on_kafka() {
    let db = fresh_database("forged_kafka").await;
    let (slot, prefix) = (unique("slot"), unique("forgedk"));
    let topic = format!("{prefix}.order");
    create_topic(&services().kafka, &topic, 1).await;
    forged_headers_are_set_aside(kafka(&db, &prefix), &slot, &db).await;
    let got = records(&topic).await;
    assert_eq!(got.len(), 1, "only the honest message is published: {got:?}");
    assert_eq!(got[0].header("id"), Some("honest"));
    assert_eq!(got[0].header("tenant"), Some("acme"));
    assert_eq!(got[0].headers.iter().filter(|(n, _)| n == "outbox-position").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_forging_the_relays_own_are_poison_on_rabbitmq() {
    let db = fresh_database("forged_amqp").await;
    let (slot, prefix) = (unique("slot"), unique("forgedr"));
    forged_headers_are_set_aside(rabbitmq(&db, &prefix, "j"), &slot, &db).await;
    let got = drain(&services().amqp, &prefix).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].message_id.as_deref(), Some("honest"));
    assert_eq!(got[0].header("tenant"), Some("acme"));
    assert!(!got[0].marked(), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_transactional_outbox_message_halts_naming_it() {
    let db = fresh_database("nontx").await;
    let (slot, prefix) = (unique("slot"), unique("nontx"));
    create_topic(&services().kafka, &format!("{prefix}.order"), 1).await;
    let config = wal(kafka(&db, &prefix), &slot).pipeline("on_poison", "halt").to_string();
    migrate(&config).await;
    let client = connect(&db).await;
    client
        .execute("select pg_logical_emit_message(false, 'outbox', $1)", &[&HONEST])
        .await
        .unwrap();
    let mut relay = Relay::spawn(&config);
    let status = relay.wait(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(1), "{}", relay.log());
    let log = relay.log();
    assert!(
        log.contains("halted on poison message: entry \"honest\"")
            && log.contains("emitted with transactional = false"),
        "{log}"
    );
    drop_slot(&slot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_that_filters_the_outbox_is_refused() {
    let db = fresh_database("pubfilter").await;
    let (slot, prefix) = (unique("slot"), unique("pubf"));
    let config = wal(kafka(&db, &prefix), &slot).to_string();
    migrate(&config).await;
    let client = connect(&db).await;
    for (filter, problem) in [
        ("outbox where (aggregatetype <> 'secret')", "has a row filter (WHERE)"),
        ("outbox (id, aggregatetype, aggregateid, type, created_at)", "has a column list"),
    ] {
        client
            .batch_execute(&format!("alter publication outbox_relay set table {filter}"))
            .await
            .unwrap();
        for subcommand in ["run", "migrate"] {
            let out = command(&config, &[subcommand]).await;
            assert_eq!(out.status.code(), Some(1), "{subcommand}: {out:?}");
            assert!(
                out.stderr
                    .contains(&format!("publication \"outbox_relay\" {problem} for public.outbox"))
                    && out
                        .stderr
                        .contains("alter publication outbox_relay set table public.outbox"),
                "{subcommand}: {}",
                out.stderr
            );
        }
        let out = command(&config, &["check"]).await;
        assert!(!out.status.success() && out.stdout.contains(problem), "{out:?}");
    }
    drop_slot(&slot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_refuses_a_seq_stamp_it_cannot_prove_gap_free() {
    let db = fresh_database("seqstamp").await;
    let prefix = unique("seqstamp");
    let config = kafka(&db, &prefix).to_string();
    migrate(&config).await;
    let client = connect(&db).await;
    client
        .batch_execute(
            "insert into outbox (id, aggregatetype, aggregateid, type, payload) \
             values (gen_random_uuid(), 'order', 'k', 'T', '{}'); \
             create function touch() returns trigger language plpgsql as \
             $$ begin new.seq := new.seq + 1; return new; end $$",
        )
        .await
        .unwrap();
    let cases = [
        ("alter sequence outbox_seq cache 10", "has CACHE 10", "alter sequence outbox_seq cache 1"),
        (
            "create trigger zz_touch before insert on outbox for each row execute function touch()",
            "trigger \"zz_touch\" is a BEFORE INSERT row trigger",
            "drop trigger zz_touch on outbox",
        ),
        (
            "alter table outbox enable replica trigger outbox_relay_stamp_seq",
            "fires only in replica sessions",
            "alter table outbox enable trigger outbox_relay_stamp_seq",
        ),
        (
            "alter sequence outbox_seq increment by -1",
            "has INCREMENT -1",
            "alter sequence outbox_seq increment by 1",
        ),
    ];
    for (break_it, problem, repair) in cases {
        client.batch_execute(break_it).await.unwrap();
        let out = command(&config, &["run"]).await;
        assert_eq!(out.status.code(), Some(1), "{break_it}: {out:?}");
        assert!(
            out.stderr.contains("polling public.outbox cannot prove it skips nothing")
                && out.stderr.contains(problem),
            "{break_it}: {}",
            out.stderr
        );
        let out = command(&config, &["check"]).await;
        assert!(!out.status.success() && out.stdout.contains(problem), "{break_it}: {out:?}");
        client.batch_execute(repair).await.unwrap();
    }
    assert_eq!(count(&client, "select count(*) from outbox").await, 1, "nothing was consumed");
    let out = command(&config, &["check"]).await;
    assert!(!out.stdout.contains("cannot prove"), "repaired: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytea_payloads_arrive_intact_with_bytea_output_escape() {
    let db = fresh_database("escape").await;
    let (slot, prefix) = (unique("slot"), unique("escape"));
    let topic = format!("{prefix}.order");
    create_topic(&services().kafka, &topic, 1).await;
    let config = wal(kafka(&db, &prefix), &slot).pipeline("on_poison", "halt").to_string();
    migrate(&config).await;
    let client = connect(&db).await;
    let name = db.rsplit('/').next().unwrap();
    client
        .batch_execute(&format!(
            "alter table outbox alter column payload type bytea using convert_to(payload::text, 'UTF8'); \
             alter database \"{name}\" set bytea_output = 'escape'"
        ))
        .await
        .unwrap();
    let payloads: [&[u8]; 4] = [
        b"plain text",
        b"back\\slash \\\\ and \\x41",
        &[0, 1, 0x7f, 0x80, 0xff, b'\\'],
        "é ✓".as_bytes(),
    ];
    for payload in payloads {
        client
            .execute(
                "insert into outbox (id, aggregatetype, aggregateid, type, payload) \
                 values (gen_random_uuid(), 'order', 'k', 'T', $1)",
                &[&payload],
            )
            .await
            .unwrap();
    }
    let relay = Relay::spawn(&config);
    let client = &client;
    drained(client, "the outbox to drain", 60).await;
    let got: Vec<Vec<u8>> = records(&topic).await.into_iter().map(|r| r.payload.unwrap()).collect();
    let want: Vec<Vec<u8>> = payloads.iter().map(|p| p.to_vec()).collect();
    assert_eq!(got, want);
    // Sessions of this database get the escape format (its walsender reads the same settings).
    let shown: String =
        connect(&db).await.query_one("show bytea_output", &[]).await.unwrap().get(0);
    assert_eq!(shown, "escape");
    stop(relay).await;
    drop_slot(&slot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_outbox_table_is_followed_and_one_left_out_of_the_publication_halts() {
    let db = fresh_database("recreated").await;
    let (slot, prefix) = (unique("slot"), unique("recreated"));
    let topic = format!("{prefix}.order");
    create_topic(&services().kafka, &topic, 1).await;
    let config = wal(kafka(&db, &prefix), &slot).pipeline("on_poison", "halt").to_string();
    migrate(&config).await;
    let client = connect(&db).await;
    let insert = "insert into outbox (id, aggregatetype, aggregateid, type, payload) \
                  values (gen_random_uuid(), 'order', 'k', 'T', '{}')";
    client.execute(insert, &[]).await.unwrap();
    let mut relay = Relay::spawn(&config);
    let topic_ref = &topic;
    wait_for("the first entry", Duration::from_secs(60), || async move {
        records(topic_ref).await.len() == 1
    })
    .await;

    // Dropped and re-created (a new OID), in one transaction with re-adding it.
    client
        .batch_execute(
            "begin; \
             create table outbox_new (like outbox including all); \
             drop table outbox; \
             alter table outbox_new rename to outbox; \
             alter publication outbox_relay add table outbox; \
             commit",
        )
        .await
        .unwrap();
    // Heartbeats check the publication before the relay has seen the new OID: found by name.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    client.execute(insert, &[]).await.unwrap();
    client.execute(insert, &[]).await.unwrap();
    wait_for("the entries of the new table", Duration::from_secs(60), || async move {
        records(topic_ref).await.len() == 3
    })
    .await;
    assert!(relay.log().contains("the outbox table was re-created"), "{}", relay.log());

    // Left out of the publication: its inserts would never arrive. The next heartbeat halts.
    client.batch_execute("alter publication outbox_relay drop table outbox").await.unwrap();
    client.execute(insert, &[]).await.unwrap();
    let status = relay.wait(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(1), "{}", relay.log());
    assert!(relay.log().contains("does not publish inserts into public.outbox"), "{}", relay.log());
    assert_eq!(count(&client, "select count(*) from outbox").await, 1, "the row stays");
    drop_slot(&slot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_that_is_not_utf8_is_set_aside_as_hex_not_a_crash() {
    let admin = connect(&services().pg).await;
    let name = unique("t_sqlascii");
    admin
        .batch_execute(&format!(
            "create database \"{name}\" encoding 'SQL_ASCII' lc_collate 'C' lc_ctype 'C' \
             template template0"
        ))
        .await
        .unwrap();
    let db = format!("{}/{name}", services().pg.rsplit_once('/').unwrap().0);
    let prefix = unique("sqlascii");
    let topic = format!("{prefix}.order");
    create_topic(&services().kafka, &topic, 1).await;
    let config = kafka(&db, &prefix).route("key", "${aggregateid}").to_string();
    migrate(&config).await;
    let client = connect(&db).await;
    client
        .batch_execute(
            "insert into outbox (id, aggregatetype, aggregateid, type, payload) values \
             (gen_random_uuid(), 'order', E'caf\\xe9', 'T', '{}'), \
             (gen_random_uuid(), 'order', 'good', 'T', '{}')",
        )
        .await
        .unwrap();
    let relay = Relay::spawn(&config);
    let client = &client;
    drained(client, "the outbox to drain", 60).await;
    let got = records(&topic).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].key.as_deref(), Some("good"));
    let row = client
        .query_one("select reason, fields->>'aggregateid' from outbox_relay.dead_letters", &[])
        .await
        .unwrap();
    let (reason, kept): (String, String) = (row.get(0), row.get(1));
    assert!(reason.contains("column \"aggregateid\" is not valid UTF-8"), "{reason}");
    assert_eq!(kept, "\\x636166e9", "kept losslessly as hex");
    stop(relay).await;
}

/// A replication connection that silently stops delivering (no FIN, no RST: a dead NAT entry,
/// a cable pulled somewhere) is given up within the server's `wal_sender_timeout` and opened
/// again; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_replication_connection_is_reopened() {
    let db = fresh_database("halfopen").await;
    let name = db.rsplit('/').next().unwrap().to_owned();
    let server = services().pg.split('@').nth(1).unwrap().split('/').next().unwrap().to_owned();
    let proxy = support::proxy::Proxy::start(&server).await;
    // Plaintext, so the proxy can tell the replication connection by its startup message.
    let via_proxy = format!("postgres://postgres@{}/{name}?sslmode=disable", proxy.address());
    let (slot, prefix) = (unique("slot"), unique("halfopen"));
    let topic = format!("{prefix}.order");
    create_topic(&services().kafka, &topic, 1).await;
    let config = wal(kafka(&via_proxy, &prefix), &slot).pipeline("on_poison", "halt").to_string();
    migrate(&config).await;
    let client = connect(&db).await;
    client
        .batch_execute(&format!("alter database \"{name}\" set wal_sender_timeout = '5s'"))
        .await
        .unwrap();
    let insert = "insert into outbox (id, aggregatetype, aggregateid, type, payload) \
                  values (gen_random_uuid(), 'order', 'k', 'T', '{}')";
    client.execute(insert, &[]).await.unwrap();
    let relay = Relay::spawn(&config);
    let topic_ref = &topic;
    wait_for("the first entry", Duration::from_secs(60), || async move {
        records(topic_ref).await.len() == 1
    })
    .await;

    assert_eq!(proxy.freeze_replication(), 1, "one replication connection");
    for _ in 0..4 {
        client.execute(insert, &[]).await.unwrap();
    }
    wait_for("the entries after the freeze", Duration::from_secs(60), || async move {
        records(topic_ref).await.len() == 5
    })
    .await;
    assert!(
        relay.log().contains("the replication stream delivered nothing for"),
        "{}",
        relay.log()
    );
    stop(relay).await;
    drop(proxy);
    drop_slot(&slot).await;
}

/// A RabbitMQ publish that timed out may still be on its way: earlier messages sit whole in
/// the socket's buffers (and lapin holds the frames of the rest). The connection is frozen (by
/// a proxy) while 50 MB of entries go out, more than the socket buffers hold, for longer than
/// the publish timeout, then let go. No copy goes out on another connection before that one has
/// closed, so an unmarked original never lands after its marked re-send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_publish_that_timed_out_never_lands_after_its_resend() {
    let db = fresh_database("pubtimeout").await;
    let prefix = unique("pubtimeout");
    let amqp = services().amqp;
    let (user_info, rest) = amqp.split_once('@').unwrap();
    let (server, vhost) = rest.split_once('/').unwrap_or((rest, ""));
    let proxy = support::proxy::Proxy::start(server).await;
    let via_proxy = format!("{user_info}@{}/{vhost}", proxy.address());
    let sink = RelayConfig::rabbitmq_at(&db, &via_proxy, &prefix)
        .sink("connect_timeout", "2s")
        .topology(&prefix, "direct", &[&prefix], "k");
    let config =
        relay(sink).route("key", "${aggregateid}").pipeline("on_poison", "halt").to_string();
    migrate(&config).await;
    let client = connect(&db).await;
    client.execute(INSERT_ONE, &[]).await.unwrap();
    let mut relay = Relay::spawn(&config);
    let client = &client;
    drained(client, "the first entry", 60).await;

    assert_eq!(proxy.freeze_all(), 1, "one RabbitMQ connection");
    insert_blobs(client, 100, 512).await;
    let relay_ref = &relay;
    wait_for("a publish to time out", Duration::from_secs(60), || async move {
        relay_ref.log().contains("RabbitMQ did not answer the publish of message")
    })
    .await;
    // Long enough for several retries: without the wait for the close, the re-sends would go
    // out on a new connection now, and land before what the frozen one still holds.
    tokio::time::sleep(Duration::from_secs(8)).await;
    proxy.thaw();
    drained(client, "the 100 entries", 120).await;
    assert!(relay.running(), "{}", relay.log());
    stop(relay).await;

    let deliveries = drain(&services().amqp, &prefix).await;
    let mut marked_seen = std::collections::HashSet::new();
    let mut late = Vec::new();
    for delivery in &deliveries {
        let id = delivery.message_id.clone().expect("message_id");
        if delivery.marked() {
            marked_seen.insert(id);
        } else if marked_seen.contains(&id) {
            late.push(id);
        }
    }
    let ids: std::collections::HashSet<_> = deliveries.iter().map(|d| &d.message_id).collect();
    assert_eq!(ids.len(), 101, "every entry arrived");
    assert!(late.is_empty(), "unmarked originals landed after their marked re-sends: {late:?}");
    println!(
        "publish timeout: {} deliveries of 101 entries, {} marked re-sends, none overtaken",
        deliveries.len(),
        deliveries.iter().filter(|d| d.marked()).count()
    );
}

/// Large payloads: what is read ahead is bounded in bytes, not only in entries. 240 entries of
/// 2 MB (480 MB) wait in the outbox; with the defaults (batches of 1 000 entries, 64 MiB in
/// flight) the relay holds a few batches of at most 16 MiB each, not the backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_payloads_are_read_in_bounded_memory() {
    large_payloads_in_bounded_memory("large", |config, _| config).await;
}

/// The same through WAL tailing: the 240 entries are one transaction the server sends at once,
/// and what the relay reads ahead of its batches is bounded in bytes too (a quarter of the
/// in-flight budget), so the socket waits instead of the backlog landing in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_payloads_are_read_in_bounded_memory_from_the_wal() {
    large_payloads_in_bounded_memory("largewal", wal).await;
}

async fn large_payloads_in_bounded_memory(
    name: &str,
    source: fn(RelayConfig, &str) -> RelayConfig,
) {
    let db = fresh_database(name).await;
    let (slot, prefix) = (unique("slot"), unique(name));
    let config = source(rabbitmq(&db, &prefix, "k"), &slot)
        .route("key", "${aggregateid}")
        .pipeline("on_poison", "halt")
        .to_string();
    migrate(&config).await;
    let client = connect(&db).await;
    insert_blobs(&client, 240, 1953).await;
    let relay = Relay::spawn(&config);
    let client = &client;
    drained(client, "480 MB to drain", 180).await;
    let peak_kib = relay.peak_rss_kib();
    println!("{name}: 240 × 2 MB entries: peak relay RSS {} MiB", peak_kib / 1024);
    assert_eq!(support::rabbit::ready(&services().amqp, &prefix).await, 240);
    assert!(peak_kib < 320 * 1024, "peak RSS {peak_kib} KiB is over 320 MiB");
    stop(relay).await;
    support::rabbit::drain(&services().amqp, &prefix).await;
    if config.contains("mode = \"wal\"") {
        drop_slot(&slot).await;
    }
}

/// A server that turned read-only (a primary demoted in a failover, say) is waited for, not a
/// reason to halt: the relay's sessions ask for a read-write server and try again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_turned_read_only_is_waited_for() {
    let db = fresh_database("readonly").await;
    let name = db.rsplit('/').next().unwrap().to_owned();
    let prefix = unique("readonly");
    let topic = format!("{prefix}.order");
    create_topic(&services().kafka, &topic, 1).await;
    let config = kafka(&db, &prefix).pipeline("on_poison", "halt").to_string();
    migrate(&config).await;
    let client = connect(&db).await;
    let insert = "insert into outbox (id, aggregatetype, aggregateid, type, payload) \
                  select gen_random_uuid(), 'order', 'k', 'T', '{}' from generate_series(1, 3)";
    client.execute(insert, &[]).await.unwrap();
    let mut relay = Relay::spawn(&config);
    let client = &client;
    let drained = || async move { count(client, "select count(*) from outbox").await == 0 };
    wait_for("the first rows", Duration::from_secs(60), drained).await;

    // New sessions of this database are read-only; the relay's are cut.
    let admin = connect(&services().pg).await;
    admin
        .batch_execute(&format!("alter database \"{name}\" set default_transaction_read_only = on"))
        .await
        .unwrap();
    admin
        .execute(
            "select pg_terminate_backend(pid) from pg_stat_activity \
             where datname = $1 and application_name like 'outbox-relay%'",
            &[&name],
        )
        .await
        .unwrap();
    client.execute(insert, &[]).await.unwrap(); // this session predates the change
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(relay.running(), "a read-only server is waited for:\n{}", relay.log());
    assert!(relay.log().contains("starting again"), "it noticed:\n{}", relay.log());
    assert_eq!(count(client, "select count(*) from outbox").await, 3);

    admin
        .batch_execute(&format!("alter database \"{name}\" reset default_transaction_read_only"))
        .await
        .unwrap();
    wait_for("the rows written meanwhile", Duration::from_secs(60), drained).await;
    assert_eq!(records(&topic).await.len(), 6);
    stop(relay).await;
}
