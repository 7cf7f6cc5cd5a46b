//! The source's task: reads batches while the main loop takes them, and applies acknowledged
//! positions, so acknowledgements keep flowing while reading waits on back-pressure and the
//! main loop never blocks on the database.
//!
//! Invariants:
//! - The source is acknowledged only up to a position the main loop handed over
//!   ([`Feed::acknowledge`]), at most every `ack_interval`, and once more, durably, at the end.
//! - Reading ahead is bounded: one batch in the channel and one in the feed's hand, each of at
//!   most `batch_size` entries and [`batch_bytes`].
//! - After a stop, reading goes on to the end of the current transaction; then the batch
//!   channel closes, which tells the main loop that nothing more comes.

use std::time::Duration;

use outbox_relay_core::{ConnectorError, Entry, Position, Source};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinError;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::Settings;

/// How long the source gets for its final acknowledgement.
const FINAL_ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// What the feed task hands back when it ends: the source (it holds the leader session, so the
/// pipeline lock, and with it the right to write the relay's records, lasts until the run has
/// said how it ended) and how reading ended.
pub(super) type Fed<S> = (S, Result<(), ConnectorError>);

/// The main loop's handle on the source's task.
pub(super) struct Feed<S> {
    pub(super) task: AbortOnDropHandle<Fed<S>>,
    /// The task has ended (and `kept` holds the source).
    pub(super) ended: bool,
    kept: Option<S>,
    pub(super) batches: mpsc::Receiver<Vec<Entry>>,
    /// The batch channel closed: nothing more will come.
    pub(super) closed: bool,
    acks: Option<watch::Sender<Option<Position>>>,
    stop_reading: CancellationToken,
}

impl<S: Source + 'static> Feed<S> {
    pub(super) fn start(source: S, settings: &Settings) -> Self {
        let (batches_tx, batches) = mpsc::channel::<Vec<Entry>>(1);
        let (acks, ack_rx) = watch::channel::<Option<Position>>(None);
        let stop_reading = CancellationToken::new();
        let limit = BatchLimit { entries: settings.batch_size, bytes: batch_bytes(settings) };
        let task = tokio::spawn(feed(
            source,
            batches_tx,
            ack_rx,
            limit,
            settings.ack_interval,
            stop_reading.clone(),
        ));
        Self {
            task: AbortOnDropHandle::new(task),
            ended: false,
            kept: None,
            batches,
            closed: false,
            acks: Some(acks),
            stop_reading,
        }
    }

    /// Everything up to `position` is confirmed: the source may let go of it.
    pub(super) fn acknowledge(&self, position: Position) {
        if let Some(acks) = &self.acks {
            acks.send_replace(Some(position));
        }
    }

    /// The last position handed to the source.
    pub(super) fn acknowledged(&self) -> Option<Position> {
        self.acks.as_ref().and_then(|acks| *acks.borrow())
    }

    /// Reading stops at the next transaction boundary.
    pub(super) fn stop_reading(&self) {
        self.stop_reading.cancel();
    }

    /// The task ended on its own: keeps the source and says why reading ended.
    pub(super) fn ended(&mut self, joined: Result<Fed<S>, JoinError>) -> ConnectorError {
        self.ended = true;
        match joined {
            Ok((source, result)) => {
                self.kept = Some(source);
                result.err().unwrap_or_else(|| {
                    ConnectorError::transient(std::io::Error::other("source stopped"))
                })
            }
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }

    /// Lets the source apply the final acknowledgement and stop; its failure, if it failed.
    /// The source itself is kept until the feed is dropped.
    pub(super) async fn finish(&mut self) -> Option<ConnectorError> {
        self.acks = None;
        if self.ended {
            return None;
        }
        self.ended = true;
        match tokio::time::timeout(FINAL_ACK_TIMEOUT, &mut self.task).await {
            Ok(Ok((source, result))) => {
                self.kept = Some(source);
                result.err()
            }
            Ok(Err(join)) => std::panic::resume_unwind(join.into_panic()),
            Err(_) => {
                tracing::warn!("the source did not finish its final acknowledgement in time");
                None
            }
        }
    }
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

/// Owns the source: runs [`read_and_ack`], then hands the source back.
async fn feed<S: Source>(
    mut source: S,
    batches: mpsc::Sender<Vec<Entry>>,
    acks: watch::Receiver<Option<Position>>,
    limit: BatchLimit,
    ack_interval: Duration,
    stop_reading: CancellationToken,
) -> Fed<S> {
    let result = read_and_ack(&mut source, batches, acks, limit, ack_interval, stop_reading).await;
    (source, result)
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
