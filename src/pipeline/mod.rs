//! One run of the data path: source → router → sink → ack tracker → source acknowledgement.
//!
//! Invariants:
//! - **No loss**: the source hears `ack(p)` only for the contiguous prefix of broker-confirmed
//!   messages ([`AckTracker`]).
//! - **Order per key**: messages are sent in emission order. After any failure nothing new is
//!   sent; once every outstanding confirm has resolved, the earliest unconfirmed message decides:
//!   transient → back off, then re-send every unconfirmed message in its original order;
//!   permanent or fatal → halt. A failed message is therefore never overtaken by a later message
//!   sent after the failure was seen.
//! - **Bounded**: at most `max_in_flight` messages and `max_in_flight_bytes` bytes are held
//!   (one oversized message may pass alone); the source reads ahead by at most three batches
//!   (one being sent, one in the channel, one in the feed's hand), each of at most
//!   `batch_size` entries and a quarter of `max_in_flight_bytes` (WAL tailing holds at most one
//!   more quarter as events read from the stream).
//! - **Redrives in the stream**: dead letters asked for by `dlq redrive` are delivered when
//!   nothing is in flight, before anything read after them ([`redrive`]).
//!
//! The source runs in its own task (`feed`) so acknowledgements keep flowing while reading waits
//! on back-pressure, and the main loop never blocks on the database.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use futures::future;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use outbox_relay_core::{Confirm, ConnectorError, Entry, Message, Position, Retry, Sink, Source};
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::ack_tracker::{AckTracker, Ticket};
use crate::config::{PoisonPolicy, SameKeyPolicy};
use crate::error::RelayError;
use crate::router::{Poisoned, Router};
use crate::state::RelayState;
use crate::telemetry::{Activity, Metrics, Telemetry};

mod redrive;

/// Flow-control, retry and poison settings of a run.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) max_in_flight: usize,
    pub(crate) max_in_flight_bytes: usize,
    pub(crate) batch_size: usize,
    pub(crate) ack_interval: Duration,
    pub(crate) retry_initial_backoff: Duration,
    pub(crate) retry_max_backoff: Duration,
    pub(crate) shutdown_grace: Duration,
    pub(crate) on_poison: PoisonPolicy,
    pub(crate) same_key: SameKeyPolicy,
}

/// How a run ended without halting.
#[derive(Debug)]
pub(crate) enum Exit {
    /// Shutdown was requested; everything confirmed is acknowledged.
    Shutdown,
    /// The source (or the relay's own state) failed transiently; the caller starts again.
    SourceFailed(ConnectorError),
}

/// Why the main loop stops taking entries.
enum Ending {
    Shutdown,
    SourceFailed(ConnectorError),
    Halt(RelayError),
}

/// How long the source gets for its final acknowledgement.
const FINAL_ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// Least time between two writes of the same state with a different detail.
const DETAIL_REFRESH: Duration = Duration::from_secs(10);
/// How often the relay looks for `dlq redrive` requests.
const REDRIVE_CHECK_EVERY: Duration = Duration::from_secs(1);
/// Least time between two checkpoint writes.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Keys held behind a dead letter (`dead_letter_same_key = "wait"`): key → the first entry set
/// aside for it. A key found here is checked against the table before it holds a message, so a
/// redrive releases it as soon as its last dead letter is marked redriven.
struct Held {
    keys: HashMap<String, String>,
}

impl Held {
    /// The keys held by dead letters still live; none with `dead_letter_same_key = "continue"`
    /// (a key set aside under "wait" by an earlier run flows again once the policy says so).
    async fn load(state: &RelayState, policy: SameKeyPolicy) -> Result<Self, ConnectorError> {
        let keys = match policy {
            SameKeyPolicy::Wait => state.held_keys().await?,
            SameKeyPolicy::Continue => HashMap::new(),
        };
        Ok(Self { keys })
    }
}

/// The relay's records plus what the loop needs of them.
struct Records<'a> {
    state: &'a mut RelayState,
    settings: &'a Settings,
    telemetry: &'a Telemetry,
    held: Held,
    horizon: Option<Position>,
    last_checkpoint: Instant,
    /// What was last announced, and when, so an unchanged state is not written again.
    announced: Option<(Activity, Option<String>, Instant)>,
}

