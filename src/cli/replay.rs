//! `outbox-relay replay`: publishes retained entries again — after a consumer bug, say — from a
//! time or `seq` range, in `seq` order, each marked with the header `outbox-replay`. Invariants:
//! it never changes the outbox or the pipeline's state and takes no lock, so it runs beside the
//! relay; it reports an entry as replayed only once the broker confirmed it and every entry
//! before it, and when it stops early it names the `seq` to resume from (`--from poll:<seq>`).

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, Ordering};

use outbox_relay_core::headers::REPLAY;
use outbox_relay_core::{Confirm, Header, Position, Retry, Sink};
use outbox_relay_postgres::{OutboxTable, Retained, RetainedRange, RetainedSummary, Session};

use crate::config::{AfterPublishConfig, Config, KafkaDelivery, SinkConfig, SourceMode};
use crate::error::RelayError;
use crate::router::Router;
use crate::sink::{chain, AnySink};

/// Plain progress lines (no terminal) at most this often.
const LINE_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub(crate) struct ReplayArgs {
    pub(crate) from: String,
    pub(crate) to: Option<String>,
    pub(crate) dry_run: bool,
    pub(crate) label: Option<String>,
    /// WAL tailing: how long to wait for the relay to confirm what the snapshot shows.
    pub(crate) wait: Duration,
}

/// One end of the range, as given.
#[derive(Debug, PartialEq, Eq)]
enum Bound {
    Seq(i64),
    Time(String),
}

fn bound(text: &str, flag: &str) -> Result<Bound, RelayError> {
    if let Some(seq) = text.strip_prefix("poll:") {
        return seq.parse().map(Bound::Seq).map_err(|_| {
            RelayError::ReplayArgument(format!("{flag} {text:?}: poll:<seq> takes a whole number"))
        });
    }
    if text.starts_with("wal:") {
        return Err(RelayError::ReplayArgument(format!(
            "{flag} {text:?}: WAL positions are not kept in the outbox table; give a time \
             (e.g. 2026-12-04T10:00:00Z) or poll:<seq> (the row's seq column)"
        )));
    }
    Ok(Bound::Time(text.to_string()))
}

