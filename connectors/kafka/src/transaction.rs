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
//! - **After an abort, a new producer**: the aborted transaction's batches may be in the
//!   partitions (sent before the cluster went away, retried after), and the same producer would
//!   send the re-sends with the same producer id, epoch and sequence numbers, which the broker
//!   takes for duplicates of those aborted batches, acknowledges, and drops: a loss. A new
//!   producer's `init_transactions` bumps the epoch (sequences start again), and returns once
//!   the aborted transaction is complete.
//! - A message known to be absent from Kafka (never sent before, or looked for and not found)
//!   stays *known absent* while its sends end in aborted transactions or are refused before
//!   they reach the producer: its re-send is not looked for. An abort returns once the
//!   coordinator has decided, before the abort markers are in the partitions, so a tail read
//!   right after it would read partitions whose end is not decided yet; nothing needs one.
//! - `init_transactions` under the pipeline's stable `transactional.id` fences every older
//!   producer with that id (a crashed run, a deposed leader) and aborts what it left open,
//!   before this run reads a partition's tail. A producer fenced in its turn fails every
//!   confirm as fatal: the relay halts loudly rather than write beside the new leader.
//! - A producer that fails for good otherwise (the cluster lost track of the transaction while
//!   its coordinator moved, say) leaves its transaction's outcome unknown: every confirm in it
//!   fails as transient and its message is remembered as *unknown*. The sink then replaces the
//!   producer (whose `init_transactions` waits for the coordinator to settle the old
//!   transaction) and sends an unknown message again only if its own record is not in its
//!   partition, exactly like a replay after a crash.
//! - Produce and commit never overlap: both hold the book's lock.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::{FutureExt, Shared};
use outbox_relay_core::{Confirm, Position};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
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
    /// A newer producer of this `transactional.id` fenced this one: another relay leads.
    Fenced(String),
    /// This producer failed for good; whether the transaction committed is unknown.
    Lost(String),
}

/// A set of messages, `(id, position)`: those whose transaction's outcome is unknown, or those
/// known to be absent from Kafka.
#[derive(Clone, Debug, Default)]
struct Marks(Arc<std::sync::Mutex<HashSet<(String, Position)>>>);

impl Marks {
    fn insert(&self, id: &str, position: Position) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert((id.to_owned(), position));
    }

    fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Whether the message is marked (and unmarks it).
    fn take(&self, id: &str, position: Position) -> bool {
        let mut marks = self.0.lock().unwrap_or_else(|p| p.into_inner());
        marks.remove(&(id.to_owned(), position))
    }
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
    /// Set once the producer failed for good (not fenced) or aborted a transaction: the sink
    /// replaces it.
    renew: Arc<AtomicBool>,
    /// Messages whose transaction's outcome is unknown: looked for before they are sent again.
    unknown: Marks,
    /// Messages known to be absent from Kafka (see the module docs): not looked for.
    absent: Marks,
    _committer: AbortOnDropHandle<()>,
}

/// The right to produce one message into the open transaction; see [`Transactions::enlist`].
pub(crate) struct Enlisted {
    book: OwnedMutexGuard<Book>,
    unresolved: Arc<AtomicUsize>,
    due: Arc<Notify>,
    max_messages: usize,
    unknown: Marks,
    absent: Marks,
}

impl Transactions {
    pub(crate) fn new(
        producer: FutureProducer<RelayContext>,
        settings: TransactionSettings,
    ) -> Self {
        Self::with_marks(producer, settings, Marks::default(), Marks::default())
    }

    /// A new producer's transactions in place of `self`'s; the messages whose outcome is
    /// unknown stay so, and those known absent stay so.
    pub(crate) fn renewed(&self, producer: FutureProducer<RelayContext>) -> Self {
        Self::with_marks(producer, self.settings, self.unknown.clone(), self.absent.clone())
    }

