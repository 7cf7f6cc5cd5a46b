//! What operators run next to the relay: the Prometheus alert rules (checked and unit-tested by
//! `promtool`), the Grafana dashboard's queries, and the metrics both rely on, read from a real
//! relay.

use crate::support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::config::RelayConfig;
use support::kafka::{create_topic, read_all};
use support::pg::{connect, fresh_database};
use support::relay::{command, migrate, Relay};
use support::{services, unique, wait_for};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(path)
}

/// `promtool args…`; promtool comes with Debian's `prometheus` package (scripts/services.sh
/// installs it).
fn promtool(args: &[&str], dir: &Path) -> String {
    let out = std::process::Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool (Debian package `prometheus`; scripts/services.sh up installs it)");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = deploy("prometheus");
    let checked = promtool(&["check", "rules", "outbox-relay.rules.yml"], &dir);
    assert!(checked.contains("SUCCESS: 11 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "outbox-relay.rules.test.yml"], &dir);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// The dashboard's queries, with `$job` filled in, as recording rules: promtool parses each.
#[test]
fn the_dashboard_queries_are_valid_promql() {
    let exprs = dashboard_queries();
    assert!(exprs.len() >= 10, "{exprs:?}");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let expr = expr.replace("$job", "outbox-relay").replace('\'', "''");
        rules.push_str(&format!("      - record: dashboard:query_{i}\n        expr: '{expr}'\n"));
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dashboard.rules.yml"), rules).unwrap();
    let checked = promtool(&["check", "rules", "dashboard.rules.yml"], dir.path());
    assert!(checked.contains(&format!("SUCCESS: {} rules found", exprs.len())), "{checked}");
}

fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(deploy("grafana/outbox-relay.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let panels = dashboard["panels"].as_array().expect("panels");
    let targets = panels.iter().flat_map(|p| p["targets"].as_array().expect("targets"));
    targets.map(|t| t["expr"].as_str().expect("expr").to_owned()).collect()
}

/// The `outbox_relay_*` series names a text uses (histogram series by their base name).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("outbox_relay_") {
        let tail = &rest[at..];
        let end =
            tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        names.insert(base.to_owned());
        rest = &tail[end..];
    }
    names
}

/// A relay tailing the WAL, scraped: every metric the rules and the dashboard use is there, and
/// the gauges read from Postgres say what Postgres says — WAL retained by the slot, distance to
/// invalidation under `max_slot_wal_keep_size`, dead letters waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_and_dashboard_use_is_exported_with_postgres_values() {
    let db = fresh_database("metrics").await;
    let (slot, prefix) = (unique("slot"), unique("metrics"));
    let topic = format!("{prefix}.order");
    create_topic(&services().kafka, &topic, 1).await;
    let config = RelayConfig::kafka(&db, &prefix)
        .pipeline("on_poison", "dead-letter")
        .wal(&slot)
        .source("heartbeat_interval", "1s")
        .to_string();
    migrate(&config).await;
    let admin = connect(&services().pg).await;
    admin.batch_execute("alter system set max_slot_wal_keep_size = '10GB'").await.unwrap();
    admin.batch_execute("select pg_reload_conf()").await.unwrap();

    let client = connect(&db).await;
    let envelope = |id: &str, headers: &str| {
        format!(
            r#"{{"id": "{id}", "aggregatetype": "order", "aggregateid": "k", "type": "T",
                "payload": {{}}, "headers": {{{headers}}}}}"#
        )
    };
    for message in [envelope("good", ""), envelope("poison", r#""outbox-pipeline": "x""#)] {
        client
            .execute("select pg_logical_emit_message(true, 'outbox', $1)", &[&message])
            .await
            .unwrap();
    }
    let running = Relay::spawn(&config);
    let relay = &running;
    wait_for("the dead letter to be counted", Duration::from_secs(60), || async move {
        relay.metric("outbox_relay_dead_letters_waiting").await == Some(1.0)
    })
    .await;
    let scraped = relay.http_get("/metrics").await.expect("scraped");

    let mut used = metric_names(
        &std::fs::read_to_string(deploy("prometheus/outbox-relay.rules.yml")).unwrap(),
    );
    used.extend(dashboard_queries().iter().flat_map(|q| metric_names(q)));
    assert!(used.len() >= 12, "{used:?}");
    // Series only: a counter's HELP line names it without `_total`, which no query matches.
    let samples: Vec<&str> = scraped.lines().filter(|l| !l.starts_with('#')).collect();
    let exported = metric_names(&samples.join("\n"));
    let missing: Vec<_> = used.difference(&exported).collect();
    assert!(missing.is_empty(), "used but not exported: {missing:?}\n{scraped}");

    let value = |name: &str| {
        let line = scraped.lines().find(|l| l.starts_with(&format!("{name} "))).expect(name);
        line.rsplit(' ').next().unwrap().parse::<f64>().unwrap()
    };
    let retained = value("outbox_relay_slot_wal_retained_bytes");
    let safe = value("outbox_relay_slot_safe_wal_bytes");
    assert!(retained > 0.0, "the slot keeps some WAL: {retained}");
    assert!(value("outbox_relay_slot_lag_bytes") >= 0.0);
    // About 10 GB: Postgres counts from the start of the oldest segment kept.
    let gib = 1024.0 * 1024.0 * 1024.0;
    assert!(safe > 9.0 * gib && safe < 11.0 * gib, "about max_slot_wal_keep_size: {safe}");
    assert!(value("outbox_relay_start_time_seconds") > 1.7e9);
    let got: Vec<_> = read_all(&services().kafka, &topic).await.into_iter().flatten().collect();
    assert_eq!(got.len(), 1, "the good entry went out: {got:?}");

    // `status --json` says the same, in its documented fields.
    let out = command(&config, &["status", "--json"]).await;
    assert!(out.status.success(), "{out:?}");
    let status: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(status["pipeline"], "default");
    assert_eq!((status["source"].as_str(), status["sink"].as_str()), (Some("wal"), Some("kafka")));
    assert_eq!(status["leader"]["application_name"], "outbox-relay:default", "{status:#}");
    assert_eq!(status["recorded"]["state"], "running", "{status:#}");
    let slot_json = &status["slot"];
    assert_eq!(
        (&slot_json["name"], &slot_json["exists"]),
        (&serde_json::json!(slot), &serde_json::json!(true))
    );
    assert_eq!(slot_json["active"], true, "{status:#}");
    assert!(slot_json["retained_bytes"].as_i64().unwrap() > 0, "{status:#}");
    let safe_json = slot_json["safe_wal_bytes"].as_f64().unwrap();
    assert!(safe_json > 9.0 * gib && safe_json < 11.0 * gib, "{status:#}");
    assert_eq!(status["outbox"]["rows"], 0, "{status:#}");
    assert_eq!(status["dead_letters"]["live"], 1, "{status:#}");
    assert_eq!(status["dead_letters"]["keys"], 1, "{status:#}");
    let text = command(&config, &["status"]).await.stdout;
    assert!(text.contains("bytes from invalidation (max_slot_wal_keep_size)"), "{text}");
    println!("status --json:\n{}", out.stdout);

    admin.batch_execute("alter system reset max_slot_wal_keep_size").await.unwrap();
    admin.batch_execute("select pg_reload_conf()").await.unwrap();
    wait_for("the unlimited slot to show as -1", Duration::from_secs(30), || async move {
        relay.metric("outbox_relay_slot_safe_wal_bytes").await == Some(-1.0)
    })
    .await;
    println!("scraped /metrics:\n{scraped}");
    drop(running);
    let slot = &slot;
    wait_for("the slot to be dropped", Duration::from_secs(30), || async move {
        let admin = connect(&services().pg).await;
        admin.execute("select pg_drop_replication_slot($1)", &[slot]).await.is_ok()
    })
    .await;
}