impl Records<'_> {
    /// Announces what the relay is doing, to metrics and to `outbox_relay.pipelines`.
    async fn announce(&mut self, activity: Activity, detail: Option<&str>) {
        // The same state with another detail (a reconnect error's timing, say) is written at
        // most every DETAIL_REFRESH: an outage does not become a write per second.
        let unchanged = self.announced.as_ref().is_some_and(|(was, said, at)| {
            *was == activity && (said.as_deref() == detail || at.elapsed() < DETAIL_REFRESH)
        });
        if self.telemetry.metrics.state() == activity && unchanged {
            return;
        }
        self.telemetry.metrics.set_state(activity);
        // Remembered only once written, so a failed write is tried again on the next announce.
        match self.state.note_state(activity.as_str(), detail).await {
            Ok(()) => self.announced = Some((activity, detail.map(str::to_owned), Instant::now())),
            Err(error) => tracing::warn!(error = %error, "cannot record the relay's state"),
        }
    }

    /// Sets `message` aside (the dead letter is committed when this returns). With
    /// `dead_letter_same_key = "wait"` its key is held from now on.
    async fn set_aside(
        &mut self,
        message: &Message,
        reason: &str,
        behind: Option<&str>,
        defect: Option<&str>,
    ) -> Result<(), ConnectorError> {
        self.state.dead_letter(message, reason, behind, defect).await?;
        self.telemetry.metrics.dead_letters.inc();
        tracing::warn!(entry = %message.id, position = %message.position, reason, "set aside as a dead letter");
        if self.settings.same_key == SameKeyPolicy::Wait {
            if let Some(key) = &message.key {
                self.held.keys.entry(key.clone()).or_insert_with(|| message.id.clone());
            }
        }
        Ok(())
    }

    /// The dead letter a message of `key` is held behind, if any.
    async fn held_behind(&mut self, key: Option<&str>) -> Result<Option<String>, ConnectorError> {
        let Some(key) = key.filter(|k| self.held.keys.contains_key(*k)) else { return Ok(None) };
        match self.state.first_held(key).await? {
            Some(first) => Ok(Some(first)),
            None => {
                self.held.keys.remove(key);
                Ok(None)
            }
        }
    }

    /// Whether `position` may have been sent by an earlier run.
    fn beyond_doubt(&self, position: Position) -> bool {
        !self.horizon.is_some_and(|horizon| match (horizon, position) {
            (Position::Wal { .. }, Position::Wal { .. })
            | (Position::Poll { .. }, Position::Poll { .. }) => position <= horizon,
            _ => false,
        })
    }

    async fn checkpoint(&mut self, position: Position, force: bool) {
        if force || self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            self.last_checkpoint = Instant::now();
            if let Err(error) = self.state.note_acked(position).await {
                tracing::warn!(error = %error, "cannot record the checkpoint");
            }
        }
    }
}

/// What to do with a message that can never be delivered.
enum Verdict {
    /// Halt with this error.
    Halt(RelayError),
    /// Set aside; go on.
    SetAside,
}

