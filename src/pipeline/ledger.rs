//! What a run writes down and looks up in the relay's own records: the [`Ledger`]. In the relay
//! it is [`RelayState`] (schema `outbox_relay`, fenced by the leader's lease); the in-process
//! tests keep it in memory.

use std::collections::HashMap;
use std::future::Future;

use outbox_relay_core::{ConnectorError, Message, Position};

use crate::store::dead_letters::DeadLetter;
use crate::store::state::RelayState;

/// The run's records. Every write (`&mut self`) is durable when its future resolves; a failure
/// ends the run (the caller starts again), so nothing is sent or acknowledged on a record that
/// was not kept.
pub(crate) trait Ledger: Send {
    /// Positions at or below this one may have been sent by an earlier run.
    fn replay_horizon(&self) -> Option<Position>;

    /// Before sending: positions up to `upto` may be sent.
    fn note_sending(&mut self, upto: Position) -> impl Future<Output = Result<(), ConnectorError>>;

    /// The checkpoint: the last acknowledged position.
    fn note_acked(&mut self, upto: Position) -> impl Future<Output = Result<(), ConnectorError>>;

    /// What the relay is doing (`running`, `retrying`, ...) and why.
    fn note_state(
        &mut self,
        state: &str,
        detail: Option<&str>,
    ) -> impl Future<Output = Result<(), ConnectorError>>;

    /// Sets `message` aside with `reason`, behind the dead letter `held_behind` of its key.
    fn dead_letter(
        &mut self,
        message: &Message,
        reason: &str,
        held_behind: Option<&str>,
        defect: Option<&str>,
    ) -> impl Future<Output = Result<(), ConnectorError>>;

    /// Shard keys with live dead letters, each with the first entry set aside for it.
    fn held_keys(&self) -> impl Future<Output = Result<HashMap<String, String>, ConnectorError>>;

    /// The first live dead letter of `key`, if the key is still held.
    fn first_held(&self, key: &str)
        -> impl Future<Output = Result<Option<String>, ConnectorError>>;

    /// Whether `dlq redrive` asked for dead letters that are not delivered yet.
    fn redrive_requested(&self) -> impl Future<Output = Result<bool, ConnectorError>>;

    /// The dead letters to redrive, in the order they were set aside.
    fn requested_dead_letters(
        &self,
    ) -> impl Future<Output = Result<Vec<DeadLetter>, ConnectorError>>;

    /// Before it is handed to the broker: dead letter `seq` may be sent.
    fn note_redrive_sending(
        &mut self,
        seq: i64,
    ) -> impl Future<Output = Result<(), ConnectorError>>;

    /// Dead letter `seq` is delivered.
    fn note_redriven(&mut self, seq: i64) -> impl Future<Output = Result<(), ConnectorError>>;

    /// Dead letter `seq` stays: `reason`, held behind `behind` (or first of its key).
    fn note_still_dead(
        &mut self,
        seq: i64,
        reason: &str,
        behind: Option<&str>,
    ) -> impl Future<Output = Result<(), ConnectorError>>;
}

impl Ledger for RelayState {
    fn replay_horizon(&self) -> Option<Position> {
        RelayState::replay_horizon(self)
    }

    async fn note_sending(&mut self, upto: Position) -> Result<(), ConnectorError> {
        Ok(RelayState::note_sending(self, upto).await?)
    }

    async fn note_acked(&mut self, upto: Position) -> Result<(), ConnectorError> {
        Ok(RelayState::note_acked(self, upto).await?)
    }

    async fn note_state(
        &mut self,
        state: &str,
        detail: Option<&str>,
    ) -> Result<(), ConnectorError> {
        Ok(RelayState::note_state(self, state, detail).await?)
    }

    async fn dead_letter(
        &mut self,
        message: &Message,
        reason: &str,
        held_behind: Option<&str>,
        defect: Option<&str>,
    ) -> Result<(), ConnectorError> {
        Ok(RelayState::dead_letter(self, message, reason, held_behind, defect).await?)
    }

    async fn held_keys(&self) -> Result<HashMap<String, String>, ConnectorError> {
        Ok(RelayState::held_keys(self).await?)
    }

    async fn first_held(&self, key: &str) -> Result<Option<String>, ConnectorError> {
        Ok(RelayState::first_held(self, key).await?)
    }

    async fn redrive_requested(&self) -> Result<bool, ConnectorError> {
        Ok(RelayState::redrive_requested(self).await?)
    }

    async fn requested_dead_letters(&self) -> Result<Vec<DeadLetter>, ConnectorError> {
        Ok(RelayState::requested_dead_letters(self).await?)
    }

    async fn note_redrive_sending(&mut self, seq: i64) -> Result<(), ConnectorError> {
        Ok(RelayState::note_redrive_sending(self, seq).await?)
    }

    async fn note_redriven(&mut self, seq: i64) -> Result<(), ConnectorError> {
        Ok(RelayState::note_redriven(self, seq).await?)
    }

    async fn note_still_dead(
        &mut self,
        seq: i64,
        reason: &str,
        behind: Option<&str>,
    ) -> Result<(), ConnectorError> {
        Ok(RelayState::note_still_dead(self, seq, reason, behind).await?)
    }
}
