//! The polling source: reads the oldest visible unpublished outbox rows, and deletes (or marks)
//! them only when the engine acknowledges them.
//!
//! Invariants:
//! - Gap-free: a row is never skipped because a row with a higher `seq` committed first. Reads go
//!   forward from a cursor, and every value the cursor passed without reading is re-read until
//!   [`Holes`] proves it can no longer appear.
//! - Per shard key, rows are emitted in commit order when the app serialises writers of a key
//!   before it inserts the outbox row (a row lock on the aggregate, the usual pattern): such a row
//!   draws its `seq` after the previous writer committed, so `seq` order is commit order, and a
//!   late row is emitted after every row with a higher `seq` that was visible earlier.
//! - Rows leave the table only through [`PollSource::ack`], for rows this source emitted.
//!
//! After any error the source must be dropped and built again: it starts over from the oldest
//! row still in the table, so rows read but not acknowledged are emitted again.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use outbox_relay_core::{ConnectorError, Entry, Fields, PayloadKind, Position, Source};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};

use crate::holes::Holes;
use crate::table::{PUBLISHED_AT_COLUMN, SEQ_COLUMN};
use crate::text::{check_text_payload, text_or_hex, RawText};
use crate::{quote_ident, OutboxTable, PostgresError, Session};

/// Rows per DELETE/UPDATE statement when acknowledging.
const ACK_CHUNK: usize = 5_000;
/// Longest pause between two retention clean-ups with `after_publish = "mark"` (shorter
/// retentions are cleaned up as often as the retention, but at most once a second).
const CLEANUP_AT_MOST_EVERY: Duration = Duration::from_secs(60);
/// Rows deleted per retention statement.
const CLEANUP_CHUNK: i64 = 10_000;
/// Least time between xids drawn to bound holes (each one consumes an xid).
const BOUND_EVERY: Duration = Duration::from_secs(1);
/// Watched hole ranges beyond which the source warns (each is re-read on every poll).
const HOLE_RANGES_WARN: usize = 10_000;

/// What happens to a row once the broker confirmed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterPublish {
    /// Delete the row.
    Delete,
    /// Set `published_at`, and delete rows published longer ago than `retention`.
    Mark { retention: Duration },
}

#[derive(Clone, Debug)]
pub struct PollOptions {
    /// Most rows returned by one read (per part: late rows and new rows).
    pub batch_size: usize,
    /// Fallback wake-up when no NOTIFY arrives.
    pub poll_interval: Duration,
    pub after_publish: AfterPublish,
    /// Channel the outbox trigger notifies; `None` polls on the interval only.
    pub notify_channel: Option<String>,
}

#[derive(Debug)]
pub struct PollSource {
    session: Session,
    table: OutboxTable,
    options: PollOptions,
    statements: Statements,
    codec: RowCodec,
    /// Highest `seq` read so far; values below it that were not read are in `holes`.
    cursor: i64,
    holes: Holes,
    /// `seq` of every emitted, unacknowledged row, in emission order.
    emitted: VecDeque<i64>,
    /// The last read was cut by `batch_size`: read again without waiting.
    more: bool,
    last_cleanup: Instant,
    last_bound: Option<Instant>,
    warned_holes: bool,
}

#[derive(Debug)]
struct Statements {
    xmin: Statement,
    bound: Statement,
    fresh: Statement,
    late: Statement,
    ack: Statement,
    cleanup: Option<Statement>,
}

