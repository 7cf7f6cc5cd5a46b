//! In-process tests of the run's rules, on an in-memory source, sink and ledger: each runs in
//! milliseconds. The black-box suite (`tests/`) checks the same rules against real systems.

use std::collections::HashMap;
use std::future::Future;

use outbox_relay_core::testing::{row, Answer, MemorySource, RecordingSink, SourceLog};

use super::*;
use crate::config::RouteConfig;
use crate::store::dead_letters::{DeadLetter, Stored};

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_in_flight: 1000,
            max_in_flight_bytes: 1 << 20,
            batch_size: 100,
            ack_interval: Duration::from_millis(1),
            retry_initial_backoff: Duration::from_millis(1),
            retry_max_backoff: Duration::from_millis(5),
            shutdown_grace: Duration::from_secs(5),
            on_poison: PoisonPolicy::Halt,
            same_key: SameKeyPolicy::Wait,
        }
    }
}

/// A dead letter as the memory ledger keeps it.
#[derive(Debug)]
struct Letter {
    seq: i64,
    entry_id: String,
    position: Position,
    key: Option<String>,
    reason: String,
    held_behind: Option<String>,
    fields: String,
    payload: Option<Vec<u8>>,
    payload_kind: &'static str,
    own_headers: String,
    defect: Option<String>,
    sent_before: bool,
    requested: bool,
    redriven: bool,
}

/// The relay's records in memory, with the semantics of `RelayState`'s statements.
#[derive(Debug, Default)]
struct MemoryLedger {
    horizon: Option<Position>,
    sending: Vec<Position>,
    acked: Vec<Position>,
    states: Vec<String>,
    letters: Vec<Letter>,
}

impl MemoryLedger {
    fn live(&self) -> impl Iterator<Item = &Letter> {
        self.letters.iter().filter(|l| !l.redriven)
    }

    fn letter(&self, id: &str) -> &Letter {
        self.letters.iter().find(|l| l.entry_id == id).unwrap_or_else(|| panic!("no letter {id}"))
    }

    fn letter_mut(&mut self, seq: i64) -> &mut Letter {
        self.letters.iter_mut().find(|l| l.seq == seq).expect("the run names stored letters")
    }

    /// Marks every live dead letter requested, like `outbox-relay dlq redrive`.
    fn request_redrive(&mut self) {
        for letter in self.letters.iter_mut().filter(|l| !l.redriven) {
            letter.requested = true;
        }
    }
}

impl Ledger for MemoryLedger {
    fn replay_horizon(&self) -> Option<Position> {
        self.horizon
    }

    async fn note_sending(&mut self, upto: Position) -> Result<(), ConnectorError> {
        self.sending.push(upto);
        Ok(())
    }

    async fn note_acked(&mut self, upto: Position) -> Result<(), ConnectorError> {
        self.acked.push(upto);
        Ok(())
    }

    async fn note_state(&mut self, state: &str, _: Option<&str>) -> Result<(), ConnectorError> {
        self.states.push(state.to_owned());
        Ok(())
    }

    async fn dead_letter(
        &mut self,
        message: &Message,
        reason: &str,
        held_behind: Option<&str>,
        defect: Option<&str>,
    ) -> Result<(), ConnectorError> {
        if self.live().any(|l| l.position == message.position) {
            return Ok(());
        }
        let requested =
            held_behind.is_some() && self.live().any(|l| l.key == message.key && l.requested);
        let stored = Stored::of(message);
        let letter = Letter {
            seq: self.letters.len() as i64 + 1,
            entry_id: message.id.clone(),
            position: message.position,
            key: message.key.clone(),
            reason: reason.to_owned(),
            held_behind: held_behind.map(str::to_owned),
            fields: stored.fields,
            payload: message.payload.as_ref().map(|p| p.to_vec()),
            payload_kind: stored.payload_kind,
            own_headers: stored.own_headers,
            defect: defect.map(str::to_owned),
            sent_before: message.possible_replay,
            requested,
            redriven: false,
        };
        self.letters.push(letter);
        Ok(())
    }

