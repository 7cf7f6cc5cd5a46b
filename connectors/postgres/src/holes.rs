//! Which `seq` values the poll source skipped, and when a skipped value can no longer appear.
//!
//! The poll source reads rows with `seq > hi` in `seq` order. A value below `hi` that no read
//! returned is a *hole*: its row may belong to a transaction still in progress (it commits
//! later), to one that rolled back, or the value was drawn and never used. Holes are re-read on
//! every poll, so a late commit is published as soon as it is visible, and forgotten once no
//! transaction can fill them any more.
//!
//! # The rule
//! The trigger that stamps `seq` first makes the inserting transaction take an xid
//! (`pg_current_xact_id()`), then calls `nextval` on a `CACHE 1` sequence. Say a read with
//! snapshot S returned a row `r` but not `h < r`. Then `r`'s transaction committed before S was
//! taken, `r` was drawn before that, `h` was drawn before `r`, and the xid of the transaction
//! that drew `h` (the *filler*) was assigned before `h` — so before S.
//!
//! A snapshot's `xmax` is **not** an upper bound for that xid: Postgres computes it as
//! `latestCompletedXid + 1`, and a transaction that took its xid before S but has not finished
//! may have a larger xid (it is then simply not listed in `xip`). So after the read the source
//! draws a fresh xid with `pg_current_xact_id()`: xids are assigned in increasing order, so
//! that xid — the hole's *bound* — is greater than the filler's. Once a later snapshot has
//! `xmin >= bound`, every transaction with an xid below the bound has ended: if the filler
//! committed, that snapshot sees its row; if a read in that snapshot does not find `h`, no read
//! ever will. Invariant: a hole is dropped only by that rule or by being read.

use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Hole {
    /// Inclusive upper end of the range of missing `seq` values.
    hi: i64,
    /// An xid drawn after the read that found the range missing; `None` until one is drawn.
    bound: Option<u64>,
}

/// Ranges of unread `seq` values below the read cursor.
#[derive(Debug, Default)]
pub(crate) struct Holes {
    by_lo: BTreeMap<i64, Hole>,
}

impl Holes {
    /// Records the values between `after` and each of `read` (ascending, all `> after`) that a
    /// read skipped. Returns the new cursor (the last value read).
    pub(crate) fn record_read(&mut self, after: i64, read: &[i64]) -> i64 {
        let mut previous = after;
        for &seq in read {
            debug_assert!(seq > previous, "reads come in ascending seq order");
            if seq > previous + 1 {
                self.by_lo.insert(previous + 1, Hole { hi: seq - 1, bound: None });
            }
            previous = seq;
        }
        previous
    }

    /// A late row was read: `seq` is no longer missing.
    pub(crate) fn fill(&mut self, seq: i64) {
        let Some((&lo, &hole)) = self.by_lo.range(..=seq).next_back() else { return };
        if seq > hole.hi {
            return;
        }
        self.by_lo.remove(&lo);
        if lo < seq {
            self.by_lo.insert(lo, Hole { hi: seq - 1, ..hole });
        }
        if seq < hole.hi {
            self.by_lo.insert(seq + 1, hole);
        }
    }

    /// Whether some hole still waits for a bound.
    pub(crate) fn needs_bound(&self) -> bool {
        self.by_lo.values().any(|hole| hole.bound.is_none())
    }

    /// `xid` was drawn after every read so far: it bounds the fillers of every hole without one.
    pub(crate) fn bound_with(&mut self, xid: u64) {
        for hole in self.by_lo.values_mut() {
            hole.bound.get_or_insert(xid);
        }
    }

    /// Forgets the holes that no transaction can fill any more, given the `xmin` of a snapshot in
    /// which they were just read and not found (see the module docs). `scanned_to`: the read was
    /// cut off after this value, so only holes wholly at or below it were read; `None`: all were.
    pub(crate) fn forget_settled(&mut self, xmin: u64, scanned_to: Option<i64>) {
        self.by_lo.retain(|_, hole| {
            let read_whole = scanned_to.is_none_or(|last| hole.hi <= last);
            !read_whole || hole.bound.is_none_or(|bound| bound > xmin)
        });
    }

