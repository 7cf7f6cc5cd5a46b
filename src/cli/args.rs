//! Command line. Invariant: `--help` describes what the code does; every subcommand takes the
//! same `--config` file.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Relays committed transactional-outbox entries from PostgreSQL to Kafka or RabbitMQ: none
/// lost, none skipped, in commit order per shard key.
#[derive(Debug, Parser)]
#[command(name = "outbox-relay", version, propagate_version = true)]
pub(crate) struct Cli {
    /// TOML config file; `OUTBOX_RELAY__SECTION__KEY` environment variables override its keys.
    #[arg(long, short, global = true, env = "OUTBOX_RELAY_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Relay outbox entries to the broker until SIGTERM/SIGINT (then drain and exit 0).
    ///
    /// Exit codes: 0 stopped by a signal, after in-flight confirms (`pipeline.shutdown_grace`);
    /// 1 halted, on a poison message (named, with its reason; nothing from it on is
    /// acknowledged) or on an error no retry can fix (bad credentials, an invalidated slot, a
    /// Kafka producer fenced by a newer one with the same transactional.id); 2 the
    /// configuration is wrong; 3 the database lacks what `outbox-relay migrate` sets up (relay
    /// schema, outbox table, publication, slot). Transient failures are retried.
    Run,
    /// Apply the relay's SQL migrations and install or upgrade the outbox table from the config.
    Migrate,
    /// Verify the config, connectivity to Postgres and the broker, and the outbox table.
    Check,
    /// Show the pipeline: leader, state and last error, checkpoint, slot lag and retained WAL,
    /// backlog, dead letters.
    Status {
        /// Print JSON instead (stable fields, documented in the README).
        #[arg(long)]
        json: bool,
    },
    /// Explain in plain words why the pipeline is not publishing, the slot not advancing or
    /// rows not draining, each problem with what to run; exits 1 when it finds one.
    Doctor,
    /// Print an AsyncAPI 3.0 document (JSON) of what the pipeline publishes: the channel from
    /// `route.topic`, one message per event type with the headers the relay sets, payload
    /// schemas from `[[asyncapi.messages]]`.
    Asyncapi {
        /// Also read the event types present in the outbox table, and its payload column type.
        #[arg(long)]
        observe: bool,
    },
    /// Publish retained entries again (polling with after_publish = "mark": published rows;
    /// WAL tailing with "keep": the rows kept), in seq order, each with the header
    /// `outbox-replay`.
    ///
    /// Runs beside the relay and changes nothing in the outbox. Progress goes to stderr (a bar
    /// on a terminal). It exits 1 if it stopped early (it names the seq to resume from) or
    /// skipped an entry it could not route.
    Replay {
        /// First entry: a time (compared with `created_at`, e.g. 2026-12-04T10:00:00Z) or
        /// `poll:<seq>`; inclusive.
        #[arg(long, value_name = "TIME|poll:SEQ")]
        from: String,
        /// Last entry, inclusive; the newest retained one when left out.
        #[arg(long, value_name = "TIME|poll:SEQ")]
        to: Option<String>,
        /// Only count what would be replayed.
        #[arg(long)]
        dry_run: bool,
        /// The value of the `outbox-replay` header; the start time (UTC) by default.
        #[arg(long)]
        label: Option<String>,
        /// WAL tailing: how long to wait for the relay to confirm every kept row the replay
        /// reads (rows it has not delivered yet are never replayed ahead of it).
        #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = humantime_serde::re::humantime::parse_duration)]
        wait: Duration,
    },
    /// Entries set aside by `pipeline.on_poison = "dead-letter"`.
    #[command(subcommand)]
    Dlq(DlqCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// List the live dead letters, oldest first, with their reasons.
    List,
    /// Ask the running relay to deliver dead letters again, after the cause is fixed.
    ///
    /// The relay delivers them in the order they were set aside, before any entry it reads
    /// afterwards; one that fails again stays, with the new reason. Waits for the relay and
    /// exits non-zero if an entry failed again or the wait ran out (the request stays).
    Redrive {
        /// Every live dead letter.
        #[arg(long, conflicts_with = "id", required_unless_present = "id")]
        all: bool,
        /// This entry, and the entries of its key held behind it (repeatable).
        #[arg(long, value_name = "ENTRY_ID")]
        id: Vec<String>,
        /// How long to wait for the relay to deliver them.
        #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = humantime_serde::re::humantime::parse_duration)]
        timeout: Duration,
        /// Only make the request; do not wait.
        #[arg(long)]
        no_wait: bool,
    },
}