    async fn held_keys(&self) -> Result<HashMap<String, String>, ConnectorError> {
        let mut keys = HashMap::new();
        for letter in self.live() {
            if let Some(key) = &letter.key {
                keys.entry(key.clone()).or_insert_with(|| letter.entry_id.clone());
            }
        }
        Ok(keys)
    }

    async fn first_held(&self, key: &str) -> Result<Option<String>, ConnectorError> {
        Ok(self.live().find(|l| l.key.as_deref() == Some(key)).map(|l| l.entry_id.clone()))
    }

    async fn redrive_requested(&self) -> Result<bool, ConnectorError> {
        Ok(self.live().any(|l| l.requested))
    }

    async fn requested_dead_letters(&self) -> Result<Vec<DeadLetter>, ConnectorError> {
        Ok(self
            .live()
            .filter(|l| l.requested)
            .map(|l| DeadLetter {
                seq: l.seq,
                entry_id: l.entry_id.clone(),
                position: l.position.to_string(),
                held_behind: l.held_behind.clone(),
                shard_key: l.key.clone(),
                fields: l.fields.clone(),
                payload: l.payload.clone(),
                payload_kind: Some(l.payload_kind.to_owned()),
                own_headers: Some(l.own_headers.clone()),
                defect: l.defect.clone(),
                sent_before: l.sent_before,
            })
            .collect())
    }

    async fn note_redrive_sending(&mut self, seq: i64) -> Result<(), ConnectorError> {
        self.letter_mut(seq).sent_before = true;
        Ok(())
    }

    async fn note_redriven(&mut self, seq: i64) -> Result<(), ConnectorError> {
        self.letter_mut(seq).redriven = true;
        Ok(())
    }

    async fn note_still_dead(
        &mut self,
        seq: i64,
        reason: &str,
        behind: Option<&str>,
    ) -> Result<(), ConnectorError> {
        let letter = self.letter_mut(seq);
        letter.reason = reason.to_owned();
        letter.held_behind = behind.map(str::to_owned);
        letter.requested = false;
        Ok(())
    }
}

fn router() -> Router {
    Router::new(&RouteConfig::default(), "test").expect("the default route is valid")
}

fn transient(what: &str) -> ConnectorError {
    ConnectorError::transient(std::io::Error::other(what.to_owned()))
}

fn permanent(what: &str) -> ConnectorError {
    ConnectorError::permanent(std::io::Error::other(what.to_owned()))
}

fn poll(seq: i64) -> Position {
    Position::Poll { seq }
}

/// Rows `1..=n`, keys cycling through `keys`.
fn rows(n: i64, keys: &[&str]) -> Vec<Entry> {
    (1..=n).map(|seq| row(seq, keys[(seq as usize - 1) % keys.len()])).collect()
}

fn ids(range: std::ops::RangeInclusive<i64>) -> Vec<String> {
    range.map(|seq| format!("e{seq}")).collect()
}

/// Waits (up to 10 s) until `done` holds.
async fn until(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Runs the pipeline over `source` into `sink` beside `driver`, which shuts it down when it
/// returns (a run that ends on its own ends the test sooner).
async fn run_with<K: Sink>(
    source: MemorySource,
    sink: &mut K,
    settings: &Settings,
    ledger: &mut MemoryLedger,
    driver: impl Future<Output = ()>,
) -> Result<Exit, RelayError> {
    let (router, telemetry, shutdown) = (router(), Telemetry::new(), CancellationToken::new());
    let run = run(source, sink, &router, settings, &telemetry, ledger, &shutdown);
    let stop = async {
        driver.await;
        shutdown.cancel();
        std::future::pending::<()>().await;
    };
    let result = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::select! {
            result = run => result,
            () = stop => unreachable!("pending"),
        }
    });
    result.await.expect("the run ends")
}

