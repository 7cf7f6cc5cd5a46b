//! WAL prerequisites fail loudly and explain themselves: wal_level, a missing or invalidated
//! slot, a slot held by another process.

use crate::support;

use std::process::Stdio;
use std::time::Duration;

use support::cluster::Cluster;
use support::config::RelayConfig;
use support::kafka::create_topic;
use support::pg::{connect, count, fresh_database};
use support::relay::{command, migrate, Relay};
use support::{services, unique, wait_for};

fn config(db: &str, slot: &str, prefix: &str) -> String {
    RelayConfig::kafka(db, prefix).wal(slot).to_string()
}

#[tokio::test]
async fn wal_level_replica_is_explained() {
    let cluster = Cluster::start("wal_level = replica").await;
    let config = config(&cluster.url("postgres"), "s", "walrep");
    let out = command(&config, &["migrate"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.contains("wal_level is \"replica\"; WAL tailing needs wal_level = logical"),
        "{}",
        out.stderr
    );
    let out = command(&config, &["check"]).await;
    assert!(out.stdout.contains("[FAIL] wal_level: wal_level is \"replica\""), "{}", out.stdout);
    let out = command(&config, &["run"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.contains("set it in postgresql.conf and restart PostgreSQL"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn a_missing_slot_is_never_created_by_run() {
    let db = fresh_database("wal_noslot").await;
    let slot = unique("slot");
    migrate(&config(&db, &slot, "noslot")).await;
    let other = config(&db, "never_created", "noslot");
    let out = command(&other, &["run"]).await;
    assert_eq!(out.status.code(), Some(3));
    assert!(
        out.stderr.contains(
            "replication slot \"never_created\" does not exist: run `outbox-relay migrate`"
        ),
        "{}",
        out.stderr
    );
    let admin = connect(&services().pg).await;
    assert_eq!(
        count(
            &admin,
            "select count(*) from pg_replication_slots where slot_name = 'never_created'"
        )
        .await,
        0
    );
    let out = command(&other, &["check"]).await;
    assert!(out.stdout.contains("[FAIL] replication slot"), "{}", out.stdout);
    let _ = admin.execute("select pg_drop_replication_slot($1)", &[&slot]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_slot_halts_with_what_happened_and_how_to_recover() {
    let cluster =
        Cluster::start("wal_level = logical\nmax_slot_wal_keep_size = 1MB\nmax_wal_size = 32MB")
            .await;
    let db = cluster.url("postgres");
    let config = config(&db, "doomed", "walinv");
    migrate(&config).await;
    let client = connect(&db).await;
    // Write far more WAL than the slot may keep, and checkpoint: the slot is invalidated.
    let client = &client;
    wait_for("the slot to be invalidated", Duration::from_secs(120), || async move {
        client
            .batch_execute(
                "create table if not exists filler (s text); \
                 insert into filler select repeat('x', 2000) from generate_series(1, 5000); \
                 select pg_switch_wal(); checkpoint;",
            )
            .await
            .unwrap();
        client
            .query_one(
                "select wal_status = 'lost' from pg_replication_slots where slot_name = 'doomed'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
    })
    .await;
    let out = command(&config, &["run"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.contains("replication slot \"doomed\" was invalidated")
            && out.stderr.contains("will not re-create the slot"),
        "{}",
        out.stderr
    );
    let out = command(&config, &["check"]).await;
    assert!(
        out.stdout.contains("[FAIL] replication slot") && out.stdout.contains("invalidated"),
        "{}",
        out.stdout
    );
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_held_by_another_process_is_reported_and_taken_when_freed() {
    let db = fresh_database("wal_busy").await;
    let (slot, prefix) = (unique("slot"), unique("busy"));
    create_topic(&services().kafka, &format!("{prefix}.order"), 1).await;
    let config = config(&db, &slot, &prefix);
    migrate(&config).await;
    let dbname = db.rsplit('/').next().unwrap().to_owned();
    let mut holder = tokio::process::Command::new(services().pg_bin.join("pg_recvlogical"))
        .args(["-h", "127.0.0.1", "-p", "55432", "-U", "postgres", "-d", &dbname, "--slot", &slot])
        .args([
            "--start",
            "-f",
            "/dev/null",
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=outbox_relay",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let admin = connect(&services().pg).await;
    let (admin, slot_ref) = (&admin, &slot);
    wait_for("pg_recvlogical to hold the slot", Duration::from_secs(30), || async move {
        admin
            .query_one("select coalesce(bool_or(active), false) from pg_replication_slots where slot_name = $1", &[slot_ref])
            .await
            .unwrap()
            .get::<_, bool>(0)
    })
    .await;

    let client = connect(&db).await;
    client
        .execute(
            "insert into outbox (id, aggregatetype, aggregateid, type, payload) \
             values (gen_random_uuid(), 'order', 'k', 'T', '{}')",
            &[],
        )
        .await
        .unwrap();
    let mut relay = Relay::spawn(&config);
    let relay_ref = &relay;
    wait_for("the relay to report the busy slot", Duration::from_secs(30), || async move {
        relay_ref.log().contains("is in use by another process (pid")
    })
    .await;
    assert_ne!(relay.http_get("/readyz").await.as_deref(), Some("running\n"));
    assert_eq!(count(&client, "select count(*) from outbox").await, 1);

    holder.kill().await.unwrap();
    let client = &client;
    wait_for("the relay to take the slot and publish", Duration::from_secs(60), || async move {
        count(client, "select count(*) from outbox").await == 0
    })
    .await;
    relay.terminate();
    assert!(relay.wait(Duration::from_secs(30)).await.success());
    let _ = admin.execute("select pg_drop_replication_slot($1)", &[&slot]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_logical_message_halts_naming_it() {
    let db = fresh_database("wal_badmsg").await;
    let (slot, prefix) = (unique("slot"), unique("badmsg"));
    create_topic(&services().kafka, &format!("{prefix}.order"), 1).await;
    let config = config(&db, &slot, &prefix);
    migrate(&config).await;
    let client = connect(&db).await;
    let lsn: String = client
        .query_one("select pg_logical_emit_message(true, 'outbox', 'this is not json')::text", &[])
        .await
        .unwrap()
        .get(0);
    let mut relay = Relay::spawn(&config);
    let status = relay.wait(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(1));
    let log = relay.log();
    assert!(
        log.contains("halted on poison message: entry \"lsn:")
            && log.contains("the logical message is not a JSON envelope"),
        "the halt names the message (emitted before {lsn}) and why:\n{log}"
    );
    let admin = connect(&services().pg).await;
    let _ = admin.execute("select pg_drop_replication_slot($1)", &[&slot]).await;
}