pub(crate) async fn replay(
    config: &Config,
    args: &ReplayArgs,
    out: &mut impl Write,
) -> Result<(), RelayError> {
    let published_only = match (config.source.mode, config.source.after_publish) {
        (SourceMode::Poll, AfterPublishConfig::Mark) => true,
        (SourceMode::Wal, AfterPublishConfig::Keep) => false,
        (mode, after) => {
            return Err(RelayError::ReplayArgument(
                format!(
                "source.after_publish = {after:?} with mode {mode:?} keeps no entries to replay: \
                 set \"mark\" (polling) or \"keep\" (WAL tailing) to retain them"
            )
                .to_lowercase(),
            ))
        }
    };
    let session = crate::store::connect_as(config, "replay").await?;
    let mut range = RetainedRange { published_only, ..RetainedRange::default() };
    for (text, flag) in [(Some(&args.from), "--from"), (args.to.as_ref(), "--to")] {
        let Some(text) = text else { continue };
        let from = flag == "--from";
        match bound(text, flag)? {
            Bound::Seq(seq) if from => range.from_seq = Some(seq),
            Bound::Seq(seq) => range.to_seq = Some(seq),
            Bound::Time(time) => {
                let time = Some(as_timestamptz(&session, &time, flag).await?);
                if from {
                    range.from_time = time
                } else {
                    range.to_time = time
                }
            }
        }
    }
    let table = OutboxTable::inspect(
        &session,
        config.source.table.parse()?,
        &config.source.id_column,
        &config.source.payload_column,
        false,
    )
    .await?;
    let label = match &args.label {
        Some(label) => label.clone(),
        None => utc_now(&session).await?,
    };
    if !published_only {
        confirmed_snapshot(&session, &config.source.slot, args.wait).await?;
    }
    let mut retained = Retained::open(session, &table, range).await?;
    let summary = retained.summary().await?;
    // What is newer than the range's end now stays out, also while the relay goes on.
    retained.end_at(summary.last_seq);
    let span = match (summary.first_seq, summary.last_seq) {
        (Some(first), Some(last)) => format!(", seq {first}..{last}"),
        _ => String::new(),
    };
    if args.dry_run {
        let times = match (&summary.first_time, &summary.last_time) {
            (Some(first), Some(last)) => format!(", created {first} .. {last}"),
            _ => String::new(),
        };
        writeln!(
            out,
            "would replay {} entries ({} bytes){span}{times} from {} (dry run: nothing sent)",
            summary.entries, summary.bytes, table.name
        )?;
        return Ok(());
    }

    let router = Router::new(&config.route, &config.pipeline.name)?;
    let mut sink_config = config.sink.clone();
    if let SinkConfig::Kafka(kafka) = &mut sink_config {
        // Its own idempotent producer: a transactional one would fence the running relay's.
        kafka.delivery = KafkaDelivery::Idempotent;
    }
    let mut sink = AnySink::new(&sink_config, &config.pipeline.name)?;
    let mut window = Window::new(config, u64::try_from(summary.entries).unwrap_or(0));
    sink.begin_run(window.max_count)
        .await
        .map_err(|source| RelayError::Fatal { what: "replay", source })?;
    let interrupted = interrupted();
    let label_header = Header { name: Arc::from(REPLAY), value: label.clone() };
    // The first entry not handed to the broker yet: where a stop resumes, unless a confirm
    // before it fails.
    let mut next = Position::Poll { seq: range_start(&summary, args) };
    let stop = 'replay: loop {
        if interrupted.load(Ordering::Relaxed) {
            break Some((next, "interrupted".to_string()));
        }
        let batch = retained.next(config.source.batch_size, window.max_bytes).await;
        let entries = match batch {
            Ok(entries) if entries.is_empty() => break None,
            Ok(entries) => entries,
            Err(error) => break Some((next, format!("reading the outbox: {}", chain(&error)))),
        };
        for entry in entries {
            next = entry.position;
            let mut message = match router.route(entry) {
                Ok(message) => message,
                Err(poisoned) => {
                    window.skip(poisoned.error.to_string());
                    continue;
                }
            };
            // After `id`, `outbox-position` and `outbox-pipeline`; the entry's own stay last.
            message.headers.insert(3.min(message.headers.len()), label_header.clone());
            if let Err(stop) = window.room_for(message.size()).await {
                break 'replay Some(stop);
            }
            match sink.send(&message).await {
                Ok(confirm) => window.sent(message.position, confirm, message.size()),
                Err(error) if error.retry() == Retry::Permanent => {
                    window.skip(format!(
                        "entry {:?} at {}: {}",
                        message.id,
                        message.position,
                        chain(&error)
                    ));
                }
                Err(error) => break 'replay Some((message.position, chain(&error))),
            }
            if let Position::Poll { seq } = message.position {
                next = Position::Poll { seq: seq + 1 };
            }
        }
    };
    let stop = window.drain(stop).await;
    window.progress.finish();
    let to = args.to.clone().or_else(|| summary.last_seq.map(|seq| format!("poll:{seq}")));
    let to = to.map_or_else(String::new, |to| format!(" --to {to:?}"));
    if let Some((at, reason)) = stop {
        return Err(RelayError::Replay(format!(
            "stopped after {} confirmed entries: {reason}. Nothing was lost; go on with \
             `replay --from {at}{to}` (entries from there are sent again)",
            window.confirmed
        )));
    }
    writeln!(
        out,
        "replayed {} of {} entries{span} to the broker, marked {REPLAY}: {label}",
        window.confirmed, summary.entries
    )?;
    if !window.skipped.is_empty() {
        for reason in &window.skipped {
            eprintln!("skipped: {reason}");
        }
        return Err(RelayError::Replay(format!(
            "{} entries can never be delivered as they are and were not replayed (listed above)",
            window.skipped.len()
        )));
    }
    Ok(())
}

/// Where the range starts, for a stop before anything was read.
fn range_start(summary: &RetainedSummary, args: &ReplayArgs) -> i64 {
    summary.first_seq.or_else(|| args.from.strip_prefix("poll:")?.parse().ok()).unwrap_or(1)
}