/// Exit codes a supervisor can act on: 2 for a wrong configuration, 3 for a database that
/// needs `outbox-relay migrate`, 1 for a halt or a failed check, 0 for a clean stop (the
/// SIGTERM tests of `wal` and `crash` check that one, the halt tests of `hardening` code 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_tell_a_wrong_config_from_a_database_to_migrate() {
    let db = fresh_database("exits").await;
    let prefix = unique("exits");
    let configured = RelayConfig::kafka(&db, &prefix).sink("metadata_timeout", "2s");
    let config = configured.to_string();
    let code = |config: String, args: &'static [&'static str]| async move {
        let out = command(&config, args).await;
        (out.status.code(), out.stderr)
    };

    let many = configured.clone().pipeline("max_in_flight", "many").to_string();
    let (status, stderr) = code(many, &["run"]).await;
    assert_eq!(status, Some(2), "a config that does not parse: {stderr}");
    assert!(stderr.contains("max_in_flight"), "{stderr}");

    let (status, stderr) = code(config.clone(), &["run"]).await;
    assert_eq!(status, Some(3), "not migrated: {stderr}");
    assert!(stderr.contains("outbox-relay migrate"), "{stderr}");

    migrate(&config).await;
    let unknown = configured.clone().route("key", "${nope}").to_string();
    let (status, stderr) = code(unknown, &["run"]).await;
    assert_eq!(status, Some(2), "a route over a column the table lacks: {stderr}");

    let unreachable = configured.sink("brokers", "127.0.0.1:1").to_string();
    let (status, stderr) = code(unreachable, &["check"]).await;
    assert_eq!(status, Some(1), "a failed check: {stderr}");
}