    fn with_marks(
        producer: FutureProducer<RelayContext>,
        settings: TransactionSettings,
        unknown: Marks,
        absent: Marks,
    ) -> Self {
        let book = Arc::new(Mutex::new(Book { initialised: false, open: None, broken: None }));
        let due = Arc::new(Notify::new());
        let renew = Arc::new(AtomicBool::new(false));
        let committer = tokio::spawn(commit_when_due(
            producer.clone(),
            Arc::clone(&book),
            Arc::clone(&due),
            Arc::clone(&renew),
            settings,
        ));
        Self {
            producer,
            book,
            unresolved: Arc::new(AtomicUsize::new(0)),
            due,
            settings,
            renew,
            unknown,
            absent,
            _committer: AbortOnDropHandle::new(committer),
        }
    }

    /// The producer failed for good (not fenced) or aborted a transaction, and every confirm
    /// given out has resolved: time to replace it.
    pub(crate) fn needs_new_producer(&self) -> bool {
        self.renew.load(Ordering::Acquire) && self.unresolved.load(Ordering::Acquire) == 0
    }

    /// Whether the transaction that last held this message ended with an unknown outcome (and
    /// forgets it: the caller looks it up once).
    pub(crate) fn take_unknown(&self, id: &str, position: Position) -> bool {
        self.unknown.take(id, position)
    }

    /// Whether the message is known to be absent from Kafka (and forgets it: the caller either
    /// sends it, which settles it anew, or calls [`Transactions::still_absent`]).
    pub(crate) fn take_absent(&self, id: &str, position: Position) -> bool {
        self.absent.take(id, position)
    }

    /// A new run: what this process knew absent is looked up again (its source re-reads every
    /// unacknowledged entry as a possible replay; the lookup comes after the run's fencing).
    pub(crate) fn forget_absent(&self) {
        self.absent.clear();
    }

    /// A message known to be absent was not handed to the producer after all.
    pub(crate) fn still_absent(&self, id: &str, position: Position) {
        self.absent.insert(id, position);
    }

    /// Whether a transaction is open (an earlier run of this process left it), or this
    /// producer is done for (it aborted a transaction or failed for good): either way a new run
    /// needs a new producer, whose `init_transactions` completes what this one left.
    pub(crate) async fn unfit_for_a_run(&self) -> bool {
        self.renew.load(Ordering::Acquire) || self.book.lock().await.open.is_some()
    }

    /// A run starts: fences older producers of this `transactional.id` (first time only;
    /// `init_transactions` returns once the transaction they left is complete, its markers
    /// written, so the partitions' tails read next are decided). A transaction this producer
    /// left open is not aborted here (see [`crate::KafkaSink::begin_run`]).
    pub(crate) async fn begin_run(&self) -> Result<(), KafkaSinkError> {
        let mut book = self.book.lock().await;
        self.initialise(&mut book).await?;
        Ok(())
    }

    /// `init_transactions`, once per producer (again after a failed attempt).
    async fn initialise(&self, book: &mut Book) -> Result<(), KafkaSinkError> {
        if book.initialised {
            return Ok(());
        }
        let producer = self.producer.clone();
        let timeout = self.settings.timeout;
        blocking(move || producer.init_transactions(timeout))
            .await
            .map_err(|source| KafkaSinkError::Transaction { what: "initialise", source })?;
        book.initialised = true;
        tracing::info!(
            "Kafka transactions initialised; older producers of this transactional.id are fenced"
        );
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
            Some(Ended::Fenced(reason)) => return Err(KafkaSinkError::Fenced { reason }),
            Some(Ended::Lost(reason) | Ended::Aborted(reason)) => {
                return Err(waiting(format!("the producer is being replaced: {reason}")));
            }
            _ => book.broken = None,
        }
        if book.open.is_none() {
            self.initialise(&mut book).await?;
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
            unknown: self.unknown.clone(),
            absent: self.absent.clone(),
        })
    }
}