/// Runs until the source has been acknowledged up to `last`, then shuts down.
async fn run_until_acked(
    source: (MemorySource, SourceLog),
    sink: &mut RecordingSink,
    settings: &Settings,
    ledger: &mut MemoryLedger,
    last: Position,
) -> (Result<Exit, RelayError>, SourceLog) {
    let (source, log) = source;
    let acked = log.clone();
    let result =
        run_with(source, sink, settings, ledger, until(move || acked.last_acked() == Some(last)))
            .await;
    (result, log)
}

#[tokio::test]
async fn every_entry_is_delivered_in_order_acknowledged_and_recorded() {
    let (mut sink, sent) = RecordingSink::new();
    let settings = Settings { batch_size: 7, max_in_flight: 10, ..Settings::default() };
    let mut ledger = MemoryLedger::default();
    let source = MemorySource::new(rows(50, &["a", "b", "c"]));
    let (result, source) =
        run_until_acked(source, &mut sink, &settings, &mut ledger, poll(50)).await;

    assert!(matches!(result, Ok(Exit::Shutdown)), "{result:?}");
    assert_eq!(sent.delivered_ids(), ids(1..=50));
    assert_eq!(sent.sent_ids(), ids(1..=50), "each sent once");
    assert!(sent.sent().iter().all(|s| !s.possible_replay), "no horizon: nothing is a replay");
    assert!(source.closed(), "a clean stop closes the source");
    assert!(source.acked().windows(2).all(|w| w[0] < w[1]), "{:?}", source.acked());
    // Write-ahead: every batch's end was recorded before it was sent.
    assert_eq!(ledger.sending.last(), Some(&poll(50)));
    assert_eq!(ledger.acked.last(), Some(&poll(50)), "the final checkpoint");
    assert_eq!(ledger.states.first().map(String::as_str), Some("running"));
    assert_eq!(ledger.states.last().map(String::as_str), Some("stopping"));
}

#[tokio::test]
async fn entries_at_or_below_the_replay_horizon_go_out_as_possible_replays() {
    let (mut sink, sent) = RecordingSink::new();
    let mut ledger = MemoryLedger { horizon: Some(poll(3)), ..MemoryLedger::default() };
    let source = MemorySource::new(rows(5, &["a"]));
    let settings = Settings::default();
    run_until_acked(source, &mut sink, &settings, &mut ledger, poll(5)).await.0.unwrap();
    let replays: Vec<bool> = sent.sent().iter().map(|s| s.possible_replay).collect();
    assert_eq!(replays, [true, true, true, false, false]);
}

/// A broker outage that begins with the first send of `first` and ends with its `attempts`-th
/// send: every send in between fails (as Kafka fails every later message of a partition once
/// one failed).
fn outage_at(first: &'static str, attempts: usize) -> impl FnMut(&Message) -> Answer + Send {
    let mut sends_of_first = 0;
    move |message| {
        if message.id == first {
            sends_of_first += 1;
        }
        if (1..attempts).contains(&sends_of_first) {
            Answer::FailConfirm(transient("broker away"))
        } else {
            Answer::Confirm
        }
    }
}

#[tokio::test]
async fn after_a_transient_failure_the_unconfirmed_go_again_in_order_before_anything_new() {
    let (mut sink, sent) = RecordingSink::scripted(outage_at("e5", 3));
    let settings = Settings { batch_size: 4, max_in_flight: 8, ..Settings::default() };
    let mut ledger = MemoryLedger::default();
    let source = MemorySource::new(rows(20, &["a"]));
    let (result, source) =
        run_until_acked(source, &mut sink, &settings, &mut ledger, poll(20)).await;

    result.unwrap();
    assert_eq!(sent.delivered_ids(), ids(1..=20), "one key: delivered exactly in order");
    let log = sent.sent();
    let first_replay = log.iter().position(|s| s.possible_replay).expect("a re-send");
    assert_eq!(log[first_replay].id, "e5", "the earliest unconfirmed goes first: {log:?}");
    let rounds = log.iter().filter(|s| s.id == "e5").count();
    assert_eq!(rounds, 3, "two failing rounds, then the broker is back: {log:?}");
    assert!(log.iter().take(first_replay).all(|s| !s.possible_replay));
    // The prefix never passed e4 before e5 was delivered.
    let acked = source.acked();
    assert!(acked.iter().all(|p| *p <= poll(4) || *p >= poll(5)), "{acked:?}");
    assert_eq!(acked.last(), Some(&poll(20)));
}