fn doctor_config(sink: RelayConfig) -> RelayConfig {
    sink.pipeline("retry_max_backoff", "1s")
}

/// `doctor` on four pipelines: a healthy one, one whose broker is down, a halted one, and one
/// whose slot no relay reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_explains_a_stopped_broker_a_halt_and_an_inactive_slot() {
    let insert = "insert into outbox (id, aggregatetype, aggregateid, type, payload) \
                  values (gen_random_uuid(), 'order', 'k', 'T', '{}')";

    // Healthy: a relay runs and the outbox drains.
    let db = fresh_database("doc_ok").await;
    let prefix = unique("docok");
    create_topic(&services().kafka, &format!("{prefix}.order"), 1).await;
    let config = doctor_config(RelayConfig::kafka(&db, &prefix)).to_string();
    migrate(&config).await;
    let client = connect(&db).await;
    client.execute(insert, &[]).await.unwrap();
    let relay = Relay::spawn(&config);
    let client = &client;
    wait_for("the outbox to drain", Duration::from_secs(60), || async move {
        support::pg::count(client, "select count(*) from outbox").await == 0
    })
    .await;
    let out = command(&config, &["doctor"]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("healthy") && out.stdout.contains("a relay leads"), "{out:?}");
    println!("doctor, healthy:\n{}", out.stdout);
    drop(relay);

    // The broker is down: the relay retries, and `check` cannot reach it.
    let db = fresh_database("doc_broker").await;
    let prefix = unique("docbroker");
    let port = support::free_port();
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let rabbit = RelayConfig::rabbitmq_at(&db, &url, &prefix).sink("connect_timeout", "1s");
    let config = doctor_config(rabbit).to_string();
    migrate(&config).await;
    connect(&db).await.execute(insert, &[]).await.unwrap();
    let relay = Relay::spawn(&config);
    let config_ref = &config;
    wait_for("the relay to retry", Duration::from_secs(60), || async move {
        let out = command(config_ref, &["status", "--json"]).await.stdout;
        serde_json::from_str::<serde_json::Value>(&out)
            .is_ok_and(|status| status["recorded"]["state"] == "retrying")
    })
    .await;
    let out = command(&config, &["doctor"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.contains("The relay has been retrying since"), "{}", out.stdout);
    assert!(out.stdout.contains("`check` fails on rabbitmq: cannot connect"), "{}", out.stdout);
    println!("doctor, broker down:\n{}", out.stdout);
    drop(relay);

    // Halted on a poison entry (a NULL shard key).
    let db = fresh_database("doc_halt").await;
    let prefix = unique("dochalt");
    let config =
        doctor_config(RelayConfig::kafka(&db, &prefix)).route("key", "${tenant}").to_string();
    migrate(&config).await;
    let client = connect(&db).await;
    client.batch_execute("alter table outbox add column tenant text").await.unwrap();
    client.execute(insert, &[]).await.unwrap();
    let mut relay = Relay::spawn(&config);
    assert_eq!(relay.wait(Duration::from_secs(60)).await.code(), Some(1), "{}", relay.log());
    let out = command(&config, &["doctor"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.contains("The relay halted at"), "{}", out.stdout);
    assert!(out.stdout.contains("halted on poison message: entry"), "{}", out.stdout);
    assert!(out.stdout.contains("1 row(s) wait in public.outbox"), "{}", out.stdout);
    println!("doctor, halted:\n{}", out.stdout);

    // A slot no relay reads holds WAL.
    let db = fresh_database("doc_slot").await;
    let (slot, prefix) = (unique("slot"), unique("docslot"));
    let config = doctor_config(RelayConfig::kafka(&db, &prefix).wal(&slot)).to_string();
    migrate(&config).await;
    connect(&db).await.execute(insert, &[]).await.unwrap();
    let out = command(&config, &["doctor"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.contains("No relay has ever run this pipeline"), "{}", out.stdout);
    assert!(out.stdout.contains("is not streaming and keeps"), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("pg_drop_replication_slot('{slot}')")), "{}", out.stdout);
    println!("doctor, inactive slot:\n{}", out.stdout);
    let admin = connect(&services().pg).await;
    admin.execute("select pg_drop_replication_slot($1)", &[&slot]).await.unwrap();
}

/// The AsyncAPI document describes what the relay really sends: the official parser
/// (`@asyncapi/parser`) accepts it, its messages are the declared types plus those observed in
/// the outbox, and every record the relay then publishes carries each header its message
/// requires and none it does not declare.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_asyncapi_document_parses_and_describes_the_records_the_relay_sends() {
    let db = fresh_database("asyncapi").await;
    let prefix = unique("asyncapi");
    let topic = format!("{prefix}.order");
    create_topic(&services().kafka, &topic, 1).await;
    let schemas = tempfile::tempdir().unwrap();
    let schema = schemas.path().join("order-created.json");
    std::fs::write(
        &schema,
        r#"{"type": "object", "required": ["total"], "properties": {"total": {"type": "number"}}}"#,
    )
    .unwrap();
    let schema = schema.display().to_string();
    let config = RelayConfig::kafka(&db, &prefix)
        .route("traceparent", "${aggregateid}")
        .set("route.cloudevents", "mode", "binary")
        .set("route.cloudevents", "source", "/orders")
        .set("route.cloudevents", "time", "${created_at}")
        .set("asyncapi", "title", "Orders")
        .push(
            "asyncapi.messages",
            [("type", "OrderCreated"), ("summary", "An order was placed."), ("payload", &schema)],
        )
        .to_string();
    migrate(&config).await;
    let client = connect(&db).await;
    client
        .batch_execute(
            "insert into outbox (id, aggregatetype, aggregateid, type, payload) values
               (gen_random_uuid(), 'order', 'o-1', 'OrderCreated', '{\"total\": 1}'),
               (gen_random_uuid(), 'order', 'o-1', 'OrderPaid', '{}')",
        )
        .await
        .unwrap();

    let out = command(&config, &["asyncapi", "--observe"]).await;
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    let document: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    let summary: serde_json::Value =
        serde_json::from_str(&support::js::run("asyncapi.mjs", out.stdout.as_bytes())).unwrap();
    assert_eq!(summary["version"], "3.0.0");
    assert_eq!(summary["channels"][0]["address"], format!("{prefix}.{{aggregatetype}}"));
    assert_eq!(
        summary["channels"][0]["messages"],
        serde_json::json!(["OrderCreated", "OrderPaid"])
    );
    assert_eq!(summary["operations"][0]["action"], "send");
    let created = &document["components"]["messages"]["OrderCreated"];
    assert_eq!(created["payload"]["required"], serde_json::json!(["total"]), "the declared schema");
    assert_eq!(created["headers"]["properties"]["ce_type"]["const"], "OrderCreated");

    // What the relay then sends matches the document, header by header.
    let relay = Relay::spawn(&config);
    wait_for("the outbox to drain", Duration::from_secs(60), || async {
        support::pg::count(&client, "select count(*) from outbox").await == 0
    })
    .await;
    drop(relay);
    let records: Vec<_> = read_all(&services().kafka, &topic).await.into_iter().flatten().collect();
    assert_eq!(records.len(), 2);
    for record in &records {
        let kind = record.header("type").unwrap();
        let headers = &document["components"]["messages"][kind]["headers"];
        let names: BTreeSet<&str> = record.headers.iter().map(|(n, _)| n.as_str()).collect();
        let declared: BTreeSet<&str> =
            headers["properties"].as_object().unwrap().keys().map(String::as_str).collect();
        let required: BTreeSet<&str> =
            headers["required"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
        assert!(names.is_subset(&declared), "{kind}: sent {names:?}, declared {declared:?}");
        assert!(required.is_subset(&names), "{kind}: sent {names:?}, required {required:?}");
    }

    // A payload schema that is not JSON is named, as a configuration error.
    std::fs::write(&schema, "{ nope").unwrap();
    let out = command(&config, &["asyncapi"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("order-created.json") && out.stderr.contains("not JSON"),
        "{}",
        out.stderr
    );
}

/// `n` entries over four keys, `created_at` one minute apart from 2026-01-01 00:00 UTC (seq 1 at
/// 00:01).
async fn minute_apart(client: &tokio_postgres::Client, n: i32) {
    client
        .execute(
            "insert into outbox (id, aggregatetype, aggregateid, type, payload) \
             select gen_random_uuid(), 'order', 'k' || i % 4, 'OrderCreated', \
                    jsonb_build_object('n', i) from generate_series(1, $1) i",
            &[&n],
        )
        .await
        .unwrap();
    client
        .batch_execute(
            "update outbox set created_at = timestamptz '2026-01-01 00:00:00+00' \
             + seq * interval '1 minute'",
        )
        .await
        .unwrap();
}

/// Polling with `after_publish = "mark"` on Kafka with transactions: `replay` counts a time
/// range (`--dry-run`), then sends it again in seq order, marked, beside the running relay —
/// whose transactional producer it must not fence — and refuses what it cannot do, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_resends_a_time_range_in_order_marked_beside_the_running_relay() {
    let db = fresh_database("replay_kafka").await;
    let prefix = unique("replaykafka");
    let topic = format!("{prefix}.order");
    create_topic(&services().kafka, &topic, 1).await;
    let config = RelayConfig::kafka(&db, &prefix)
        .poll()
        .source("after_publish", "mark")
        .source("poll_interval", "100ms")
        .delivery("transactional")
        .to_string();
    migrate(&config).await;
    let client = connect(&db).await;
    minute_apart(&client, 20).await;
    let relay = Relay::spawn(&config);
    let unpublished = "select count(*) from outbox where published_at is null";
    wait_for("every row marked", Duration::from_secs(60), || async {
        support::pg::count(&client, unpublished).await == 0
    })
    .await;

    let range = ["--from", "2026-01-01T00:05:00Z", "--to", "2026-01-01 00:12:00+00"];
    let dry = command(&config, &[&["replay"][..], &range, &["--dry-run"]].concat()).await;
    assert!(dry.status.success(), "{}", dry.stderr);
    assert!(
        dry.stdout.contains("would replay 8 entries") && dry.stdout.contains("seq 5..12"),
        "{}",
        dry.stdout
    );
    let out = command(&config, &[&["replay"][..], &range, &["--label", "fix-42"]].concat()).await;
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("replayed 8 of 8 entries"), "{}", out.stdout);
    assert!(out.stderr.contains("replay: 8 of 8 entries confirmed (100%)"), "{}", out.stderr);

    // The relay was not fenced: a new entry still goes out, after the replayed ones.
    client
        .execute(
            "insert into outbox (id, aggregatetype, aggregateid, type, payload) \
             values (gen_random_uuid(), 'order', 'k0', 'Later', '{}')",
            &[],
        )
        .await
        .unwrap();
    wait_for("the later row marked", Duration::from_secs(60), || async {
        support::pg::count(&client, unpublished).await == 0
    })
    .await;
    drop(relay);
    let records: Vec<_> = read_all(&services().kafka, &topic).await.into_iter().flatten().collect();
    assert_eq!(records.len(), 29, "20 + 8 replayed + 1");
    let positions = |replayed: bool| -> Vec<String> {
        let marked = |r: &&support::kafka::Record| r.header("outbox-replay").is_some() == replayed;
        records.iter().filter(marked).map(|r| r.header("outbox-position").unwrap().into()).collect()
    };
    let expected: Vec<String> = (5..=12).map(|seq| format!("poll:{seq}")).collect();
    assert_eq!(positions(true), expected, "the range, in seq order");
    assert_eq!(positions(false).len(), 21);
    let original = |position: &str| {
        records.iter().find(|r| r.header("outbox-position") == Some(position)).unwrap()
    };
    for replayed in records.iter().filter(|r| r.header("outbox-replay").is_some()) {
        assert_eq!(replayed.header("outbox-replay"), Some("fix-42"));
        let first = original(replayed.header("outbox-position").unwrap());
        assert_eq!(
            (first.header("id"), &first.payload),
            (replayed.header("id"), &replayed.payload)
        );
    }
    assert_eq!(records.last().unwrap().header("type"), Some("Later"));

    // On a terminal the progress is a bar redrawn in place (util-linux `script` gives it one).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.toml");
    std::fs::write(&file, &config).unwrap();
    let line = format!(
        "{} --config {} replay --from poll:1 --to poll:3 --label tty",
        support::relay::bin(),
        file.display()
    );
    let tty = std::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("script (util-linux)");
    let shown = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{shown}");
    assert!(shown.contains("\r[") && shown.contains("3/3 entries 100%"), "{shown:?}");
    assert!(!shown.contains("replay: 3 of 3 entries confirmed"), "no plain lines on a terminal");

    // What it cannot do, it says, with exit code 2.
    for (args, says) in [
        (&["--from", "wal:0/16B3748:0"][..], "not kept in the outbox table"),
        (&["--from", "last tuesday"][..], "is neither a time"),
        (&["--from", "poll:x"][..], "whole number"),
    ] {
        let out = command(&config, &[&["replay"][..], args].concat()).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
    }
    let deleting = config.replace("after_publish = \"mark\"", "after_publish = \"delete\"");
    let out = command(&deleting, &["replay", "--from", "poll:1"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("keeps no entries to replay"), "{}", out.stderr);
}

/// WAL tailing with `after_publish = "keep"` on RabbitMQ: `migrate` gives the kept rows a `seq`,
/// and `replay`, beside the relay, sends them again in that order, marked, with their
/// `poll:<seq>` position — only rows the relay has confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_resends_the_rows_wal_tailing_keeps_in_seq_order() {
    let db = fresh_database("replay_wal").await;
    let prefix = unique("replaywal");
    let queue = format!("{prefix}.q");
    let config = RelayConfig::rabbitmq(&db, &prefix)
        .wal(&unique("slot"))
        .source("after_publish", "keep")
        .topology(&prefix, "fanout", &[&queue], "")
        .to_string();
    migrate(&config).await;
    let client = connect(&db).await;
    minute_apart(&client, 10).await;
    let relay = Relay::spawn(&config);
    wait_for("ten acknowledged", Duration::from_secs(60), || async {
        relay.metric("outbox_relay_entries_acknowledged_total").await == Some(10.0)
    })
    .await;
    let originals = support::rabbit::drain(&services().amqp, &queue).await;

    let out = command(&config, &["replay", "--from", "poll:1"]).await;
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("replayed 10 of 10 entries"), "{}", out.stdout);

    // A kept row the relay has not confirmed is never replayed ahead of it: with the relay
    // stopped and a new row in, replay waits for it, then says why it cannot go on.
    drop(relay);
    minute_apart(&client, 1).await;
    let out = command(&config, &["replay", "--from", "poll:1", "--wait", "1s"]).await;
    assert_eq!(out.status.code(), Some(1), "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("the relay has not confirmed everything"), "{}", out.stderr);
    let replayed = support::rabbit::drain(&services().amqp, &queue).await;
    assert!(replayed.iter().all(|d| d.header("outbox-replay").is_some()));
    // Per key (a RabbitMQ lane each), in the order WAL tailing sent them, which is seq order.
    let per_key = |deliveries: &[support::rabbit::Delivery]| {
        let mut keys: std::collections::BTreeMap<String, Vec<(String, String)>> =
            Default::default();
        for d in deliveries {
            let seq = d.header("outbox-position").unwrap().to_string();
            keys.entry(d.routing_key.clone())
                .or_default()
                .push((d.message_id.clone().unwrap(), seq));
        }
        keys
    };
    let (originals, replayed) = (per_key(&originals), per_key(&replayed));
    assert_eq!(replayed.len(), 4, "{replayed:?}");
    for (key, entries) in &replayed {
        let seqs: Vec<i64> = entries
            .iter()
            .map(|(_, p)| p.strip_prefix("poll:").unwrap().parse().unwrap())
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{key}: {seqs:?}");
        let ids = |e: &[(String, String)]| e.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(entries), ids(&originals[key]), "{key}: the same entries, in WAL's order");
    }
    assert_eq!(replayed.values().map(Vec::len).sum::<usize>(), 10);
}