pub(crate) async fn run<S, K>(
    source: S,
    sink: &mut K,
    router: &Router,
    settings: &Settings,
    telemetry: &Telemetry,
    state: &mut RelayState,
    shutdown: &CancellationToken,
) -> Result<Exit, RelayError>
where
    S: Source + 'static,
    K: Sink,
{
    let metrics = &telemetry.metrics;
    let held = match Held::load(state, settings.same_key).await {
        Ok(held) => held,
        // Postgres restarting or failing over: the caller waits and starts again.
        Err(error) if error.retry() == Retry::Transient => return Ok(Exit::SourceFailed(error)),
        Err(source) => {
            return Err(RelayError::Fatal { what: "reading dead letters failed", source })
        }
    };
    let horizon = state.replay_horizon();
    let mut records = Records {
        state,
        settings,
        telemetry,
        held,
        horizon,
        last_checkpoint: Instant::now(),
        announced: None,
    };
    let (batches_tx, mut batches_rx) = mpsc::channel::<Vec<Entry>>(1);
    let (ack_tx, ack_rx) = watch::channel::<Option<Position>>(None);
    let stop_reading = CancellationToken::new();
    let mut feeder = AbortOnDropHandle::new(tokio::spawn(feed(
        source,
        batches_tx,
        ack_rx,
        BatchLimit { entries: settings.batch_size, bytes: batch_bytes(settings) },
        settings.ack_interval,
        stop_reading.clone(),
    )));
    let mut feeder_done = false;
    // The source once the feed is done: it holds the leader session, so the pipeline lock (and
    // with it the right to write the relay's state) lasts until the run has said how it ended.
    let mut kept_source: Option<S> = None;
    // The feed closed the batch channel: nothing more will come.
    let mut batches_done = false;

    let mut tracker = AckTracker::default();
    let mut confirms = FuturesUnordered::new();
    let mut pending: VecDeque<Entry> = VecDeque::new();
    let mut recovering = false;
    let mut retry_at: Option<Instant> = None;
    let mut attempt: u32 = 0;
    let mut ending: Option<Ending> = None;
    let mut deadline: Option<Instant> = None;
    let mut last_failure: Option<String> = None;
    records.announce(Activity::Running, None).await;
    // How often the sink's own view of the broker is looked at (see `Sink::trouble`).
    let mut health_check = tokio::time::interval(Duration::from_secs(1));
    health_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // How often `dlq redrive` requests are looked for (the first look is at once). A request
    // pauses sending; the redrive runs once nothing is in flight, then sending resumes.
    let mut redrive_check = tokio::time::interval(REDRIVE_CHECK_EVERY);
    redrive_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut redrive_due = false;

    loop {
        if redrive_due && !recovering && ending.is_none() && tracker.outstanding() == 0 {
            redrive_due = false;
            match redrive::redrive(sink, router, &mut records, shutdown).await {
                Ok(_) => {}
                Err(redrive::Interrupted::Shutdown) => {
                    records.announce(Activity::Stopping, None).await;
                    ending = Some(Ending::Shutdown);
                }
                Err(redrive::Interrupted::Halt(error)) => ending = Some(Ending::Halt(error)),
                Err(redrive::Interrupted::State(error)) => {
                    ending = Some(Ending::SourceFailed(error));
                }
            }
        }
        // Send what the window allows, in order (on shutdown too: the source ends the stream at
        // a transaction boundary).
        while !recovering
            && !redrive_due
            && ending_allows_sending(ending.as_ref())
            && has_room(&tracker, settings)
        {
            let Some(entry) = pending.pop_front() else { break };
            metrics.read.inc();
            // Poison (set aside with its reason and any defect) or held behind a dead letter of
            // its key (set aside behind it), or sent.
            let (mut message, aside) = match router.route(entry) {
                Ok(message) => match records.held_behind(message.key.as_deref()).await {
                    Ok(None) => (message, None),
                    Ok(Some(first)) => (message, Some((held_reason(&first), Some(first), None))),
                    Err(error) => {
                        ending = Some(Ending::SourceFailed(error));
                        break;
                    }
                },
                Err(poisoned) => {
                    let Poisoned { entry, error } = *poisoned;
                    let reason = error.to_string();
                    let defect = entry.defect.clone();
                    let message = router.unroutable(entry);
                    match verdict(settings, &message, ConnectorError::permanent(error)) {
                        Verdict::Halt(error) => {
                            ending = Some(Ending::Halt(error));
                            break;
                        }
                        // Poison of a held key stays behind the key's first dead letter too.
                        Verdict::SetAside => {
                            match records.held_behind(message.key.as_deref()).await {
                                Ok(behind) => (message, Some((reason, behind, defect))),
                                Err(error) => {
                                    ending = Some(Ending::SourceFailed(error));
                                    break;
                                }
                            }
                        }
                    }
                }
            };
            message.possible_replay = !records.beyond_doubt(message.position);
            if let Some((reason, behind, defect)) = aside {
                let set_aside = records
                    .set_aside(&message, &reason, behind.as_deref(), defect.as_deref())
                    .await;
                match set_aside {
                    Ok(()) => {
                        tracker.push_settled(message.id, message.position);
                        continue;
                    }
                    Err(error) => {
                        ending = Some(Ending::SourceFailed(error));
                        break;
                    }
                }
            }
            let sent = sink.send(&message).await;
            if message.possible_replay {
                count_recognised(sink, metrics);
            }

            let ticket = tracker.push(message, Instant::now().into_std());
            match sent {
                Ok(confirm) => confirms.push(tagged(ticket, confirm)),
                Err(error) => {
                    report_failure(ticket, &error, recovering);
                    last_failure = Some(crate::sink::chain(&error));
                    tracker.fail(ticket, error);
                    recovering = true;
                }
            }
        }
        // Entries set aside (never sent) may complete the prefix on their own.
        acknowledge_prefix(&mut tracker, &ack_tx, &mut records).await;
        metrics.in_flight.set(tracker.outstanding() as i64);
        // A failed send is the better reason, also over what the client reported on its own.
        if recovering && matches!(metrics.state(), Activity::Running | Activity::Retrying) {
            records.announce(Activity::Retrying, last_failure.as_deref()).await;
        }

        if ending.is_some() {
            stop_reading.cancel();
            if deadline.is_none() {
                deadline = Some(Instant::now() + settings.shutdown_grace);
            }
            // A clean shutdown first sends what the source still delivers (up to a transaction
            // boundary); a halt, a source failure or a failing broker stop sending at once.
            let sent_all = match ending {
                Some(Ending::Shutdown) if !recovering => batches_done && pending.is_empty(),
                _ => true,
            };
            if sent_all && tracker.outstanding() == 0 {
                break;
            }
        } else if recovering && tracker.outstanding() == 0 && retry_at.is_none() {
            // Every confirm is in: the earliest unconfirmed message decides.
            match tracker.blocking_error().map(ConnectorError::retry) {
                Some(Retry::Permanent) => {
                    let (ticket, message) = tracker
                        .blocking_message()
                        .map(|(t, m)| (t, m.clone()))
                        .expect("a failed message keeps its payload");
                    let (_, _, source) =
                        tracker.take_blocking_error().expect("blocker has an error");
                    let reason = crate::sink::chain(&source);
                    match verdict(settings, &message, source) {
                        Verdict::Halt(error) => ending = Some(Ending::Halt(error)),
                        Verdict::SetAside => {
                            let set_aside = match records.held_behind(message.key.as_deref()).await
                            {
                                Ok(behind) => {
                                    records
                                        .set_aside(&message, &reason, behind.as_deref(), None)
                                        .await
                                }
                                Err(error) => Err(error),
                            };
                            match set_aside {
                                Ok(()) => {
                                    tracker.settle_failed(ticket);
                                    retry_at = Some(Instant::now());
                                }
                                Err(error) => ending = Some(Ending::SourceFailed(error)),
                            }
                        }
                    }
                    continue;
                }
                Some(Retry::Fatal) => {
                    let (_, _, source) =
                        tracker.take_blocking_error().expect("blocker has an error");
                    ending =
                        Some(Ending::Halt(RelayError::Fatal { what: "publishing failed", source }));
                    continue;
                }
                Some(Retry::Transient) | None => {
                    let pause = backoff(attempt, settings);
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(attempt, pause = ?pause, unconfirmed = tracker.len(), "re-sending unconfirmed messages in order after a transient failure");
                    retry_at = Some(Instant::now() + pause);
                }
            }
        }

        let accepting = !recovering
            && !batches_done
            && pending.is_empty()
            && ending_allows_sending(ending.as_ref());
        tokio::select! {
            biased;
            () = shutdown.cancelled(), if ending.is_none() => {
                tracing::info!(in_flight = tracker.outstanding(), "shutting down: finishing in-flight messages");
                records.announce(Activity::Stopping, None).await;
                ending = Some(Ending::Shutdown);
            }
            Some((ticket, result)) = confirms.next(), if !confirms.is_empty() => {
                match result {
                    Ok(()) => {
                        if let Some(sent_at) = tracker.confirm(ticket) {
                            metrics.published.inc();
                            metrics.confirm_latency.observe(sent_at.elapsed().as_secs_f64());
                        }
                        if !recovering && ending.is_none() && metrics.state() == Activity::Retrying {
                            records.announce(Activity::Running, None).await;
                        }
                    }
                    Err(error) => {
                        report_failure(ticket, &error, recovering);
                        last_failure = Some(crate::sink::chain(&error));
                        tracker.fail(ticket, error);
                        recovering = true;
                    }
                }
                if acknowledge_prefix(&mut tracker, &ack_tx, &mut records).await {
                    attempt = 0;
                }
            }
            joined = &mut feeder, if !feeder_done => {
                feeder_done = true;
                let error = match joined {
                    Ok((source, Ok(()))) => {
                        kept_source = Some(source);
                        ConnectorError::transient(std::io::Error::other("source stopped"))
                    }
                    Ok((source, Err(error))) => {
                        kept_source = Some(source);
                        error
                    }
                    Err(join) => std::panic::resume_unwind(join.into_panic()),
                };
                if ending.is_none() {
                    tracing::warn!(error = %error, "source failed; finishing in-flight messages");
                    ending = Some(Ending::SourceFailed(error));
                }
            }
            () = sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                retry_at = None;
                metrics.retries.inc();
                let mut resend = tracker.resend_all(Instant::now().into_std()).into_iter();
                recovering = false;
                                while let Some((ticket, message)) = resend.next() {
                    // Set aside (held behind an earlier dead letter of its key), or sent.
                    let held = match records.held_behind(message.key.as_deref()).await {
                        Ok(None) => Ok(false),
                        Ok(Some(first)) => {
                                                        let reason = held_reason(&first);
                            records
                                .set_aside(&message, &reason, Some(&first), None)
                                .await
                                .map(|()| true)
                        }
                        Err(error) => Err(error),
                    };
                    match held {
                        Ok(false) => {}
                        Ok(true) => {
                            tracker.unsend(ticket);
                            tracker.settle_failed(ticket);
                            continue;
                        }
                        Err(error) => {
                            tracker.unsend(ticket);
                            for (unsent, _) in resend.by_ref() {
                                tracker.unsend(unsent);
                            }
                            ending = Some(Ending::SourceFailed(error));
                            break;
                        }
                    }
                                        let sent = sink.send(&message).await;
                    count_recognised(sink, metrics);
                    match sent {
                        Ok(confirm) => confirms.push(tagged(ticket, confirm)),
                        Err(error) => {
                            report_failure(ticket, &error, recovering);
                            last_failure = Some(crate::sink::chain(&error));
                            tracker.fail(ticket, error);
                            recovering = true;
                            for (unsent, _) in resend.by_ref() {
                                tracker.unsend(unsent);
                            }
                        }
                    }
                }
                acknowledge_prefix(&mut tracker, &ack_tx, &mut records).await;
            }
            _ = health_check.tick(), if ending.is_none() => {
                // Messages wait while the client retries on its own (also while a failed round
                // waits for its last confirms): say so (the "circuit" is open), and say when it
                // closes again.
                match sink.trouble().filter(|_| tracker.outstanding() > 0) {
                    Some(reason) => records.announce(Activity::Retrying, Some(&reason)).await,
                    None if !recovering && metrics.state() == Activity::Retrying => {
                        records.announce(Activity::Running, None).await;
                    }
                    None => {}
                }
            }
            () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                tracing::warn!(unconfirmed = tracker.outstanding(), "grace period over; unconfirmed messages will be sent again after restart");
                break;
            }
                        _ = redrive_check.tick(), if ending.is_none() && !redrive_due => {
                match records.state.redrive_requested().await {
                    Ok(requested) => redrive_due = requested,
                    Err(error) => tracing::warn!(error = %error, "cannot look for redrive requests"),
                }
            }
            batch = batches_rx.recv(), if accepting => match batch {
                Some(batch) => {
                    // Write-ahead: before any of it is sent, record how far sending may go.
                    let upto = batch.iter().map(|e| e.position).max();
                    let noted = match upto {
                        Some(upto) => records.state.note_sending(upto).await.map_err(ConnectorError::from),
                        None => Ok(()),
                    };
                    match noted {
                        Ok(()) => pending.extend(batch),
                        Err(error) => ending = Some(Ending::SourceFailed(error)),
                    }
                }
                None => batches_done = true,
            }
        }
    }

    // Acknowledge the final confirmed prefix, let the source apply it, and stop it.
    acknowledge_prefix(&mut tracker, &ack_tx, &mut records).await;
    let last = *ack_tx.borrow();
    if let Some(position) = last {
        records.checkpoint(position, true).await;
    }
    drop(ack_tx);
    let mut final_error = None;
    if !feeder_done {
        match tokio::time::timeout(FINAL_ACK_TIMEOUT, &mut feeder).await {
            Ok(Ok((source, Ok(())))) => kept_source = Some(source),
            Ok(Ok((source, Err(error)))) => {
                kept_source = Some(source);
                final_error = Some(error);
            }
            Ok(Err(join)) => std::panic::resume_unwind(join.into_panic()),
            Err(_) => tracing::warn!("the source did not finish its final acknowledgement in time"),
        }
    }
    metrics.in_flight.set(tracker.outstanding() as i64);

    let outcome = match ending.expect("the loop only ends with an ending") {
        Ending::Halt(error) => {
            records.announce(Activity::Halted, Some(&crate::sink::chain(&error))).await;
            Err(error)
        }
        // A failed final acknowledgement is reported like any source failure.
        _ if final_error.is_some() => source_outcome(final_error.expect("checked")),
        Ending::SourceFailed(error) => source_outcome(error),
        Ending::Shutdown => Ok(Exit::Shutdown),
    };
    drop(kept_source);
    outcome
}

