//! The relay's own records: schema `outbox_relay` in the application's database. This module
//! owns its statements and how a session to it is opened.
//!
//! | file            | owns                                                              |
//! |-----------------|-------------------------------------------------------------------|
//! | `migrations.rs` | the schema's versions (`migrations/*.sql`), applying them, checks |
//! | `leader.rs`     | the pipeline lock, the leader's epoch and the fence of its writes |
//! | `state.rs`      | a run's records: write-ahead `max_sent`, checkpoint, state, dead letters |
//! | `dead_letters.rs` | how a dead letter stores its entry (and rebuilds it); `dlq`'s statements |

use outbox_relay_postgres::{PostgresError, Session, SessionOptions};

use crate::config::Config;

pub(crate) mod dead_letters;
pub(crate) mod leader;
pub(crate) mod migrations;
pub(crate) mod state;

/// How every session of the relay's (and its commands') is set up: timeouts, and an
/// `application_name` naming the pipeline, so `pg_stat_activity` says whose session it is.
pub(crate) fn session_options(config: &Config) -> SessionOptions {
    SessionOptions {
        connect_timeout: config.postgres.connect_timeout,
        query_timeout: config.postgres.query_timeout,
        application_name: format!("outbox-relay:{}", config.pipeline.name),
    }
}

/// A session to the configured database.
pub(crate) async fn connect(config: &Config) -> Result<Session, PostgresError> {
    Session::connect(config.postgres.url.expose(), &session_options(config)).await
}

/// A session whose `application_name` also names the command it serves (`...:replay`).
pub(crate) async fn connect_as(config: &Config, command: &str) -> Result<Session, PostgresError> {
    let mut options = session_options(config);
    options.application_name = format!("{}:{command}", options.application_name);
    Session::connect(config.postgres.url.expose(), &options).await
}
