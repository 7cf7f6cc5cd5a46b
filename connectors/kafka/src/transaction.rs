//! Kafka transactions (`delivery = "transactional"`, DESIGN §3.4).
//!
//! Messages are produced into the open transaction; a committer task ends it once it is
//! `interval` old or holds `max_messages`. Invariants:
//! - A confirm resolves `Ok` only once the transaction holding its message **committed**.
//! - A transaction that cannot commit is **aborted** (nothing of it becomes visible to
//!   `read_committed` consumers) and every confirm in it fails as transient. From then on nothing
//!   is handed over until every confirm given out has resolved: the engine has then seen the
//!   failure and re-sends its unconfirmed messages in order, so a re-sent message is never
//!   overtaken by a later one.
//! - `init_transactions` under the pipeline's stable `transactional.id` fences every older
//!   producer with that id (a crashed run, a deposed leader) and aborts what it left open,
//!   before this run reads a partition's tail. A producer fenced in its turn fails every
//!   confirm as fatal: the relay halts loudly rather than write beside the new leader.
//! - Produce and commit never overlap: both hold the book's lock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::{FutureExt, Shared};
use outbox_relay_core::{Confirm, ConnectorError};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use tokio::sync::{oneshot, Mutex, Notify, OwnedMutexGuard};
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use crate::context::RelayContext;
use crate::KafkaSinkError;

/// Pause between attempts to end a transaction the cluster could not end yet.
const END_RETRY_PAUSE: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, Debug)]
pub struct TransactionSettings {
    /// End a transaction once it is this old...
    pub interval: Duration,
    /// ...or holds this many messages.
    pub max_messages: usize,
    /// Deadline of one `init`/`commit`/`abort` call, and how long a send waits for a commit.
    pub timeout: Duration,
}

/// How a transaction ended, for every confirm in it.
#[derive(Clone, Debug)]
enum Ended {
    Committed,
    /// Aborted (or never begun): its messages are sent again.
    Aborted(String),
    /// This producer was fenced or failed for good: nothing more can be sent with it.
    Fatal(String),
}

type Outcome = Shared<oneshot::Receiver<Ended>>;

struct Open {
    since: Instant,
    messages: usize,
    done: oneshot::Sender<Ended>,
    outcome: Outcome,
}

/// What the lock guards.
struct Book {
    initialised: bool,
    open: Option<Open>,
    /// Why the last transaction failed, while confirms given out before that are unresolved.
    broken: Option<Ended>,
}

pub(crate) struct Transactions {
    producer: FutureProducer<RelayContext>,
    book: Arc<Mutex<Book>>,
    /// Confirms given out and not yet resolved (or dropped).
    unresolved: Arc<AtomicUsize>,
    due: Arc<Notify>,
    settings: TransactionSettings,
    _committer: AbortOnDropHandle<()>,
}

/// The right to produce one message into the open transaction; see [`Transactions::enlist`].
pub(crate) struct Enlisted {
    book: OwnedMutexGuard<Book>,
    unresolved: Arc<AtomicUsize>,
    due: Arc<Notify>,
    max_messages: usize,
}

impl Transactions {
    pub(crate) fn new(
        producer: FutureProducer<RelayContext>,
        settings: TransactionSettings,
    ) -> Self {
        let book = Arc::new(Mutex::new(Book { initialised: false, open: None, broken: None }));
        let due = Arc::new(Notify::new());
        let committer = tokio::spawn(commit_when_due(
            producer.clone(),
            Arc::clone(&book),
            Arc::clone(&due),
            settings,
        ));
        Self {
            producer,
            book,
            unresolved: Arc::new(AtomicUsize::new(0)),
            due,
            settings,
            _committer: AbortOnDropHandle::new(committer),
        }
    }

    /// A run starts: fences older producers of this `transactional.id` (first time only) and
    /// aborts a transaction an earlier run of this process left open, so the partitions' tails
    /// read next hold everything that will ever commit of it.
    pub(crate) async fn begin_run(&self) -> Result<(), KafkaSinkError> {
        let mut book = self.book.lock().await;
        if !book.initialised {
            let producer = self.producer.clone();
            let timeout = self.settings.timeout;
            blocking(move || producer.init_transactions(timeout))
                .await
                .map_err(|source| KafkaSinkError::Transaction { what: "initialise", source })?;
            book.initialised = true;
            tracing::info!("Kafka transactions initialised; older producers of this transactional.id are fenced");
        }
        if let Some(open) = book.open.take() {
            let ended = end(&self.producer, self.settings.timeout, false).await;
            let _ = open.done.send(ended);
        }
        if !matches!(book.broken, Some(Ended::Fatal(_))) {
            book.broken = None;
        }
        Ok(())
    }