/// Pops the confirmed prefix and hands its end to the source (and, now and then, to the
/// checkpoint). Returns whether the prefix advanced.
async fn acknowledge_prefix(
    tracker: &mut AckTracker,
    ack_tx: &watch::Sender<Option<Position>>,
    records: &mut Records<'_>,
) -> bool {
    let Some((position, count)) = tracker.take_confirmed_prefix() else { return false };
    records.telemetry.metrics.acknowledged.inc_by(count as u64);
    ack_tx.send_replace(Some(position));
    records.checkpoint(position, false).await;
    true
}

/// Halt or set aside, by policy; failures that are nobody's message always halt.
fn verdict(settings: &Settings, message: &Message, source: ConnectorError) -> Verdict {
    match (source.retry(), settings.on_poison) {
        (Retry::Fatal, _) => Verdict::Halt(RelayError::Fatal { what: "publishing failed", source }),
        (_, PoisonPolicy::DeadLetter) => Verdict::SetAside,
        (_, PoisonPolicy::Halt) => Verdict::Halt(RelayError::Poison {
            id: message.id.clone(),
            position: message.position,
            source,
        }),
    }
}

/// A source failure: fatal ones halt, transient ones let the caller rebuild the source.
fn source_outcome(error: ConnectorError) -> Result<Exit, RelayError> {
    match error.retry() {
        Retry::Fatal | Retry::Permanent => {
            Err(RelayError::Fatal { what: "reading the outbox failed", source: error })
        }
        Retry::Transient => Ok(Exit::SourceFailed(error)),
    }
}

