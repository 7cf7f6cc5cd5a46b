//! Where an entry sits in its source. Invariant: within one source, positions of emitted entries
//! compare in emission order for WAL; for polling, acknowledgement works by identity (see
//! [`Position::Poll`]).

use std::fmt;
use std::str::FromStr;

/// A PostgreSQL log sequence number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = PositionParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PositionParseError(s.to_owned());
        let (hi, lo) = s.split_once('/').ok_or_else(bad)?;
        let hi = u64::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| bad())?;
        if hi > u64::from(u32::MAX) || lo > u64::from(u32::MAX) {
            return Err(bad());
        }
        Ok(Lsn((hi << 32) | lo))
    }
}

/// The source position of one entry; carried on every message so replays can be recognised.
///
/// Positions of one kind compare; a WAL position and a poll position do not (after a switch
/// from polling to WAL tailing, the horizon and checkpoint of the old source say nothing about
/// the new one): `partial_cmp` is `None` for them, so every `<`, `<=`, `>=` across kinds is false.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Position {
    /// WAL: the commit LSN of the entry's transaction and the entry's index inside it.
    /// Totally ordered in commit order, stable across restarts.
    Wal { commit_lsn: Lsn, index: u32 },
    /// Polling: the outbox row's `seq`. Unique per row, but a row whose transaction committed late
    /// is emitted after rows with a higher `seq`, so the poll source acknowledges by identity
    /// ("everything I emitted up to and including this row"), never by comparing values.
    Poll { seq: i64 },
}

impl PartialOrd for Position {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        match (self, other) {
            (
                Position::Wal { commit_lsn: a, index: i },
                Position::Wal { commit_lsn: b, index: j },
            ) => Some((a, i).cmp(&(b, j))),
            (Position::Poll { seq: a }, Position::Poll { seq: b }) => Some(a.cmp(b)),
            _ => None,
        }
    }
}

impl Position {
    /// The later of two positions of one kind; `other` when they do not compare (the newer
    /// source's position replaces the older's).
    #[must_use]
    pub fn max_of(self, other: Position) -> Position {
        if self > other {
            self
        } else {
            other
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Wal { commit_lsn, index } => write!(f, "wal:{commit_lsn}:{index}"),
            Position::Poll { seq } => write!(f, "poll:{seq}"),
        }
    }
}

/// A position string that is not of the form `wal:<lsn>:<index>` or `poll:<seq>`.
#[derive(Debug, thiserror::Error)]
#[error("invalid source position {0:?}: expected `wal:<hi>/<lo>:<index>` or `poll:<seq>`")]
pub struct PositionParseError(String);

impl FromStr for Position {
    type Err = PositionParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PositionParseError(s.to_owned());
        if let Some(rest) = s.strip_prefix("wal:") {
            let (lsn, index) = rest.rsplit_once(':').ok_or_else(bad)?;
            let commit_lsn = lsn.parse().map_err(|_| bad())?;
            let index = index.parse().map_err(|_| bad())?;
            Ok(Position::Wal { commit_lsn, index })
        } else if let Some(seq) = s.strip_prefix("poll:") {
            Ok(Position::Poll { seq: seq.parse().map_err(|_| bad())? })
        } else {
            Err(bad())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_in_postgres_notation() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn.0, 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert!("16".parse::<Lsn>().is_err());
        assert!("1/100000000".parse::<Lsn>().is_err());
    }

    #[test]
    fn positions_round_trip_and_order_in_commit_order() {
        for text in ["wal:0/16B3748:0", "wal:1/0:4294967295", "poll:42", "poll:-1"] {
            let p: Position = text.parse().unwrap();
            assert_eq!(p.to_string(), text);
        }
        let a: Position = "wal:0/10:5".parse().unwrap();
        let b: Position = "wal:0/11:0".parse().unwrap();
        assert!(a < b);
        let poll = Position::Poll { seq: i64::MAX };
        assert_eq!(a.partial_cmp(&poll), None, "kinds do not compare");
        assert_eq!(a.max_of(b), b);
        assert_eq!(b.max_of(poll), poll, "the newer kind replaces the older");
        assert!("kafka:1".parse::<Position>().is_err());
        assert!("wal:0/10".parse::<Position>().is_err());
    }
}
