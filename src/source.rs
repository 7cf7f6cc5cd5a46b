//! The source this relay was configured with: polling the outbox table, or tailing the WAL.
//! Config chooses one variant; the pipeline sees one [`Source`].

use outbox_relay_core::{ConnectorError, Entry, Position, Source};
use outbox_relay_postgres::{wal, OutboxTable, PollSource, WalSource};

use crate::config::{SourceConfig, SourceMode};
use crate::router::Router;

/// The route's template columns, as (config key, column), that the configured source cannot
/// fill: not a column of the outbox table, nor (WAL tailing with a message prefix) a field of
/// a logical message. `run` refuses to start on one; `check` names them all.
pub(crate) fn unknown_columns<'a>(
    router: &'a Router,
    table: &'a OutboxTable,
    source: &SourceConfig,
) -> impl Iterator<Item = (&'static str, &'a str)> + 'a {
    let messages = source.mode == SourceMode::Wal && !source.message_prefix.is_empty();
    let message_fields: &[&str] = if messages { &wal::MESSAGE_FIELDS } else { &[] };
    router
        .columns()
        .filter(move |(_, column)| !table.has_column(column) && !message_fields.contains(column))
}

#[derive(Debug)]
#[allow(clippy::large_enum_variant, reason = "one source per run, never moved in a hot path")]
pub(crate) enum AnySource {
    Poll(PollSource),
    Wal(WalSource),
}

impl Source for AnySource {
    async fn ready(&mut self) -> Result<(), ConnectorError> {
        match self {
            AnySource::Poll(source) => source.ready().await,
            AnySource::Wal(source) => source.ready().await,
        }
    }

    async fn next_batch(
        &mut self,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, ConnectorError> {
        match self {
            AnySource::Poll(source) => source.next_batch(max, max_bytes).await,
            AnySource::Wal(source) => source.next_batch(max, max_bytes).await,
        }
    }

    async fn ack(&mut self, upto: Position) -> Result<(), ConnectorError> {
        match self {
            AnySource::Poll(source) => source.ack(upto).await,
            AnySource::Wal(source) => source.ack(upto).await,
        }
    }

    fn at_boundary(&self) -> bool {
        match self {
            AnySource::Poll(source) => source.at_boundary(),
            AnySource::Wal(source) => source.at_boundary(),
        }
    }

    async fn close(&mut self) -> Result<(), ConnectorError> {
        match self {
            AnySource::Poll(source) => source.close().await,
            AnySource::Wal(source) => source.close().await,
        }
    }
}
