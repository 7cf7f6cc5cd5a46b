//! Which flush position may be reported to the server (see the progress rules in the module
//! above). Pure bookkeeping, so the rules are tested without a server.
//!
//! Invariant: the returned flush positions only grow, and each is the commit `end_lsn` of a
//! transaction whose Commit arrived and whose every entry was acknowledged — or, when nothing
//! at all is pending, a position the server itself reported as sent.

use std::collections::VecDeque;

use outbox_relay_core::Lsn;

#[derive(Debug)]
struct TxnMark {
    commit_lsn: Lsn,
    /// Known once Commit arrived.
    end_lsn: Option<Lsn>,
    /// Index of its last entry; `None` for a transaction without entries.
    last_index: Option<u32>,
}

#[derive(Debug)]
pub(crate) struct Progress {
    /// The transaction being received, and the index of its next entry (wider than an index,
    /// so running past the last one is seen, never wrapped).
    open: Option<(Lsn, u64)>,
    /// Transactions not yet passed, oldest first.
    pending: VecDeque<TxnMark>,
    acked: Option<(Lsn, u32)>,
    confirmed: Lsn,
}

impl Progress {
    /// Starts from the slot's confirmed flush position.
    pub(crate) fn new(confirmed: Lsn) -> Self {
        Self { open: None, pending: VecDeque::new(), acked: None, confirmed }
    }

    pub(crate) fn confirmed(&self) -> Lsn {
        self.confirmed
    }

    pub(crate) fn in_transaction(&self) -> bool {
        self.open.is_some()
    }

    pub(crate) fn begin(&mut self, commit_lsn: Lsn) {
        self.open = Some((commit_lsn, 0));
        self.pending.push_back(TxnMark { commit_lsn, end_lsn: None, last_index: None });
    }

    /// The position of the next entry of the open transaction (`None` outside one); `Err`
    /// with the commit LSN if the transaction has more entries than an index can number.
    pub(crate) fn next_entry(&mut self) -> Option<Result<(Lsn, u32), Lsn>> {
        let (commit_lsn, next) = self.open.as_mut()?;
        let Ok(index) = u32::try_from(*next) else { return Some(Err(*commit_lsn)) };
        *next += 1;
        Some(Ok((*commit_lsn, index)))
    }

    /// An entry outside any transaction (a non-transactional logical message at `lsn`), as a
    /// transaction of its own: flushed, once acknowledged, to `lsn` itself, so a restart before
    /// that hands it over again.
    pub(crate) fn alone(&mut self, lsn: Lsn) -> (Lsn, u32) {
        self.pending.push_back(TxnMark {
            commit_lsn: lsn,
            end_lsn: Some(lsn),
            last_index: Some(0),
        });
        (lsn, 0)
    }

    /// Commit arrived; returns a new flush position if one can be reported now.
    pub(crate) fn commit(&mut self, end_lsn: Lsn) -> Option<Lsn> {
        if let Some((_, next_index)) = self.open.take() {
            let mark = self.pending.back_mut().expect("begin pushed a mark");
            mark.end_lsn = Some(end_lsn);
            // At most `u32::MAX + 1` entries were numbered (see `next_entry`).
            mark.last_index = next_index.checked_sub(1).map(|i| i as u32);
        }
        self.settle()
    }

    /// Everything up to and including `(commit_lsn, index)` is acknowledged.
    pub(crate) fn ack(&mut self, commit_lsn: Lsn, index: u32) -> Option<Lsn> {
        self.acked = Some((commit_lsn, index));
        self.settle()
    }

    /// The server sent everything up to `lsn` (keepalive, heartbeat): usable only when nothing
    /// is pending.
    pub(crate) fn idle(&mut self, lsn: Lsn) -> Option<Lsn> {
        if self.open.is_none() && self.pending.is_empty() {
            self.raise(lsn)
        } else {
            None
        }
    }

