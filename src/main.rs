//! `outbox-relay`: the binary. Parses the command line, loads the config, sets up logging, and
//! hands over to the command. `anyhow` lives only here.
//!
//! # How a message flows (`outbox-relay run`), file by file
//!
//! ```text
//!  cli/run.rs          leadership (store/leader.rs: the pipeline's advisory lock, an epoch that
//!    │                 fences a deposed leader), the relay's records (store/state.rs), the
//!    │                 source (source.rs), the sink's run (Kafka: fence older producers, read
//!    │                 how far back replays may go)
//!    ▼
//!  pipeline/mod.rs     one run, a loop over Events: send what the window allows, take stock,
//!    │                 decide a failing round, wait
//!    ├─ feed.rs        the source's task: connectors/postgres (poll.rs: gap-free polling of the
//!    │                 outbox table; wal/: pgoutput over a replication slot) → batches of Entry
//!    ├─ router/        Entry → Message: destination, shard key, headers, CloudEvent (or poison)
//!    ├─ poison.rs      a message that can never go: halt, or a dead letter (key held behind it)
//!    ├─ sink.rs        AnySink → connectors/kafka or connectors/rabbitmq: send → Confirm
//!    ├─ window.rs      pending entries, the ack tracker (ack_tracker.rs), the confirms; a
//!    │                 failure stops the window until every confirm is in, then re-sends in order
//!    ├─ records.rs     write-ahead `max_sent` before a batch goes out; state; checkpoint
//!    └─ redrive.rs     dead letters `dlq redrive` asked for, one at a time, in the stream
//!    ▼
//!  feed.rs again       ack(position) for the contiguous confirmed prefix: the slot's flush LSN
//!                      is reported, or the rows are deleted/marked — the checkpoint
//! ```
//!
//! Glossary: an **entry** is what a source read (a row, a logical message); a **message** is an
//! entry routed for a broker; a **confirm** is the broker's word that it holds a message; the
//! **prefix** is the run of confirmed messages from the oldest unacknowledged one; a
//! **possible replay** is a message an earlier run (or an earlier round) may have delivered,
//! which the sink looks for (Kafka) or marks (RabbitMQ) instead of duplicating blindly.
//!
//! The other commands (`cli/`: `migrate`, `check`, `doctor`, `status`, `dlq`, `replay`,
//! `asyncapi`) share `config/`, `store/` and the connectors and never run a pipeline.

mod ack_tracker;
mod cli;
mod config;
mod error;
mod pipeline;
mod router;
mod shutdown;
mod sink;
mod source;
mod spans;
mod store;
mod telemetry;

use std::io::Write;

use clap::Parser;

use crate::cli::Cli;
use crate::config::Config;

/// The relay allocates and frees a few small buffers per message across tokio's threads; glibc's
/// malloc and free were a third of its CPU samples in a WAL → Kafka drain. `no_thp`: mimalloc
/// would otherwise ask for transparent huge pages, which cost ~35 MiB of RSS for nothing here.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // Two TLS stacks (ring via lapin, aws-lc via the replication client) are linked in; rustls
    // panics unless one is chosen before the first TLS handshake.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("outbox-relay")
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "outbox-relay stopped");
            eprintln!("error: {error:#}");
            let code = error.downcast_ref::<error::RelayError>().map_or(1, |e| e.exit_code());
            std::process::ExitCode::from(code)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref())?;
    telemetry::init_logging(&config.telemetry);
    let mut out = std::io::stdout().lock();
    cli::dispatch(cli.command, config, cli.config.as_deref(), &mut out).await?;
    out.flush()?;
    Ok(())
}
