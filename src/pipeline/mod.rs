//! One run of the data path: source → router → sink → ack tracker → source acknowledgement.
//!
//! Invariants:
//! - **No loss**: the source hears `ack(p)` only for the contiguous prefix of broker-confirmed
//!   messages ([`AckTracker`](crate::ack_tracker::AckTracker)).
//! - **Order per key**: messages are sent in emission order. After any failure nothing new is
//!   sent; once every outstanding confirm has resolved, the earliest unconfirmed message decides:
//!   transient → back off, then re-send every unconfirmed message in its original order;
//!   permanent → set aside or halt, by policy ([`poison`]); fatal → halt. A failed message is
//!   therefore never overtaken by a later message sent after the failure was seen.
//! - **Bounded**: at most `max_in_flight` messages and `max_in_flight_bytes` bytes are held
//!   ([`window`]); the source reads ahead by at most three batches ([`feed`]).
//! - **Redrives in the stream**: dead letters asked for by `dlq redrive` are delivered when
//!   nothing is in flight, before anything read after them ([`redrive`]).
//!
//! The loop: send what the window allows, take stock (acknowledge the confirmed prefix; when a
//! failing round has all its confirms, decide), then wait for the next [`Event`] and handle it.
//!
//! | file        | owns                                                             |
//! |-------------|------------------------------------------------------------------|
//! | `feed`      | the source's task: reading ahead, applying acknowledgements      |
//! | `window`    | pending entries, the ack tracker, confirms, the failing round   |
//! | `poison`    | verdicts on undeliverable messages, dead letters, held keys     |
//! | `records`   | the run's side of the relay's records (state, checkpoint, horizon) |
//! | `ledger`    | the records' interface ([`Ledger`]), kept by `RelayState`        |
//! | `outcome`   | how a run ends ([`Ending`] → [`Exit`]) and the back-off          |
//! | `redrive`   | delivering requested dead letters, one at a time                 |

use std::ops::ControlFlow;
use std::time::Duration;

use outbox_relay_core::{ConnectorError, Entry, Message, Position, Retry, Sink, Source};
use tokio::task::JoinError;
use tokio::time::{sleep_until, Instant, Interval};
use tokio_util::sync::CancellationToken;

use crate::ack_tracker::Ticket;
use crate::config::{PoisonPolicy, SameKeyPolicy};
use crate::error::RelayError;
use crate::router::{Poisoned, Router};
use crate::telemetry::{Activity, Telemetry};

mod feed;
mod ledger;
mod outcome;
mod poison;
mod records;
mod redrive;
#[cfg(test)]
mod tests;
mod window;

pub(crate) use feed::batch_bytes;
use feed::{Fed, Feed};
pub(crate) use ledger::Ledger;
use outcome::Ending;
pub(crate) use outcome::{backoff, Exit};
use poison::{verdict, Aside, Held, Verdict};
use records::Records;
use window::Window;

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

/// How often the relay looks for `dlq redrive` requests.
const REDRIVE_CHECK_EVERY: Duration = Duration::from_secs(1);
/// How often the sink's own view of the broker is looked at (see `Sink::trouble`).
const HEALTH_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Runs the pipeline until shutdown, a source failure or a halt.
pub(crate) async fn run<S, K, L>(
    source: S,
    sink: &mut K,
    router: &Router,
    settings: &Settings,
    telemetry: &Telemetry,
    ledger: &mut L,
    shutdown: &CancellationToken,
) -> Result<Exit, RelayError>
where
    S: Source + 'static,
    K: Sink,
    L: Ledger,
{
    let held = match Held::load(ledger, settings.same_key).await {
        Ok(held) => held,
        // Postgres restarting or failing over: the caller waits and starts again.
        Err(error) if error.retry() == Retry::Transient => return Ok(Exit::SourceFailed(error)),
        Err(source) => {
            return Err(RelayError::Fatal { what: "reading dead letters failed", source })
        }
    };
    let mut run = Run {
        sink,
        router,
        settings,
        telemetry,
        shutdown,
        records: Records::new(ledger, settings, telemetry, held),
        feed: Feed::start(source, settings),
        window: Window::default(),
        retry_at: None,
        attempt: 0,
        ending: None,
        deadline: None,
        health_check: every(HEALTH_CHECK_EVERY),
        redrive_check: every(REDRIVE_CHECK_EVERY),
        redrive_due: false,
    };
    run.records.announce(Activity::Running, None).await;
    loop {
        run.redrive_if_due().await;
        run.send_pending().await;
        run.take_stock().await;
        if run.ending.is_some() {
            if run.wound_down() {
                break;
            }
        } else if run.round_is_in() && run.decide().await.is_break() {
            continue;
        }
        let event = run.next_event().await;
        if run.handle(event).await.is_break() {
            break;
        }
    }
    run.finish().await
}