    /// Waits for the lock (a commit may be under way) and opens a transaction if none is.
    /// Fails, so the engine backs off and re-sends in order, while an earlier transaction's
    /// failure is not yet seen by every confirm.
    pub(crate) async fn enlist(&self, id: &str) -> Result<Enlisted, KafkaSinkError> {
        let waiting = |reason: String| KafkaSinkError::TransactionPending { id: id.into(), reason };
        let mut book =
            tokio::time::timeout(self.settings.timeout, Arc::clone(&self.book).lock_owned())
                .await
                .map_err(|_| waiting(format!("a commit took over {:?}", self.settings.timeout)))?;
        match book.broken.clone() {
            Some(Ended::Fatal(reason)) => return Err(KafkaSinkError::Fenced { reason }),
            Some(Ended::Aborted(reason)) if self.unresolved.load(Ordering::Acquire) > 0 => {
                return Err(waiting(format!("an earlier transaction failed: {reason}")));
            }
            _ => book.broken = None,
        }
        if book.open.is_none() {
            self.producer
                .begin_transaction()
                .map_err(|source| KafkaSinkError::Transaction { what: "begin", source })?;
            let (done, outcome) = oneshot::channel();
            book.open =
                Some(Open { since: Instant::now(), messages: 0, done, outcome: outcome.shared() });
            self.due.notify_one();
        }
        Ok(Enlisted {
            book,
            unresolved: Arc::clone(&self.unresolved),
            due: Arc::clone(&self.due),
            max_messages: self.settings.max_messages,
        })
    }
}

impl Enlisted {
    /// The message was handed to the producer: its confirm is `delivered` and then the commit of
    /// the transaction it is in.
    pub(crate) fn confirm(mut self, id: String, delivered: Confirm) -> Confirm {
        let open = self.book.open.as_mut().expect("enlist opened a transaction");
        open.messages += 1;
        if open.messages >= self.max_messages {
            self.due.notify_one();
        }
        let outcome = open.outcome.clone();
        self.unresolved.fetch_add(1, Ordering::AcqRel);
        let resolved = Resolved(Arc::clone(&self.unresolved));
        drop(self.book);
        Box::pin(async move {
            let _resolved = resolved;
            delivered.await?;
            match outcome.await {
                Ok(Ended::Committed) => Ok(()),
                Ok(Ended::Aborted(reason)) => Err(KafkaSinkError::Aborted { id, reason }.into()),
                Ok(Ended::Fatal(reason)) => {
                    Err(ConnectorError::from(KafkaSinkError::Fenced { reason }))
                }
                Err(_dropped) => {
                    Err(KafkaSinkError::Aborted { id, reason: "the producer was closed".into() }
                        .into())
                }
            }
        })
    }
}

/// Counts a confirm as resolved when it completes or is dropped.
struct Resolved(Arc<AtomicUsize>);

impl Drop for Resolved {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The committer: ends the open transaction when it is due.
async fn commit_when_due(
    producer: FutureProducer<RelayContext>,
    book: Arc<Mutex<Book>>,
    due: Arc<Notify>,
    settings: TransactionSettings,
) {
    loop {
        let deadline = book.lock().await.open.as_ref().map(|open| open.since + settings.interval);
        match deadline {
            None => due.notified().await,
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = due.notified() => {}
                }
            }
        }
        let mut guard = book.lock().await;
        let ready = guard.open.as_ref().is_some_and(|open| {
            open.since.elapsed() >= settings.interval || open.messages >= settings.max_messages
        });
        if !ready {
            continue;
        }
        let open = guard.open.take().expect("checked");
        let ended = end(&producer, settings.timeout, open.messages > 0).await;
        match &ended {
            Ended::Committed => {}
            Ended::Aborted(reason) => {
                tracing::warn!(messages = open.messages, reason = %reason, "Kafka transaction aborted; its messages are sent again");
                guard.broken = Some(ended.clone());
            }
            Ended::Fatal(reason) => {
                tracing::error!(reason = %reason, "Kafka producer fenced or failed for good");
                guard.broken = Some(ended.clone());
            }
        }
        let _ = open.done.send(ended);
        drop(guard);
    }
}

/// Commits (`commit` true) or aborts the open transaction; a commit that fails is aborted.
/// Retries what the cluster cannot do yet (a coordinator away) until it succeeds or fails for
/// good.
async fn end(producer: &FutureProducer<RelayContext>, timeout: Duration, commit: bool) -> Ended {
    let mut reason = None;
    if commit {
        loop {
            let p = producer.clone();
            match blocking(move || p.commit_transaction(timeout)).await {
                Ok(()) => return Ended::Committed,
                Err(error) if fatal(&error) => return Ended::Fatal(error.to_string()),
                Err(error) if retriable(&error) => {
                    tracing::warn!(error = %error, "Kafka transaction commit did not finish; trying again");
                    tokio::time::sleep(END_RETRY_PAUSE).await;
                }
                Err(error) => {
                    reason = Some(error.to_string());
                    break;
                }
            }
        }
    }
    loop {
        let p = producer.clone();
        match blocking(move || p.abort_transaction(timeout)).await {
            Ok(()) => {
                return Ended::Aborted(reason.unwrap_or_else(|| "abandoned by this run".into()))
            }
            Err(error) if fatal(&error) => return Ended::Fatal(error.to_string()),
            Err(error) => {
                tracing::warn!(error = %error, "Kafka transaction abort did not finish; trying again");
                tokio::time::sleep(END_RETRY_PAUSE).await;
            }
        }
    }
}

fn fatal(error: &KafkaError) -> bool {
    matches!(error, KafkaError::Transaction(e) if e.is_fatal())
}

fn retriable(error: &KafkaError) -> bool {
    matches!(error, KafkaError::Transaction(e) if e.is_retriable() && !e.txn_requires_abort())
}

/// Runs one of librdkafka's blocking transaction calls off the async threads.
async fn blocking(
    call: impl FnOnce() -> Result<(), KafkaError> + Send + 'static,
) -> Result<(), KafkaError> {
    tokio::task::spawn_blocking(call).await.expect("librdkafka calls do not panic")
}
