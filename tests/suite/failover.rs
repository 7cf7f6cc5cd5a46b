//! Two relays on one pipeline, Postgres the only coordinator: exactly one publishes; when the
//! leader dies (kill -9) or loses its network to Postgres (a TCP proxy cut), the standby takes
//! over within 10 s, and Kafka gets every entry exactly once across the handover. A leader cut
//! off and then back stands by.

use crate::support;

use std::time::{Duration, Instant};

use support::check::{kafka_streams, verify};
use support::config::RelayConfig;
use support::kafka::{create_topic, read_all};
use support::pg::{connect, count, fresh_database};
use support::proxy::Proxy;
use support::relay::{migrate, Relay};
use support::workload::{self, Workload};
use support::{services, unique, wait_for};

/// The longest a handover may take: from the leader's end to the standby publishing.
const HANDOVER_MAX: Duration = Duration::from_secs(10);

fn config(db: &str, prefix: &str, delivery: &str) -> String {
    RelayConfig::kafka(db, prefix)
        .pipeline("retry_max_backoff", "2s")
        .pipeline("standby_retry", "1s")
        .sink("metadata_timeout", "2s")
        .delivery(delivery)
        .to_string()
}

async fn state(relay: &Relay) -> Option<String> {
    relay.http_get("/readyz").await.map(|body| body.trim().to_owned())
}

/// How the leader is taken away.
#[derive(Clone, Copy, Debug)]
enum Loss {
    Kill9,
    /// Its Postgres connections cut, new ones refused; the process goes on.
    NetworkCut,
}

/// Leader `a` and standby `b` (same config, so the same pipeline and `transactional.id`)
/// while writers commit; `a` is lost after 1 000 messages. Returns the handover time.
async fn failover(name: &str, delivery: &str, loss: Loss) -> Duration {
    let db = fresh_database(name).await;
    let prefix = unique(name);
    let topic = format!("{prefix}.order");
    create_topic(&services().kafka, &topic, 4).await;
    let direct = config(&db, &prefix, delivery);
    migrate(&direct).await;
    // `a` reaches Postgres through a proxy the test can cut.
    let server = services().pg.split('@').nth(1).unwrap().split('/').next().unwrap().to_owned();
    let proxy = Proxy::start(&server).await;
    let database = db.rsplit('/').next().unwrap();
    let via_proxy =
        direct.replace(&db, &format!("postgres://postgres@{}/{database}", proxy.address()));

    let mut a = Relay::spawn(&via_proxy);
    let a_ref = &a;
    wait_for("a to lead", Duration::from_secs(60), || async move {
        state(a_ref).await.as_deref() == Some("running")
    })
    .await;
    let b = Relay::spawn(&direct);
    let b_ref = &b;
    wait_for("b to stand by", Duration::from_secs(60), || async move {
        state(b_ref).await.as_deref() == Some("standby")
    })
    .await;

    let workload = Workload { rows: 6_000, pace: Duration::from_millis(20), ..Workload::default() };
    let writers = tokio::spawn({
        let db = db.clone();
        async move { workload::run(&db, &workload).await }
    });
    wait_for("1 000 messages published by a", Duration::from_secs(60), || async move {
        a_ref.metric("outbox_relay_messages_published_total").await.unwrap_or(0.0) >= 1_000.0
    })
    .await;
    assert_eq!(b.metric("outbox_relay_messages_published_total").await, Some(0.0), "one publishes");

    let lost_at = Instant::now();
    match loss {
        Loss::Kill9 => a.kill9().await,
        Loss::NetworkCut => proxy.cut(),
    }
    wait_for("b to publish", HANDOVER_MAX, || async move {
        b_ref.metric("outbox_relay_messages_published_total").await.unwrap_or(0.0) > 0.0
    })
    .await;
    let handover = lost_at.elapsed();

    let committed = writers.await.unwrap();
    let client = connect(&db).await;
    let client = &client;
    wait_for("b to empty the outbox", Duration::from_secs(180), || async move {
        count(client, "select count(*) from outbox").await == 0
    })
    .await;
    let outcome =
        verify(&kafka_streams(&read_all(&services().kafka, &topic).await), &committed, false);
    assert_eq!(outcome.duplicates, 0);
    if let Loss::NetworkCut = loss {
        // Whatever the cut-off `a` still had in flight was counted above; what became of it:
        let log = a.log();
        let tail: Vec<&str> = log.lines().rev().take(3).collect();
        println!("a after the cut (running: {}): {tail:?}", a.running());
        // Back on the network, it finds b holding the pipeline and stands by.
        proxy.restore();
        let a_ref = &a;
        wait_for("a to stand by", Duration::from_secs(60), || async move {
            state(a_ref).await.as_deref() == Some("standby")
        })
        .await;
    }
    println!(
        "failover ({delivery}, {loss:?}): {} rows committed, {} messages read, 0 lost, 0 \
         duplicates, key order kept; b published {:.1} s after a was lost",
        committed.rows(),
        outcome.messages,
        handover.as_secs_f64()
    );
    let mut b = b;
    b.terminate();
    assert!(b.wait(Duration::from_secs(30)).await.success(), "{}", b.log());
    drop(a);
    handover
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_standby_takes_over_a_killed_leader_exactly_once_transactional() {
    failover("fo_kill_tx", "transactional", Loss::Kill9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_standby_takes_over_a_killed_leader_exactly_once_idempotent() {
    failover("fo_kill_idem", "idempotent", Loss::Kill9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_standby_takes_over_a_leader_cut_off_from_postgres_exactly_once() {
    failover("fo_cut_tx", "transactional", Loss::NetworkCut).await;
}