/// A confirm that resolves with its ticket (one concrete type for every call site).
fn tagged(ticket: Ticket, confirm: Confirm) -> future::Join<future::Ready<Ticket>, Confirm> {
    future::join(future::ready(ticket), confirm)
}

/// Why an entry waits in the dead letters: an earlier entry of its key is there.
fn held_reason(first: &str) -> String {
    format!("held behind dead letter {first} (same key)")
}

/// Brings the recognised-replays metric up to the sink's own count.
fn count_recognised<K: Sink>(sink: &K, metrics: &Metrics) {
    let (total, shown) = (sink.replays_recognised(), metrics.replays_recognised.get());
    if total > shown {
        metrics.replays_recognised.inc_by(total - shown);
    }
}

/// Running, or shutting down cleanly (which finishes what the source still sends).
fn ending_allows_sending(ending: Option<&Ending>) -> bool {
    matches!(ending, None | Some(Ending::Shutdown))
}

fn has_room(tracker: &AckTracker, settings: &Settings) -> bool {
    tracker.is_empty()
        || (tracker.len() < settings.max_in_flight
            && tracker.bytes() < settings.max_in_flight_bytes)
}

/// The first failure of a round is a warning; the rest of the round only adds detail.
fn report_failure(ticket: Ticket, error: &ConnectorError, already_recovering: bool) {
    if already_recovering {
        tracing::debug!(ticket, retry = ?error.retry(), error = %error, "publish failed");
    } else {
        tracing::warn!(ticket, retry = ?error.retry(), error = %error, "publish failed; sending nothing new until every in-flight confirm is in");
    }
}

