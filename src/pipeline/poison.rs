//! Messages that can never be delivered (poison) and the keys held behind them.
//!
//! Invariants:
//! - A message is set aside only once its dead letter is committed, so an entry is delivered,
//!   set aside with its reason, or still at the source.
//! - With `dead_letter_same_key = "wait"`, every later message of a key with a live dead letter
//!   is set aside behind it (in order), until a redrive delivers the first one.
//! - A failure that is nobody's message (a fatal sink error) halts under every policy.

use std::collections::HashMap;

use outbox_relay_core::{ConnectorError, Message, Retry};

use super::ledger::Ledger;
use super::records::Records;
use super::Settings;
use crate::config::{PoisonPolicy, SameKeyPolicy};
use crate::error::RelayError;

/// What to do with a message that can never be delivered.
pub(super) enum Verdict {
    /// Halt with this error.
    Halt(RelayError),
    /// Set aside; go on.
    SetAside,
}

/// Halt or set aside, by policy; failures that are nobody's message always halt.
pub(super) fn verdict(settings: &Settings, message: &Message, source: ConnectorError) -> Verdict {
    match (source.retry(), settings.on_poison) {
        (Retry::Fatal, _) => Verdict::Halt(RelayError::Fatal { what: "publishing failed", source }),
        (_, PoisonPolicy::DeadLetter) => Verdict::SetAside,
        (_, PoisonPolicy::Halt) => Verdict::Halt(RelayError::Poison {
            id: message.id.clone(),
            position: message.position,
            source,
        }),
    }
}

/// Why an entry waits in the dead letters: an earlier entry of its key is there.
pub(super) fn held_reason(first: &str) -> String {
    format!("held behind dead letter {first} (same key)")
}

/// A message to set aside instead of sending: why, and behind which dead letter of its key.
#[derive(Debug)]
pub(super) struct Aside {
    pub(super) reason: String,
    pub(super) behind: Option<String>,
    /// What the source found wrong with the entry, kept with the dead letter.
    pub(super) defect: Option<String>,
}

impl Aside {
    /// Held behind `first`, the key's first live dead letter.
    pub(super) fn behind(first: String) -> Self {
        Self { reason: held_reason(&first), behind: Some(first), defect: None }
    }
}

/// Keys held behind a dead letter (`dead_letter_same_key = "wait"`): key → the first entry set
/// aside for it. A key found here is checked against the ledger before it holds a message, so a
/// redrive releases it as soon as its last dead letter is marked redriven.
#[derive(Debug, Default)]
pub(super) struct Held {
    keys: HashMap<String, String>,
}

impl Held {
    /// The keys held by dead letters still live; none with `dead_letter_same_key = "continue"`
    /// (a key set aside under "wait" by an earlier run flows again once the policy says so).
    pub(super) async fn load(
        ledger: &impl Ledger,
        policy: SameKeyPolicy,
    ) -> Result<Self, ConnectorError> {
        let keys = match policy {
            SameKeyPolicy::Wait => ledger.held_keys().await?,
            SameKeyPolicy::Continue => HashMap::new(),
        };
        Ok(Self { keys })
    }
}

impl<L: Ledger> Records<'_, L> {
    /// Sets `message` aside (the dead letter is committed when this returns). With
    /// `dead_letter_same_key = "wait"` its key is held from now on.
    pub(super) async fn set_aside(
        &mut self,
        message: &Message,
        aside: &Aside,
    ) -> Result<(), ConnectorError> {
        let Aside { reason, behind, defect } = aside;
        self.ledger.dead_letter(message, reason, behind.as_deref(), defect.as_deref()).await?;
        self.telemetry.metrics.dead_letters.inc();
        tracing::warn!(entry = %message.id, position = %message.position, reason, "set aside as a dead letter");
        if self.settings.same_key == SameKeyPolicy::Wait {
            if let Some(key) = &message.key {
                self.held.keys.entry(key.clone()).or_insert_with(|| message.id.clone());
            }
        }
        Ok(())
    }

    /// The dead letter a message of `key` is held behind, if any.
    pub(super) async fn held_behind(
        &mut self,
        key: Option<&str>,
    ) -> Result<Option<String>, ConnectorError> {
        let Some(key) = key.filter(|k| self.held.keys.contains_key(*k)) else { return Ok(None) };
        match self.ledger.first_held(key).await? {
            Some(first) => Ok(Some(first)),
            None => {
                self.held.keys.remove(key);
                Ok(None)
            }
        }
    }

    /// Sets `message` aside for `reason`, behind its key's first live dead letter if it has one.
    pub(super) async fn set_aside_in_turn(
        &mut self,
        message: &Message,
        reason: String,
        defect: Option<String>,
    ) -> Result<(), ConnectorError> {
        let behind = self.held_behind(message.key.as_deref()).await?;
        self.set_aside(message, &Aside { reason, behind, defect }).await
    }
}
