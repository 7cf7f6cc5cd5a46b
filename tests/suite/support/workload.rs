//! The application side: concurrent writers that commit outbox rows the way real apps do, with
//! a per-key order that is known exactly.
//!
//! Each row belongs to an aggregate (`aggregateid` = key). A writer locks the aggregate's row
//! (`update aggregates ... returning version`) before inserting the outbox row, so writers of
//! one key are serialised and the payload's `version` (1, 2, 3, ... per key) is that key's
//! commit order. Some transactions are held open after their inserts while others commit (so
//! `seq` values commit out of order), and some roll back.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::pg::connect;

#[derive(Clone, Debug)]
pub struct Workload {
    pub writers: usize,
    pub rows: usize,
    pub keys: usize,
    /// Every n-th transaction is held open 20–60 ms before it commits.
    pub hold_every: usize,
    /// Every n-th transaction rolls back.
    pub rollback_every: usize,
    /// Outbox table (SQL, quoted as needed).
    pub table: String,
    /// `aggregatetype` of every row.
    pub aggregate_type: String,
    /// How entries are written.
    pub via: Via,
    /// Rows per transaction (each for a random key; a key's rows go in one statement).
    pub rows_per_txn: std::ops::RangeInclusive<usize>,
    /// Pause between a writer's transactions (to spread the rows over time).
    pub pace: Duration,
}

/// How the workload writes its outbox entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// Rows in the outbox table.
    Table,
    /// `pg_logical_emit_message(true, 'outbox', <envelope>)`, no table.
    Message,
}

impl Default for Workload {
    fn default() -> Self {
        Self {
            writers: 8,
            rows: 10_000,
            keys: 40,
            hold_every: 10,
            rollback_every: 17,
            table: "outbox".into(),
            aggregate_type: "order".into(),
            via: Via::Table,
            rows_per_txn: 1..=3,
            pace: Duration::ZERO,
        }
    }
}

/// What the writers committed.
#[derive(Debug, Default)]
pub struct Committed {
    /// Final version of each key = number of committed rows of that key.
    pub versions: BTreeMap<String, u32>,
    pub ids: HashSet<String>,
    pub rolled_back_ids: HashSet<String>,
    /// Committed transactions that committed after a transaction holding a higher entry number.
    pub late_commits: usize,
    pub transactions: usize,
}

impl Committed {
    pub fn rows(&self) -> usize {
        self.ids.len()
    }

    /// What two runs on the same database committed, `later` after `self`.
    pub fn and_then(mut self, later: Committed) -> Committed {
        self.ids.extend(later.ids);
        self.rolled_back_ids.extend(later.rolled_back_ids);
        // Versions continue from the aggregates table: the later run's are the totals.
        self.versions = later.versions;
        self.late_commits += later.late_commits;
        self.transactions += later.transactions;
        self
    }
}

struct Txn {
    min_seq: i64,
    max_seq: i64,
    commit_order: u64,
}

/// Creates the aggregates table with `workload.keys` keys.
pub async fn prepare(url: &str, workload: &Workload) {
    let client = connect(url).await;
    // `workload_order` numbers entries in insertion order: held transactions draw a number and
    // commit after others drew higher ones, which is what `late_commits` counts (for the poll
    // source the same happens to `seq`; WAL tailing has no `seq`).
    client
        .batch_execute(
            "create table if not exists aggregates (id text primary key, version int not null default 0); \
             create sequence if not exists workload_order",
        )
        .await
        .unwrap();
    client
        .execute(
            "insert into aggregates (id) select 'k' || lpad(i::text, 3, '0') \
             from generate_series(0, $1 - 1) i on conflict do nothing",
            &[&(workload.keys as i32)],
        )
        .await
        .unwrap();
}