/// Set once SIGINT or SIGTERM arrives: the replay stops sending, waits for what is in flight,
/// and says where to go on.
fn interrupted() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let (shutdown, signals) = crate::shutdown::on_signal();
    let set = Arc::clone(&flag);
    tokio::spawn(async move {
        let _signals = signals;
        shutdown.cancelled().await;
        set.store(true, Ordering::Relaxed);
    });
    flag
}

/// WAL tailing keeps rows the relay may not have delivered yet: replay reads a snapshot in which
/// every row is confirmed. It opens a repeatable-read transaction on `session` (the snapshot)
/// and waits until the slot's confirmed position passes the WAL insert position it saw then —
/// past every commit the snapshot shows.
async fn confirmed_snapshot(
    session: &Session,
    slot: &str,
    wait: Duration,
) -> Result<(), RelayError> {
    let client = session.client();
    session
        .timed(
            "starting the replay snapshot",
            client.batch_execute("begin isolation level repeatable read read only"),
        )
        .await?;
    let lsn: String = session
        .timed(
            "reading the WAL position",
            client.query_one("select pg_current_wal_insert_lsn()::text", &[]),
        )
        .await?
        .get(0);
    let started = Instant::now();
    let mut told = false;
    loop {
        let row = session
            .timed(
                "reading the slot's confirmed position",
                client.query_opt(
                    "select confirmed_flush_lsn >= $1::text::pg_lsn, confirmed_flush_lsn::text \
                     from pg_replication_slots where slot_name = $2",
                    &[&lsn, &slot],
                ),
            )
            .await?;
        let Some(row) = row else {
            return Err(RelayError::ReplayArgument(format!(
                "replication slot {slot:?} does not exist"
            )));
        };
        if row.get::<_, Option<bool>>(0) == Some(true) {
            return Ok(());
        }
        let at: Option<String> = row.get(1);
        let at = at.unwrap_or_else(|| "none".into());
        if started.elapsed() >= wait {
            return Err(RelayError::Replay(format!(
                "the relay has not confirmed everything committed before {lsn} within {wait:?} \
                 (slot {slot:?} is at {at}); rows it has not delivered are not replayed ahead of \
                 it. Start the relay, or wait longer with --wait"
            )));
        }
        if !told {
            eprintln!(
                "replay: waiting for the relay to confirm up to {lsn} (slot {slot:?} is at {at})"
            );
            told = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn utc_now(session: &Session) -> Result<String, RelayError> {
    let now = "select to_char(now() at time zone 'utc', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')";
    let row = session.timed("reading the time", session.client().query_one(now, &[])).await?;
    Ok(row.get(0))
}

/// Messages sent and not yet confirmed, bounded like the relay's window, confirmed in order.
struct Window {
    in_flight: VecDeque<(Position, Confirm, usize)>,
    bytes: usize,
    max_count: usize,
    max_bytes: usize,
    confirmed: u64,
    /// Entries that can never be delivered as they are, with why.
    skipped: Vec<String>,
    progress: Progress,
}

impl Window {
    fn new(config: &Config, total: u64) -> Self {
        Self {
            in_flight: VecDeque::new(),
            bytes: 0,
            max_count: config.pipeline.max_in_flight.max(1),
            max_bytes: config.pipeline.max_in_flight_bytes.max(1),
            confirmed: 0,
            skipped: Vec::new(),
            progress: Progress::new(total),
        }
    }

    fn sent(&mut self, position: Position, confirm: Confirm, size: usize) {
        self.bytes += size;
        self.in_flight.push_back((position, confirm, size));
    }

    fn skip(&mut self, reason: String) {
        self.progress.skip();
        if self.skipped.len() < 1_000 {
            self.skipped.push(reason);
        }
    }

    /// Waits for the oldest confirms until `size` more bytes fit; `Err` is where to resume.
    async fn room_for(&mut self, size: usize) -> Result<(), (Position, String)> {
        while self.in_flight.len() >= self.max_count
            || (!self.in_flight.is_empty() && self.bytes + size > self.max_bytes)
        {
            self.confirm_oldest().await?;
        }
        Ok(())
    }

    async fn confirm_oldest(&mut self) -> Result<(), (Position, String)> {
        let (at, confirm, size) = self.in_flight.pop_front().expect("not empty");
        self.bytes -= size;
        match confirm.await {
            Ok(()) => {
                self.confirmed += 1;
                self.progress.confirmed(self.confirmed);
                Ok(())
            }
            // This message only (returned unroutable, say): the rest go on.
            Err(error) if error.retry() == Retry::Permanent => {
                self.skip(format!("entry at {at}: {}", chain(&error)));
                Ok(())
            }
            Err(error) => Err((at, chain(&error))),
        }
    }

    /// Waits for every confirm before `stop` (all, without one); the first that fails moves the
    /// stop back to it.
    async fn drain(&mut self, mut stop: Option<(Position, String)>) -> Option<(Position, String)> {
        while let Some((at, _, _)) = self.in_flight.front() {
            if stop.as_ref().is_some_and(|(failed, _)| failed <= at) {
                break;
            }
            if let Err(failed) = self.confirm_oldest().await {
                stop = Some(failed);
                break;
            }
        }
        stop
    }
}

/// `time` as PostgreSQL reads a timestamptz, in its text form; a clear error otherwise.
async fn as_timestamptz(session: &Session, time: &str, flag: &str) -> Result<String, RelayError> {
    let parsed = session.client().query_one("select $1::text::timestamptz::text", &[&time]).await;
    parsed.map(|row| row.get(0)).map_err(|e| {
        let reason = e.as_db_error().map_or_else(|| e.to_string(), |db| db.message().to_string());
        RelayError::ReplayArgument(format!(
            "{flag} {time:?} is neither a time (e.g. 2026-12-04T10:00:00Z) nor poll:<seq>: {reason}"
        ))
    })
}

/// Progress on stderr: a bar redrawn in place on a terminal, otherwise a plain line every
/// [`LINE_EVERY`] (and one at the end).
#[derive(Debug)]
struct Progress {
    total: u64,
    done: u64,
    skipped: u64,
    terminal: bool,
    started: Instant,
    shown: Instant,
}

impl Progress {
    fn new(total: u64) -> Self {
        let now = Instant::now();
        Self {
            total,
            done: 0,
            skipped: 0,
            terminal: std::io::stderr().is_terminal(),
            started: now,
            shown: now,
        }
    }

    fn confirmed(&mut self, done: u64) {
        self.done = done;
        self.show(false);
    }

    fn skip(&mut self) {
        self.skipped += 1;
    }

    fn finish(&mut self) {
        self.show(true);
        if self.terminal {
            eprintln!();
        }
    }

    fn show(&mut self, last: bool) {
        let every = if self.terminal { Duration::from_millis(100) } else { LINE_EVERY };
        if !last && self.shown.elapsed() < every {
            return;
        }
        self.shown = Instant::now();
        let (done, total) = (self.done + self.skipped, self.total.max(1));
        let percent = done * 100 / total;
        let rate = self.done as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let filled = (done * 30 / total) as usize;
            let _ = write!(
                err,
                "\r[{}{}] {done}/{} entries {percent:>3}% {rate:.0}/s ",
                "=".repeat(filled.min(30)),
                " ".repeat(30 - filled.min(30)),
                self.total
            );
        } else {
            let _ = writeln!(
                err,
                "replay: {} of {} entries confirmed ({percent}%), {} skipped, {rate:.0}/s",
                self.done, self.total, self.skipped
            );
        }
        let _ = err.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_seqs_or_times_and_wal_positions_are_refused_with_the_reason() {
        assert_eq!(bound("poll:42", "--from").unwrap(), Bound::Seq(42));
        assert_eq!(
            bound("2026-12-04T10:00:00Z", "--to").unwrap(),
            Bound::Time("2026-12-04T10:00:00Z".into())
        );
        let error = bound("poll:x", "--from").unwrap_err().to_string();
        assert!(error.contains("whole number"), "{error}");
        let error = bound("wal:0/16B3748:0", "--from").unwrap_err().to_string();
        assert!(error.contains("not kept in the outbox table"), "{error}");
    }
}
