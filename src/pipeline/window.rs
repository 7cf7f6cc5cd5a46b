//! What a run holds between the source and the broker: entries read and not yet sent
//! (`pending`), messages sent and not yet acknowledged ([`AckTracker`]), and their confirms.
//!
//! Invariants:
//! - **Bounded**: a message is sent only while fewer than `max_in_flight` messages and
//!   `max_in_flight_bytes` bytes are held (one oversized message may pass alone).
//! - **A failure stops the window**: from the first failed send or confirm until the round is
//!   over (every confirm in, then a re-send), nothing new is sent ([`Window::failing`]).

use std::collections::VecDeque;

use futures::future;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use outbox_relay_core::{Confirm, ConnectorError, Entry};

use super::Settings;
use crate::ack_tracker::{AckTracker, Ticket};

/// A confirm that resolves with its ticket.
type Tagged = future::Join<future::Ready<Ticket>, Confirm>;

#[derive(Default)]
pub(super) struct Window {
    pub(super) pending: VecDeque<Entry>,
    pub(super) tracker: AckTracker,
    confirms: FuturesUnordered<Tagged>,
    /// A send or confirm of this round failed: nothing new goes out.
    pub(super) failing: bool,
    /// The first failure's cause chain, shown as the relay's state.
    pub(super) last_failure: Option<String>,
}

impl Window {
    /// Room for one more message.
    pub(super) fn has_room(&self, settings: &Settings) -> bool {
        self.tracker.is_empty()
            || (self.tracker.len() < settings.max_in_flight
                && self.tracker.bytes() < settings.max_in_flight_bytes)
    }

    /// Messages whose confirm has not resolved yet.
    pub(super) fn outstanding(&self) -> usize {
        self.tracker.outstanding()
    }

    /// Waits for the confirm of `ticket` (the sink took it), or records why it was not taken.
    /// Returns whether the sink took it.
    pub(super) fn expect(&mut self, ticket: Ticket, sent: Result<Confirm, ConnectorError>) -> bool {
        match sent {
            Ok(confirm) => {
                self.confirms.push(future::join(future::ready(ticket), confirm));
                true
            }
            Err(error) => {
                self.failed(ticket, error);
                false
            }
        }
    }

    /// Sending or confirming `ticket` failed: the round is failing.
    pub(super) fn failed(&mut self, ticket: Ticket, error: ConnectorError) {
        // The first failure of a round is a warning; the rest of the round only adds detail.
        if self.failing {
            tracing::debug!(ticket, retry = ?error.retry(), error = %error, "publish failed");
        } else {
            tracing::warn!(ticket, retry = ?error.retry(), error = %error, "publish failed; sending nothing new until every in-flight confirm is in");
        }
        self.last_failure = Some(crate::sink::chain(&error));
        self.tracker.fail(ticket, error);
        self.failing = true;
    }

    /// Whether confirms are awaited (the select arm is live).
    pub(super) fn awaiting(&self) -> bool {
        !self.confirms.is_empty()
    }

    /// The next confirm to resolve.
    pub(super) async fn next_confirm(&mut self) -> Option<(Ticket, Result<(), ConnectorError>)> {
        self.confirms.next().await
    }
}