    fn settle(&mut self) -> Option<Lsn> {
        let mut reached = None;
        while let Some(front) = self.pending.front() {
            let Some(end_lsn) = front.end_lsn else { break };
            let done = match front.last_index {
                None => true,
                Some(last) => self.acked.is_some_and(|acked| acked >= (front.commit_lsn, last)),
            };
            if !done {
                break;
            }
            reached = Some(end_lsn);
            self.pending.pop_front();
        }
        reached.and_then(|lsn| self.raise(lsn))
    }

    fn raise(&mut self, lsn: Lsn) -> Option<Lsn> {
        (lsn > self.confirmed).then(|| {
            self.confirmed = lsn;
            lsn
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsn(n: u64) -> Lsn {
        Lsn(n)
    }

    #[test]
    fn a_transaction_is_flushed_only_when_committed_and_fully_acknowledged() {
        let mut p = Progress::new(lsn(10));
        p.begin(lsn(100));
        assert_eq!(p.next_entry(), Some(Ok((lsn(100), 0))));
        assert_eq!(p.next_entry(), Some(Ok((lsn(100), 1))));
        assert_eq!(p.ack(lsn(100), 1), None, "no Commit yet: a crash would lose the rest");
        assert_eq!(p.commit(lsn(108)), Some(lsn(108)), "committed and all acknowledged");
        assert_eq!(p.confirmed(), lsn(108));
    }

    #[test]
    fn a_partly_acknowledged_transaction_holds_the_flush_position() {
        let mut p = Progress::new(lsn(10));
        p.begin(lsn(100));
        p.next_entry();
        p.next_entry();
        p.next_entry();
        assert_eq!(p.commit(lsn(108)), None);
        assert_eq!(p.ack(lsn(100), 1), None, "entry 2 is not acknowledged");
        p.begin(lsn(200));
        p.next_entry();
        assert_eq!(p.commit(lsn(208)), None);
        assert_eq!(p.idle(lsn(500)), None, "a keepalive cannot pass pending work");
        assert_eq!(p.ack(lsn(200), 0), Some(lsn(208)), "both transactions done at once");
    }

    #[test]
    fn empty_transactions_and_keepalives_move_an_idle_slot() {
        let mut p = Progress::new(lsn(10));
        p.begin(lsn(50));
        assert_eq!(p.commit(lsn(58)), Some(lsn(58)), "nothing to wait for");
        assert_eq!(p.idle(lsn(70)), Some(lsn(70)));
        assert_eq!(p.idle(lsn(60)), None, "never backwards");
        p.begin(lsn(80));
        assert_eq!(p.idle(lsn(90)), None, "inside a transaction");
    }

    #[test]
    fn an_empty_transaction_behind_pending_work_waits_its_turn() {
        let mut p = Progress::new(lsn(0));
        p.begin(lsn(100));
        p.next_entry();
        p.commit(lsn(108));
        p.begin(lsn(120));
        assert_eq!(p.commit(lsn(128)), None, "the transaction before it is not acknowledged");
        assert_eq!(p.ack(lsn(100), 0), Some(lsn(128)));
    }

    #[test]
    fn a_transaction_too_large_to_number_is_an_error_not_a_wrap() {
        let mut p = Progress::new(lsn(0));
        p.begin(lsn(100));
        p.open = Some((lsn(100), u64::from(u32::MAX)));
        assert_eq!(p.next_entry(), Some(Ok((lsn(100), u32::MAX))));
        assert_eq!(p.next_entry(), Some(Err(lsn(100))), "index 0 again would reorder");
        assert_eq!(p.commit(lsn(108)), None);
        assert_eq!(p.ack(lsn(100), u32::MAX), Some(lsn(108)));
    }

    #[test]
    fn an_entry_alone_is_flushed_to_its_own_lsn_once_acknowledged_in_order() {
        let mut p = Progress::new(lsn(0));
        p.begin(lsn(100));
        p.next_entry();
        p.commit(lsn(108));
        assert_eq!(p.alone(lsn(120)), (lsn(120), 0));
        assert_eq!(p.idle(lsn(130)), None);
        assert_eq!(p.ack(lsn(100), 0), Some(lsn(108)), "the message is not acknowledged yet");
        assert_eq!(p.ack(lsn(120), 0), Some(lsn(120)), "replayed by a restart before this");
    }
}
