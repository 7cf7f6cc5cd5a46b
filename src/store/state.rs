//! The relay's own records in Postgres (schema `outbox_relay`), on a session of their own.
//!
//! Invariants:
//! - `max_sent` is written **before** a batch is handed to the broker, so every position a relay
//!   may ever have sent is at or below it. Read at start, it is the *replay horizon*: messages
//!   at or below it may be replays of a run that crashed. It is written [ahead](ahead) of the
//!   batch that needs it, so a steady flow writes it a few times a second rather than once per
//!   batch; a run that ends writes the exact bound back ([`RelayState::settle`]), so only a
//!   crash leaves the headroom in the horizon.
//! - `acked` (the checkpoint) is only raised.
//! - **Fenced**: every write requires this relay's leader epoch (checked in the same
//!   statement, see [`Lease::fence`]); once another relay has taken over, a deposed leader's
//!   write changes nothing and fails with [`PostgresError::LockLost`], so it can neither lower
//!   `max_sent` nor overwrite the new leader's state or dead letters.
//! - A dead letter is written (committed) before its entry is acknowledged, so an entry is
//!   either delivered, set aside with its reason, or still at the source.
//! - A redriven dead letter is marked sent before it is handed to the broker and redriven only
//!   once the broker confirmed it, so a redrive is delivered at least once and a repeat is known.

use std::collections::HashMap;

use outbox_relay_core::{Message, Position};
use outbox_relay_postgres::{PostgresError, Session};
use tokio_postgres::Statement;

use serde::Serialize;

use super::dead_letters::{DeadLetter, Stored};
use crate::config::Config;
use crate::error::RelayError;
use crate::store::leader::Lease;

#[derive(Debug)]
pub(crate) struct RelayState {
    session: Session,
    pipeline: String,
    /// Holds while no newer leader has taken the pipeline ([`Lease::fence`]): every write
    /// requires it.
    fence: String,
    /// The two writes of every batch and every checkpoint, prepared once: one round trip
    /// each, and nothing for the server to parse again.
    write_max_sent: Statement,
    write_acked: Statement,
    horizon: Option<Position>,
    /// What `max_sent` holds (written ahead).
    max_sent: Option<Position>,
    /// The highest position this run handed on: what `max_sent` would be without the headroom.
    sending: Option<Position>,
    acked: Option<Position>,
}

/// Headroom of a `max_sent` write, WAL tailing: bytes of WAL past the batch's commit.
const WAL_AHEAD: u64 = 1 << 20;
/// Headroom of a `max_sent` write, polling: `seq` values past the batch's highest.
const POLL_AHEAD: i64 = 1_000;

/// What `max_sent` is written as when a batch up to `upto` is about to be sent: that far
/// ahead, so the batches of the next [`WAL_AHEAD`] bytes of WAL (or [`POLL_AHEAD`] rows) need no
/// write of their own. The price, after a crash only: up to that much more is looked up as a
/// possible replay (Kafka) or marked as one (RabbitMQ).
fn ahead(upto: Position) -> Position {
    match upto {
        Position::Wal { commit_lsn, .. } => Position::Wal {
            commit_lsn: outbox_relay_core::Lsn(commit_lsn.0.saturating_add(WAL_AHEAD)),
            index: 0,
        },
        Position::Poll { seq } => Position::Poll { seq: seq.saturating_add(POLL_AHEAD) },
    }
}

impl RelayState {
    /// Reads, on a session of its own, what the previous run left (`leader::acquire` has
    /// checked that the schema is at this relay's version).
    pub(crate) async fn open(
        session: Session,
        config: &Config,
        lease: Lease,
    ) -> Result<Self, RelayError> {
        let pipeline = config.pipeline.name.clone();
        let row = session
            .timed(
                "reading the pipeline's state (is `outbox-relay migrate` applied?)",
                session.client().query_opt(
                    "select max_sent, acked from outbox_relay.pipelines where name = $1",
                    &[&pipeline],
                ),
            )
            .await?;
        let parse = |text: Option<String>| text.and_then(|t| t.parse::<Position>().ok());
        let (max_sent, acked) = match row {
            Some(row) => (parse(row.get(0)), parse(row.get(1))),
            None => (None, None),
        };
        let fence = lease.fence();
        let update = |column: &str| {
            format!(
                "update outbox_relay.pipelines set {column} = $2, updated_at = now() \
                 where name = $1 and {fence}"
            )
        };
        let write_max_sent = session.prepare(&update("max_sent")).await?;
        let write_acked = session.prepare(&update("acked")).await?;
        Ok(Self {
            session,
            pipeline,
            fence,
            write_max_sent,
            write_acked,
            horizon: max_sent,
            max_sent,
            sending: None,
            acked,
        })
    }