impl Enlisted {
    /// The message, absent from Kafka until now, was handed to the producer: its confirm is
    /// `delivered` and then the commit of the transaction it is in.
    pub(crate) fn confirm(mut self, id: String, position: Position, delivered: Confirm) -> Confirm {
        let open = self.book.open.as_mut().expect("enlist opened a transaction");
        open.messages += 1;
        if open.messages >= self.max_messages {
            self.due.notify_one();
        }
        let outcome = open.outcome.clone();
        self.unresolved.fetch_add(1, Ordering::AcqRel);
        let resolved = Resolved(Arc::clone(&self.unresolved));
        let (unknown, absent) = (self.unknown.clone(), self.absent.clone());
        drop(self.book);
        Box::pin(async move {
            let _resolved = resolved;
            let delivered = delivered.await;
            // A transaction nobody ended (its producer was dropped) is left to the next
            // producer's `init_transactions`: its outcome is unknown here.
            let ended = outcome.await.unwrap_or_else(|_| {
                Ended::Lost("the producer was closed with the transaction open".into())
            });
            match ended {
                Ended::Committed => delivered,
                Ended::Aborted(reason) => {
                    absent.insert(&id, position);
                    Err(KafkaSinkError::Aborted { id, reason }.into())
                }
                Ended::Fenced(reason) => Err(KafkaSinkError::Fenced { reason }.into()),
                Ended::Lost(reason) => {
                    unknown.insert(&id, position);
                    Err(KafkaSinkError::OutcomeUnknown { id, reason }.into())
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
    renew: Arc<AtomicBool>,
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
        // An empty transaction (a send that failed after it opened one) commits as a no-op.
        let ended = end(&producer, settings.timeout).await;
        match &ended {
            Ended::Committed => {}
            Ended::Aborted(reason) => {
                tracing::warn!(messages = open.messages, reason = %reason, "Kafka transaction aborted; its messages are sent again, by a new producer");
                guard.broken = Some(ended.clone());
                renew.store(true, Ordering::Release);
            }
            Ended::Fenced(reason) => {
                tracing::error!(reason = %reason, "Kafka producer fenced by a newer one of its transactional.id");
                guard.broken = Some(ended.clone());
            }
            Ended::Lost(reason) => {
                tracing::warn!(messages = open.messages, reason = %reason, "Kafka producer failed for good; the transaction's outcome is unknown, its messages are looked up and sent again if missing");
                guard.broken = Some(ended.clone());
                renew.store(true, Ordering::Release);
            }
        }
        let _ = open.done.send(ended);
        drop(guard);
    }
}

/// Commits the open transaction; a commit that fails is aborted. Retries what the cluster
/// cannot do yet (a coordinator away) until it succeeds or fails for good.
async fn end(producer: &FutureProducer<RelayContext>, timeout: Duration) -> Ended {
    let reason = loop {
        let p = producer.clone();
        match blocking(move || p.commit_transaction(timeout)).await {
            Ok(()) => return Ended::Committed,
            Err(error) if fatal(&error) => return for_good(producer, &error),
            Err(error) if retriable(&error) => {
                tracing::warn!(error = %error, "Kafka transaction commit did not finish; trying again");
                tokio::time::sleep(END_RETRY_PAUSE).await;
            }
            Err(error) => {
                tracing::warn!(error = %error, "Kafka transaction commit failed; aborting it");
                break error.to_string();
            }
        }
    };
    loop {
        let p = producer.clone();
        match blocking(move || p.abort_transaction(timeout)).await {
            Ok(()) => return Ended::Aborted(reason),
            Err(error) if fatal(&error) => return for_good(producer, &error),
            Err(error) => {
                tracing::warn!(error = %error, "Kafka transaction abort did not finish; trying again");
                tokio::time::sleep(END_RETRY_PAUSE).await;
            }
        }
    }
}

/// A fatal error: fenced by a newer producer, or lost with an unknown outcome.
fn for_good(producer: &FutureProducer<RelayContext>, error: &KafkaError) -> Ended {
    let producer_fenced = producer.client().fatal_error().is_some_and(|(code, _)| fenced(code));
    if producer_fenced || error.rdkafka_error_code().is_some_and(fenced) {
        Ended::Fenced(error.to_string())
    } else {
        Ended::Lost(error.to_string())
    }
}

/// Codes by which the cluster says a newer producer of this `transactional.id` exists:
/// librdkafka's own `_FENCED` and the broker's. Such a producer never comes back.
pub(crate) fn fenced(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::Fenced
            | C::ProducerFenced
            | C::InvalidProducerEpoch
            | C::TransactionalIdAuthorizationFailed
    )
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