    /// Inclusive bounds of every range, for `unnest($lo, $hi)`.
    pub(crate) fn bounds(&self) -> (Vec<i64>, Vec<i64>) {
        self.by_lo.iter().map(|(&lo, hole)| (lo, hole.hi)).unzip()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_lo.is_empty()
    }

    pub(crate) fn ranges(&self) -> usize {
        self.by_lo.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(holes: &Holes) -> Vec<(i64, i64)> {
        let (lo, hi) = holes.bounds();
        lo.into_iter().zip(hi).collect()
    }

    #[test]
    fn skipped_values_become_holes_and_the_cursor_advances() {
        let mut holes = Holes::default();
        let hi = holes.record_read(0, &[1, 2, 5, 6, 9]);
        assert_eq!(hi, 9);
        assert_eq!(ranges(&holes), vec![(3, 4), (7, 8)]);
        assert_eq!(holes.record_read(9, &[]), 9);
        assert_eq!(ranges(&holes), vec![(3, 4), (7, 8)]);
    }

    #[test]
    fn filling_splits_a_range() {
        let mut holes = Holes::default();
        holes.record_read(0, &[10]);
        holes.fill(5);
        assert_eq!(ranges(&holes), vec![(1, 4), (6, 9)]);
        holes.fill(1);
        holes.fill(9);
        holes.fill(42); // not a hole: ignored
        assert_eq!(ranges(&holes), vec![(2, 4), (6, 8)]);
        for seq in [2, 3, 4, 6, 7, 8] {
            holes.fill(seq);
        }
        assert!(holes.is_empty());
    }

    #[test]
    fn a_hole_is_forgotten_only_once_every_transaction_below_its_bound_ended() {
        let mut holes = Holes::default();
        holes.record_read(0, &[3]); // hole 1..=2
        holes.forget_settled(u64::MAX, None);
        assert_eq!(ranges(&holes), vec![(1, 2)], "without a bound a hole is never forgotten");
        assert!(holes.needs_bound());
        holes.bound_with(100);
        holes.record_read(3, &[6]); // hole 4..=5, bounded later
        holes.bound_with(120);
        assert!(!holes.needs_bound());
        holes.forget_settled(99, None);
        assert_eq!(ranges(&holes), vec![(1, 2), (4, 5)], "xid 99 may still fill either");
        holes.forget_settled(100, None);
        assert_eq!(ranges(&holes), vec![(4, 5)], "all xids < 100 ended");
        holes.forget_settled(119, None);
        assert_eq!(ranges(&holes), vec![(4, 5)]);
        holes.forget_settled(120, None);
        assert!(holes.is_empty());
    }

    #[test]
    fn a_split_hole_keeps_its_bound() {
        let mut holes = Holes::default();
        holes.record_read(0, &[10]);
        holes.bound_with(50);
        holes.fill(5);
        holes.record_read(10, &[12]); // new hole 11, unbounded
        holes.forget_settled(50, None);
        assert_eq!(ranges(&holes), vec![(11, 11)]);
    }

    /// A read cut off by its limit did not look at the holes past its last row: those stay,
    /// however settled their bound says they are.
    #[test]
    fn holes_past_a_cut_read_are_kept() {
        let mut holes = Holes::default();
        holes.record_read(0, &[1501]); // 1..=1500 missing
        holes.bound_with(10);
        for seq in 1..=1000 {
            holes.fill(seq); // the late read returned 1..=1000, then hit its limit
        }
        holes.forget_settled(10, Some(1000));
        assert_eq!(ranges(&holes), vec![(1001, 1500)], "rows 1001..=1500 are still to be read");
        holes.forget_settled(10, None);
        assert!(holes.is_empty(), "once read in full, the settled hole goes");
    }
}