/// Runs the writers to completion.
pub async fn run(url: &str, workload: &Workload) -> Committed {
    prepare(url, workload).await;
    let commits = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for writer in 0..workload.writers {
        let quota = workload.rows / workload.writers
            + usize::from(writer < workload.rows % workload.writers);
        let (url, workload, commits) = (url.to_owned(), workload.clone(), Arc::clone(&commits));
        handles.push(tokio::spawn(
            async move { write(&url, &workload, writer, quota, &commits).await },
        ));
    }
    let mut committed = Committed::default();
    let mut txns = Vec::new();
    for handle in handles {
        let (ids, rolled_back, writer_txns) = handle.await.unwrap();
        committed.ids.extend(ids);
        committed.rolled_back_ids.extend(rolled_back);
        txns.extend(writer_txns);
    }
    committed.transactions = txns.len();
    txns.sort_by_key(|t| t.commit_order);
    let mut max_seq_so_far = i64::MIN;
    for txn in &txns {
        if txn.min_seq < max_seq_so_far {
            committed.late_commits += 1;
        }
        max_seq_so_far = max_seq_so_far.max(txn.max_seq);
    }
    let client = connect(url).await;
    for row in client.query("select id, version from aggregates", &[]).await.unwrap() {
        let version: i32 = row.get(1);
        if version > 0 {
            committed.versions.insert(row.get(0), version as u32);
        }
    }
    committed
}

async fn write(
    url: &str,
    workload: &Workload,
    writer: usize,
    quota: usize,
    commits: &AtomicU64,
) -> (Vec<String>, Vec<String>, Vec<Txn>) {
    let mut client = connect(url).await;
    let mut rng = StdRng::seed_from_u64(0x5EED + writer as u64);
    // One statement per key: take the key's next `n` versions (the row lock orders writers of
    // the key), then write its `n` entries in version order.
    let insert = match workload.via {
        Via::Table => format!(
            "with v as (update aggregates set version = version + $3 where id = $2 returning version) \
             insert into {} (id, aggregatetype, aggregateid, type, payload) \
             select gen_random_uuid(), $1, $2, 'OrderUpdated', \
                    jsonb_build_object('key', $2::text, 'version', g, 'writer', $4::int) \
             from v, generate_series(v.version - $3 + 1, v.version) g order by g \
             returning id::text, nextval('workload_order')",
            workload.table
        ),
        Via::Message => "with v as (update aggregates set version = version + $3 where id = $2 returning version), \
             e as (select gen_random_uuid()::text id, g from v, generate_series(v.version - $3 + 1, v.version) g) \
             select e.id, nextval('workload_order'), pg_logical_emit_message(true, 'outbox', jsonb_build_object( \
                 'id', e.id, 'aggregatetype', $1::text, 'aggregateid', $2::text, 'type', 'OrderUpdated', \
                 'payload', jsonb_build_object('key', $2::text, 'version', e.g, 'writer', $4::int))::text) \
             from e order by e.g"
            .to_owned(),
    };
    let (mut ids, mut rolled_back, mut txns) = (Vec::new(), Vec::new(), Vec::new());
    let mut remaining = quota;
    let mut n_txn = 0usize;
    while remaining > 0 {
        n_txn += 1;
        let rows = remaining.min(rng.random_range(workload.rows_per_txn.clone()));
        let mut keys: Vec<String> =
            (0..rows).map(|_| format!("k{:03}", rng.random_range(0..workload.keys))).collect();
        keys.sort(); // lock aggregates in one order: no deadlocks between writers
        let mut groups: Vec<(String, i32)> = Vec::new();
        for key in keys {
            match groups.last_mut() {
                Some((last, n)) if *last == key => *n += 1,
                _ => groups.push((key, 1)),
            }
        }
        let hold = n_txn % workload.hold_every == 0;
        let rollback = n_txn % workload.rollback_every == 0;
        let hold_for = Duration::from_millis(rng.random_range(20..60));

        let txn = client.transaction().await.unwrap();
        let mut txn_ids = Vec::new();
        let (mut min_seq, mut max_seq) = (i64::MAX, i64::MIN);
        for (key, n) in &groups {
            let written = txn
                .query(&insert, &[&workload.aggregate_type, key, n, &(writer as i32)])
                .await
                .unwrap();
            for row in written {
                txn_ids.push(row.get::<_, String>(0));
                let seq: i64 = row.get(1);
                min_seq = min_seq.min(seq);
                max_seq = max_seq.max(seq);
            }
        }
        if hold {
            tokio::time::sleep(hold_for).await;
        }
        if rollback {
            txn.rollback().await.unwrap();
            rolled_back.extend(txn_ids);
            continue;
        }
        txn.commit().await.unwrap();
        let commit_order = commits.fetch_add(1, Ordering::SeqCst);
        txns.push(Txn { min_seq, max_seq, commit_order });
        ids.extend(txn_ids);
        remaining -= rows;
        if !workload.pace.is_zero() {
            tokio::time::sleep(workload.pace).await;
        }
    }
    (ids, rolled_back, txns)
}
