//! The consumer inbox makes a handler run once per message, also when deliveries race.

use crate::support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use outbox_relay_inbox::{Inbox, InboxError, Processed};
use support::config::RelayConfig;
use support::pg::{connect, count, fresh_database};
use support::relay::migrate;

async fn inbox_database() -> String {
    let db = fresh_database("inbox").await;
    migrate(&RelayConfig::kafka(&db, "inbox").to_string()).await;
    connect(&db).await.batch_execute("create table effects (message_id text)").await.unwrap();
    db
}

/// Processes `message_id` in its own transaction; returns whether the handler ran.
async fn deliver(db: &str, inbox: &Inbox, message_id: &str, runs: &AtomicUsize) -> bool {
    let mut client = connect(db).await;
    let tx = client.transaction().await.unwrap();
    let outcome = inbox
        .process_once(&tx, message_id, async |tx| {
            runs.fetch_add(1, Ordering::SeqCst);
            tx.execute("insert into effects values ($1)", &[&message_id]).await
        })
        .await
        .unwrap();
    tx.commit().await.unwrap();
    matches!(outcome, Processed::Done(1))
}

#[tokio::test]
async fn a_redelivered_message_is_processed_once_per_consumer() {
    let db = inbox_database().await;
    let runs = AtomicUsize::new(0);
    let billing = Inbox::new("billing");
    assert!(deliver(&db, &billing, "m-1", &runs).await);
    assert!(!deliver(&db, &billing, "m-1", &runs).await, "the second delivery is skipped");
    assert!(
        deliver(&db, &Inbox::new("shipping"), "m-1", &runs).await,
        "another consumer has its own record"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    let client = connect(&db).await;
    assert_eq!(count(&client, "select count(*) from effects").await, 2);
    assert!(billing.contains(&client, "m-1").await.unwrap());
}

#[tokio::test]
async fn a_failed_handler_records_nothing_and_the_retry_runs() {
    let db = inbox_database().await;
    let inbox = Inbox::new("billing");
    let mut client = connect(&db).await;
    let tx = client.transaction().await.unwrap();
    let failed = inbox
        .process_once(&tx, "m-2", async |tx| {
            tx.execute("insert into no_such_table values (1)", &[]).await
        })
        .await;
    assert!(matches!(failed, Err(InboxError::Handler { .. })));
    tx.rollback().await.unwrap();
    let runs = AtomicUsize::new(0);
    assert!(deliver(&db, &inbox, "m-2", &runs).await, "nothing was recorded, so the retry runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_deliveries_run_the_handler_once() {
    let db = inbox_database().await;
    let runs = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (db, runs) = (db.clone(), Arc::clone(&runs));
        tasks.push(tokio::spawn(async move {
            deliver(&db, &Inbox::new("billing"), "m-3", &runs).await
        }));
    }
    let mut done = 0;
    for task in tasks {
        done += usize::from(task.await.unwrap());
    }
    assert_eq!(done, 1, "exactly one delivery processed the message");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}