/// `initial × 2^attempt`, capped, with jitter in [½, 1] so relays do not retry in lockstep.
pub(crate) fn backoff(attempt: u32, settings: &Settings) -> Duration {
    let exp = settings
        .retry_initial_backoff
        .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
        .min(settings.retry_max_backoff);
    exp.mul_f64(rand::rng().random_range(0.5..=1.0))
}

/// Owns the source: runs [`read_and_ack`], then hands the source back (see `kept_source` in
/// [`run`]).
async fn feed<S: Source>(
    mut source: S,
    batches: mpsc::Sender<Vec<Entry>>,
    acks: watch::Receiver<Option<Position>>,
    limit: BatchLimit,
    ack_interval: Duration,
    stop_reading: CancellationToken,
) -> (S, Result<(), ConnectorError>) {
    let result = read_and_ack(&mut source, batches, acks, limit, ack_interval, stop_reading).await;
    (source, result)
}

/// How much one batch may hold.
#[derive(Clone, Copy, Debug)]
struct BatchLimit {
    entries: usize,
    bytes: usize,
}

/// A batch holds at most a quarter of `max_in_flight_bytes`: the three batches read ahead (one
/// being sent, one in the channel, one in the feed's hand) stay below the in-flight budget, also
/// with large payloads. (WAL tailing reads the fourth quarter ahead from the stream.)
pub(crate) fn batch_bytes(settings: &Settings) -> usize {
    (settings.max_in_flight_bytes / 4).max(1)
}

