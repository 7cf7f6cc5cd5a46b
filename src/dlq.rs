//! `outbox-relay dlq list|redrive`: the entries `pipeline.on_poison = "dead-letter"` set aside.
//!
//! Redriving puts entries back where they came from, in the order they were set aside: an
//! outbox row is inserted into the outbox table again (same id, same columns; a new `seq`), a
//! logical message is emitted again. The relay then publishes them like any new entry. Invariant:
//! a dead letter is marked redriven in the same transaction that puts it back, so it is put back
//! exactly once.

use outbox_relay_postgres::{OutboxTable, Session, TableName};

use crate::config::{Config, SourceMode};
use crate::error::RelayError;

pub(crate) async fn list(config: &Config) -> Result<(), RelayError> {
    let session = connect(config).await?;
    let rows = session
        .timed(
            "reading dead letters",
            session.client().query(
                "select seq, entry_id, coalesce(shard_key, ''), coalesce(destination, ''), reason, \
                        held_behind, dead_at::text \
                 from outbox_relay.dead_letters where pipeline = $1 and redriven_at is null order by seq",
                &[&config.pipeline.name],
            ),
        )
        .await?;
    if rows.is_empty() {
        println!("no dead letters for pipeline {:?}", config.pipeline.name);
    }
    for row in &rows {
        let held: Option<String> = row.get(5);
        println!(
            "#{} entry {} key {:?} → {:?} at {}\n    {}",
            row.get::<_, i64>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2),
            row.get::<_, String>(3),
            row.get::<_, String>(6),
            match held {
                Some(first) => format!("held behind {first} (same key)"),
                None => row.get::<_, String>(4),
            }
        );
    }
    Ok(())
}

/// Puts back every live dead letter (`ids` empty) or the given entries and those held behind
/// them.
pub(crate) async fn redrive(config: &Config, ids: &[String]) -> Result<usize, RelayError> {
    let mut session = connect(config).await?;
    let table: TableName = config.source.table.parse()?;
    let polled = config.source.mode == SourceMode::Poll;
    let outbox = OutboxTable::inspect(
        &session,
        table,
        &config.source.id_column,
        &config.source.payload_column,
        polled,
    )
    .await?;
    let payload_type =
        outbox.shape.column_type(&outbox.payload_column).unwrap_or("text").to_owned();
    // The payload back as the JSON value jsonb_populate_record expects for its column type.
    let payload_json = match payload_type.as_str() {
        "jsonb" | "json" => "convert_from(d.payload, 'UTF8')::jsonb",
        "bytea" => "to_jsonb('\\x' || encode(d.payload, 'hex'))",
        _ => "to_jsonb(convert_from(d.payload, 'UTF8'))",
    };
    let insert = format!(
        "insert into {table} select * from jsonb_populate_record(null::{table}, \
         (select d.fields - 'seq' || jsonb_build_object($2::text, {payload_json}) \
          from outbox_relay.dead_letters d where d.seq = $1))",
        table = outbox.name.quoted()
    );
    let emit = "select pg_logical_emit_message(true, d.fields->>'prefix', \
                jsonb_strip_nulls(jsonb_build_object('id', d.fields->>'id', \
                  'aggregatetype', d.fields->>'aggregatetype', 'aggregateid', d.fields->>'aggregateid', \
                  'type', d.fields->>'type', 'payload', convert_from(d.payload, 'UTF8')::jsonb))::text) \
                from outbox_relay.dead_letters d where d.seq = $1";

    let selected = session
        .timed(
            "choosing dead letters",
            session.client().query(
                "select seq, fields ? 'prefix' from outbox_relay.dead_letters \
                 where pipeline = $1 and redriven_at is null \
                   and (cardinality($2::text[]) = 0 or entry_id = any($2) or held_behind = any($2)) \
                 order by seq",
                &[&config.pipeline.name, &ids],
            ),
        )
        .await?;
    let what = "putting a dead letter back";
    let client = session.client_mut();
    let mut tx = client.transaction().await.map_err(|source| query_error(what, source))?;
    let mut done = 0;
    for row in &selected {
        let seq: i64 = row.get(0);
        let message: bool = row.get(1);
        // Each row under a savepoint: one that cannot go back is reported and left live.
        let savepoint =
            tx.savepoint("redrive").await.map_err(|source| query_error(what, source))?;
        let put_back = if message {
            savepoint.execute(emit, &[&seq]).await
        } else {
            savepoint.execute(&insert, &[&seq, &outbox.payload_column]).await
        };
        match put_back {
            Ok(_) => {
                savepoint
                    .execute(
                        "update outbox_relay.dead_letters set redriven_at = now() where seq = $1",
                        &[&seq],
                    )
                    .await
                    .map_err(|source| query_error(what, source))?;
                savepoint.commit().await.map_err(|source| query_error(what, source))?;
                done += 1;
            }
            Err(error) => {
                savepoint.rollback().await.map_err(|source| query_error(what, source))?;
                eprintln!(
                    "dead letter #{seq} stays: it cannot be put back: {}",
                    crate::sink::chain(&error)
                );
            }
        }
    }
    tx.commit().await.map_err(|source| query_error(what, source))?;
    Ok(done)
}

async fn connect(config: &Config) -> Result<Session, RelayError> {
    Ok(Session::connect(config.postgres.url.expose(), &crate::leader::session_options(config))
        .await?)
}

fn query_error(what: &'static str, source: tokio_postgres::Error) -> RelayError {
    RelayError::Postgres(outbox_relay_postgres::PostgresError::Query { what, source })
}