#[tokio::test]
async fn the_window_holds_at_most_max_in_flight_messages() {
    let (mut sink, sent) = RecordingSink::scripted(|_| Answer::Hold);
    let settings = Settings { batch_size: 2, max_in_flight: 3, ..Settings::default() };
    let mut ledger = MemoryLedger::default();
    let (source, log) = MemorySource::new(rows(10, &["a", "b"]));
    let driver = async {
        let mut widest = 0;
        while log.last_acked() != Some(poll(10)) {
            tokio::time::sleep(Duration::from_millis(2)).await;
            let held = sent.held();
            widest = widest.max(held);
            assert!(held <= 3, "{held} confirms outstanding");
            sent.release();
        }
        assert_eq!(widest, 3, "the window fills up");
    };
    run_with(source, &mut sink, &settings, &mut ledger, driver).await.unwrap();
    assert_eq!(sent.delivered_ids(), ids(1..=10));
}

#[tokio::test]
async fn poison_halts_under_the_halt_policy_and_nothing_after_it_is_acknowledged() {
    let (mut sink, sent) = RecordingSink::new();
    let mut entries = rows(5, &["a", "b"]);
    entries[2].defect = Some("not a JSON envelope".into());
    let (source, log) = MemorySource::new(entries);
    let mut ledger = MemoryLedger::default();
    let settings = Settings::default();
    let result = run_with(source, &mut sink, &settings, &mut ledger, until(|| false)).await;

    let Err(RelayError::Poison { id, position, .. }) = result else { panic!("{result:?}") };
    assert_eq!((id.as_str(), position), ("e3", poll(3)));
    assert_eq!(sent.sent_ids(), ids(1..=2), "nothing after the poison is sent");
    assert_eq!(log.last_acked(), Some(poll(2)));
    assert_eq!(ledger.states.last().map(String::as_str), Some("halted"));
    assert!(ledger.letters.is_empty());
}

#[tokio::test]
async fn poison_is_set_aside_and_later_entries_of_its_key_wait_behind_it() {
    let (mut sink, sent) = RecordingSink::new();
    let mut entries = rows(5, &["a", "b"]);
    entries[2].defect = Some("not a JSON envelope".into()); // e3, key a
    let source = MemorySource::new(entries);
    let mut ledger = MemoryLedger::default();
    let settings = Settings { on_poison: PoisonPolicy::DeadLetter, ..Settings::default() };
    run_until_acked(source, &mut sink, &settings, &mut ledger, poll(5)).await.0.unwrap();

    assert_eq!(sent.delivered_ids(), ["e1", "e2", "e4"], "key b flows, key a waits after e3");
    let poison = ledger.letter("e3");
    assert!(poison.reason.contains("not a JSON envelope"), "{poison:?}");
    assert_eq!(poison.held_behind, None);
    let held = ledger.letter("e5");
    assert_eq!(held.held_behind.as_deref(), Some("e3"));
    assert_eq!(held.reason, "held behind dead letter e3 (same key)");
}

