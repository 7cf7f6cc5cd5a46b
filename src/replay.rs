//! `outbox-relay replay`: publishes retained entries again — after a consumer bug, say — from a
//! time or `seq` range, in `seq` order, each marked with the header `outbox-replay`. Invariants:
//! it never changes the outbox or the pipeline's state and takes no lock, so it runs beside the
//! relay; it reports an entry as replayed only once the broker confirmed it and every entry
//! before it, and when it stops early it names the `seq` to resume from (`--from poll:<seq>`).

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use outbox_relay_core::headers::REPLAY;
use outbox_relay_core::{Confirm, Header, Position, Sink};
use outbox_relay_postgres::{OutboxTable, Retained, RetainedRange, Session};

use crate::config::{AfterPublishConfig, Config, KafkaDelivery, SinkConfig, SourceMode};
use crate::error::RelayError;
use crate::router::Router;
use crate::sink::AnySink;

/// Plain progress lines (no terminal) at most this often.
const LINE_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub(crate) struct ReplayArgs {
    pub(crate) from: String,
    pub(crate) to: Option<String>,
    pub(crate) dry_run: bool,
    pub(crate) label: Option<String>,
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

pub(crate) async fn replay(config: &Config, args: &ReplayArgs) -> Result<(), RelayError> {
    let published_only = match (config.source.mode, config.source.after_publish) {
        (SourceMode::Poll, AfterPublishConfig::Mark) => true,
        (SourceMode::Wal, AfterPublishConfig::Keep) => false,
        (_, AfterPublishConfig::Delete) => {
            return Err(RelayError::ReplayArgument(
                "source.after_publish = \"delete\" keeps no entries to replay: set \"mark\" \
                 (polling) or \"keep\" (WAL tailing) to retain them"
                    .into(),
            ))
        }
        _ => unreachable!("config validation refuses mark with WAL and keep with polling"),
    };
    let options = crate::leader::session_options(config);
    let session = Session::connect(config.postgres.url.expose(), &options).await?;
    let mut range = RetainedRange { published_only, ..RetainedRange::default() };
    for (text, flag) in [(Some(&args.from), "--from"), (args.to.as_ref(), "--to")] {
        let Some(text) = text else { continue };
        let value = match bound(text, flag)? {
            Bound::Seq(seq) => {
                if flag == "--from" {
                    range.from_seq = Some(seq)
                } else {
                    range.to_seq = Some(seq)
                }
                continue;
            }
            Bound::Time(time) => as_timestamptz(&session, &time, flag).await?,
        };
        if flag == "--from" {
            range.from_time = Some(value)
        } else {
            range.to_time = Some(value)
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
        None => {
            let row = session
                .timed(
                    "reading the time",
                    session.client().query_one(
                        "select to_char(now() at time zone 'utc', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
                        &[],
                    ),
                )
                .await?;
            row.get(0)
        }
    };
    let mut retained = Retained::open(session, &table, range).await?;
    let summary = retained.summary().await?;
    let span = match (summary.first_seq, summary.last_seq) {
        (Some(first), Some(last)) => format!(", seq {first}..{last}"),
        _ => String::new(),
    };
    let times = match (&summary.first_time, &summary.last_time) {
        (Some(first), Some(last)) => format!(", created {first} .. {last}"),
        _ => String::new(),
    };
    if args.dry_run {
        println!(
            "would replay {} entries ({} bytes){span}{times} from {} (dry run: nothing sent)",
            summary.entries, summary.bytes, table.name
        );
        return Ok(());
    }

    let router = Router::new(&config.route, &config.pipeline.name)?;
    let mut sink_config = config.sink.clone();
    if let SinkConfig::Kafka(kafka) = &mut sink_config {
        // Its own idempotent producer: a transactional one would fence the running relay's.
        kafka.delivery = KafkaDelivery::Idempotent;
    }
    let mut sink = AnySink::new(&sink_config, &config.pipeline.name)?;
    let window = config.pipeline.max_in_flight.max(1);
    sink.begin_run(window).await.map_err(|source| RelayError::Fatal { what: "replay", source })?;

    let total = u64::try_from(summary.entries).unwrap_or(0);
    let mut progress = Progress::new(total);
    let label_header = Header { name: Arc::from(REPLAY), value: label.clone() };
    // Sent, not yet confirmed: position, confirm, bytes; bounded like the relay's window.
    let mut in_flight: VecDeque<(Position, Confirm, usize)> = VecDeque::new();
    let (mut in_flight_bytes, max_bytes) = (0usize, config.pipeline.max_in_flight_bytes);
    let mut skipped = Vec::new();
    let (mut confirmed, mut last) = (0u64, None);
    let stopped = 'replay: loop {
        let entries =
            retained.next(config.source.batch_size, config.pipeline.max_in_flight_bytes).await?;
        if entries.is_empty() {
            break None;
        }
        for entry in entries {
            let position = entry.position;
            let mut message = match router.route(entry) {
                Ok(message) => message,
                Err(poisoned) => {
                    progress.skip();
                    skipped.push(poisoned.error.to_string());
                    continue;
                }
            };
            // After `id`, `outbox-position` and `outbox-pipeline`; the entry's own stay last.
            message.headers.insert(3.min(message.headers.len()), label_header.clone());
            let size = message.size();
            while in_flight.len() >= window
                || (!in_flight.is_empty() && in_flight_bytes + size > max_bytes)
            {
                let (at, confirm, bytes) = in_flight.pop_front().expect("not empty");
                in_flight_bytes -= bytes;
                if let Err(error) = confirm.await {
                    break 'replay Some((at, error));
                }
                confirmed += 1;
                last = Some(at);
                progress.confirmed(confirmed);
            }
            match sink.send(&message).await {
                Ok(confirm) => {
                    in_flight_bytes += size;
                    in_flight.push_back((position, confirm, size));
                }
                Err(error) => break 'replay Some((position, error)),
            }
        }
    };
    // Everything sent before a failure may still be confirmed: count what is, in order.
    let mut stopped = stopped;
    while let Some((at, confirm, _)) = in_flight.pop_front() {
        if stopped.as_ref().is_some_and(|(failed, _)| *failed < at) {
            break;
        }
        match confirm.await {
            Ok(()) => {
                confirmed += 1;
                last = Some(at);
                progress.confirmed(confirmed);
            }
            Err(error) => {
                stopped = Some((at, error));
                break;
            }
        }
    }
    progress.finish();
    let upto = last.map_or_else(String::new, |at| format!(", up to {at}"));
    if let Some((at, error)) = stopped {
        return Err(RelayError::Replay(format!(
            "stopped after {confirmed} confirmed entries{upto}: {error}. Nothing was lost; run \
             again with --from {at} to go on (entries from there are sent again)"
        )));
    }
    println!(
        "replayed {confirmed} of {} entries{span} to the broker, marked {REPLAY}: {label}",
        summary.entries
    );
    if !skipped.is_empty() {
        for reason in &skipped {
            eprintln!("skipped: {reason}");
        }
        return Err(RelayError::Replay(format!(
            "{} entries could not be routed and were not replayed (listed above)",
            skipped.len()
        )));
    }
    Ok(())
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