    /// Messages at or below this position may have been sent by an earlier run.
    pub(crate) fn replay_horizon(&self) -> Option<Position> {
        self.horizon
    }

    /// Records, before sending, that positions up to `upto` may be sent (written [`ahead`]
    /// when what is recorded does not cover it yet).
    pub(crate) async fn note_sending(&mut self, upto: Position) -> Result<(), PostgresError> {
        self.sending = Some(self.sending.map_or(upto, |sent| sent.max_of(upto)));
        // Positions of another kind of source (after a switch) do not compare: written anew.
        if self.max_sent.is_some_and(|sent| sent >= upto) {
            return Ok(());
        }
        let written = ahead(upto);
        self.write("recording what is being sent", &self.write_max_sent, written).await?;
        self.max_sent = Some(written);
        Ok(())
    }

    /// At the end of a run (nothing more is sent on it): brings `max_sent` back from its
    /// headroom to the highest position ever sent — this run's, or the horizon an earlier run
    /// left — so the next run doubts only what may really have been sent. A failed write is
    /// only logged: what is recorded is too high, never too low.
    pub(crate) async fn settle(&mut self) {
        let Some(sent) = self.sending else { return };
        let exact = self.horizon.map_or(sent, |horizon| horizon.max_of(sent));
        if self.max_sent == Some(exact) {
            return;
        }
        match self.write("recording what was sent", &self.write_max_sent, exact).await {
            Ok(()) => self.max_sent = Some(exact),
            Err(error) => tracing::warn!(error = %error, "cannot record what was sent exactly"),
        }
    }

    /// Records the checkpoint (the last acknowledged position).
    pub(crate) async fn note_acked(&mut self, upto: Position) -> Result<(), PostgresError> {
        if self.acked.is_some_and(|acked| acked >= upto) {
            return Ok(());
        }
        self.write("recording the checkpoint", &self.write_acked, upto).await?;
        self.acked = Some(upto);
        Ok(())
    }

    async fn write(
        &self,
        what: &'static str,
        statement: &Statement,
        position: Position,
    ) -> Result<(), PostgresError> {
        let written = self
            .session
            .timed(
                what,
                self.session.client().execute(statement, &[&self.pipeline, &position.to_string()]),
            )
            .await?;
        fenced(what, written)
    }

    /// Records what the relay is doing (the caller skips unchanged states).
    pub(crate) async fn note_state(
        &mut self,
        state: &str,
        detail: Option<&str>,
    ) -> Result<(), PostgresError> {
        let what = "recording the relay's state";
        let sql = format!(
            "update outbox_relay.pipelines set state = $2, state_detail = $3, \
             state_since = case when state is distinct from $2 then now() else state_since end \
             where name = $1 and {}",
            self.fence
        );
        let written = self
            .session
            .timed(what, self.session.client().execute(&sql, &[&self.pipeline, &state, &detail]))
            .await?;
        fenced(what, written)
    }