impl PollSource {
    /// Prepares the reads on `session` (typically the leader session, so only the leader reads).
    pub async fn new(
        session: Session,
        table: OutboxTable,
        options: PollOptions,
    ) -> Result<Self, PostgresError> {
        let mark = matches!(options.after_publish, AfterPublish::Mark { .. });
        if mark && !table.has_column(PUBLISHED_AT_COLUMN) {
            return Err(PostgresError::MissingColumn {
                table: table.name.to_string(),
                column: PUBLISHED_AT_COLUMN.into(),
                hint: "after_publish = \"mark\" needs it: \
                       alter table ... add column published_at timestamptz",
            });
        }
        let codec = RowCodec::new(&session, &table).await?;
        let select = &codec.select;
        let from = table.name.quoted();
        let seq = quote_ident(SEQ_COLUMN);
        let unpublished = if mark {
            format!(" and o.{} is null", quote_ident(PUBLISHED_AT_COLUMN))
        } else {
            String::new()
        };
        let prepare = |sql: String| {
            let session = &session;
            async move { session.prepare(&sql).await }
        };
        let statements = Statements {
            xmin: prepare("select pg_snapshot_xmin(pg_current_snapshot())::text".into()).await?,
            bound: prepare("select pg_current_xact_id()::text".into()).await?,
            fresh: prepare(format!(
                "select {select} from {from} o where o.{seq} > $1{unpublished} \
                 order by o.{seq} limit $2"
            ))
            .await?,
            late: prepare(format!(
                "select {select} from unnest($1::int8[], $2::int8[]) r(lo, hi) \
                 join {from} o on o.{seq} between r.lo and r.hi{unpublished} \
                 order by o.{seq} limit $3"
            ))
            .await?,
            ack: prepare(match options.after_publish {
                AfterPublish::Delete => format!("delete from {from} o where o.{seq} = any($1)"),
                AfterPublish::Mark { .. } => format!(
                    "update {from} o set {p} = now() where o.{seq} = any($1) and o.{p} is null",
                    p = quote_ident(PUBLISHED_AT_COLUMN)
                ),
            })
            .await?,
            cleanup: match options.after_publish {
                AfterPublish::Delete => None,
                AfterPublish::Mark { .. } => Some(
                    prepare(format!(
                        "delete from {from} where {seq} in (select o.{seq} from {from} o \
                         where o.{p} < now() - make_interval(secs => $1) limit $2)",
                        p = quote_ident(PUBLISHED_AT_COLUMN)
                    ))
                    .await?,
                ),
            },
        };
        if let Some(channel) = &options.notify_channel {
            let listen = format!("listen {}", quote_ident(channel));
            session
                .timed("LISTEN on the outbox channel", session.client().batch_execute(&listen))
                .await?;
        }
        Ok(Self {
            session,
            table,
            options,
            statements,
            codec,
            cursor: 0,
            holes: Holes::default(),
            emitted: VecDeque::new(),
            more: true,
            last_cleanup: Instant::now(),
            last_bound: None,
            warned_holes: false,
        })
    }

    /// Values skipped by the cursor and still being watched; for metrics and tests.
    pub fn hole_ranges(&self) -> usize {
        self.holes.ranges()
    }

    async fn read(&mut self, max: usize, max_bytes: usize) -> Result<Vec<Entry>, PostgresError> {
        let limit = i64::try_from(max.max(1)).unwrap_or(i64::MAX);
        let client = self.session.client();
        // One REPEATABLE READ transaction: the xmin and both reads see the same snapshot, which
        // is what the hole rule reasons about.
        self.session
            .timed(
                "starting an outbox read",
                client.batch_execute("begin isolation level repeatable read read only"),
            )
            .await?;
        let xmin_row = self
            .session
            .timed("reading the snapshot", client.query_one(&self.statements.xmin, &[]))
            .await?;
        let xmin = parse_xid(xmin_row.get(0));

        let mut rows = Vec::new();
        let mut late_cut = false;
        let mut late_bytes = 0;
        if !self.holes.is_empty() {
            let (lo, hi) = self.holes.bounds();
            let (late, cut, bytes) = self
                .session
                .timed(
                    "re-reading skipped outbox rows",
                    bounded_rows(client, &self.statements.late, &[&lo, &hi, &limit], max_bytes),
                )
                .await?;
            late_cut = cut || late.len() as i64 >= limit;
            late_bytes = bytes;
            for row in &late {
                self.holes.fill(row.get(0));
            }
            // A cut read saw the holes only up to its last row.
            let scanned_to = late_cut.then(|| late.last().map(|r| r.get::<_, i64>(0))).flatten();
            self.holes.forget_settled(xmin, scanned_to);
            if self.holes.ranges() > HOLE_RANGES_WARN && !self.warned_holes {
                self.warned_holes = true;
                tracing::warn!(
                    ranges = self.holes.ranges(),
                    xmin,
                    "many skipped seq ranges are watched: a long-running transaction holds back \
                     xmin, so they cannot be settled (check pg_stat_activity)"
                );
            }
            rows = late;
        }
        // When late rows were cut short, newer rows wait: one of the rows left behind may
        // precede them in commit order.
        let mut fresh_cut = false;
        if !late_cut {
            let budget = max_bytes.saturating_sub(late_bytes).max(1);
            let (fresh, cut, _) = self
                .session
                .timed(
                    "reading outbox rows",
                    bounded_rows(client, &self.statements.fresh, &[&self.cursor, &limit], budget),
                )
                .await?;
            fresh_cut = cut || fresh.len() as i64 >= limit;
            let seqs: Vec<i64> = fresh.iter().map(|r| r.get(0)).collect();
            self.cursor = self.holes.record_read(self.cursor, &seqs);
            rows.extend(fresh);
        }
        self.session.timed("ending an outbox read", client.batch_execute("commit")).await?;
        self.more = late_cut || fresh_cut;
        if self.holes.needs_bound() && self.last_bound.is_none_or(|at| at.elapsed() >= BOUND_EVERY)
        {
            // After the commit, in its own transaction: an xid newer than any that was assigned
            // when the holes were seen (see `holes`).
            let row = self
                .session
                .timed(
                    "drawing an xid to bound skipped seq values",
                    client.query_one(&self.statements.bound, &[]),
                )
                .await?;
            self.holes.bound_with(parse_xid(row.get(0)));
            self.last_bound = Some(Instant::now());
        }

        // Idle or not, marked rows past their retention go.
        self.clean_up().await?;

        // Late rows all precede the fresh ones in `seq`; within each part the order is `seq`.
        let entries: Vec<Entry> = rows.iter().map(|row| self.codec.entry(row)).collect();
        self.emitted.extend(rows.iter().map(|r| r.get::<_, i64>(0)));
        if !self.holes.is_empty() {
            tracing::trace!(ranges = self.holes.ranges(), "watching skipped seq values");
        }
        Ok(entries)
    }