/// What the main loop waits for.
enum Event<S> {
    Shutdown,
    Confirmed(Ticket, Result<(), ConnectorError>),
    FeedEnded(Result<Fed<S>, JoinError>),
    RetryDue,
    HealthCheck,
    GraceOver,
    RedriveCheck,
    /// A batch from the source; `None` once the source will send no more.
    Batch(Option<Vec<Entry>>),
}

/// One run's state: its parts, what is in flight, and how it is ending.
struct Run<'a, S, K, L> {
    sink: &'a mut K,
    router: &'a Router,
    settings: &'a Settings,
    telemetry: &'a Telemetry,
    shutdown: &'a CancellationToken,
    records: Records<'a, L>,
    feed: Feed<S>,
    window: Window,
    /// When the failing round's unconfirmed messages are sent again.
    retry_at: Option<Instant>,
    /// Failing rounds in a row (for the back-off); reset once the prefix advances.
    attempt: u32,
    ending: Option<Ending>,
    /// Once ending: when unconfirmed messages are given up on (`shutdown_grace`).
    deadline: Option<Instant>,
    health_check: Interval,
    redrive_check: Interval,
    /// `dlq redrive` asked: sending pauses until the redrive ran.
    redrive_due: bool,
}

impl<S, K, L> Run<'_, S, K, L>
where
    S: Source + 'static,
    K: Sink,
    L: Ledger,
{
    /// Delivers requested dead letters once nothing is in flight.
    async fn redrive_if_due(&mut self) {
        let idle = !self.window.failing && self.ending.is_none() && self.window.outstanding() == 0;
        if !(self.redrive_due && idle) {
            return;
        }
        self.redrive_due = false;
        let redriven = redrive::redrive(self.sink, self.router, &mut self.records, self.shutdown);
        if let Err(ending) = redriven.await {
            self.end(ending).await;
        }
    }

    /// Sends what the window allows, in order (on shutdown too: the source ends the stream at
    /// a transaction boundary).
    async fn send_pending(&mut self) {
        while !self.window.failing
            && !self.redrive_due
            && Ending::allows_sending(self.ending.as_ref())
            && self.window.has_room(self.settings)
        {
            let Some(entry) = self.window.pending.pop_front() else { break };
            self.telemetry.metrics.read.inc();
            if let Err(ending) = self.dispatch(entry).await {
                self.ending = Some(ending);
                break;
            }
        }
    }

    /// Routes one entry and sends it, or sets it aside: poison, or held behind a dead letter of
    /// its key.
    async fn dispatch(&mut self, entry: Entry) -> Result<(), Ending> {
        let (mut message, aside) = self.route(entry).await?;
        message.possible_replay = !self.records.beyond_doubt(message.position);
        if let Some(aside) = aside {
            self.records.set_aside(&message, &aside).await?;
            self.window.tracker.push_settled(message.id, message.position);
            return Ok(());
        }
        let sent = self.sink.send(&message).await;
        if message.possible_replay {
            self.count_recognised();
        }
        let ticket = self.window.tracker.push(message, Instant::now().into_std());
        self.window.expect(ticket, sent);
        Ok(())
    }

    /// The message of `entry`, and whether (and why) it is set aside instead of sent.
    async fn route(&mut self, entry: Entry) -> Result<(Message, Option<Aside>), Ending> {
        match self.router.route(entry) {
            Ok(message) => {
                let behind = self.records.held_behind(message.key.as_deref()).await?;
                Ok((message, behind.map(Aside::behind)))
            }
            Err(poisoned) => {
                let Poisoned { entry, error } = *poisoned;
                let reason = error.to_string();
                let defect = entry.defect.clone();
                let message = self.router.unroutable(entry);
                match verdict(self.settings, &message, ConnectorError::permanent(error)) {
                    Verdict::Halt(error) => Err(Ending::Halt(error)),
                    // Poison of a held key stays behind the key's first dead letter too.
                    Verdict::SetAside => {
                        let behind = self.records.held_behind(message.key.as_deref()).await?;
                        Ok((message, Some(Aside { reason, behind, defect })))
                    }
                }
            }
        }
    }

    /// Acknowledges the confirmed prefix (entries set aside may complete it on their own) and
    /// shows what is in flight and why it waits.
    async fn take_stock(&mut self) {
        self.acknowledge().await;
        self.telemetry.metrics.in_flight.set(self.window.outstanding() as i64);
        // A failed send is the better reason, also over what the client reported on its own.
        let state = self.telemetry.metrics.state();
        if self.window.failing && matches!(state, Activity::Running | Activity::Retrying) {
            let failure = self.window.last_failure.clone();
            self.records.announce(Activity::Retrying, failure.as_deref()).await;
        }
    }

    /// Pops the confirmed prefix and hands its end to the source (and, now and then, to the
    /// checkpoint). Returns whether the prefix advanced.
    async fn acknowledge(&mut self) -> bool {
        let Some((position, count)) = self.window.tracker.take_confirmed_prefix() else {
            return false;
        };
        self.telemetry.metrics.acknowledged.inc_by(count as u64);
        self.feed.acknowledge(position);
        self.records.checkpoint(position, false).await;
        true
    }

    /// Ending: stop reading, start the grace period; whether the run is over (everything it
    /// must send was sent, and every confirm is in).
    fn wound_down(&mut self) -> bool {
        self.feed.stop_reading();
        if self.deadline.is_none() {
            self.deadline = Some(Instant::now() + self.settings.shutdown_grace);
        }
        // A clean shutdown first sends what the source still delivers (up to a transaction
        // boundary); a halt, a source failure or a failing broker stop sending at once.
        let sent_all = match self.ending {
            Some(Ending::Shutdown) if !self.window.failing => {
                self.feed.closed && self.window.pending.is_empty()
            }
            _ => true,
        };
        sent_all && self.window.outstanding() == 0
    }

    /// A failing round with every confirm in, not yet decided.
    fn round_is_in(&self) -> bool {
        self.window.failing && self.window.outstanding() == 0 && self.retry_at.is_none()
    }

    /// The earliest unconfirmed message decides: a transient failure schedules the re-send;
    /// poison is set aside or halts; a fatal failure halts. `Break` when the loop should look
    /// again at once, without waiting.
    async fn decide(&mut self) -> ControlFlow<()> {
        match self.window.tracker.blocking_error().map(ConnectorError::retry) {
            Some(Retry::Permanent) => {
                self.set_aside_blocker().await;
                ControlFlow::Break(())
            }
            Some(Retry::Fatal) => {
                let (_, _, source) =
                    self.window.tracker.take_blocking_error().expect("blocker has an error");
                self.ending =
                    Some(Ending::Halt(RelayError::Fatal { what: "publishing failed", source }));
                ControlFlow::Break(())
            }
            Some(Retry::Transient) | None => {
                let pause = backoff(self.attempt, self.settings);
                self.attempt = self.attempt.saturating_add(1);
                tracing::warn!(attempt = self.attempt, pause = ?pause, unconfirmed = self.window.tracker.len(), "re-sending unconfirmed messages in order after a transient failure");
                self.retry_at = Some(Instant::now() + pause);
                ControlFlow::Continue(())
            }
        }
    }

    /// The earliest unconfirmed message is poison: set aside (then the round is re-sent at
    /// once) or halt, by policy.
    async fn set_aside_blocker(&mut self) {
        let (ticket, message) = self
            .window
            .tracker
            .blocking_message()
            .map(|(t, m)| (t, m.clone()))
            .expect("a failed message keeps its payload");
        let (_, _, source) =
            self.window.tracker.take_blocking_error().expect("blocker has an error");
        let reason = crate::sink::chain(&source);
        match verdict(self.settings, &message, source) {
            Verdict::Halt(error) => self.ending = Some(Ending::Halt(error)),
            Verdict::SetAside => match self.records.set_aside_in_turn(&message, reason, None).await
            {
                Ok(()) => {
                    self.window.tracker.settle_failed(ticket);
                    self.retry_at = Some(Instant::now());
                }
                Err(error) => self.ending = Some(error.into()),
            },
        }
    }

    async fn next_event(&mut self) -> Event<S> {
        let running = self.ending.is_none();
        let accepting = !self.window.failing
            && !self.feed.closed
            && self.window.pending.is_empty()
            && Ending::allows_sending(self.ending.as_ref());
        let retry_at = self.retry_at;
        let deadline = self.deadline;
        tokio::select! {
            biased;
            () = self.shutdown.cancelled(), if running => Event::Shutdown,
            Some((ticket, result)) = self.window.next_confirm(), if self.window.awaiting() => {
                Event::Confirmed(ticket, result)
            }
            joined = &mut self.feed.task, if !self.feed.ended => Event::FeedEnded(joined),
            () = sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                Event::RetryDue
            }
            _ = self.health_check.tick(), if running => Event::HealthCheck,
            () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                Event::GraceOver
            }
            _ = self.redrive_check.tick(), if running && !self.redrive_due => Event::RedriveCheck,
            batch = self.feed.batches.recv(), if accepting => Event::Batch(batch),
        }
    }

    /// `Break` once the run is over.
    async fn handle(&mut self, event: Event<S>) -> ControlFlow<()> {
        match event {
            Event::Shutdown => {
                tracing::info!(
                    in_flight = self.window.outstanding(),
                    "shutting down: finishing in-flight messages"
                );
                self.end(Ending::Shutdown).await;
            }
            Event::Confirmed(ticket, result) => self.confirmed(ticket, result).await,
            Event::FeedEnded(joined) => self.feed_ended(joined),
            Event::RetryDue => self.resend().await,
            Event::HealthCheck => self.check_health().await,
            Event::GraceOver => {
                tracing::warn!(
                    unconfirmed = self.window.outstanding(),
                    "grace period over; unconfirmed messages will be sent again after restart"
                );
                return ControlFlow::Break(());
            }
            Event::RedriveCheck => match self.records.ledger.redrive_requested().await {
                Ok(requested) => self.redrive_due = requested,
                Err(error) => tracing::warn!(error = %error, "cannot look for redrive requests"),
            },
            Event::Batch(Some(batch)) => self.take_batch(batch).await,
            Event::Batch(None) => self.feed.closed = true,
        }
        ControlFlow::Continue(())
    }

    /// The run ends for `ending` (a shutdown is announced as such).
    async fn end(&mut self, ending: Ending) {
        if matches!(ending, Ending::Shutdown) {
            self.records.announce(Activity::Stopping, None).await;
        }
        self.ending = Some(ending);
    }

    async fn confirmed(&mut self, ticket: Ticket, result: Result<(), ConnectorError>) {
        match result {
            Ok(()) => {
                if let Some(sent_at) = self.window.tracker.confirm(ticket) {
                    self.telemetry.metrics.published.inc();
                    self.telemetry.metrics.confirm_latency.observe(sent_at.elapsed().as_secs_f64());
                }
                let recovered = !self.window.failing && self.ending.is_none();
                if recovered && self.telemetry.metrics.state() == Activity::Retrying {
                    self.records.announce(Activity::Running, None).await;
                }
            }
            Err(error) => self.window.failed(ticket, error),
        }
        if self.acknowledge().await {
            self.attempt = 0;
        }
    }

    fn feed_ended(&mut self, joined: Result<Fed<S>, JoinError>) {
        let error = self.feed.ended(joined);
        if self.ending.is_none() {
            tracing::warn!(error = %error, "source failed; finishing in-flight messages");
            self.ending = Some(Ending::SourceFailed(error));
        }
    }

    /// Write-ahead: before any of the batch is sent, record how far sending may go.
    async fn take_batch(&mut self, batch: Vec<Entry>) {
        let upto = batch.iter().map(|e| e.position).reduce(Position::max_of);
        let noted = match upto {
            Some(upto) => self.records.ledger.note_sending(upto).await,
            None => Ok(()),
        };
        match noted {
            Ok(()) => self.window.pending.extend(batch),
            Err(error) => self.ending = Some(error.into()),
        }
    }

    /// Re-sends every unconfirmed message in its original order; one held behind a dead
    /// letter of its key (set aside meanwhile) is set aside behind it instead.
    async fn resend(&mut self) {
        self.retry_at = None;
        self.telemetry.metrics.retries.inc();
        let mut resend = self.window.tracker.resend_all(Instant::now().into_std()).into_iter();
        self.window.failing = false;
        while let Some((ticket, message)) = resend.next() {
            let handed = self.resend_one(ticket, &message).await;
            if !matches!(handed, Ok(true)) {
                for (unsent, _) in resend.by_ref() {
                    self.window.tracker.unsend(unsent);
                }
                if let Err(ending) = handed {
                    self.ending = Some(ending);
                }
                break;
            }
        }
        self.acknowledge().await;
    }

    /// Whether the message was handed over (or set aside); `false` when the sink refused it.
    async fn resend_one(&mut self, ticket: Ticket, message: &Message) -> Result<bool, Ending> {
        let held = match self.records.held_behind(message.key.as_deref()).await {
            Ok(None) => Ok(false),
            Ok(Some(first)) => {
                self.records.set_aside(message, &Aside::behind(first)).await.map(|()| true)
            }
            Err(error) => Err(error),
        };
        match held {
            Ok(false) => {}
            Ok(true) => {
                self.window.tracker.unsend(ticket);
                self.window.tracker.settle_failed(ticket);
                return Ok(true);
            }
            Err(error) => {
                self.window.tracker.unsend(ticket);
                return Err(error.into());
            }
        }
        let sent = self.sink.send(message).await;
        self.count_recognised();
        Ok(self.window.expect(ticket, sent))
    }

    /// Messages wait while the client retries on its own (also while a failing round waits
    /// for its last confirms): say so (the "circuit" is open), and say when it closes again.
    async fn check_health(&mut self) {
        match self.sink.trouble().filter(|_| self.window.outstanding() > 0) {
            Some(reason) => self.records.announce(Activity::Retrying, Some(&reason)).await,
            None if !self.window.failing
                && self.telemetry.metrics.state() == Activity::Retrying =>
            {
                self.records.announce(Activity::Running, None).await;
            }
            None => {}
        }
    }

    /// Brings the recognised-replays metric up to the sink's own count.
    fn count_recognised(&self) {
        count_recognised(&*self.sink, self.telemetry);
    }

    /// Acknowledges the final confirmed prefix, lets the source apply it and stop, and says
    /// how the run ended.
    async fn finish(mut self) -> Result<Exit, RelayError> {
        self.acknowledge().await;
        if let Some(position) = self.feed.acknowledged() {
            self.records.checkpoint(position, true).await;
        }
        let final_error = self.feed.finish().await;
        self.telemetry.metrics.in_flight.set(self.window.outstanding() as i64);
        match self.ending.take().expect("the loop only ends with an ending") {
            Ending::Halt(error) => {
                let reason = crate::sink::chain(&error);
                self.records.announce(Activity::Halted, Some(&reason)).await;
                Err(error)
            }
            // A failed final acknowledgement is reported like any source failure.
            _ if final_error.is_some() => {
                Ending::SourceFailed(final_error.expect("checked")).into_exit()
            }
            ending => ending.into_exit(),
        }
        // `self.feed` (with the source, and the leader session it holds) is dropped here.
    }
}

/// Brings the recognised-replays metric up to `sink`'s own count.
fn count_recognised(sink: &impl Sink, telemetry: &Telemetry) {
    let metrics = &telemetry.metrics;
    let (total, shown) = (sink.replays_recognised(), metrics.replays_recognised.get());
    if total > shown {
        metrics.replays_recognised.inc_by(total - shown);
    }
}

/// A timer whose first tick is at once and that does not catch up on missed ticks.
fn every(period: Duration) -> Interval {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}