    /// Sets `message` aside with `reason` (committed when this returns). An entry held behind
    /// a dead letter whose redrive is requested is requested too: it goes out with it. One that
    /// an earlier run may have sent (`message.possible_replay`) is redriven as a possible replay.
    /// Keyed by position: the same entry set aside again after a crash is stored once; another
    /// entry with the same id is stored too.
    pub(crate) async fn dead_letter(
        &self,
        message: &Message,
        reason: &str,
        held_behind: Option<&str>,
        defect: Option<&str>,
    ) -> Result<(), PostgresError> {
        let stored = Stored::of(message);
        let (fields, own_headers, kind) =
            (&stored.fields, &stored.own_headers, stored.payload_kind);
        let payload: Option<&[u8]> = message.payload.as_deref();
        // `for share` waits for a `dlq redrive` marking the first entry, so a request is never
        // missed by an entry set aside while it is being made.
        let what = "writing a dead letter";
        let sql = format!(
            "with fence as (select {fence} as held), \
             stored as ( \
               insert into outbox_relay.dead_letters \
               (pipeline, entry_id, position, destination, shard_key, fields, payload, reason, \
                held_behind, payload_kind, own_headers, defect, redrive_sent_at, \
                redrive_requested_at) \
               select $1::text, $2::text, $3::text, $4::text, $5::text, $6::text::jsonb, \
                $7::bytea, $8::text, $9::text, $10::text, $11::text::jsonb, $12::text, \
                case when $13::bool then now() end, \
                (select d.redrive_requested_at from outbox_relay.dead_letters d \
                 where $9::text is not null and d.pipeline = $1 and d.shard_key = $5 \
                   and d.redriven_at is null order by d.seq limit 1 for share) \
               from fence where fence.held \
               on conflict (pipeline, position) where redriven_at is null do nothing) \
             select held from fence",
            fence = self.fence
        );
        let row = self
            .session
            .timed(
                what,
                self.session.client().query_one(
                    &sql,
                    &[
                        &self.pipeline,
                        &message.id,
                        &message.position.to_string(),
                        &message.destination,
                        &message.key,
                        &fields,
                        &payload,
                        &reason,
                        &held_behind,
                        &kind,
                        &own_headers,
                        &defect,
                        &message.possible_replay,
                    ],
                ),
            )
            .await?;
        fenced(what, u64::from(row.get::<_, bool>(0)))
    }

    /// Whether `dlq redrive` asked for dead letters that are not delivered yet.
    pub(crate) async fn redrive_requested(&self) -> Result<bool, PostgresError> {
        let row = self
            .session
            .timed(
                "looking for redrive requests",
                self.session.client().query_one(
                    "select exists (select 1 from outbox_relay.dead_letters \
                     where pipeline = $1 and redriven_at is null and redrive_requested_at is not null)",
                    &[&self.pipeline],
                ),
            )
            .await?;
        Ok(row.get(0))
    }

