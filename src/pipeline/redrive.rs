//! Redriving dead letters: `outbox-relay dlq redrive` asks, the leading relay delivers, at a
//! point of its own stream.
//!
//! Invariants:
//! - **Order per key**: a redrive runs only when nothing else is in flight, and each dead letter
//!   is confirmed by the broker before the next one is sent and before the stream goes on. An
//!   entry of its key that the relay reads later follows it — even one committed before the
//!   request; one read earlier was held behind it and is part of the same redrive.
//! - **No loss**: a dead letter is marked redriven only after its confirm. One that fails again
//!   stays live with the new reason, first of its key, and the entries behind it stay held.
//! - **Repeats are known**: a dead letter is marked sent before it is handed to the broker; a
//!   redrive cut short (crash, shutdown) sends it again as a possible replay, which Kafka looks
//!   for by id and RabbitMQ marks.

use std::collections::HashMap;
use std::time::Duration;

use outbox_relay_core::{Confirm, ConnectorError, Retry, Sink};
use tokio_util::sync::CancellationToken;

use super::ledger::Ledger;
use super::outcome::{backoff, Ending};
use super::poison::{held_reason, verdict, Verdict};
use super::records::Records;
use crate::config::SameKeyPolicy;
use crate::router::{Poisoned, Router};
use crate::store::dead_letters::DeadLetter;
use crate::telemetry::Activity;

/// Delivers every requested dead letter, in the order they were set aside; returns how many
/// were delivered. The caller has nothing in flight.
pub(super) async fn redrive<K: Sink, L: Ledger>(
    sink: &mut K,
    router: &Router,
    records: &mut Records<'_, L>,
    shutdown: &CancellationToken,
) -> Result<usize, Ending> {
    let letters = records.ledger.requested_dead_letters().await?;
    tracing::info!(count = letters.len(), "redriving dead letters");
    // Key → its dead letter that failed again, now first of the key. Entries of the key after
    // it stay, behind it: those held behind a dead letter, and with "wait" every one (set aside
    // for a reason of its own while the key flowed).
    let mut failed: HashMap<String, String> = HashMap::new();
    let wait = records.settings.same_key == SameKeyPolicy::Wait;
    let mut delivered = 0;
    for letter in letters {
        let holds = letter.held_behind.is_some() || wait;
        if let Some(first) = letter.shard_key.as_ref().filter(|_| holds).and_then(|k| failed.get(k))
        {
            let reason = held_reason(first);
            records.ledger.note_still_dead(letter.seq, &reason, Some(first)).await?;
            continue;
        }
        match deliver(sink, router, records, &letter, shutdown).await? {
            None => {
                records.ledger.note_redriven(letter.seq).await?;
                records.telemetry.metrics.published.inc();
                tracing::info!(entry = %letter.entry_id, "dead letter redriven");
                delivered += 1;
            }
            Some(reason) => {
                tracing::warn!(entry = %letter.entry_id, reason, "dead letter failed again; it stays");
                records.ledger.note_still_dead(letter.seq, &reason, None).await?;
                if let Some(key) = &letter.shard_key {
                    failed.entry(key.clone()).or_insert_with(|| letter.entry_id.clone());
                }
            }
        }
    }
    if records.telemetry.metrics.state() == Activity::Retrying {
        records.announce(Activity::Running, None).await;
    }
    Ok(delivered)
}

/// Sends one dead letter until the broker confirms it (`None`) or it proves poison again (the
/// reason), retrying transient failures with backoff.
async fn deliver<K: Sink, L: Ledger>(
    sink: &mut K,
    router: &Router,
    records: &mut Records<'_, L>,
    letter: &DeadLetter,
    shutdown: &CancellationToken,
) -> Result<Option<String>, Ending> {
    let entry = match letter.entry() {
        Ok(entry) => entry,
        Err(reason) => return Ok(Some(reason)),
    };
    let mut possible_replay = letter.sent_before;
    // Whether the row already says it may have been sent (written once, before the first send).
    let mut noted = letter.sent_before;
    let mut attempt = 0;
    loop {
        let (message, failure) = match router.route(entry.clone()) {
            Ok(mut message) => {
                message.redrive = true;
                message.possible_replay = possible_replay;
                if !noted {
                    records.ledger.note_redrive_sending(letter.seq).await?;
                    noted = true;
                }
                let sent = sink.send(&message).await;
                super::count_recognised(sink, records.telemetry);
                let sent = match sent {
                    Ok(confirm) => {
                        let grace = records.settings.shutdown_grace;
                        confirmed(confirm, shutdown, grace).await.ok_or(Ending::Shutdown)?
                    }
                    Err(error) => Err(error),
                };
                match sent {
                    Ok(()) => return Ok(None),
                    Err(error) => (message, error),
                }
            }
            Err(poisoned) => {
                let Poisoned { entry, error } = *poisoned;
                (router.unroutable(entry), ConnectorError::permanent(error))
            }
        };
        if failure.retry() == Retry::Transient {
            let reason = crate::sink::chain(&failure);
            tracing::warn!(entry = %letter.entry_id, attempt, error = %reason, "redrive failed; retrying");
            records.announce(Activity::Retrying, Some(&reason)).await;
            possible_replay = true;
            let pause = backoff(attempt, records.settings);
            attempt = attempt.saturating_add(1);
            tokio::select! {
                () = tokio::time::sleep(pause) => continue,
                () = shutdown.cancelled() => return Err(Ending::Shutdown),
            }
        }
        let reason = crate::sink::chain(&failure);
        return match verdict(records.settings, &message, failure) {
            Verdict::Halt(error) => Err(Ending::Halt(error)),
            Verdict::SetAside => Ok(Some(reason)),
        };
    }
}

/// The confirm, or `None` once shutdown was requested and `grace` has passed without it.
async fn confirmed(
    confirm: Confirm,
    shutdown: &CancellationToken,
    grace: Duration,
) -> Option<Result<(), ConnectorError>> {
    tokio::select! {
        result = confirm => Some(result),
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
        } => None,
    }
}
