//! The run's side of the relay's records: the [`Ledger`] plus what the run keeps of it (the
//! replay horizon, the held keys, the last state announced, the last checkpoint written).

use std::time::Duration;

use outbox_relay_core::Position;
use tokio::time::Instant;

use super::ledger::Ledger;
use super::poison::Held;
use super::Settings;
use crate::telemetry::{Activity, Telemetry};

/// Least time between two writes of the same state with a different detail.
const DETAIL_REFRESH: Duration = Duration::from_secs(10);
/// Least time between two checkpoint writes.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

pub(super) struct Records<'a, L> {
    pub(super) ledger: &'a mut L,
    pub(super) settings: &'a Settings,
    pub(super) telemetry: &'a Telemetry,
    pub(super) held: Held,
    /// Messages at or below it may have been sent by an earlier run.
    horizon: Option<Position>,
    last_checkpoint: Instant,
    /// What was last announced, and when, so an unchanged state is not written again.
    announced: Option<(Activity, Option<String>, Instant)>,
}

impl<'a, L: Ledger> Records<'a, L> {
    pub(super) fn new(
        ledger: &'a mut L,
        settings: &'a Settings,
        telemetry: &'a Telemetry,
        held: Held,
    ) -> Self {
        let horizon = ledger.replay_horizon();
        Self {
            ledger,
            settings,
            telemetry,
            held,
            horizon,
            last_checkpoint: Instant::now(),
            announced: None,
        }
    }

    /// Announces what the relay is doing, to metrics and to `outbox_relay.pipelines`.
    pub(super) async fn announce(&mut self, activity: Activity, detail: Option<&str>) {
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
        match self.ledger.note_state(activity.as_str(), detail).await {
            Ok(()) => self.announced = Some((activity, detail.map(str::to_owned), Instant::now())),
            Err(error) => tracing::warn!(error = %error, "cannot record the relay's state"),
        }
    }

    /// Whether `position` cannot have been sent by an earlier run (it is above the horizon,
    /// or of another kind of source than the horizon).
    pub(super) fn beyond_doubt(&self, position: Position) -> bool {
        !self.horizon.is_some_and(|horizon| position <= horizon)
    }

    /// Writes the checkpoint, at most every second unless `force`d. A failed write is only
    /// logged: the source's own acknowledgement is what counts; this is for operators.
    pub(super) async fn checkpoint(&mut self, position: Position, force: bool) {
        if force || self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            self.last_checkpoint = Instant::now();
            if let Err(error) = self.ledger.note_acked(position).await {
                tracing::warn!(error = %error, "cannot record the checkpoint");
            }
        }
    }
}