    async fn acknowledge(&mut self, upto: Position) -> Result<(), PostgresError> {
        let Position::Poll { seq: last } = upto else {
            return Err(PostgresError::UnknownPosition { position: upto.to_string() });
        };
        let Some(count) = self.emitted.iter().position(|&s| s == last).map(|i| i + 1) else {
            return Err(PostgresError::UnknownPosition { position: upto.to_string() });
        };
        let done: Vec<i64> = self.emitted.drain(..count).collect();
        for chunk in done.chunks(ACK_CHUNK) {
            self.session
                .timed(
                    "removing published outbox rows",
                    self.session.client().execute(&self.statements.ack, &[&chunk]),
                )
                .await?;
        }
        self.clean_up().await
    }

    /// `after_publish = "mark"`: delete one chunk of rows past their retention, now and then.
    async fn clean_up(&mut self) -> Result<(), PostgresError> {
        let (Some(cleanup), AfterPublish::Mark { retention }) =
            (&self.statements.cleanup, self.options.after_publish)
        else {
            return Ok(());
        };
        let every = retention.clamp(Duration::from_secs(1), CLEANUP_AT_MOST_EVERY);
        if self.last_cleanup.elapsed() < every {
            return Ok(());
        }
        self.last_cleanup = Instant::now();
        let deleted = self
            .session
            .timed(
                "deleting outbox rows past their retention",
                self.session.client().execute(cleanup, &[&retention.as_secs_f64(), &CLEANUP_CHUNK]),
            )
            .await?;
        if deleted > 0 {
            tracing::debug!(table = %self.table.name, deleted, "deleted rows past retention");
        }
        Ok(())
    }
}

impl Source for PollSource {
    async fn ready(&mut self) -> Result<(), ConnectorError> {
        if !self.more {
            tokio::select! {
                () = self.session.notified() => {}
                () = tokio::time::sleep(self.options.poll_interval) => {}
            }
        }
        Ok(())
    }

    async fn next_batch(
        &mut self,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, ConnectorError> {
        Ok(self.read(max, max_bytes).await?)
    }

    async fn ack(&mut self, upto: Position) -> Result<(), ConnectorError> {
        Ok(self.acknowledge(upto).await?)
    }
}

/// How outbox rows are selected and made into entries: the poll source's reads and `replay`'s.
#[derive(Debug)]
pub(crate) struct RowCodec {
    names: Arc<[Arc<str>]>,
    id_index: usize,
    payload_kind: PayloadKind,
    /// `seq, payload, field1::text, ...` of the table aliased `o`.
    pub(crate) select: String,
}

impl RowCodec {
    pub(crate) async fn new(session: &Session, table: &OutboxTable) -> Result<Self, PostgresError> {
        let fields: Vec<&str> = table.field_columns().collect();
        let id_index = fields.iter().position(|c| *c == table.id_column).expect("checked");
        // A SQL_ASCII database stores any bytes and the server refuses to send a value that
        // is not UTF-8 as text to a UTF-8 client: such text is read as its bytes instead.
        let encoding: String = session
            .timed(
                "reading the server encoding",
                session.client().query_one("select current_setting('server_encoding')", &[]),
            )
            .await?
            .get(0);
        Ok(Self {
            select: select_list(table, &fields, encoding == "SQL_ASCII"),
            names: fields.iter().map(|c| Arc::from(*c)).collect(),
            id_index,
            payload_kind: table.payload_kind,
        })
    }

