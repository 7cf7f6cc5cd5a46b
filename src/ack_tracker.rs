//! Ordered acknowledgement. Many messages are in flight at once and the broker confirms them in
//! any order (partitions, lanes); the source may only be told "done up to here" for a
//! **contiguous prefix** of confirmed messages.
//!
//! Invariant: [`AckTracker::take_confirmed_prefix`] never returns a position at or past a message
//! that is not confirmed. A message stays here (with its payload, for re-sending) until it is
//! confirmed; confirmed messages drop their payload at once and leave when the prefix passes
//! them, so memory is bounded by what is in flight.

use std::collections::VecDeque;
use std::time::Instant;

use outbox_relay_core::{ConnectorError, Message, Position};

/// Identifies a message inside the tracker: its index in emission order, for this run.
pub(crate) type Ticket = u64;

#[derive(Debug)]
enum State {
    /// Waiting to be (re-)sent.
    Pending,
    /// Handed to the sink at this instant; its confirm is outstanding.
    Sent(Instant),
    Confirmed,
    Failed(ConnectorError),
}

#[derive(Debug)]
struct Slot {
    id: String,
    position: Position,
    /// Dropped once confirmed.
    message: Option<Message>,
    bytes: usize,
    state: State,
}

#[derive(Debug, Default)]
pub(crate) struct AckTracker {
    /// Ticket of `slots[0]`.
    base: Ticket,
    slots: VecDeque<Slot>,
    /// Bytes of the messages still held (not yet confirmed).
    bytes: usize,
    /// Slots in state `Sent`.
    outstanding: usize,
}

impl AckTracker {
    /// Registers a message about to be sent; it is `Sent` from now.
    pub(crate) fn push(&mut self, message: Message, now: Instant) -> Ticket {
        let ticket = self.base + self.slots.len() as Ticket;
        let bytes = message.size();
        self.bytes += bytes;
        self.outstanding += 1;
        self.slots.push_back(Slot {
            id: message.id.clone(),
            position: message.position,
            message: Some(message),
            bytes,
            state: State::Sent(now),
        });
        ticket
    }

    /// Registers an entry that is done without being sent (set aside as a dead letter, which is
    /// already written): it is acknowledged with the prefix like a confirmed message.
    pub(crate) fn push_settled(&mut self, id: String, position: Position) -> Ticket {
        let ticket = self.base + self.slots.len() as Ticket;
        self.slots.push_back(Slot {
            id,
            position,
            message: None,
            bytes: 0,
            state: State::Confirmed,
        });
        ticket
    }

    /// A failed message was set aside (its dead letter is written): it counts as done.
    pub(crate) fn settle_failed(&mut self, ticket: Ticket) {
        let Some(slot) = self.slot_mut(ticket) else { return };
        if matches!(slot.state, State::Failed(_) | State::Pending) {
            slot.state = State::Confirmed;
            slot.message = None;
            let bytes = slot.bytes;
            self.bytes -= bytes;
        }
    }

    /// The earliest unconfirmed message and its ticket (for setting it aside).
    pub(crate) fn blocking_message(&self) -> Option<(Ticket, &Message)> {
        let (i, slot) =
            self.slots.iter().enumerate().find(|(_, s)| !matches!(s.state, State::Confirmed))?;
        Some((self.base + i as Ticket, slot.message.as_ref()?))
    }

    /// The broker confirmed `ticket`; returns when it was sent, for latency.
    pub(crate) fn confirm(&mut self, ticket: Ticket) -> Option<Instant> {
        let slot = self.slot_mut(ticket)?;
        let State::Sent(sent_at) = slot.state else { return None };
        slot.state = State::Confirmed;
        slot.message = None;
        let bytes = slot.bytes;
        self.bytes -= bytes;
        self.outstanding -= 1;
        Some(sent_at)
    }

    /// Sending or confirming `ticket` failed.
    pub(crate) fn fail(&mut self, ticket: Ticket, error: ConnectorError) {
        let Some(slot) = self.slot_mut(ticket) else { return };
        let was_sent = matches!(slot.state, State::Sent(_));
        if !matches!(slot.state, State::Confirmed) {
            slot.state = State::Failed(error);
        }
        if was_sent {
            self.outstanding -= 1;
        }
    }

