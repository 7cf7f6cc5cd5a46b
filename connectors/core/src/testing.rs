//! In-memory stand-ins for a source and a sink (feature `test-util`), so the engine's rules can
//! be tested in-process, in milliseconds, without Postgres or a broker.
//!
//! - [`MemorySource`] emits the entries it was given, in order and in batches as asked, and
//!   records every acknowledgement; it can be told to fail.
//! - [`RecordingSink`] answers every `send` as its script says (confirm, hold the confirm until
//!   released, fail the confirm, refuse the hand-over) and records what was sent and what the
//!   "broker" holds. A script must keep the sink contract: a failure of one message fails the
//!   later ones of its key that are still unconfirmed (as Kafka's idempotent producer does).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures::channel::oneshot;
use futures::FutureExt;

use crate::{
    Capabilities, Checked, Confirm, ConnectorError, Entry, Fields, Message, PayloadKind, Position,
    Replays, Sink, Source,
};

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An outbox row as the default route reads it: `aggregatetype` → topic, `aggregateid` → key.
pub fn row(seq: i64, key: &str) -> Entry {
    let names: Arc<[Arc<str>]> =
        ["id", "aggregatetype", "aggregateid", "type"].into_iter().map(Arc::from).collect();
    let id = format!("e{seq}");
    let values = vec![Some(id.clone()), Some("order".into()), Some(key.into()), Some("t".into())];
    Entry {
        position: Position::Poll { seq },
        id,
        fields: Fields::new(names, values),
        payload: Some(Bytes::from(format!("{{\"seq\": {seq}}}"))),
        payload_kind: PayloadKind::Json,
        headers: Vec::new(),
        defect: None,
    }
}

#[derive(Debug, Default)]
struct SourceState {
    entries: VecDeque<Entry>,
    acked: Vec<Position>,
    /// The next `next_batch` fails with this (once).
    fail: Option<ConnectorError>,
    closed: bool,
    /// `ready` calls waiting for entries.
    waiting: Vec<oneshot::Sender<()>>,
}

impl SourceState {
    fn wake(&mut self) {
        for waiter in self.waiting.drain(..) {
            let _ = waiter.send(());
        }
    }
}

/// What a [`MemorySource`] was asked to do, seen from the test.
#[derive(Clone, Debug, Default)]
pub struct SourceLog(Arc<Mutex<SourceState>>);

impl SourceLog {
    /// Every acknowledgement, in order.
    pub fn acked(&self) -> Vec<Position> {
        locked(&self.0).acked.clone()
    }

    pub fn last_acked(&self) -> Option<Position> {
        locked(&self.0).acked.last().copied()
    }

    /// Whether `close` was called (a clean stop).
    pub fn closed(&self) -> bool {
        locked(&self.0).closed
    }

    /// More entries, as if committed now.
    pub fn add(&self, entries: impl IntoIterator<Item = Entry>) {
        let mut state = locked(&self.0);
        state.entries.extend(entries);
        state.wake();
    }

    /// The next read fails with `error`.
    pub fn fail_next_read(&self, error: ConnectorError) {
        let mut state = locked(&self.0);
        state.fail = Some(error);
        state.wake();
    }
}

/// A source over entries held in memory. `ready` resolves while entries are unread (or a
/// failure is due) and otherwise waits for [`SourceLog::add`] or [`SourceLog::fail_next_read`].
#[derive(Debug)]
pub struct MemorySource(SourceLog);

impl MemorySource {
    pub fn new(entries: impl IntoIterator<Item = Entry>) -> (Self, SourceLog) {
        let log = SourceLog::default();
        log.add(entries);
        (Self(log.clone()), log)
    }
}

impl Source for MemorySource {
    async fn ready(&mut self) -> Result<(), ConnectorError> {
        let woken = {
            let mut state = locked(&(self.0).0);
            if !state.entries.is_empty() || state.fail.is_some() {
                return Ok(());
            }
            let (waiter, woken) = oneshot::channel();
            state.waiting.push(waiter);
            woken
        };
        let _ = woken.await;
        Ok(())
    }

