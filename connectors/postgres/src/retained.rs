//! Entries read again for `outbox-relay replay`: the rows an outbox table keeps after they were
//! published — polling with `after_publish = "mark"` (rows whose `published_at` is set) or WAL
//! tailing with `"keep"` (every row) — within a range of `seq` and of `created_at`, in `seq`
//! order. Invariants: read-only (nothing is deleted or marked, no lock is taken, so it runs
//! beside the relay); each row is read once, in ascending `seq`, which is commit order per shard
//! key when the app serialises the writers of a key (see [`crate::poll`]).

use outbox_relay_core::Entry;
use tokio_postgres::Statement;

use crate::poll::{bounded_rows, RowCodec};
use crate::table::{PUBLISHED_AT_COLUMN, SEQ_COLUMN};
use crate::{quote_ident, OutboxTable, PostgresError, Session};

/// The timestamp column time bounds compare with (the relay's outbox table has it).
pub const CREATED_AT_COLUMN: &str = "created_at";

/// Which retained rows to read; every bound is inclusive, `None` is open.
#[derive(Clone, Debug, Default)]
pub struct RetainedRange {
    pub from_seq: Option<i64>,
    pub to_seq: Option<i64>,
    /// Times as PostgreSQL reads a `timestamptz`.
    pub from_time: Option<String>,
    pub to_time: Option<String>,
    /// Only rows marked published (`published_at` set): with polling, the others are still the
    /// relay's to send.
    pub published_only: bool,
}

/// What a range holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetainedSummary {
    pub entries: i64,
    pub bytes: i64,
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    pub first_time: Option<String>,
    pub last_time: Option<String>,
}

#[derive(Debug)]
pub struct Retained {
    session: Session,
    codec: RowCodec,
    range: RetainedRange,
    read: Statement,
    summary: Statement,
    /// Highest `seq` read so far.
    cursor: Option<i64>,
}

impl Retained {
    pub async fn open(
        session: Session,
        table: &OutboxTable,
        range: RetainedRange,
    ) -> Result<Self, PostgresError> {
        let missing = |column: &str, hint: &'static str| PostgresError::MissingColumn {
            table: table.name.to_string(),
            column: column.into(),
            hint,
        };
        if !table.has_column(SEQ_COLUMN) {
            return Err(missing(
                SEQ_COLUMN,
                "replay reads entries in seq order; `outbox-relay migrate` adds it for polling \
                 and for WAL tailing with after_publish = \"keep\"",
            ));
        }
        let timed = range.from_time.is_some() || range.to_time.is_some();
        if timed && !table.has_column(CREATED_AT_COLUMN) {
            return Err(missing(
                CREATED_AT_COLUMN,
                "a time range compares with it; use poll:<seq>",
            ));
        }
        if range.published_only && !table.has_column(PUBLISHED_AT_COLUMN) {
            return Err(missing(PUBLISHED_AT_COLUMN, "after_publish = \"mark\" adds it"));
        }
        let codec = RowCodec::new(&session, table).await?;
        let seq = format!("o.{}", quote_ident(SEQ_COLUMN));
        let mut filter =
            format!("($1::int8 is null or {seq} >= $1) and ($2::int8 is null or {seq} <= $2)");
        if timed {
            let created = format!("o.{}", quote_ident(CREATED_AT_COLUMN));
            filter.push_str(&format!(
                " and ($3::text is null or {created} >= $3::text::timestamptz) \
                 and ($4::text is null or {created} <= $4::text::timestamptz)"
            ));
        } else {
            filter.push_str(" and $3::text is null and $4::text is null");
        }
        if range.published_only {
            filter.push_str(&format!(" and o.{} is not null", quote_ident(PUBLISHED_AT_COLUMN)));
        }
        let from = table.name.quoted();
        let select = &codec.select;
        let read = session
            .prepare(&format!(
                "select {select} from {from} o where {filter} and ($5::int8 is null or {seq} > $5) \
                 order by {seq} limit $6"
            ))
            .await?;
        let times = if timed {
            let created = format!("o.{}", quote_ident(CREATED_AT_COLUMN));
            format!("min({created})::text, max({created})::text")
        } else {
            "null::text, null::text".into()
        };
        let summary = session
            .prepare(&format!(
                "select count(*), coalesce(sum(pg_column_size(o.*)), 0)::int8, min({seq}), \
                 max({seq}), {times} from {from} o where {filter}"
            ))
            .await?;
        Ok(Self { session, codec, range, read, summary, cursor: None })
    }

    /// How many entries the range holds, and where it starts and ends.
    pub async fn summary(&self) -> Result<RetainedSummary, PostgresError> {
        let r = &self.range;
        let row = self
            .session
            .timed(
                "counting the entries to replay",
                self.session
                    .client()
                    .query_one(&self.summary, &[&r.from_seq, &r.to_seq, &r.from_time, &r.to_time]),
            )
            .await?;
        Ok(RetainedSummary {
            entries: row.get(0),
            bytes: row.get(1),
            first_seq: row.get(2),
            last_seq: row.get(3),
            first_time: row.get(4),
            last_time: row.get(5),
        })
    }

    /// Ends the range at `seq` (if it ended later): what is published after the replay started
    /// stays out.
    pub fn end_at(&mut self, seq: Option<i64>) {
        if let Some(seq) = seq {
            self.range.to_seq = Some(self.range.to_seq.map_or(seq, |to| to.min(seq)));
        }
    }

    /// The next entries of the range, at most `max` and about `max_bytes`; empty at its end.
    pub async fn next(
        &mut self,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, PostgresError> {
        let r = &self.range;
        let limit = i64::try_from(max.max(1)).unwrap_or(i64::MAX);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
            [&r.from_seq, &r.to_seq, &r.from_time, &r.to_time, &self.cursor, &limit];
        let (rows, _, _) = self
            .session
            .timed(
                "reading entries to replay",
                bounded_rows(self.session.client(), &self.read, &params, max_bytes),
            )
            .await?;
        if let Some(last) = rows.last() {
            self.cursor = Some(last.get(0));
        }
        Ok(rows.iter().map(|row| self.codec.entry(row)).collect())
    }
}
