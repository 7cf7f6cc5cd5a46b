//! The commands. Each is one file that takes the loaded config and writes what it has to say to
//! `out` (stdout in the binary, a buffer in a test); errors go back to `main`, which prints
//! them and picks the exit code. Only commands open sessions to Postgres (`store::connect`);
//! what runs below them is handed its session.
//!
//! | file          | command                                                       |
//! |---------------|---------------------------------------------------------------|
//! | `args.rs`     | the command line (`--help` is written there)                  |
//! | `run.rs`      | `run`: leadership, then the pipeline, again after failures (`gauges.rs` beside it) |
//! | `migrate.rs`  | `migrate`                                                     |
//! | `check.rs`    | `check`                                                       |
//! | `status.rs`   | `status [--json]`                                             |
//! | `doctor.rs`   | `doctor`                                                      |
//! | `dlq.rs`      | `dlq list`, `dlq redrive`                                     |
//! | `replay.rs`   | `replay`                                                      |
//! | `asyncapi.rs` | `asyncapi [--observe]`                                        |

use std::io::Write;
use std::path::Path;

use crate::config::Config;
use crate::error::RelayError;

mod args;
mod asyncapi;
mod check;
mod dlq;
mod doctor;
mod gauges;
mod migrate;
mod replay;
mod run;
mod status;

pub(crate) use args::{Cli, Command, DlqCommand};

/// Runs `command` with `config` (read from `config_path`), writing its output to `out`.
pub(crate) async fn dispatch(
    command: Command,
    config: Config,
    config_path: Option<&Path>,
    out: &mut impl Write,
) -> Result<(), RelayError> {
    match command {
        Command::Run => {
            let (shutdown, _signals) = crate::shutdown::on_signal();
            tracing::info!(pipeline = %config.pipeline.name, "starting");
            crate::spans::init(&config.telemetry);
            let result = run::run(config, shutdown).await;
            crate::spans::flush().await;
            result?;
            tracing::info!("stopped");
            Ok(())
        }
        Command::Migrate => migrate::migrate(&config, out).await,
        Command::Check => check::check(&config, out).await,
        Command::Status { json } => status::status(&config, json, out).await,
        Command::Doctor => doctor::doctor(&config, out).await,
        Command::Asyncapi { observe } => {
            let dir = config_path.and_then(Path::parent).unwrap_or(Path::new("."));
            asyncapi::asyncapi(&config, dir, observe, out).await
        }
        Command::Replay { from, to, dry_run, label, wait } => {
            crate::spans::init(&config.telemetry);
            let args = replay::ReplayArgs { from, to, dry_run, label, wait };
            let result = replay::replay(&config, &args, out).await;
            crate::spans::flush().await;
            result
        }
        Command::Dlq(DlqCommand::List) => dlq::list(&config, out).await,
        Command::Dlq(DlqCommand::Redrive { all: _, id, timeout, no_wait }) => {
            let wait = (!no_wait).then_some(timeout);
            let report = dlq::redrive(&config, &id, wait).await?;
            dlq::write(&config, &report, wait, out)
        }
    }
}