#[tokio::test]
async fn a_refused_message_is_set_aside_and_its_key_flows_on_under_continue() {
    let (mut sink, sent) = RecordingSink::scripted(|m: &Message| match m.id.as_str() {
        "e2" => Answer::Refuse(permanent("message too large")),
        _ => Answer::Confirm,
    });
    let source = MemorySource::new(rows(4, &["a"]));
    let mut ledger = MemoryLedger::default();
    let settings = Settings {
        on_poison: PoisonPolicy::DeadLetter,
        same_key: SameKeyPolicy::Continue,
        ..Settings::default()
    };
    run_until_acked(source, &mut sink, &settings, &mut ledger, poll(4)).await.0.unwrap();

    assert_eq!(sent.delivered_ids(), ["e1", "e3", "e4"]);
    assert!(ledger.letter("e2").reason.contains("message too large"));
    assert_eq!(ledger.letters.len(), 1);
}

#[tokio::test]
async fn a_redrive_goes_out_before_what_is_read_after_it_and_releases_its_key() {
    // An earlier run set e1 (key a) aside, and e2 behind it; an operator asked for a redrive.
    let mut ledger = MemoryLedger::default();
    let router = router();
    let mut first = router.route(row(1, "a")).unwrap();
    first.possible_replay = true;
    ledger.dead_letter(&first, "broker said no", None, None).await.unwrap();
    let second = router.route(row(2, "a")).unwrap();
    ledger
        .dead_letter(&second, "held behind dead letter e1 (same key)", Some("e1"), None)
        .await
        .unwrap();
    ledger.request_redrive();

    let (mut sink, sent) = RecordingSink::new();
    let source = MemorySource::new(vec![row(3, "a"), row(4, "b")]);
    let settings = Settings::default();
    run_until_acked(source, &mut sink, &settings, &mut ledger, poll(4)).await.0.unwrap();

    // Key a: the redrive first, then e3 (set aside behind e1 and redriven with it if it was
    // read before the request was seen; sent in the stream if after); key b is not held back.
    let log = sent.sent();
    let key_a: Vec<&str> =
        log.iter().filter(|s| s.key.as_deref() == Some("a")).map(|s| s.id.as_str()).collect();
    assert_eq!(key_a, ["e1", "e2", "e3"], "{log:?}");
    assert!(log.iter().filter(|s| s.id == "e1" || s.id == "e2").all(|s| s.redrive));
    assert!(sent.delivered_ids().contains(&"e4".to_owned()));
    assert!(log[log.iter().position(|s| s.id == "e1").unwrap()].possible_replay, "sent before");
    assert!(ledger.letters.iter().all(|l| l.redriven), "{:?}", ledger.letters);
}

#[tokio::test]
async fn shutdown_waits_for_what_is_in_flight_and_acknowledges_it() {
    let (mut sink, sent) = RecordingSink::scripted(|_| Answer::Hold);
    let (source, log) = MemorySource::new(rows(5, &["a"]));
    let mut ledger = MemoryLedger::default();
    let settings = Settings::default();
    let (router, telemetry, shutdown) = (router(), Telemetry::new(), CancellationToken::new());
    let run = run(source, &mut sink, &router, &settings, &telemetry, &mut ledger, &shutdown);
    let driver = async {
        until(|| sent.held() == 5).await;
        shutdown.cancel();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(log.acked().is_empty(), "nothing is acknowledged before it is confirmed");
        sent.release();
        std::future::pending::<()>().await;
    };
    let result = tokio::select! {
        result = run => result,
        () = driver => unreachable!(),
    };
    assert!(matches!(result, Ok(Exit::Shutdown)), "{result:?}");
    assert_eq!(log.last_acked(), Some(poll(5)));
    assert!(log.closed());
}

#[tokio::test]
async fn a_source_failure_ends_the_run_for_the_caller_to_start_again() {
    let (mut sink, sent) = RecordingSink::new();
    let (source, log) = MemorySource::new(Vec::new());
    log.fail_next_read(transient("connection reset"));
    let mut ledger = MemoryLedger::default();
    let settings = Settings::default();
    let result = run_with(source, &mut sink, &settings, &mut ledger, until(|| false)).await;
    assert!(matches!(result, Ok(Exit::SourceFailed(_))), "{result:?}");
    assert!(sent.sent().is_empty());
}
