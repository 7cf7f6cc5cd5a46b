//! `outbox-relay migrate`: the relay's schema brought to this relay's version, the outbox table
//! installed or upgraded from the config, and in WAL mode the publication and the slot created
//! if missing. The work is `store::migrations`'; this says what it did.

use std::io::Write;

use crate::config::Config;
use crate::error::RelayError;
use crate::store;

pub(crate) async fn migrate(config: &Config, out: &mut impl Write) -> Result<(), RelayError> {
    let session = store::connect(config).await?;
    let report = store::migrations::migrate(&session, config).await?;
    for name in &report.applied {
        writeln!(out, "applied {name}")?;
    }
    for done in &report.wal {
        writeln!(out, "{done}")?;
    }
    writeln!(
        out,
        "{} migration(s) applied, {} already present; outbox table {} installed",
        report.applied.len(),
        report.already,
        config.source.table
    )?;
    Ok(())
}