    /// Pops the confirmed prefix; returns the position of its last message, if any.
    pub(crate) fn take_confirmed_prefix(&mut self) -> Option<(Position, usize)> {
        let mut last = None;
        let mut count = 0;
        while matches!(self.slots.front(), Some(Slot { state: State::Confirmed, .. })) {
            let slot = self.slots.pop_front().expect("front exists");
            self.base += 1;
            count += 1;
            last = Some(slot.position);
        }
        last.map(|position| (position, count))
    }

    /// Messages not confirmed, in emission order, marked `Sent` again: the caller re-sends
    /// each, in this order (they may have reached the broker: `possible_replay`), and reports it
    /// with [`AckTracker::fail`], [`AckTracker::unsend`] or [`AckTracker::settle_failed`].
    pub(crate) fn resend_all(&mut self, now: Instant) -> Vec<(Ticket, Message)> {
        let mut out = Vec::new();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if matches!(slot.state, State::Pending | State::Failed(_)) {
                let mut message =
                    slot.message.clone().expect("unconfirmed messages keep their payload");
                message.possible_replay = true;
                slot.state = State::Sent(now);
                self.outstanding += 1;
                out.push((self.base + i as Ticket, message));
            }
        }
        out
    }

    /// A message that could not be handed over stays `Pending` (no confirm will come).
    pub(crate) fn unsend(&mut self, ticket: Ticket) {
        let Some(slot) = self.slot_mut(ticket) else { return };
        if matches!(slot.state, State::Sent(_)) {
            slot.state = State::Pending;
            self.outstanding -= 1;
        }
    }

    /// Why the earliest unconfirmed message failed, if it did.
    pub(crate) fn blocking_error(&self) -> Option<&ConnectorError> {
        match &self.slots.iter().find(|s| !matches!(s.state, State::Confirmed))?.state {
            State::Failed(error) => Some(error),
            _ => None,
        }
    }

    /// Takes the error of the earliest failed message (to report it when halting).
    pub(crate) fn take_blocking_error(&mut self) -> Option<(String, Position, ConnectorError)> {
        let slot = self.slots.iter_mut().find(|s| !matches!(s.state, State::Confirmed))?;
        match std::mem::replace(&mut slot.state, State::Pending) {
            State::Failed(error) => Some((slot.id.clone(), slot.position, error)),
            other => {
                slot.state = other;
                None
            }
        }
    }

    /// Messages held: sent, or confirmed behind an unconfirmed one.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Messages whose confirm has not resolved yet.
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding
    }

    fn slot_mut(&mut self, ticket: Ticket) -> Option<&mut Slot> {
        let index = ticket.checked_sub(self.base)?;
        self.slots.get_mut(usize::try_from(index).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use outbox_relay_core::PayloadKind;

    use super::*;

    fn message(seq: i64) -> Message {
        Message {
            id: format!("m{seq}"),
            position: Position::Poll { seq },
            destination: "t".into(),
            key: Some("k".into()),
            headers: Vec::new(),
            payload: Some("0123456789".into()),
            payload_kind: PayloadKind::Json,
            fields: Default::default(),
            own_headers: 0,
            possible_replay: false,
            redrive: false,
            cloudevent: None,
        }
    }

    fn transient() -> ConnectorError {
        ConnectorError::transient(std::io::Error::other("broker away"))
    }

    #[test]
    fn the_prefix_advances_only_over_contiguous_confirms() {
        let now = Instant::now();
        let mut tracker = AckTracker::default();
        let t: Vec<Ticket> = (1..=4).map(|s| tracker.push(message(s), now)).collect();
        tracker.confirm(t[1]);
        tracker.confirm(t[3]);
        assert_eq!(tracker.take_confirmed_prefix(), None, "m1 is not confirmed");
        tracker.confirm(t[0]);
        assert_eq!(tracker.take_confirmed_prefix(), Some((Position::Poll { seq: 2 }, 2)));
        assert_eq!(tracker.len(), 2);
        tracker.confirm(t[2]);
        assert_eq!(tracker.take_confirmed_prefix(), Some((Position::Poll { seq: 4 }, 2)));
        assert!(tracker.is_empty());
        assert_eq!(tracker.bytes(), 0);
    }

    #[test]
    fn a_failed_message_blocks_the_prefix_and_is_resent_first_in_order() {
        let now = Instant::now();
        let mut tracker = AckTracker::default();
        let t: Vec<Ticket> = (1..=3).map(|s| tracker.push(message(s), now)).collect();
        tracker.fail(t[0], transient());
        tracker.confirm(t[1]);
        tracker.fail(t[2], transient());
        assert_eq!(tracker.outstanding(), 0);
        assert_eq!(tracker.take_confirmed_prefix(), None);
        assert!(tracker.blocking_error().is_some());

        let resent: Vec<String> = tracker.resend_all(now).into_iter().map(|(_, m)| m.id).collect();
        assert_eq!(resent, vec!["m1", "m3"], "unconfirmed only, in emission order");
        assert_eq!(tracker.outstanding(), 2);
        tracker.confirm(t[0]);
        tracker.confirm(t[2]);
        assert_eq!(tracker.take_confirmed_prefix(), Some((Position::Poll { seq: 3 }, 3)));
    }

    #[test]
    fn set_aside_entries_are_acknowledged_in_their_place() {
        let now = Instant::now();
        let mut tracker = AckTracker::default();
        let t1 = tracker.push(message(1), now);
        tracker.push_settled("m2".into(), Position::Poll { seq: 2 });
        let t3 = tracker.push(message(3), now);
        assert_eq!(tracker.take_confirmed_prefix(), None);
        tracker.confirm(t1);
        assert_eq!(tracker.take_confirmed_prefix(), Some((Position::Poll { seq: 2 }, 2)));
        tracker.fail(t3, transient());
        assert_eq!(
            tracker.blocking_message().map(|(t, m)| (t, m.id.clone())),
            Some((t3, "m3".into()))
        );
        tracker.settle_failed(t3);
        assert_eq!(tracker.take_confirmed_prefix(), Some((Position::Poll { seq: 3 }, 1)));
        assert_eq!(tracker.bytes(), 0);
    }

    #[test]
    fn confirms_for_unknown_or_settled_tickets_are_ignored() {
        let now = Instant::now();
        let mut tracker = AckTracker::default();
        let t = tracker.push(message(1), now);
        assert!(tracker.confirm(t).is_some());
        assert!(tracker.confirm(t).is_none());
        tracker.fail(t, transient());
        assert!(tracker.confirm(99).is_none());
        assert_eq!(tracker.take_confirmed_prefix(), Some((Position::Poll { seq: 1 }, 1)));
        assert!(tracker.confirm(t).is_none(), "already popped");
    }

    /// Random confirm orders: the acknowledged position is always the last of a fully
    /// confirmed prefix, and every message is acknowledged exactly once.
    #[test]
    fn random_confirm_orders_never_ack_past_an_unconfirmed_message() {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        for _round in 0..200 {
            let now = Instant::now();
            let mut tracker = AckTracker::default();
            let total = 1 + next(60);
            let tickets: Vec<Ticket> =
                (0..total).map(|s| tracker.push(message(s as i64), now)).collect();
            let mut order = tickets.clone();
            for i in (1..order.len()).rev() {
                order.swap(i, next(i + 1));
            }
            let mut confirmed = vec![false; total];
            let mut acked = 0usize;
            for ticket in order {
                tracker.confirm(ticket);
                confirmed[ticket as usize] = true;
                if let Some((Position::Poll { seq }, count)) = tracker.take_confirmed_prefix() {
                    acked += count;
                    assert_eq!(seq as usize + 1, acked, "prefix ends where the count says");
                    assert!(confirmed[..acked].iter().all(|c| *c), "acked past a gap");
                }
            }
            assert_eq!(acked, total);
        }
    }
}