    /// The dead letters to redrive, in the order they were set aside.
    pub(crate) async fn requested_dead_letters(&self) -> Result<Vec<DeadLetter>, PostgresError> {
        let rows = self
            .session
            .timed(
                "reading the dead letters to redrive",
                self.session.client().query(
                    "select seq, entry_id, position, held_behind, fields::text, payload, \
                            payload_kind, own_headers::text, defect, redrive_sent_at is not null, \
                            shard_key \
                     from outbox_relay.dead_letters \
                     where pipeline = $1 and redriven_at is null and redrive_requested_at is not null \
                     order by seq",
                    &[&self.pipeline],
                ),
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| DeadLetter {
                seq: row.get(0),
                entry_id: row.get(1),
                position: row.get(2),
                held_behind: row.get(3),
                fields: row.get(4),
                payload: row.get(5),
                payload_kind: row.get(6),
                own_headers: row.get(7),
                defect: row.get(8),
                sent_before: row.get(9),
                shard_key: row.get(10),
            })
            .collect())
    }

    /// Records, before it is handed to the broker, that dead letter `seq` may be sent.
    pub(crate) async fn note_redrive_sending(&self, seq: i64) -> Result<(), PostgresError> {
        self.update_dead_letter(
            "recording a redrive being sent",
            "redrive_sent_at = coalesce(redrive_sent_at, now())",
            seq,
        )
        .await
    }

    /// Dead letter `seq` is delivered.
    pub(crate) async fn note_redriven(&self, seq: i64) -> Result<(), PostgresError> {
        self.update_dead_letter("recording a redriven dead letter", "redriven_at = now()", seq)
            .await
    }

    /// Dead letter `seq` stays: `reason`, held behind `behind` (or first of its key).
    pub(crate) async fn note_still_dead(
        &self,
        seq: i64,
        reason: &str,
        behind: Option<&str>,
    ) -> Result<(), PostgresError> {
        let what = "recording a dead letter that stays";
        let sql = format!(
            "update outbox_relay.dead_letters \
             set reason = $3, held_behind = $4, redrive_requested_at = null \
             where pipeline = $1 and seq = $2 and {}",
            self.fence
        );
        let written = self
            .session
            .timed(
                what,
                self.session.client().execute(&sql, &[&self.pipeline, &seq, &reason, &behind]),
            )
            .await?;
        fenced(what, written)
    }

    async fn update_dead_letter(
        &self,
        what: &'static str,
        set: &str,
        seq: i64,
    ) -> Result<(), PostgresError> {
        let sql = format!(
            "update outbox_relay.dead_letters set {set} where pipeline = $1 and seq = $2 and {}",
            self.fence
        );
        let written = self
            .session
            .timed(what, self.session.client().execute(&sql, &[&self.pipeline, &seq]))
            .await?;
        fenced(what, written)
    }

    /// The first live dead letter of `key`, if the key is still held.
    pub(crate) async fn first_held(&self, key: &str) -> Result<Option<String>, PostgresError> {
        let row = self
            .session
            .timed(
                "checking a held key",
                self.session.client().query_opt(
                    "select entry_id from outbox_relay.dead_letters \
                     where pipeline = $1 and shard_key = $2 and redriven_at is null \
                     order by seq limit 1",
                    &[&self.pipeline, &key],
                ),
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Shard keys with live dead letters, each with the first entry set aside for it.
    pub(crate) async fn held_keys(&self) -> Result<HashMap<String, String>, PostgresError> {
        let rows = self
            .session
            .timed(
                "reading held keys",
                self.session.client().query(
                    "select distinct on (shard_key) shard_key, entry_id from outbox_relay.dead_letters \
                     where pipeline = $1 and redriven_at is null and shard_key is not null \
                     order by shard_key, seq",
                    &[&self.pipeline],
                ),
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

#[derive(Debug, Serialize)]
/// What the pipeline's row says, for `outbox-relay status` and `doctor`.
pub(crate) struct Recorded {
    /// `host:pid` of the last relay that led.
    pub(crate) leader: Option<String>,
    pub(crate) leader_since: Option<String>,
    /// starting, running, retrying, halted, standby or stopping: the current state when a
    /// relay holds the lock, else the state it was in when it last ran.
    pub(crate) state: Option<String>,
    pub(crate) state_since: Option<String>,
    /// The last error (retrying, halted).
    pub(crate) state_detail: Option<String>,
    /// The acknowledged position.
    pub(crate) checkpoint: Option<String>,
    /// The position written before sending a batch.
    pub(crate) max_sent: Option<String>,
}

/// The row of the pipeline named `pipeline`, if a relay ever led it.
pub(crate) async fn recorded(
    session: &Session,
    pipeline: &str,
) -> Result<Option<Recorded>, PostgresError> {
    let row = session
        .timed(
            "reading the pipeline (is `outbox-relay migrate` applied?)",
            session.client().query_opt(
                "select leader, leader_since::text, state, state_since::text, state_detail, acked, \
                        max_sent \
                 from outbox_relay.pipelines where name = $1",
                &[&pipeline],
            ),
        )
        .await?;
    Ok(row.map(|row| Recorded {
        leader: row.get(0),
        leader_since: row.get(1),
        state: row.get(2),
        state_since: row.get(3),
        state_detail: row.get(4),
        checkpoint: row.get(5),
        max_sent: row.get(6),
    }))
}

/// A fenced write that changed nothing was refused: a newer leader took over (the rows it
/// writes exist while the relay runs: its pipeline row, a dead letter it read).
fn fenced(what: &'static str, written: u64) -> Result<(), PostgresError> {
    if written == 0 {
        return Err(PostgresError::LockLost { what });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::telemetry::Telemetry;

    /// A fresh, migrated database on the test server (`scripts/services.sh up`).
    async fn migrated_config() -> Config {
        let admin_url = std::env::var("OUTBOX_RELAY_TEST_PG")
            .expect("OUTBOX_RELAY_TEST_PG: run `scripts/test.sh` (it starts Postgres)");
        let name = format!("t_fence_{}_{:08x}", std::process::id(), rand::random::<u32>());
        let (admin, connection) =
            tokio_postgres::connect(&admin_url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        admin.batch_execute(&format!("create database \"{name}\"")).await.unwrap();
        let url = format!("{}/{name}", admin_url.rsplit_once('/').unwrap().0);
        let text = format!(
            "[postgres]\nurl = \"{url}\"\n[sink]\nkind = \"rabbitmq\"\nurl = \"amqp://127.0.0.1\"\n"
        );
        let config = Config::from_sources(&text, [], "test").unwrap();
        let session = crate::store::connect(&config).await.unwrap();
        crate::store::migrations::migrate(&session, &config).await.unwrap();
        config
    }

    #[tokio::test]
    async fn a_relay_that_lost_the_pipeline_lock_writes_nothing() {
        let config = migrated_config().await;
        let (telemetry, shutdown) = (Telemetry::new(), CancellationToken::new());
        let acquire = || async {
            let session = crate::store::connect(&config).await.unwrap();
            crate::store::leader::acquire(session, &config, &telemetry, &shutdown)
                .await
                .unwrap()
                .unwrap()
        };
        let (lock, lease) = acquire().await;
        let session = crate::store::connect(&config).await.unwrap();
        let mut state = RelayState::open(session, &config, lease).await.unwrap();
        state.note_sending(Position::Poll { seq: 10 }).await.unwrap();
        state.note_state("running", None).await.unwrap();

        // The lock session ends (a network cut, a restarted pooler); another relay takes over.
        drop(lock);
        let (usurper, _) = acquire().await;
        let beyond = Position::Poll { seq: 11 + POLL_AHEAD };
        let refused = state.note_sending(beyond).await.unwrap_err();
        assert!(matches!(refused, PostgresError::LockLost { .. }), "{refused}");
        let refused = state.note_state("halted", Some("late")).await.unwrap_err();
        assert!(matches!(refused, PostgresError::LockLost { .. }), "{refused}");

        let row = usurper
            .client()
            .query_one(
                "select max_sent, state from outbox_relay.pipelines where name = 'default'",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("poll:1010"));
        assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("running"));
        // Nor can it settle: the usurper's horizon keeps the headroom.
        state.settle().await;
        let row = usurper
            .client()
            .query_one("select max_sent from outbox_relay.pipelines where name = 'default'", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("poll:1010"));
    }

    #[tokio::test]
    async fn max_sent_is_written_ahead_once_for_many_batches_and_settled_exactly() {
        let config = migrated_config().await;
        let (telemetry, shutdown) = (Telemetry::new(), CancellationToken::new());
        let session = crate::store::connect(&config).await.unwrap();
        let (_lock, lease) = crate::store::leader::acquire(session, &config, &telemetry, &shutdown)
            .await
            .unwrap()
            .unwrap();
        let reader = crate::store::connect(&config).await.unwrap();
        let recorded = || async {
            let sql = "select max_sent from outbox_relay.pipelines where name = 'default'";
            reader.client().query_one(sql, &[]).await.unwrap().get::<_, Option<String>>(0)
        };
        let wal =
            |lsn: u64, index: u32| Position::Wal { commit_lsn: outbox_relay_core::Lsn(lsn), index };

        let session = crate::store::connect(&config).await.unwrap();
        let mut state = RelayState::open(session, &config, lease).await.unwrap();
        state.note_sending(wal(0x1000, 3)).await.unwrap();
        let ahead = format!("wal:{}:0", outbox_relay_core::Lsn(0x1000 + WAL_AHEAD));
        assert_eq!(recorded().await.as_deref(), Some(ahead.as_str()));
        // Batches within the headroom are covered by that one write.
        state.note_sending(wal(0x2000, 0)).await.unwrap();
        state.note_sending(wal(0x1000 + WAL_AHEAD - 1, 9)).await.unwrap();
        assert_eq!(recorded().await.as_deref(), Some(ahead.as_str()));
        // The end of the run leaves the highest position sent, not the headroom.
        state.settle().await;
        let exact = format!("wal:{}:9", outbox_relay_core::Lsn(0x1000 + WAL_AHEAD - 1));
        assert_eq!(recorded().await.as_deref(), Some(exact.as_str()));

        // A run that crashed left headroom: the next run's end keeps that horizon when it sent
        // less, since the crashed run may have sent up to there.
        state.note_sending(wal(0x1000 + WAL_AHEAD, 0)).await.unwrap();
        let crashed = recorded().await;
        drop(state);
        let session = crate::store::connect(&config).await.unwrap();
        let mut next = RelayState::open(session, &config, lease).await.unwrap();
        next.note_sending(wal(0x3000, 0)).await.unwrap();
        next.settle().await;
        assert_eq!(recorded().await, crashed);
    }
}