    /// Text is read as the server's bytes: in a database whose encoding is not UTF-8 (say
    /// `SQL_ASCII`) a value may not be UTF-8, and that makes the entry poison, kept whole (see
    /// [`crate::text`]), never a crash.
    pub(crate) fn entry(&self, row: &Row) -> Entry {
        let seq: i64 = row.get(0);
        let mut defect = None;
        let payload = match self.payload_kind {
            PayloadKind::Binary => row.get::<_, Option<Vec<u8>>>(1).map(Bytes::from),
            PayloadKind::Json | PayloadKind::Text => row.get::<_, Option<RawText>>(1).map(|raw| {
                check_text_payload(&raw.0, &mut defect);
                Bytes::from(raw.0)
            }),
        };
        let values: Vec<Option<String>> = self
            .names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let raw = row.get::<_, Option<RawText>>(i + 2)?;
                Some(text_or_hex(&raw.0, name, &mut defect))
            })
            .collect();
        let id = values[self.id_index].clone().unwrap_or_default();
        Entry {
            position: Position::Poll { seq },
            id,
            fields: Fields::new(Arc::clone(&self.names), values),
            payload,
            payload_kind: self.payload_kind,
            headers: Vec::new(),
            defect,
        }
    }
}

/// The rows of `statement` in order until they hold `max_bytes` (the row that crosses it is
/// the last); whether that cut them short, and their bytes. The rows not taken are dropped as
/// they arrive, never held.
pub(crate) async fn bounded_rows(
    client: &tokio_postgres::Client,
    statement: &Statement,
    params: &[&(dyn ToSql + Sync)],
    max_bytes: usize,
) -> Result<(Vec<Row>, bool, usize), tokio_postgres::Error> {
    let stream = client.query_raw(statement, params.iter().map(|p| *p as &dyn ToSql)).await?;
    futures::pin_mut!(stream);
    let (mut rows, mut bytes) = (Vec::new(), 0);
    while let Some(row) = stream.next().await {
        let row = row?;
        bytes += (0..row.len())
            .map(|i| row.get::<_, Option<RawSize>>(i).map_or(0, |size| size.0))
            .sum::<usize>();
        rows.push(row);
        if bytes >= max_bytes {
            return Ok((rows, true, bytes));
        }
    }
    Ok((rows, false, bytes))
}

/// The size of a value as sent, whatever its type.
struct RawSize(usize);

impl<'a> tokio_postgres::types::FromSql<'a> for RawSize {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Self(raw.len()))
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }
}

/// `seq, payload, field1::text, ...` for `o`; with `raw_text`, text as its bytes
/// (`convert_to(..., 'SQL_ASCII')`: no conversion, so nothing to refuse).
fn select_list(table: &OutboxTable, fields: &[&str], raw_text: bool) -> String {
    let text = |column: &str| {
        let column = quote_ident(column);
        if raw_text {
            format!("convert_to(o.{column}::text, 'SQL_ASCII')")
        } else {
            format!("o.{column}::text")
        }
    };
    let mut list = format!("o.{}, ", quote_ident(SEQ_COLUMN));
    match table.payload_kind {
        PayloadKind::Binary => list.push_str(&format!("o.{}", quote_ident(&table.payload_column))),
        PayloadKind::Json | PayloadKind::Text => list.push_str(&text(&table.payload_column)),
    }
    for field in fields {
        list.push_str(", ");
        list.push_str(&text(field));
    }
    list
}

/// `xid8` arrives as text; it always parses (it is a 64-bit counter).
fn parse_xid(text: &str) -> u64 {
    text.parse().expect("xid8 is a decimal u64")
}