    async fn next_batch(
        &mut self,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, ConnectorError> {
        let mut state = locked(&(self.0).0);
        if let Some(error) = state.fail.take() {
            return Err(error);
        }
        let (mut batch, mut bytes) = (Vec::new(), 0);
        while batch.len() < max && bytes < max_bytes {
            let Some(entry) = state.entries.pop_front() else { break };
            bytes += entry.size();
            batch.push(entry);
        }
        Ok(batch)
    }

    async fn ack(&mut self, upto: Position) -> Result<(), ConnectorError> {
        locked(&(self.0).0).acked.push(upto);
        Ok(())
    }

    async fn close(&mut self) -> Result<(), ConnectorError> {
        locked(&(self.0).0).closed = true;
        Ok(())
    }
}

/// How the "broker" answers one `send`.
#[derive(Debug)]
pub enum Answer {
    /// Taken and confirmed at once.
    Confirm,
    /// Taken; the confirm waits for [`SinkLog::release`].
    Hold,
    /// Taken; the confirm fails with this error (the message is not in the broker).
    FailConfirm(ConnectorError),
    /// Not taken: `send` itself fails with this error.
    Refuse(ConnectorError),
}

/// One `send` as the sink saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    pub id: String,
    pub position: Position,
    pub key: Option<String>,
    pub possible_replay: bool,
    pub redrive: bool,
}

type Script = Box<dyn FnMut(&Message) -> Answer + Send>;

struct SinkState {
    script: Script,
    sent: Vec<Sent>,
    /// Confirmed messages, in the order the broker confirmed them.
    delivered: Vec<Sent>,
    held: Vec<(Sent, oneshot::Sender<Result<(), ConnectorError>>)>,
}

impl std::fmt::Debug for SinkState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkState").field("sent", &self.sent.len()).finish_non_exhaustive()
    }
}

/// What a [`RecordingSink`] was sent, seen from the test.
#[derive(Clone, Debug)]
pub struct SinkLog(Arc<Mutex<SinkState>>);

impl SinkLog {
    /// Every `send`, in order (re-sends included).
    pub fn sent(&self) -> Vec<Sent> {
        locked(&self.0).sent.clone()
    }

    /// Ids of every `send`, in order.
    pub fn sent_ids(&self) -> Vec<String> {
        locked(&self.0).sent.iter().map(|s| s.id.clone()).collect()
    }

    /// Ids the broker confirmed, in the order it confirmed them.
    pub fn delivered_ids(&self) -> Vec<String> {
        locked(&self.0).delivered.iter().map(|s| s.id.clone()).collect()
    }

    /// Confirms waiting for a release.
    pub fn held(&self) -> usize {
        locked(&self.0).held.len()
    }

    /// The broker confirms every held message.
    pub fn release(&self) {
        let mut state = locked(&self.0);
        for (sent, confirm) in std::mem::take(&mut state.held) {
            state.delivered.push(sent);
            let _ = confirm.send(Ok(()));
        }
    }

    /// From now on, `send` answers as `script` says.
    pub fn script(&self, script: impl FnMut(&Message) -> Answer + Send + 'static) {
        locked(&self.0).script = Box::new(script);
    }
}

/// A sink that records what it is sent and answers as scripted.
#[derive(Debug)]
pub struct RecordingSink(SinkLog);

impl RecordingSink {
    /// A sink whose broker confirms everything at once.
    pub fn new() -> (Self, SinkLog) {
        Self::scripted(|_| Answer::Confirm)
    }

    pub fn scripted(script: impl FnMut(&Message) -> Answer + Send + 'static) -> (Self, SinkLog) {
        let state = SinkState {
            script: Box::new(script),
            sent: Vec::new(),
            delivered: Vec::new(),
            held: Vec::new(),
        };
        let log = SinkLog(Arc::new(Mutex::new(state)));
        (Self(log.clone()), log)
    }
}

impl Sink for RecordingSink {
    async fn send(&mut self, message: &Message) -> Result<Confirm, ConnectorError> {
        let mut state = locked(&(self.0).0);
        let sent = Sent {
            id: message.id.clone(),
            position: message.position,
            key: message.key.clone(),
            possible_replay: message.possible_replay,
            redrive: message.redrive,
        };
        state.sent.push(sent.clone());
        match (state.script)(message) {
            Answer::Confirm => {
                state.delivered.push(sent);
                Ok(Box::pin(futures::future::ready(Ok(()))))
            }
            Answer::Hold => {
                let (confirm, resolved) = oneshot::channel();
                state.held.push((sent, confirm));
                Ok(Box::pin(
                    resolved.map(|r| r.unwrap_or_else(|_| Err(ConnectorError::transient(Dropped)))),
                ))
            }
            Answer::FailConfirm(error) => Ok(Box::pin(futures::future::ready(Err(error)))),
            Answer::Refuse(error) => Err(error),
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { orders_by_key: true, replays: Replays::Marked }
    }

    async fn check(&mut self, destination: Option<&str>) -> Result<Checked, ConnectorError> {
        Ok(Checked {
            reached: "the recording sink".into(),
            destination_kind: "destination",
            destination: destination.map(|d| Ok(format!("{d:?} exists"))),
        })
    }
}

/// A held confirm whose sink went away.
#[derive(Debug, thiserror::Error)]
#[error("the recording sink was dropped with the confirm held")]
struct Dropped;