/// Reads batches while the main loop takes them, and applies the latest acknowledged position
/// at most every `ack_interval`. Ends (after a last acknowledgement) when the main loop drops
/// the acknowledgement sender.
async fn read_and_ack<S: Source>(
    source: &mut S,
    batches: mpsc::Sender<Vec<Entry>>,
    mut acks: watch::Receiver<Option<Position>>,
    limit: BatchLimit,
    ack_interval: Duration,
    stop_reading: CancellationToken,
) -> Result<(), ConnectorError> {
    let mut batches = Some(batches);
    let mut batch: Option<Vec<Entry>> = None;
    let mut acked: Option<Position> = None;
    let mut next_ack = Instant::now();
    loop {
        let wanted = *acks.borrow();
        let ack_due = wanted.is_some() && wanted != acked;
        // After a stop, reading goes on to the end of the current transaction; then the batch
        // channel closes, which tells the main loop that nothing more comes.
        let stopping = stop_reading.is_cancelled();
        if stopping && batch.is_none() && source.at_boundary() {
            batches = None;
        }
        let reading = batches.is_some();
        // Acknowledgements run on their timer and reads on readiness; a new acknowledged
        // position only wakes an idle loop, so a stream of them cannot starve either.
        tokio::select! {
            biased;
            () = sleep_until(next_ack), if ack_due => {
                source.ack(wanted.expect("due")).await?;
                acked = wanted;
                next_ack = Instant::now() + ack_interval;
            }
            permit = reserve(batches.as_ref()), if reading && batch.is_some() => {
                if let Ok(permit) = permit {
                    permit.send(batch.take().expect("checked"));
                }
            }
            ready = source.ready(), if reading && batch.is_none() => {
                ready?;
                let read = source.next_batch(limit.entries, limit.bytes).await?;
                if !read.is_empty() {
                    batch = Some(read);
                }
            }
            changed = acks.changed() => {
                if changed.is_err() {
                    // The main loop is done: apply its final position, make it durable, stop.
                    let last = *acks.borrow();
                    if let Some(position) = last.filter(|_| last != acked) {
                        source.ack(position).await?;
                    }
                    return source.close().await;
                }
            }
            () = stop_reading.cancelled(), if !stopping => {}
        }
    }
}

/// A slot in the batch channel (only polled while the channel is open).
async fn reserve(
    batches: Option<&mpsc::Sender<Vec<Entry>>>,
) -> Result<mpsc::Permit<'_, Vec<Entry>>, mpsc::error::SendError<()>> {
    batches.expect("polled only while open").reserve().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let settings = Settings {
            max_in_flight: 1,
            max_in_flight_bytes: 1,
            batch_size: 1,
            ack_interval: Duration::from_millis(1),
            retry_initial_backoff: Duration::from_millis(100),
            retry_max_backoff: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(1),
            on_poison: PoisonPolicy::Halt,
            same_key: SameKeyPolicy::Wait,
        };
        for _ in 0..50 {
            let first = backoff(0, &settings);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = backoff(2, &settings);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            assert!(backoff(40, &settings) <= Duration::from_secs(2));
        }
    }
}
